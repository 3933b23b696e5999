//! Working through `TIDINGS_DELIVERIES`: each job waits out its quiet hours, is attempted,
//! retried with backoff on transient failures and dead-lettered after the last attempt.
//! A job's status is read before each attempt, so a job redelivered after a worker died
//! between sending and acknowledging is not sent again once its `sent` was recorded.

use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use tidings_shared::notify::{DeliveryChannel, DeliveryJob, DeliveryStatus, DigestRef, NotificationStatus};
use tidings_shared::prefs::Preferences;
use tidings_shared::store::Store;

use tracing::Instrument as _;

use crate::Ctx;
use crate::error::Result;
use crate::jobs::dead_letter;
use crate::provider::Outcome;
use crate::targets::missing;

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
            let work = process(ctx, &job, delivered).instrument(span.clone());
            let every = crate::progress::interval(ctx.delivery_ack_wait);
            let disposition = crate::progress::with_progress(&msg, every, work).await;
            settle(ctx, &msg, &job, disposition, delivered).instrument(span).await
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
}

impl ChannelUpdate<'_> {
    fn new(status: DeliveryStatus, attempts: u32, error: Option<String>) -> Self {
        ChannelUpdate {
            status,
            attempts,
            error,
            via: None,
            digest: None,
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
            c.until = None;
            c.updated_at = Store::now();
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

async fn process(ctx: &Ctx, job: &DeliveryJob, delivered: u32) -> Result<Disposition> {
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
        return digest(ctx, job, d, delivered.saturating_sub(1).max(1)).await;
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
    let attempts = previous.map_or(0, |p| p.attempts) + 1;
    let (outcome, via) = send(ctx, job).await?;
    match outcome {
        Outcome::Delivered => {
            let update = ChannelUpdate {
                via,
                ..ChannelUpdate::new(DeliveryStatus::Sent, attempts, None)
            };
            set_channel(ctx, job, current.take(), update).await?;
            Ok(Disposition::Ack)
        }
        Outcome::Fail(error) => {
            tracing::warn!(%error, attempts, "delivery failed");
            let update = ChannelUpdate::new(DeliveryStatus::Failed, attempts, Some(error));
            set_channel(ctx, job, current.take(), update).await?;
            Ok(Disposition::Ack)
        }
        Outcome::Retry { error, retry_after } => {
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

/// One attempt on the job's channel, to the addresses the user has now (they may have
/// changed since the job was queued). Returns the outcome and the relay that took it.
async fn send(ctx: &Ctx, job: &DeliveryJob) -> Result<(Outcome, Option<String>)> {
    let started = Instant::now();
    // Addresses are read now, not when the job was queued: the user may have changed them.
    let prefs = ctx.store.preferences(&job.user).await?;
    let (outcome, via) = if let Some(lack) = missing(&prefs, job.channel) {
        (Outcome::Fail(lack.to_owned()), None)
    } else {
        match (job.channel, prefs) {
            (
                DeliveryChannel::Webhook,
                Preferences {
                    webhook_url: Some(url), ..
                },
            ) => (ctx.webhook.send(&url, job).await, None),
            (DeliveryChannel::Email, Preferences { email: Some(to), .. }) => ctx.mailer.send(&to, job).await,
            (DeliveryChannel::Sms, Preferences { phone: Some(to), .. }) => match &ctx.sms {
                None => (
                    Outcome::Fail(
                        "SMS is not configured (TIDINGS_SMS_API_URL, _ACCOUNT_SID, _AUTH_TOKEN, _FROM)".into(),
                    ),
                    None,
                ),
                Some(sms) => (sms.send(&to, &job.content.body).await, None),
            },
            (DeliveryChannel::Push, prefs) => (push(ctx, job, prefs.push_subscriptions).await?, None),
            // In-app (every other channel's target was checked above).
            _ => (Outcome::Fail("in-app is not delivered through jobs".into()), None),
        }
    };
    ctx.metrics
        .delivery_duration
        .with_label_values(&[job.channel.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok((outcome, via))
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
async fn digest(ctx: &Ctx, job: &DeliveryJob, d: &DigestRef, attempts: u32) -> Result<Disposition> {
    if let Err(e) = ctx.batches.delete(&d.key).await {
        tracing::debug!(error = %e, "closing the batch failed (already closed)");
    }
    let (items, last) = crate::batch::items(ctx, &d.subject).await?;
    if items.is_empty() {
        return Ok(Disposition::Ack);
    }
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
            send(ctx, &concrete).await?
        }
    };
    let (status, error, done) = match outcome {
        Outcome::Delivered => (DeliveryStatus::Sent, None, true),
        Outcome::Fail(e) => (DeliveryStatus::Failed, Some(e), true),
        Outcome::Retry { error, .. } if attempts >= ctx.max_attempts => {
            dead_letter(ctx, job, &error, attempts).await?;
            (
                DeliveryStatus::Failed,
                Some(format!("dead-lettered after {attempts} attempts: {error}")),
                true,
            )
        }
        Outcome::Retry { error, retry_after } => {
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

/// Push requests in flight at once for one job.
const PUSH_CONCURRENCY: usize = 8;

/// Sends to every subscription (there is at least one: see [`missing`]), at most
/// `push_max_subscriptions` of them (the newest: a user's list written around the API
/// could be any length), several at once; those the push service reports gone are removed
/// from the preferences. Delivered if any subscription took it (the others are not retried,
/// so no device gets it twice); else retried if any failure was transient.
async fn push(ctx: &Ctx, job: &DeliveryJob, mut subs: Vec<tidings_shared::prefs::PushSubscription>) -> Result<Outcome> {
    if subs.len() > ctx.push_max_subscriptions {
        tracing::warn!(
            have = subs.len(),
            cap = ctx.push_max_subscriptions,
            "more push subscriptions than TIDINGS_PUSH_MAX_SUBSCRIPTIONS; sending to the newest"
        );
        subs.drain(..subs.len() - ctx.push_max_subscriptions);
    }
    let permits = tokio::sync::Semaphore::new(PUSH_CONCURRENCY);
    let sends = subs.iter().map(|sub| {
        let permits = &permits;
        async move {
            let _permit = permits.acquire().await;
            (sub, ctx.push.send(sub, job).await)
        }
    });
    let results = futures::future::join_all(sends).await;
    let mut gone = Vec::new();
    let mut delivered = false;
    let mut retry: Option<Outcome> = None;
    let mut errors = Vec::new();
    for (sub, result) in results {
        match result {
            crate::push::PushResult::Gone => gone.push(sub.endpoint.clone()),
            crate::push::PushResult::Outcome(Outcome::Delivered) => delivered = true,
            crate::push::PushResult::Outcome(o @ Outcome::Retry { .. }) => retry = Some(o),
            crate::push::PushResult::Outcome(Outcome::Fail(e)) => errors.push(e),
        }
    }
    if !gone.is_empty() {
        let mut prefs = ctx.store.preferences(&job.user).await?;
        prefs.push_subscriptions.retain(|s| !gone.contains(&s.endpoint));
        ctx.store.put_preferences(&job.user, &prefs).await?;
        tracing::info!(
            removed = gone.len(),
            "push subscriptions gone; removed from preferences"
        );
    }
    Ok(if delivered {
        Outcome::Delivered
    } else if let Some(r) = retry {
        r
    } else if errors.is_empty() {
        Outcome::Fail("every push subscription is gone (404/410)".into())
    } else {
        Outcome::Fail(errors.join("; "))
    })
}
