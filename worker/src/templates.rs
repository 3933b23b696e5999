//! Templates held in memory and kept current by a watch on their KV bucket, so that
//! planning a notification does not ask JetStream for a template that rarely changes.
//!
//! Only the watch fills the cache: it starts with the last value of every key and then
//! delivers every change, in order, from the stream's leader (an ordered consumer, which
//! restarts itself from where it was after a gap). A direct read may be answered by a
//! lagging replica, so a template the watch has not delivered yet is read directly and not
//! kept. When the watch fails, the cache empties and reads go to JetStream until a new watch
//! is live. A change reaches the cache as fast as JetStream delivers it (milliseconds): a
//! request planned in between uses the previous version, as if it had been planned a moment
//! earlier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use tokio::sync::watch;

use tidings_shared::error::{Error, Result};
use tidings_shared::template::{self, Template};

/// A template as the bucket holds it.
#[derive(Clone)]
enum Value {
    Template(Arc<Template>),
    /// Deleted.
    Absent,
    /// Stored but not a template (written around the API): reads report the error.
    Unreadable(String),
}

impl Value {
    fn of(entry: &kv::Entry) -> Value {
        match entry.operation {
            kv::Operation::Put => match template::decode_stored(&entry.value) {
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
            Value::Unreadable(e) => Err(Error::Stored(e)),
        }
    }
}

type Entries = Arc<Mutex<HashMap<String, Value>>>;

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
    // The map is only ever inserted into or cleared whole: a panic elsewhere cannot leave
    // it half-updated.
    entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A cache of the templates bucket, filled by its watch; cheap to clone. The watch stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct TemplateCache {
    kv: kv::Store,
    entries: Entries,
    /// Dropped with the last clone, which ends the watch task.
    _alive: Arc<watch::Sender<()>>,
}

impl TemplateCache {
    /// Starts watching `kv` and returns the cache.
    pub fn spawn(kv: kv::Store) -> Self {
        let (alive, dropped) = watch::channel(());
        let entries = Entries::default();
        tokio::spawn(crate::kv_mirror::follow(
            kv.clone(),
            Follower(entries.clone()),
            "template",
            dropped,
        ));
        TemplateCache {
            kv,
            entries,
            _alive: Arc::new(alive),
        }
    }

    /// The template `name`: from memory once the watch has delivered it, else read directly.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Template>>> {
        if let Some(value) = lock(&self.entries).get(name) {
            return value.clone().into_result();
        }
        match self.kv.entry(name).await.map_err(Error::nats)? {
            None => Ok(None),
            Some(entry) => Value::of(&entry).into_result(),
        }
    }
}

/// The cache follows the bucket: each entry as it is.
struct Follower(Entries);

impl crate::kv_mirror::Mirror for Follower {
    fn apply(&self, entry: &kv::Entry) {
        lock(&self.0).insert(entry.key.clone(), Value::of(entry));
    }

    fn reset(&self) {
        lock(&self.0).clear();
    }
}
