//! Keeping a JetStream message in hand while its work runs: JetStream hands a message to
//! another worker once its ack wait passes without an ack, so work that may take longer
//! (a push to many subscriptions, SMTP failover, a slow peer) tells JetStream it is still
//! going, and a job is never run twice because it was slow.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::AckKind;

/// How often, for an ack wait of `ack_wait`: three times per wait, so that one lost
/// progress ack does not let the message go.
pub fn interval(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// Runs `work`, sending a progress ack for `msg` every `every` until it is done.
pub async fn with_progress<F: Future>(msg: &async_nats::jetstream::Message, every: Duration, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}
