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
use tidings_shared::store::{Created, Store};
use tidings_shared::template::{Rendered, Template};
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
    let (seq, redelivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered > 1))
        .unwrap_or((0, false));
    let result = process(ctx, &msg.payload, seq, redelivered).await;
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

async fn process(ctx: &Ctx, payload: &[u8], seq: u64, redelivered: bool) -> Result<()> {
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
    plan(ctx, &req, &id, redelivered).instrument(span).await
}

/// A side effect a plan calls for, carried out once the plan is recorded.
enum Action {
    /// The in-app message and inbox entry.
    InApp(Rendered),
    /// An external delivery job.
    Queue(Box<DeliveryJob>),
    /// Joining a batch (rendered later, once, over the whole batch).
    Batch {
        batch_key: String,
        until: Option<jiff::Timestamp>,
    },
}

/// What planning decided for one channel: its first state, and what must happen for it.
struct Decision {
    channel: DeliveryChannel,
    state: ChannelState,
    action: Option<Action>,
}

/// Decides every channel of a request from the user's preferences and the template, with
/// no side effect, so the whole plan can be recorded in one write before anything goes out.
fn decide(
    req: &NotificationRequest,
    id: &str,
    template: &Template,
    prefs: &Preferences,
    created_at: &str,
) -> Vec<Decision> {
    let channels = req.channels.clone().unwrap_or_else(|| default_channels(prefs));
    let quiet_until = if req.priority == Priority::Critical {
        None
    } else {
        prefs.quiet_until(jiff::Timestamp::now())
    };
    let mut out: Vec<Decision> = Vec::with_capacity(channels.len());
    for channel in channels {
        if out.iter().any(|d| d.channel == channel) {
            continue;
        }
        // Quiet hours hold email, SMS and push; in-app and webhooks are never deferred.
        let deferrable = matches!(
            channel,
            DeliveryChannel::Email | DeliveryChannel::Sms | DeliveryChannel::Push
        );
        let until = quiet_until.filter(|_| deferrable);
        let (state, action) = if !prefs.allows(channel, req.category.as_deref()) {
            (state(DeliveryStatus::Suppressed, None, None), None)
        } else if let Some(missing) = missing_target(prefs, channel) {
            (state(DeliveryStatus::Failed, Some(missing.to_owned()), None), None)
        } else if let (Some(batch_key), true, false) = (
            &req.batch_key,
            matches!(req.priority, Priority::Low | Priority::Normal),
            channel == DeliveryChannel::InApp,
        ) {
            let action = Action::Batch {
                batch_key: batch_key.clone(),
                until,
            };
            (state(DeliveryStatus::Batched, None, None), Some(action))
        } else {
            match template.render(channel, &req.data) {
                Err(e) => (state(DeliveryStatus::Failed, Some(e.to_string()), None), None),
                // Recorded `sent` before the message goes out, so a client's quick `ack`
                // finds it.
                Ok(content) if channel == DeliveryChannel::InApp => {
                    (state(DeliveryStatus::Sent, None, None), Some(Action::InApp(content)))
                }
                Ok(content) => {
                    let job = DeliveryJob {
                        id: id.to_owned(),
                        user: req.user.clone(),
                        channel,
                        project: req.project.clone(),
                        priority: req.priority,
                        category: req.category.clone(),
                        content,
                        data: req.data.clone(),
                        not_before_ms: until.map(|u| u.as_millisecond()),
                        created_at: created_at.to_owned(),
                        digest: None,
                    };
                    let first = match until {
                        Some(u) => state(DeliveryStatus::Deferred, None, Some(u.to_string())),
                        None => state(DeliveryStatus::Pending, None, None),
                    };
                    (first, Some(Action::Queue(Box::new(job))))
                }
            }
        };
        out.push(Decision { channel, state, action });
    }
    out
}

/// Plans an accepted request and starts every channel.
///
/// The plan is decided first, from reads only, and recorded in one conditional write (which
/// also finds out whether the id was seen before); then the in-app message, jobs and batch
/// entries go out, concurrently. Each of those is idempotent, so a request redelivered
/// after a worker died between the write and its ack carries them out again from the
/// recorded plan, and nothing is sent twice.
async fn plan(ctx: &Ctx, req: &NotificationRequest, id: &str, redelivered: bool) -> Result<()> {
    let (template, prefs) = tokio::try_join!(ctx.store.template(&req.template), ctx.store.preferences(&req.user))?;
    let mut doc = NotificationStatus {
        id: id.to_owned(),
        user: req.user.clone(),
        status: String::new(),
        created_at: Store::now(),
        channels: BTreeMap::new(),
        error: None,
        planned: true,
    };
    let decisions = match &template {
        Some(t) => decide(req, id, t, &prefs, &doc.created_at),
        None => {
            doc.error = Some(format!("unknown template {:?}", req.template));
            Vec::new()
        }
    };
    doc.channels = decisions.iter().map(|d| (d.channel, d.state.clone())).collect();
    doc.summarize();

    // The recorded plan, what was decided now, and whether this call recorded it.
    let (recorded, decisions, fresh) = match ctx.store.create_status(&doc).await? {
        Created::New(_) => (doc, decisions, true),
        Created::Exists(existing, _) if existing.planned || existing.error.is_some() => {
            if !redelivered {
                // The same id again (a repeated request): planned once, not again.
                return Ok(());
            }
            // Our own earlier attempt recorded this plan and may have died before carrying
            // it out: do it again, with what was recorded then.
            let decisions = match &template {
                Some(t) => decide(req, id, t, &prefs, &existing.created_at),
                None => Vec::new(),
            };
            (existing, decisions, false)
        }
        Created::Exists(existing, seq) => {
            // Accepted by a gateway (`POST /api/v1/notifications`), or planned halfway by
            // an older worker: add the plan to what is there.
            let decisions = match &template {
                Some(t) => decide(req, id, t, &prefs, &existing.created_at),
                None => Vec::new(),
            };
            let error = doc.error.take();
            let merged = ctx
                .store
                .update_status_from(id, Some((existing, seq)), |current| {
                    // A delivery may already have moved a channel on: only fill in what
                    // is not there yet.
                    for d in &decisions {
                        current.channels.entry(d.channel).or_insert_with(|| d.state.clone());
                    }
                    if current.error.is_none() {
                        current.error = error.clone();
                    }
                    current.planned = true;
                    true
                })
                .await?
                .map(|(merged, _)| merged)
                .ok_or_else(|| SharedError::Nats(format!("status of {id} vanished while being planned")))?;
            (merged, decisions, true)
        }
    };
    if fresh {
        for d in &decisions {
            ctx.metrics
                .notifications
                .with_label_values(&[d.channel.as_str(), d.state.status.as_str()])
                .inc();
        }
    }
    if let Some(reason) = &recorded.error {
        tracing::warn!(%reason, "notification failed");
        return Ok(());
    }
    // Carry out what the recorded plan still calls for: a channel whose state has moved on
    // (sent by a delivery, retried) is left to its delivery.
    let started = decisions.into_iter().filter_map(|d| {
        let current = recorded.channels.get(&d.channel)?;
        let unchanged = current.status == d.state.status && current.attempts == 0;
        d.action.filter(|_| unchanged).map(|a| (d.channel, a))
    });
    let created_at = &recorded.created_at;
    futures::future::try_join_all(started.map(|(channel, action)| async move {
        match action {
            Action::InApp(content) => crate::inapp::deliver(ctx, id, req, &content, created_at).await,
            Action::Queue(job) => queue(ctx, &job).await,
            Action::Batch { batch_key, until } => {
                crate::batch::add(ctx, req, id, channel, &batch_key, created_at, until).await
            }
        }
    }))
    .await?;
    tracing::info!(channels = recorded.channels.len(), "notification planned");
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
