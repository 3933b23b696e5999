//! Turning a notification request into per-channel outcomes: preferences (channel and
//! category switches), templates, quiet hours; in-app delivered at once, external channels
//! queued as delivery jobs. Every step is idempotent, so a request redelivered after a worker
//! died mid-way ends the same, with nothing sent twice.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use tidings_shared::Error as SharedError;
use tidings_shared::notify::names::DELIVERY_PREFIX;
use tidings_shared::notify::{
    ChannelState, DeliveryChannel, DeliveryJob, DeliveryStatus, NotificationRequest, NotificationStatus, Priority,
};
use tidings_shared::prefs::Preferences;
use tidings_shared::store::Store;
use tracing::Instrument as _;

use crate::Ctx;
use crate::error::Result;

/// Channels a request without `channels` goes to: in-app always (unless switched off), the
/// others where the user gave what they need.
pub fn default_channels(prefs: &Preferences) -> Vec<DeliveryChannel> {
    let mut out = vec![DeliveryChannel::InApp];
    if prefs.email.is_some() {
        out.push(DeliveryChannel::Email);
    }
    if prefs.phone.is_some() {
        out.push(DeliveryChannel::Sms);
    }
    if !prefs.push_subscriptions.is_empty() {
        out.push(DeliveryChannel::Push);
    }
    if prefs.webhook_url.is_some() {
        out.push(DeliveryChannel::Webhook);
    }
    out
}

/// What the user lacks for `channel`, if anything.
fn missing_target(prefs: &Preferences, channel: DeliveryChannel) -> Option<&'static str> {
    match channel {
        DeliveryChannel::InApp => None,
        DeliveryChannel::Email => prefs.email.is_none().then_some("no email address in preferences"),
        DeliveryChannel::Sms => prefs.phone.is_none().then_some("no phone number in preferences"),
        DeliveryChannel::Push => prefs
            .push_subscriptions
            .is_empty()
            .then_some("no push subscription in preferences"),
        DeliveryChannel::Webhook => prefs.webhook_url.is_none().then_some("no webhook_url in preferences"),
    }
}

pub(crate) fn state(status: DeliveryStatus, error: Option<String>, until: Option<String>) -> ChannelState {
    ChannelState {
        status,
        attempts: 0,
        error,
        until,
        updated_at: Store::now(),
        via: None,
        digest: None,
    }
}

/// Handles one message of `TIDINGS_NOTIFY`; acks it when done, naks it (to retry) when NATS
/// failed under it.
pub async fn handle(ctx: &Ctx, msg: async_nats::jetstream::Message) {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let result = process(ctx, &msg.payload, seq).await;
    let ack = match result {
        Ok(()) => msg.ack().await,
        Err(e) => {
            tracing::warn!(error = %e, seq, "notification request will be retried");
            msg.ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                .await
        }
    };
    if let Err(e) = ack {
        tracing::warn!(error = %e, seq, "acknowledging a notification request failed");
    }
}

/// The notification id a request gets: its own, or one derived from its stream sequence
/// (the same on every redelivery).
fn notification_id(req_id: Option<&str>, seq: u64) -> String {
    req_id.map(str::to_owned).unwrap_or_else(|| format!("n{seq}"))
}

async fn process(ctx: &Ctx, payload: &[u8], seq: u64) -> Result<()> {
    let parsed: std::result::Result<NotificationRequest, String> = serde_json::from_slice(payload)
        .map_err(|e| format!("invalid request: {e}"))
        .and_then(|r: NotificationRequest| r.validate().map(|()| r).map_err(|e| format!("invalid request: {e}")));
    let req = match parsed {
        Ok(r) => r,
        Err(reason) => {
            // Record the failure under whatever id and user can be read.
            let loose: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let id = loose["id"]
                .as_str()
                .filter(|s| tidings_shared::channel::is_valid_id(s))
                .map(str::to_owned)
                .unwrap_or_else(|| notification_id(None, seq));
            let user = loose["user"].as_str().unwrap_or_default().chars().take(128).collect();
            tracing::warn!(%id, %reason, "notification request refused");
            let mut doc = NotificationStatus {
                id,
                user,
                status: String::new(),
                created_at: Store::now(),
                channels: BTreeMap::new(),
                error: Some(reason),
                planned: true,
            };
            doc.summarize();
            ctx.store.create_status(&doc).await?;
            return Ok(());
        }
    };
    let id = notification_id(req.id.as_deref(), seq);
    let span = tracing::info_span!("notification", %id, user = %req.user, template = %req.template);
    plan(ctx, &req, &id).instrument(span).await
}

/// Plans and starts every channel of an accepted request.
async fn plan(ctx: &Ctx, req: &NotificationRequest, id: &str) -> Result<()> {
    let id = id.to_owned();

    // The status version last read or written, so each update below starts from it instead
    // of reading it back (a concurrent change makes the write fail, and it is read then).
    let mut known;
    let created_at = match ctx.store.status(&id).await? {
        // Already planned (a repeated id, or a redelivery after the work was done).
        Some((doc, _)) if doc.planned || doc.error.is_some() => return Ok(()),
        Some((doc, seq)) => {
            let created_at = doc.created_at.clone();
            known = Some((doc, seq));
            created_at
        }
        None => {
            let mut doc = NotificationStatus {
                id: id.clone(),
                user: req.user.clone(),
                status: String::new(),
                created_at: Store::now(),
                channels: BTreeMap::new(),
                error: None,
                planned: false,
            };
            doc.summarize();
            let created_at = doc.created_at.clone();
            known = ctx.store.create_status(&doc).await?.map(|seq| (doc, seq));
            created_at
        }
    };

    let Some(template) = ctx.store.template(&req.template).await? else {
        fail_all(ctx, &id, format!("unknown template {:?}", req.template)).await?;
        return Ok(());
    };
    let prefs = ctx.store.preferences(&req.user).await?;
    let channels = req.channels.clone().unwrap_or_else(|| default_channels(&prefs));
    let now = jiff::Timestamp::now();
    let quiet_until = if req.priority == Priority::Critical {
        None
    } else {
        prefs.quiet_until(now)
    };

    let mut plan: BTreeMap<DeliveryChannel, ChannelState> = BTreeMap::new();
    for channel in channels {
        if plan.contains_key(&channel) {
            continue;
        }
        // Quiet hours hold email, SMS and push; in-app and webhooks are never deferred.
        let deferrable = matches!(
            channel,
            DeliveryChannel::Email | DeliveryChannel::Sms | DeliveryChannel::Push
        );
        let until = quiet_until.filter(|_| deferrable);
        let outcome = if !prefs.allows(channel, req.category.as_deref()) {
            state(DeliveryStatus::Suppressed, None, None)
        } else if let Some(missing) = missing_target(&prefs, channel) {
            state(DeliveryStatus::Failed, Some(missing.to_owned()), None)
        } else if let (Some(batch_key), true, false) = (
            &req.batch_key,
            matches!(req.priority, Priority::Low | Priority::Normal),
            channel == DeliveryChannel::InApp,
        ) {
            // Rendered later, once, over the whole batch.
            crate::batch::add(ctx, req, &id, channel, batch_key, &created_at, until).await?;
            state(DeliveryStatus::Batched, None, None)
        } else {
            match template.render(channel, &req.data) {
                Err(e) => state(DeliveryStatus::Failed, Some(e.to_string()), None),
                Ok(content) if channel == DeliveryChannel::InApp => {
                    // Recorded before the message goes out, so a client's quick `ack` finds it.
                    let sent = state(DeliveryStatus::Sent, None, None);
                    known = ctx
                        .store
                        .update_status_from(&id, known.take(), |doc| {
                            doc.channels
                                .entry(DeliveryChannel::InApp)
                                .or_insert_with(|| sent.clone());
                            true
                        })
                        .await?;
                    crate::inapp::deliver(ctx, &id, req, &content, &created_at).await?;
                    sent
                }
                Ok(content) => {
                    let job = DeliveryJob {
                        id: id.clone(),
                        user: req.user.clone(),
                        channel,
                        project: req.project.clone(),
                        priority: req.priority,
                        category: req.category.clone(),
                        content,
                        data: req.data.clone(),
                        not_before_ms: until.map(|u| u.as_millisecond()),
                        created_at: created_at.clone(),
                        digest: None,
                    };
                    queue(ctx, &job).await?;
                    match until {
                        Some(u) => state(DeliveryStatus::Deferred, None, Some(u.to_string())),
                        None => state(DeliveryStatus::Pending, None, None),
                    }
                }
            }
        };
        ctx.metrics
            .notifications
            .with_label_values(&[channel.as_str(), outcome.status.as_str()])
            .inc();
        plan.insert(channel, outcome);
    }
    ctx.store
        .update_status_from(&id, known, |doc| {
            // A delivery may already have moved a channel on (a redelivered request):
            // only fill in what is not there yet.
            for (channel, planned) in &plan {
                doc.channels.entry(*channel).or_insert_with(|| planned.clone());
            }
            doc.planned = true;
            true
        })
        .await?;
    tracing::info!(channels = plan.len(), "notification planned");
    Ok(())
}

/// Queues an external delivery; `Nats-Msg-Id` keeps a redelivered request from queueing it
/// twice.
pub(crate) async fn queue(ctx: &Ctx, job: &DeliveryJob) -> Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{}.{}", job.id, job.channel.as_str()).as_str());
    let bytes = serde_json::to_vec(job).map_err(|e| SharedError::Encode(e.to_string()))?;
    ctx.js
        .publish_with_headers(
            format!("{DELIVERY_PREFIX}.{}", job.channel.as_str()),
            headers,
            bytes.into(),
        )
        .await
        .map_err(SharedError::nats)?
        .await
        .map_err(SharedError::nats)?;
    Ok(())
}

async fn fail_all(ctx: &Ctx, id: &str, reason: String) -> Result<()> {
    tracing::warn!(%id, %reason, "notification failed");
    ctx.store
        .update_status(id, |doc| {
            doc.error = Some(reason.clone());
            doc.planned = true;
            true
        })
        .await?;
    Ok(())
}
