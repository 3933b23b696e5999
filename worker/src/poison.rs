//! Messages that fail the same way every time (stored preferences or a template that no
//! longer parse, a job body that cannot be decoded): they are retried a few times with
//! backoff, in case what is wrong gets fixed (a user writes valid preferences again), then
//! dead-lettered with the reason instead of coming back every second for ever. Failures of
//! NATS itself are retried without end, with backoff: the work is fine, the way to do it is
//! not there yet (and a dead letter could not be written either).

use std::time::Duration;

use async_nats::HeaderMap;
use tidings_shared::Error as SharedError;
use tidings_shared::nats::publish_acked;
use tidings_shared::notify::names::DEAD_PREFIX;
use tidings_shared::notify::{DeliveryChannel, NotificationStatus};
use tidings_shared::store::{Created, Store};

use crate::Ctx;
use crate::error::{Error, Result};

/// Longest wait before NATS is tried again after a transient failure.
const TRANSIENT_MAX_DELAY: Duration = Duration::from_secs(30);

/// What to do with a message whose handling failed with an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it out again after this long.
    RetryIn(Duration),
    /// Give up: dead-letter it with the reason.
    DeadLetter,
}

/// Whether `e` may go away by itself (NATS unreachable, a write that raced) rather than
/// being a property of the message or of what it points at.
pub fn is_transient(e: &Error) -> bool {
    match e {
        Error::Shared(s) => matches!(
            s,
            SharedError::Nats(_) | SharedError::Timeout(_) | SharedError::Conflict(_)
        ),
        Error::Io(_) => true,
        Error::Metrics(_) => false,
    }
}

/// What to do after the `delivered`-th delivery of a message failed with `e`: transient
/// failures back off (up to [`TRANSIENT_MAX_DELAY`]) and never give up; the others back
/// off until `TIDINGS_RETRY_MAX_ATTEMPTS` deliveries, then are dead-lettered.
pub fn verdict(ctx: &Ctx, e: &Error, delivered: u32) -> Verdict {
    if is_transient(e) {
        let delay = crate::retry::backoff(delivered, ctx.retry_base).min(TRANSIENT_MAX_DELAY);
        return Verdict::RetryIn(delay.max(Duration::from_millis(100)));
    }
    if delivered >= ctx.max_attempts {
        Verdict::DeadLetter
    } else {
        Verdict::RetryIn(crate::retry::backoff(delivered, ctx.retry_base))
    }
}

/// Copies a message given up on to `tidings.dead.<kind>` with the reason (the body as JSON
/// when it is JSON, else as text), and counts it.
pub async fn dead_letter_raw(
    ctx: &Ctx,
    kind: &str,
    msg: &async_nats::jetstream::Message,
    reason: &str,
    deliveries: u32,
) -> Result<()> {
    let body = serde_json::from_slice::<serde_json::Value>(&msg.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&msg.payload).into_owned()));
    let letter = serde_json::json!({
        "subject": msg.subject.as_str(),
        "body": body,
        "error": reason,
        "deliveries": deliveries,
        "failed_at": Store::now(),
    });
    publish_acked(
        &ctx.js,
        format!("{DEAD_PREFIX}.{kind}"),
        HeaderMap::new(),
        letter.to_string().into(),
    )
    .await
    .map_err(SharedError::nats)?;
    ctx.metrics.dead_letters.with_label_values(&[kind]).inc();
    tracing::warn!(%reason, deliveries, kind, "message dead-lettered");
    Ok(())
}

/// Records notification `id` (of `user`) as failed with `reason`: a new status, or the
/// reason added to one a gateway accepted and nobody planned. A planned one is left alone
/// (its channels carry their own outcome).
pub async fn fail_request(ctx: &Ctx, id: &str, user: &str, seq: Option<u64>, reason: &str) -> Result<()> {
    let mut doc = NotificationStatus {
        id: id.to_owned(),
        user: user.to_owned(),
        status: String::new(),
        created_at: Store::now(),
        channels: Default::default(),
        error: Some(reason.to_owned()),
        planned: true,
        request_seq: seq,
    };
    doc.summarize();
    if let Created::Exists(existing, at) = ctx.store.create_status(&doc).await? {
        ctx.store
            .update_status_from(id, Some((existing, at)), |current| {
                if current.planned || current.error.is_some() {
                    return false;
                }
                current.error = Some(reason.to_owned());
                current.planned = true;
                current.request_seq = seq;
                true
            })
            .await?;
    }
    Ok(())
}

/// The channel and notification id a delivery job's subject names
/// (`tidings.delivery.<channel>.<id>`), for a job whose body cannot be read.
pub fn job_of_subject(subject: &str) -> Option<(DeliveryChannel, String)> {
    let rest = subject.strip_prefix(tidings_shared::notify::names::DELIVERY_PREFIX)?;
    let (channel, id) = rest.strip_prefix('.')?.split_once('.')?;
    let channel = DeliveryChannel::ALL.into_iter().find(|c| c.as_str() == channel)?;
    tidings_shared::channel::is_valid_id(id).then(|| (channel, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nats_failures_are_transient() {
        assert!(is_transient(&Error::Shared(SharedError::Timeout("x"))));
        assert!(is_transient(&Error::Shared(SharedError::Conflict("x".into()))));
        assert!(!is_transient(&Error::Shared(SharedError::Stored("preferences".into()))));
        assert!(!is_transient(&Error::Shared(SharedError::Template("x".into()))));
    }

    #[test]
    fn job_subjects_name_channel_and_id() {
        assert_eq!(
            job_of_subject("tidings.delivery.webhook.n1"),
            Some((DeliveryChannel::Webhook, "n1".to_owned()))
        );
        assert_eq!(job_of_subject("tidings.delivery.webhook"), None);
        assert_eq!(job_of_subject("tidings.delivery.fax.n1"), None);
    }
}
