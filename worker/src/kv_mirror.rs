//! Following a KV bucket into memory (templates, preferences): every value and change while a
//! watch is live; when it fails, the mirror is emptied (readers go to JetStream meanwhile) and
//! a new watch starts a second later. One loop for every mirror, each saying what to do with
//! an entry.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio::sync::watch;

/// What a mirror does as its bucket is followed.
pub trait Mirror {
    /// A watch is live: entries follow, the existing values first.
    fn live(&self) {}
    /// One value or change of the bucket.
    fn apply(&self, entry: &kv::Entry);
    /// The watch ended: what the mirror holds may be stale.
    fn reset(&self);
}

/// Follows `kv` into `mirror` until `dropped` changes (every handle on the mirror is gone).
/// `what` names the bucket in the logs.
pub async fn follow(kv: kv::Store, mirror: impl Mirror, what: &str, mut dropped: watch::Receiver<()>) {
    loop {
        match kv.watch_with_history(">").await {
            Ok(mut changes) => {
                mirror.live();
                loop {
                    tokio::select! {
                        change = changes.next() => match change {
                            Some(Ok(change)) => mirror.apply(&change),
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "{what} watch failed; reading from JetStream until it is back");
                                break;
                            }
                            None => break,
                        },
                        _ = dropped.changed() => return,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "{what} watch could not start; retrying"),
        }
        mirror.reset();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = dropped.changed() => return,
        }
    }
}
