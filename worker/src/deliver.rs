//! Working through `TIDINGS_DELIVERIES`: each job waits out its quiet hours, is attempted,
//! retried with backoff on transient failures and dead-lettered after the last attempt.
//! A job's status is read before each attempt, so a job redelivered after a worker died
//! between sending and acknowledging is not sent again once its `sent` was recorded.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use tidings_shared::notify::{DeliveryChannel, DeliveryJob, DeliveryStatus, DigestRef, NotificationStatus};
use tidings_shared::store::Store;

use tracing::Instrument as _;

use crate::Ctx;
use crate::attempt::Attempt;
use crate::error::Result;
use crate::jobs::dead_letter;
use crate::provider::Outcome;

/// What to do with the job's message.
enum Disposition {
    Ack,
    RetryIn(Duration),
}

/// Handles one delivery job message.
pub async fn handle(ctx: &Ctx, msg: async_nats::jetstream::Message) {
    let delivered = msg
        .info()
        .map(|i| i.delivered.clamp(1, i64::from(u32::MAX)) as u32)
        .unwrap_or(1);
    let acked = match serde_json::from_slice::<DeliveryJob>(&msg.payload) {
        Err(e) => match unreadable(ctx, &msg, &format!("unreadable delivery job: {e}"), delivered).await {
            Ok(()) => msg.ack().await,
            Err(e) => retry_later(&msg, &e).await,
        },
        Ok(job) => {
            // The ack timer starts again now: time spent queued in this worker does not count.
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress ack failed");
            }
            let span = tracing::info_span!("delivery", id = %job.id, channel = job.channel.as_str());
            tidings_shared::telemetry::follow_nats(&span, msg.headers.as_ref());
            let mut deferrals = 0;
            let work = process(ctx, &job, delivered, &mut deferrals).instrument(span.clone());
            let every = crate::progress::interval(ctx.delivery_ack_wait);
            let disposition = crate::progress::with_progress(&msg, every, work).await;
            // Hand-outs that only found the target's breaker open are not failures of the
            // job: they do not bring it closer to a dead letter.
            let counted = delivered.saturating_sub(deferrals).max(1);
            settle(ctx, &msg, &job, disposition, counted).instrument(span).await
        }
    };
    if let Err(e) = acked {
        tracing::warn!(error = %e, "acknowledging a delivery job failed");
    }
}

/// Naks `msg` for a second, after `e` kept it from being settled.
async fn retry_later(
    msg: &async_nats::jetstream::Message,
    e: &crate::Error,
) -> std::result::Result<(), async_nats::Error> {
    tracing::warn!(error = %e, "settling a delivery job failed; retrying");
    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await
}

/// Acks, naks or (after a failure past its deliveries) dead-letters the job's message.
async fn settle(
    ctx: &Ctx,
    msg: &async_nats::jetstream::Message,
    job: &DeliveryJob,
    disposition: Result<Disposition>,
    delivered: u32,
) -> std::result::Result<(), async_nats::Error> {
    let e = match disposition {
        Ok(Disposition::Ack) => return msg.ack().await,
        Ok(Disposition::RetryIn(d)) => return msg.ack_with(AckKind::Nak(Some(d))).await,
        Err(e) => e,
    };
    match crate::poison::verdict(ctx, &e, delivered) {
        crate::poison::Verdict::RetryIn(d) => {
            tracing::warn!(error = %e, delivered, ?d, "delivery step failed; retrying");
            msg.ack_with(AckKind::Nak(Some(d))).await
        }
        crate::poison::Verdict::DeadLetter => {
            let buried = async {
                dead_letter(ctx, job, &e.to_string(), delivered).await?;
                let reason = format!("dead-lettered after {delivered} deliveries: {e}");
                let update = ChannelUpdate::new(DeliveryStatus::Failed, delivered, Some(reason));
                set_channel(ctx, job, None, update).await
            };
            match buried.await {
                Ok(()) => msg.ack().await,
                Err(e) => retry_later(msg, &e).await,
            }
        }
    }
}

/// Dead-letters a job whose body cannot be decoded (the same bytes never will be) and, when
/// its subject names the notification, fails that channel with the reason.
async fn unreadable(ctx: &Ctx, msg: &async_nats::jetstream::Message, reason: &str, delivered: u32) -> Result<()> {
    let named = crate::poison::job_of_subject(msg.subject.as_str());
    let kind = named.as_ref().map_or("unknown", |(c, _)| c.as_str());
    crate::poison::dead_letter_raw(ctx, kind, msg, reason, delivered).await?;
    if let Some((channel, id)) = named {
        ctx.store
            .update_status(&id, |doc| match doc.channels.get_mut(&channel) {
                Some(c)
                    if !matches!(
                        c.status,
                        DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Read
                    ) =>
                {
                    c.status = DeliveryStatus::Failed;
                    c.error = Some(reason.to_owned());
                    c.updated_at = Store::now();
                    true
                }
                _ => false,
            })
            .await?;
    }
    Ok(())
}

/// A channel's new state in its notification's status.
struct ChannelUpdate<'a> {
    status: DeliveryStatus,
    attempts: u32,
    error: Option<String>,
    /// Through which provider it went, when sent.
    via: Option<String>,
    /// The digest it went out in, for a batched item.
    digest: Option<&'a str>,
    /// Until when it is deferred (RFC 3339), for `deferred`.
    until: Option<String>,
    /// This update records one more deferral by an open breaker.
    deferral: bool,
}

impl ChannelUpdate<'_> {
    fn new(status: DeliveryStatus, attempts: u32, error: Option<String>) -> Self {
        ChannelUpdate {
            status,
            attempts,
            error,
            via: None,
            digest: None,
            until: None,
            deferral: false,
        }
    }

    /// Deferred by an open breaker until `until_ms`, attempts unchanged.
    fn deferred(attempts: u32, until_ms: i64) -> Self {
        let until = jiff::Timestamp::from_millisecond(until_ms)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .ok();
        ChannelUpdate {
            until,
            deferral: true,
            ..ChannelUpdate::new(
                DeliveryStatus::Deferred,
                attempts,
                Some(crate::breaker::TARGET_UNAVAILABLE.to_owned()),
            )
        }
    }
}

/// Records `update` for the job's channel (from the status version `known`, if read).
async fn set_channel(
    ctx: &Ctx,
    job: &DeliveryJob,
    known: Option<(NotificationStatus, u64)>,
    update: ChannelUpdate<'_>,
) -> Result<()> {
    let ChannelUpdate {
        status,
        attempts,
        error,
        via,
        digest,
        until,
        deferral,
    } = update;
    ctx.store
        .update_status_from(&job.id, known, |doc| {
            let c = doc
                .channels
                .entry(job.channel)
                .or_insert_with(|| crate::jobs::channel_state(status, None, None));
            c.status = status;
            c.attempts = attempts;
            c.error = error.clone();
            c.until = until.clone();
            c.updated_at = Store::now();
            if deferral {
                c.deferrals = c.deferrals.saturating_add(1);
            }
            if via.is_some() {
                c.via = via.clone();
            }
            if let Some(digest) = digest {
                c.digest = Some(digest.to_owned());
            }
            true
        })
        .await?;
    if matches!(status, DeliveryStatus::Sent | DeliveryStatus::Failed) {
        ctx.metrics
            .notifications
            .with_label_values(&[job.channel.as_str(), status.as_str()])
            .inc();
    }
    Ok(())
}

/// Waits out quiet hours, attempts the job (or defers it while its target's breaker is
/// open) and records the outcome. `deferrals` gets the job's count of deferrals by open
/// breakers, as recorded (its hand-outs that were not attempts).
async fn process(ctx: &Ctx, job: &DeliveryJob, delivered: u32, deferrals: &mut u32) -> Result<Disposition> {
    if let Some(at) = job.not_before_ms {
        let wait = at - jiff::Timestamp::now().as_millisecond();
        if wait > 0 {
            // Quiet hours, or a batch window: JetStream keeps the job and hands it out again
            // when it is due.
            return Ok(Disposition::RetryIn(Duration::from_millis(wait as u64)));
        }
    }
    if let Some(d) = &job.digest {
        // The first delivery of a flush job only waited for the window to close.
        return digest(ctx, job, d, delivered, deferrals).await;
    }
    // Kept for the status update after the attempt (saves reading it again).
    let mut current = ctx.store.status(&job.id).await?;
    let previous = current
        .as_ref()
        .and_then(|(doc, _)| doc.channels.get(&job.channel).cloned());
    if let Some(p) = &previous
        && matches!(
            p.status,
            DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Read | DeliveryStatus::Failed
        )
    {
        return Ok(Disposition::Ack);
    }
    *deferrals = previous.as_ref().map_or(0, |p| p.deferrals);
    let attempts = previous.map_or(0, |p| p.attempts) + 1;
    let (outcome, via) = match crate::attempt::send(ctx, job).await? {
        Attempt::Tried(outcome, via) => (outcome, via),
        Attempt::Held(until_ms) => {
            let update = ChannelUpdate::deferred(attempts - 1, until_ms);
            set_channel(ctx, job, current.take(), update).await?;
            *deferrals += 1;
            return Ok(defer(ctx, job, until_ms));
        }
    };
    match outcome {
        Outcome::Delivered => {
            let update = ChannelUpdate {
                via,
                ..ChannelUpdate::new(DeliveryStatus::Sent, attempts, None)
            };
            set_channel(ctx, job, current.take(), update).await?;
            Ok(Disposition::Ack)
        }
        Outcome::Fail(error) | Outcome::Refused(error) => {
            tracing::warn!(%error, attempts, "delivery failed");
            let update = ChannelUpdate::new(DeliveryStatus::Failed, attempts, Some(error));
            set_channel(ctx, job, current.take(), update).await?;
            Ok(Disposition::Ack)
        }
        Outcome::Retry { error, retry_after, .. } => {
            if attempts >= ctx.max_attempts {
                dead_letter(ctx, job, &error, attempts).await?;
                let error = format!("dead-lettered after {attempts} attempts: {error}");
                let update = ChannelUpdate::new(DeliveryStatus::Failed, attempts, Some(error));
                set_channel(ctx, job, current.take(), update).await?;
                return Ok(Disposition::Ack);
            }
            ctx.metrics.retries.with_label_values(&[job.channel.as_str()]).inc();
            let delay = retry_after.unwrap_or_else(|| crate::retry::backoff(attempts, ctx.retry_base));
            tracing::info!(%error, attempts, ?delay, "delivery will be retried");
            let update = ChannelUpdate::new(DeliveryStatus::Pending, attempts, Some(error));
            set_channel(ctx, job, current.take(), update).await?;
            Ok(Disposition::RetryIn(delay))
        }
    }
}

/// Counts a deferral by an open breaker and hands the job back until `until_ms`: the job
/// stays in JetStream (so a deferral survives restarts) and no attempt is counted.
fn defer(ctx: &Ctx, job: &DeliveryJob, until_ms: i64) -> Disposition {
    ctx.metrics
        .breaker_deferrals
        .with_label_values(&[job.channel.as_str()])
        .inc();
    let wait = (until_ms - jiff::Timestamp::now().as_millisecond()).max(0);
    tracing::info!(wait_ms = wait, "target unavailable: delivery deferred");
    Disposition::RetryIn(Duration::from_millis(wait as u64))
}

/// The deferrals recorded on channel `channel` of notification `id` (a digest's, on its
/// first item).
async fn recorded_deferrals(ctx: &Ctx, id: &str, channel: DeliveryChannel) -> Result<u32> {
    Ok(match ctx.store.status(id).await? {
        Some((doc, _)) => doc.channels.get(&channel).map_or(0, |c| c.deferrals),
        None => 0,
    })
}

/// Records a digest's deferral by an open breaker on each of its items (where the digest's
/// count of deferrals is read back).
async fn defer_items(
    ctx: &Ctx,
    job: &DeliveryJob,
    items: &[tidings_shared::notify::BatchItem],
    attempts: u32,
    until_ms: i64,
) -> Result<()> {
    for item in items {
        let item_job = DeliveryJob {
            id: item.id.clone(),
            ..job.clone()
        };
        set_channel(ctx, &item_job, None, ChannelUpdate::deferred(attempts, until_ms)).await?;
    }
    Ok(())
}

/// A digest's webhook content when the template has no `webhook` part: the default JSON
/// body a single notification gets, with the items in `data` (a single notification's
/// default takes the in-app part, but that part is written for one item's data, and
/// in-app items are never sent as digests).
fn digest_webhook_default(count: usize) -> tidings_shared::notify::Rendered {
    tidings_shared::notify::Rendered {
        title: Some(format!("{count} notifications")),
        body: String::new(),
        html: None,
        url: None,
        fields: None,
    }
}

/// Sends a batch as one digest: closes the batch (later notifications open a new one),
/// renders the template over `items` and `count`, sends once, and records the outcome on
/// every notification in it.
///
/// Its attempts are the job's hand-outs but the first (which only waited for the window)
/// and those deferred by an open breaker (counted on its items' statuses).
async fn digest(
    ctx: &Ctx,
    job: &DeliveryJob,
    d: &DigestRef,
    delivered: u32,
    deferrals: &mut u32,
) -> Result<Disposition> {
    if let Err(e) = ctx.batches.delete(&d.key).await {
        tracing::debug!(error = %e, "closing the batch failed (already closed)");
    }
    let (items, last) = crate::batch::items(ctx, &d.subject).await?;
    let Some(first) = items.first() else {
        return Ok(Disposition::Ack);
    };
    *deferrals = recorded_deferrals(ctx, &first.id, job.channel).await?;
    let attempts = delivered.saturating_sub(1).saturating_sub(*deferrals).max(1);
    let data = serde_json::json!({
        "items": items.iter().map(|i| i.data.clone()).collect::<Vec<_>>(),
        "count": items.len(),
    });
    let rendered = match ctx.templates.get(&d.template).await? {
        None => Err(format!("unknown template {:?}", d.template)),
        Some(t) if job.channel == DeliveryChannel::Webhook && t.webhook.is_none() => {
            Ok(digest_webhook_default(items.len()))
        }
        Some(t) => ctx.renderer.render(t, job.channel, data.clone()).await,
    };
    let (outcome, via) = match rendered {
        Err(e) => (Outcome::Fail(e), None),
        Ok(content) => {
            let concrete = DeliveryJob {
                content,
                data,
                digest: None,
                ..job.clone()
            };
            match crate::attempt::send(ctx, &concrete).await? {
                Attempt::Tried(outcome, via) => (outcome, via),
                Attempt::Held(until_ms) => {
                    defer_items(ctx, job, &items, attempts - 1, until_ms).await?;
                    *deferrals += 1;
                    return Ok(defer(ctx, job, until_ms));
                }
            }
        }
    };
    let (status, error, done) = match outcome {
        Outcome::Delivered => (DeliveryStatus::Sent, None, true),
        Outcome::Fail(e) | Outcome::Refused(e) => (DeliveryStatus::Failed, Some(e), true),
        Outcome::Retry { error, .. } if attempts >= ctx.max_attempts => {
            dead_letter(ctx, job, &error, attempts).await?;
            (
                DeliveryStatus::Failed,
                Some(format!("dead-lettered after {attempts} attempts: {error}")),
                true,
            )
        }
        Outcome::Retry { error, retry_after, .. } => {
            ctx.metrics.retries.with_label_values(&[job.channel.as_str()]).inc();
            tracing::info!(%error, attempts, "digest will be retried");
            let delay = retry_after.unwrap_or_else(|| crate::retry::backoff(attempts, ctx.retry_base));
            return Ok(Disposition::RetryIn(delay));
        }
    };
    for item in &items {
        let item_job = DeliveryJob {
            id: item.id.clone(),
            ..job.clone()
        };
        let update = ChannelUpdate {
            via: via.clone(),
            digest: Some(&job.id),
            ..ChannelUpdate::new(status, attempts, error.clone())
        };
        set_channel(ctx, &item_job, None, update).await?;
    }
    if done {
        crate::batch::clear(ctx, &d.subject, last).await?;
        tracing::info!(digest = %job.id, items = items.len(), status = status.as_str(), "digest done");
    }
    Ok(Disposition::Ack)
}
