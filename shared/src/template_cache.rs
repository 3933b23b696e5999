//! Templates held in memory and kept current by a watch on their KV bucket, so that
//! planning a notification does not ask JetStream for a template that rarely changes.
//!
//! The cache cannot keep a stale template: it only holds entries while its watch is live,
//! the watch delivers every change made after it started, and a value read directly is
//! only kept if the read began while the watch was already live (so any later change
//! reaches the watch) and nothing newer is there. When the watch fails, the cache empties
//! and reads go to JetStream until a new watch is live. A change reaches the cache as fast
//! as JetStream delivers it (milliseconds): a request planned in between uses the previous
//! version, as it would have had it been planned a moment earlier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;

use crate::error::{Error, Result};
use crate::template::Template;

/// A template as the bucket holds it.
#[derive(Clone)]
enum Value {
    Template(Arc<Template>),
    /// Deleted (or never written, when read directly).
    Absent,
    /// Stored but not a template (written around the API): reads report the error.
    Unreadable(String),
}

impl Value {
    fn of(entry: &kv::Entry) -> Value {
        match entry.operation {
            kv::Operation::Put => match decode(&entry.value) {
                Ok(t) => Value::Template(Arc::new(t)),
                Err(e) => Value::Unreadable(e.to_string()),
            },
            kv::Operation::Delete | kv::Operation::Purge => Value::Absent,
        }
    }

    fn into_result(self) -> Result<Option<Arc<Template>>> {
        match self {
            Value::Template(t) => Ok(Some(t)),
            Value::Absent => Ok(None),
            Value::Unreadable(e) => Err(Error::BadBody(e)),
        }
    }
}

/// One template as the cache knows it: its KV revision and its value.
type Cached = (u64, Value);

#[derive(Default)]
struct State {
    /// Which watch the entries came from; 0 while no watch is live.
    generation: u64,
    entries: HashMap<String, Cached>,
}

/// A read-through cache of the templates bucket; cheap to clone.
#[derive(Clone)]
pub struct TemplateCache {
    kv: kv::Store,
    state: Arc<Mutex<State>>,
}

impl TemplateCache {
    /// Starts watching `kv` (in a task that lives as long as the runtime) and returns the cache.
    pub fn spawn(kv: kv::Store) -> Self {
        let cache = TemplateCache {
            kv,
            state: Arc::default(),
        };
        tokio::spawn(cache.clone().watch_loop());
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a harmful way:
        // at worst an entry is missing, and it is read again.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `entry` unless the cache already has a newer revision of its key.
    fn keep(&self, generation: u64, key: &str, revision: u64, value: Value) {
        let mut state = self.lock();
        if state.generation != generation || generation == 0 {
            return;
        }
        match state.entries.get(key) {
            Some((have, _)) if *have >= revision => {}
            _ => {
                state.entries.insert(key.to_owned(), (revision, value));
            }
        }
    }

    /// The template `name`, from memory when the watch is live and has it.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Template>>> {
        let generation = {
            let state = self.lock();
            if let Some((_, value)) = state.entries.get(name) {
                return value.clone().into_result();
            }
            state.generation
        };
        let Some(entry) = self.kv.entry(name).await.map_err(Error::nats)? else {
            // Never written: nothing to remember (a later put reaches the watch).
            return Ok(None);
        };
        let value = Value::of(&entry);
        self.keep(generation, name, entry.revision, value.clone());
        value.into_result()
    }

    /// Applies every change to the bucket while a watch is live; starts a new one (with an
    /// empty cache) when it fails.
    async fn watch_loop(self) {
        let mut next_generation = 1u64;
        loop {
            match self.kv.watch_all().await {
                Ok(mut watch) => {
                    let generation = next_generation;
                    next_generation += 1;
                    self.lock().generation = generation;
                    while let Some(change) = watch.next().await {
                        let Ok(change) = change else {
                            break;
                        };
                        self.keep(generation, &change.key, change.revision, Value::of(&change));
                    }
                    tracing::debug!("template watch ended; reading templates from JetStream until it is back");
                }
                Err(e) => tracing::debug!(error = %e, "template watch could not start; retrying"),
            }
            {
                let mut state = self.lock();
                state.generation = 0;
                state.entries.clear();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Template> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadBody(format!("stored template: {e}")))
}
