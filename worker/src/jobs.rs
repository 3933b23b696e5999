//! Delivery jobs in JetStream: queueing one (once), dead-lettering one given up on, and the
//! state a channel starts in. Used by intake (plans), batch (digests) and deliver (retries).

use async_nats::HeaderMap;
use tidings_shared::Error as SharedError;
use tidings_shared::nats::publish_acked;
use tidings_shared::notify::names::{DEAD_PREFIX, DELIVERY_PREFIX};
use tidings_shared::notify::{ChannelState, DeliveryJob, DeliveryStatus};
use tidings_shared::store::Store;

use crate::Ctx;
use crate::error::Result;

/// Queues an external delivery, once: its subject names the notification, and the stream
/// keeps one message per subject, refusing a copy while the job is there (see
/// `streams::delivery_stream_config`); `Nats-Msg-Id` also drops a copy within 10 minutes.
pub(crate) async fn queue(ctx: &Ctx, job: &DeliveryJob) -> Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{}.{}", job.id, job.channel.as_str()).as_str());
    // The delivery continues the notification's trace.
    tidings_shared::telemetry::inject_nats(&mut headers);
    let bytes = serde_json::to_vec(job).map_err(|e| SharedError::Encode(e.to_string()))?;
    let subject = format!("{DELIVERY_PREFIX}.{}.{}", job.channel.as_str(), job.id);
    match publish_acked(&ctx.js, subject, headers, bytes.into()).await {
        Ok(_) => Ok(()),
        Err(e) if already_queued(&e) => {
            tracing::debug!(channel = job.channel.as_str(), "delivery job already queued");
            Ok(())
        }
        Err(e) => Err(SharedError::nats(e).into()),
    }
}

/// Whether JetStream refused a job because a copy of it is still queued.
fn already_queued(e: &async_nats::jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    e.source()
        .is_some_and(|s| s.to_string().contains("maximum messages per subject exceeded"))
}

/// Copies a job given up on to `tidings.dead.<channel>` with its last error, where operators
/// can inspect it and replay it by publishing the `job` back to `tidings.delivery.<channel>`.
pub(crate) async fn dead_letter(ctx: &Ctx, job: &DeliveryJob, error: &str, attempts: u32) -> Result<()> {
    let letter = serde_json::json!({
        "job": job,
        "error": error,
        "attempts": attempts,
        "failed_at": Store::now(),
    });
    publish_acked(
        &ctx.js,
        format!("{DEAD_PREFIX}.{}", job.channel.as_str()),
        HeaderMap::new(),
        letter.to_string().into(),
    )
    .await
    .map_err(SharedError::nats)?;
    ctx.metrics
        .dead_letters
        .with_label_values(&[job.channel.as_str()])
        .inc();
    tracing::warn!(%error, attempts, "delivery dead-lettered");
    Ok(())
}

/// A channel's state as first recorded (no attempt yet).
pub(crate) fn channel_state(status: DeliveryStatus, error: Option<String>, until: Option<String>) -> ChannelState {
    ChannelState {
        status,
        attempts: 0,
        error,
        until,
        updated_at: Store::now(),
        via: None,
        digest: None,
        deferrals: 0,
    }
}
