//! Preferences held in memory, kept current by a watch on their KV bucket, behind a read
//! barrier: a preferences write acknowledged before a read began is always seen by it.
//!
//! Planning a notification and every delivery attempt read the user's preferences; asking
//! JetStream each time was one KV round trip per notification on each side. The watch (an
//! ordered consumer from the stream's leader: the last value of every key, then every change
//! in order) fills a mirror of the bucket. A read is answered from the mirror only once the
//! watch has applied every message the bucket's stream held when the read began: the reader
//! asks the stream for its last sequence and waits until the watch has delivered it. Readers
//! share these questions: a reader joins the next question asked after it arrived (never one
//! already on its way, whose answer may predate its arrival), so a burst of reads costs one
//! `STREAM.INFO` per round trip instead of one KV read each.
//!
//! Staleness bound: none for acknowledged writes. A change made while a read is under way
//! may or may not be seen by it, as with a direct read. When the watch is down, or has not
//! caught up within [`CATCH_UP`] (a bucket too large to load yet, or a stream whose last
//! message was removed by hand), or the question fails, the read goes to JetStream directly.
//!
//! Memory: the mirror holds every stored user's preferences (a few hundred bytes each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;

use tidings_shared::error::{Error, Result};
use tidings_shared::prefs::Preferences;
use tidings_shared::store::Store;

/// How long a read waits for the watch to catch up before asking JetStream itself.
pub const CATCH_UP: Duration = Duration::from_secs(2);

/// A stored value as the bucket holds it.
#[derive(Clone)]
enum Value {
    Prefs(Arc<Preferences>),
    /// Stored but not preferences (written around the API): reads report the error, as a
    /// direct read would.
    Unreadable(String),
}

/// How far the watch has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    /// A watch is running and the mirror holds what it delivered.
    live: bool,
    /// The stream sequence of the last message applied (0: none yet).
    seq: u64,
}

/// The questions "what is the stream's last sequence?": how many were asked, whether one is
/// on its way, and whether a reader waits for the next.
#[derive(Default)]
struct Rounds {
    started: u64,
    running: bool,
    wanted: bool,
}

struct Inner {
    kv: kv::Store,
    store: Store,
    mirror: Mutex<HashMap<String, Value>>,
    applied: watch::Sender<Applied>,
    rounds: Mutex<Rounds>,
    /// The last round answered: its number and the stream's last sequence (`None`: the
    /// question failed).
    answered: watch::Sender<(u64, Option<u64>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data whole (single inserts, removes, counters).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The preferences cache; cheap to clone. The watch stops when the last clone is dropped.
#[derive(Clone)]
pub struct PrefsCache {
    inner: Arc<Inner>,
    _alive: Arc<watch::Sender<()>>,
}

impl PrefsCache {
    /// Starts watching the preferences bucket `kv` (read directly through `store` when the
    /// mirror cannot answer).
    pub fn spawn(store: Store, kv: kv::Store) -> Self {
        let (alive, dropped) = watch::channel(());
        let inner = Arc::new(Inner {
            kv,
            store,
            mirror: Mutex::default(),
            applied: watch::Sender::new(Applied { live: false, seq: 0 }),
            rounds: Mutex::default(),
            answered: watch::Sender::new((0, None)),
        });
        tokio::spawn(crate::kv_mirror::follow(
            inner.kv.clone(),
            Follower(inner.clone()),
            "preferences",
            dropped,
        ));
        PrefsCache {
            inner,
            _alive: Arc::new(alive),
        }
    }

    /// `user`'s preferences (defaults when none are stored), as of no earlier than this call.
    pub async fn get(&self, user: &str) -> Result<Preferences> {
        if self.caught_up().await {
            let value = lock(&self.inner.mirror).get(user).cloned();
            return match value {
                None => Ok(Preferences::default()),
                Some(Value::Prefs(p)) => Ok((*p).clone()),
                Some(Value::Unreadable(e)) => Err(Error::Stored(e)),
            };
        }
        self.inner.store.preferences(user).await
    }

    /// Whether the mirror now holds everything the bucket held when this call began.
    async fn caught_up(&self) -> bool {
        if !self.inner.applied.borrow().live {
            return false;
        }
        let Some(target) = self.last_sequence().await else {
            return false;
        };
        let mut applied = self.inner.applied.subscribe();
        let waited = tokio::time::timeout(CATCH_UP, applied.wait_for(|a| !a.live || a.seq >= target)).await;
        matches!(waited, Ok(Ok(a)) if a.live)
    }

    /// The stream's last sequence, from a question asked after this call began.
    async fn last_sequence(&self) -> Option<u64> {
        let mine = {
            let mut rounds = lock(&self.inner.rounds);
            if rounds.running {
                rounds.wanted = true;
                rounds.started + 1
            } else {
                rounds.running = true;
                rounds.started += 1;
                tokio::spawn(ask(self.inner.clone(), rounds.started));
                rounds.started
            }
        };
        let mut answered = self.inner.answered.subscribe();
        // Sent before the task ends, and the task holds the sender: this cannot close.
        let answer = answered.wait_for(|(round, _)| *round >= mine).await.ok()?;
        answer.1
    }
}

/// Asks the stream for its last sequence (round `round`), publishes the answer, and asks
/// again while readers wait for a round that has not started.
async fn ask(inner: Arc<Inner>, mut round: u64) {
    loop {
        let last = match inner.kv.stream.get_info().await {
            // An empty stream (purged by hand) has nothing to wait for.
            Ok(info) if info.state.messages == 0 => Some(0),
            Ok(info) => Some(info.state.last_sequence),
            Err(e) => {
                tracing::debug!(error = %e, "preferences stream info failed; reading directly");
                None
            }
        };
        inner.answered.send_modify(|a| *a = (round, last));
        let mut rounds = lock(&inner.rounds);
        if !rounds.wanted {
            rounds.running = false;
            return;
        }
        rounds.wanted = false;
        rounds.started += 1;
        round = rounds.started;
    }
}

/// The mirror follows the bucket; readers wait on `applied` (see [`PrefsCache`]).
struct Follower(Arc<Inner>);

impl crate::kv_mirror::Mirror for Follower {
    fn live(&self) {
        self.0.applied.send_replace(Applied { live: true, seq: 0 });
    }

    fn apply(&self, entry: &kv::Entry) {
        apply(&self.0, entry);
    }

    fn reset(&self) {
        self.0.applied.send_replace(Applied { live: false, seq: 0 });
        lock(&self.0.mirror).clear();
    }
}

/// Applies one entry to the mirror, then moves the applied sequence on (in that order, so a
/// reader released by the sequence finds the entry).
fn apply(inner: &Inner, entry: &kv::Entry) {
    {
        let mut mirror = lock(&inner.mirror);
        match entry.operation {
            kv::Operation::Put => {
                let value = match serde_json::from_slice::<Preferences>(&entry.value) {
                    Ok(p) => Value::Prefs(Arc::new(p)),
                    Err(e) => Value::Unreadable(format!("preferences: {e}")),
                };
                mirror.insert(entry.key.clone(), value);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                mirror.remove(&entry.key);
            }
        }
    }
    inner.applied.send_modify(|a| a.seq = a.seq.max(entry.revision));
}
