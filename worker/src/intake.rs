//! Turning a notification request into per-channel outcomes: preferences (channel and
//! category switches), templates, quiet hours; in-app delivered at once, external channels
//! queued as delivery jobs. The plan is recorded before anything goes out and every step is
//! idempotent, so a request handed out again after its worker died mid-way ends the same
//! (see "The delivery guarantee" in `docs/NOTIFICATIONS.md` for the windows that bound it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_nats::jetstream::AckKind;
use tidings_shared::Error as SharedError;
use tidings_shared::notify::Rendered;
use tidings_shared::notify::{
    ChannelState, DeliveryChannel, DeliveryJob, DeliveryStatus, NotificationRequest, NotificationStatus, Priority,
};
use tidings_shared::prefs::Preferences;
use tidings_shared::store::{Created, Store};
use tidings_shared::template::Template;
use tracing::Instrument as _;

use crate::Ctx;
use crate::error::Result;
use crate::jobs::channel_state;
use crate::targets::{default_channels, missing};

/// Handles one message of `TIDINGS_NOTIFY`; acks it when done, naks it (to retry) when NATS
/// failed under it.
pub async fn handle(ctx: &Ctx, msg: async_nats::jetstream::Message) {
    let seq = msg.info().map(|i| i.stream_sequence).ok();
    let delivered = msg
        .info()
        .map(|i| i.delivered.clamp(1, i64::from(u32::MAX)) as u32)
        .unwrap_or(1);
    // The request's trace (from `traceparent`, when spans are exported) goes on here.
    let span = tidings_shared::telemetry::span_if_exporting(|| tracing::info_span!("intake"));
    tidings_shared::telemetry::follow_nats(&span, msg.headers.as_ref());
    let work = process(ctx, &msg.payload, seq).instrument(span);
    let result = crate::progress::with_progress(&msg, crate::progress::interval(crate::INTAKE_ACK_WAIT), work).await;
    let ack = match result {
        Ok(()) => msg.ack().await,
        Err(e) => match crate::poison::verdict(ctx, &e, delivered) {
            crate::poison::Verdict::RetryIn(d) => {
                tracing::warn!(error = %e, seq, delivered, ?d, "notification request will be retried");
                msg.ack_with(AckKind::Nak(Some(d))).await
            }
            crate::poison::Verdict::DeadLetter => match bury(ctx, &msg, seq, &e, delivered).await {
                Ok(()) => msg.ack().await,
                Err(e) => {
                    tracing::warn!(error = %e, seq, "dead-lettering a notification request failed; retrying");
                    msg.ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                        .await
                }
            },
        },
    };
    if let Err(e) = ack {
        tracing::warn!(error = %e, seq, "acknowledging a notification request failed");
    }
}

/// Gives up on a request that failed the same way `delivered` times: a dead letter with the
/// reason, and the notification failed with it when its id can be read.
async fn bury(
    ctx: &Ctx,
    msg: &async_nats::jetstream::Message,
    seq: Option<u64>,
    e: &crate::Error,
    delivered: u32,
) -> Result<()> {
    let reason = format!("given up after {delivered} deliveries: {e}");
    crate::poison::dead_letter_raw(ctx, "intake", msg, &reason, delivered).await?;
    if let Ok(req) = serde_json::from_slice::<NotificationRequest>(&msg.payload) {
        let id = notification_id(req.id.as_deref(), seq);
        crate::poison::fail_request(ctx, &id, &req.user, seq, &reason).await?;
    }
    Ok(())
}

/// The notification id a request gets: its own, or one derived from its stream sequence
/// (the same on every redelivery).
fn notification_id(req_id: Option<&str>, seq: Option<u64>) -> String {
    req_id
        .map(str::to_owned)
        .unwrap_or_else(|| format!("n{}", seq.unwrap_or_default()))
}

async fn process(ctx: &Ctx, payload: &[u8], seq: Option<u64>) -> Result<()> {
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
                request_seq: seq,
            };
            doc.summarize();
            ctx.store.create_status(&doc).await?;
            return Ok(());
        }
    };
    let id = notification_id(req.id.as_deref(), seq);
    let span = tracing::info_span!("notification", %id, user = %req.user, template = %req.template);
    plan(ctx, &req, &id, seq).instrument(span).await
}

/// Whether quiet hours hold `channel`: email, SMS and push wait; in-app and webhooks never.
fn deferrable(channel: DeliveryChannel) -> bool {
    matches!(
        channel,
        DeliveryChannel::Email | DeliveryChannel::Sms | DeliveryChannel::Push
    )
}

/// When the user's quiet hours end, if they hold this request now.
fn quiet_until(req: &NotificationRequest, prefs: &Preferences) -> Option<jiff::Timestamp> {
    if req.priority == Priority::Critical {
        None
    } else {
        crate::quiet::until(prefs, jiff::Timestamp::now())
    }
}

/// The channels a request asks for (or the user's preferences choose), each once.
fn wanted(req: &NotificationRequest, prefs: &Preferences) -> Vec<DeliveryChannel> {
    let mut channels = req.channels.clone().unwrap_or_else(|| default_channels(prefs));
    let mut seen = std::collections::HashSet::new();
    channels.retain(|c| seen.insert(*c));
    channels
}

/// Content rendered per channel, or why it could not be.
type Renders = HashMap<DeliveryChannel, std::result::Result<Rendered, String>>;

/// Decides every channel's first state from the user's preferences and the template's
/// `renders` (done beforehand, off the runtime), with no side effect, so that the whole
/// plan is recorded in one write before anything goes out. Returns the plan and the
/// content rendered for it.
fn decide(
    req: &NotificationRequest,
    mut renders: Renders,
    prefs: &Preferences,
) -> (
    BTreeMap<DeliveryChannel, ChannelState>,
    HashMap<DeliveryChannel, Rendered>,
) {
    let channels = wanted(req, prefs);
    let quiet = quiet_until(req, prefs);
    let mut plan = BTreeMap::new();
    let mut rendered = HashMap::new();
    for channel in channels {
        if plan.contains_key(&channel) {
            continue;
        }
        let until = quiet.filter(|_| deferrable(channel));
        let first = if !prefs.allows(channel, req.category.as_deref()) {
            channel_state(DeliveryStatus::Suppressed, None, None)
        } else if let Some(lack) = missing(prefs, channel) {
            channel_state(DeliveryStatus::Failed, Some(lack.to_owned()), None)
        } else if req.batch_key.is_some()
            && matches!(req.priority, Priority::Low | Priority::Normal)
            && channel != DeliveryChannel::InApp
        {
            // Rendered later, once, over the whole batch.
            channel_state(DeliveryStatus::Batched, None, None)
        } else {
            let render = renders.remove(&channel);
            match render.unwrap_or_else(|| Err(format!("no {} part", channel.as_str()))) {
                Err(e) => channel_state(DeliveryStatus::Failed, Some(e), None),
                Ok(content) => {
                    rendered.insert(channel, content);
                    match until {
                        // Recorded `sent` before the message goes out, so that a client's
                        // quick `ack` finds it.
                        _ if channel == DeliveryChannel::InApp => channel_state(DeliveryStatus::Sent, None, None),
                        Some(u) => channel_state(DeliveryStatus::Deferred, None, Some(u.to_string())),
                        None => channel_state(DeliveryStatus::Pending, None, None),
                    }
                }
            }
        };
        plan.insert(channel, first);
    }
    (plan, rendered)
}

/// A side effect a recorded plan calls for.
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

/// What a recorded plan still calls for, and the channels that cannot be carried out any
/// more (with the reason).
struct ToDo {
    actions: Vec<(DeliveryChannel, Action)>,
    failed: Vec<(DeliveryChannel, String)>,
}

/// What the recorded plan `doc` still calls for: every channel in its first state and not
/// yet attempted (one a delivery has moved on is left to it). Content rendered when the
/// plan was decided is used; otherwise (the request handed out again) it was rendered by
/// [`rerender`], and a channel that cannot be rendered any more is returned with the reason.
fn actions(
    doc: &NotificationStatus,
    req: &NotificationRequest,
    mut rendered: Renders,
    quiet: Option<jiff::Timestamp>,
) -> ToDo {
    let (mut todo, mut failed) = (Vec::new(), Vec::new());
    for (&channel, recorded) in &doc.channels {
        if recorded.attempts > 0 {
            continue;
        }
        let due = match (channel, recorded.status) {
            (DeliveryChannel::InApp, DeliveryStatus::Sent) => None,
            (DeliveryChannel::InApp, _) => continue,
            (_, DeliveryStatus::Pending) => None,
            // The end of quiet hours as recorded (unreadable: now).
            (_, DeliveryStatus::Deferred) => recorded.until.as_deref().and_then(|u| u.parse().ok()),
            (_, DeliveryStatus::Batched) => {
                if let Some(batch_key) = &req.batch_key {
                    let until = quiet.filter(|_| deferrable(channel));
                    todo.push((
                        channel,
                        Action::Batch {
                            batch_key: batch_key.clone(),
                            until,
                        },
                    ));
                }
                continue;
            }
            _ => continue,
        };
        let content = rendered
            .remove(&channel)
            .unwrap_or_else(|| Err(format!("unknown template {:?}", req.template)));
        let content = match content {
            Ok(c) => c,
            Err(e) => {
                failed.push((channel, e));
                continue;
            }
        };
        let action = if channel == DeliveryChannel::InApp {
            Action::InApp(content)
        } else {
            Action::Queue(Box::new(DeliveryJob {
                id: doc.id.clone(),
                user: req.user.clone(),
                channel,
                project: req.project.clone(),
                priority: req.priority,
                category: req.category.clone(),
                content,
                data: req.data.clone(),
                not_before_ms: due.map(|u: jiff::Timestamp| u.as_millisecond()),
                created_at: doc.created_at.clone(),
                digest: None,
            }))
        };
        todo.push((channel, action));
    }
    ToDo { actions: todo, failed }
}

/// The content of every channel of the recorded plan `doc` that may still need it: what
/// was rendered for this plan, and the rest rendered now (the request handed out again).
async fn rerender(
    ctx: &Ctx,
    doc: &NotificationStatus,
    req: &NotificationRequest,
    template: Option<Arc<Template>>,
    rendered: HashMap<DeliveryChannel, Rendered>,
) -> Renders {
    let mut out: Renders = rendered.into_iter().map(|(c, r)| (c, Ok(r))).collect();
    let todo: Vec<DeliveryChannel> = doc
        .channels
        .iter()
        .filter(|(c, s)| s.attempts == 0 && !out.contains_key(c))
        .filter(|(_, s)| {
            matches!(
                s.status,
                DeliveryStatus::Sent | DeliveryStatus::Pending | DeliveryStatus::Deferred
            )
        })
        .map(|(c, _)| *c)
        .collect();
    if let (Some(t), false) = (template, todo.is_empty()) {
        out.extend(ctx.renderer.render_all(t, todo, req.data.clone()).await);
    }
    out
}

/// Plans an accepted request and starts every channel.
///
/// The plan is decided first, from reads only, and recorded in one conditional write (which
/// also finds out whether the id has a status already); then the in-app message, jobs and
/// batch entries the recorded plan calls for go out, concurrently. Each of those is
/// idempotent, and the plan records which request it belongs to, so the same request handed
/// out again (its worker died before acking, or took longer than the ack wait) carries out
/// the recorded plan again, while a new request reusing the id is not planned twice.
async fn plan(ctx: &Ctx, req: &NotificationRequest, id: &str, seq: Option<u64>) -> Result<()> {
    let (template, prefs) = tokio::try_join!(ctx.templates.get(&req.template), ctx.prefs.get(&req.user))?;
    let mut doc = NotificationStatus {
        id: id.to_owned(),
        user: req.user.clone(),
        status: String::new(),
        created_at: Store::now(),
        channels: BTreeMap::new(),
        error: None,
        planned: true,
        request_seq: seq,
    };
    let mut rendered = HashMap::new();
    match &template {
        Some(t) => {
            let renders = ctx
                .renderer
                .render_all(t.clone(), wanted(req, &prefs), req.data.clone())
                .await;
            (doc.channels, rendered) = decide(req, renders, &prefs);
        }
        None => doc.error = Some(format!("unknown template {:?}", req.template)),
    }
    doc.summarize();

    let Recorded { recorded, wrote, added } = record(ctx, id, seq, doc).await?;
    for (channel, status) in &added {
        ctx.metrics
            .notifications
            .with_label_values(&[channel.as_str(), status.as_str()])
            .inc();
    }
    // This request's plan: recorded by this call, or earlier for this very request (its
    // stream sequence; a request whose sequence cannot be read never matches).
    let ours = wrote || (seq.is_some() && recorded.request_seq == seq);
    if !ours {
        // Planned for another request with the same id: this one is a repeat.
        tracing::info!("notification id already planned; request acknowledged as a repeat");
        return Ok(());
    }
    if let Some(reason) = &recorded.error {
        tracing::warn!(%reason, "notification failed");
        return Ok(());
    }
    let quiet = quiet_until(req, &prefs);
    let rendered = rerender(ctx, &recorded, req, template, rendered).await;
    let ToDo { actions: todo, failed } = actions(&recorded, req, rendered, quiet);
    for (channel, error) in &failed {
        // Only when carrying out a recorded plan again after its template was deleted or
        // broken: the channel is left as recorded (its message or job may well be out
        // already), not marked failed.
        tracing::warn!(channel = channel.as_str(), %error, "cannot carry out a recorded channel again");
    }
    let created_at = &recorded.created_at;
    futures::future::try_join_all(todo.into_iter().map(|(channel, action)| async move {
        match action {
            Action::InApp(content) => crate::inapp::deliver(ctx, id, req, &content, created_at).await,
            Action::Queue(job) => crate::jobs::queue(ctx, &job).await,
            Action::Batch { batch_key, until } => {
                crate::batch::add(ctx, req, id, channel, &batch_key, created_at, until).await
            }
        }
    }))
    .await?;
    tracing::info!(channels = recorded.channels.len(), "notification planned");
    Ok(())
}

/// The status a plan was recorded in, and what this call did to it.
struct Recorded {
    /// The status as stored now.
    recorded: NotificationStatus,
    /// Whether this call recorded the plan.
    wrote: bool,
    /// The channels this call added, with their first state (for the metrics).
    added: Vec<(DeliveryChannel, DeliveryStatus)>,
}

/// Records the plan `doc` in one conditional write: a new status, or the plan added to a
/// status a gateway accepted and nobody planned yet. A status planned already is left as
/// it is (and returned), so a request handed out again is never planned twice.
async fn record(ctx: &Ctx, id: &str, seq: Option<u64>, mut doc: NotificationStatus) -> Result<Recorded> {
    let mut wrote = false;
    let mut added: Vec<(DeliveryChannel, DeliveryStatus)> = Vec::new();
    let (recorded, _) = match ctx.store.create_status(&doc).await? {
        Created::New(written) => {
            added = doc.channels.iter().map(|(c, s)| (*c, s.status)).collect();
            wrote = true;
            (doc, written)
        }
        Created::Exists(existing, existing_seq) => {
            // Accepted by a gateway (`POST /api/v1/notifications`) and not planned yet: the
            // plan is added to it. Planned already: left as it is.
            let plan = std::mem::take(&mut doc.channels);
            let error = doc.error.take();
            ctx.store
                .update_status_from(id, Some((existing, existing_seq)), |current| {
                    added.clear();
                    wrote = !(current.planned || current.error.is_some());
                    if !wrote {
                        return false;
                    }
                    // A delivery may already have moved a channel on: only what is not
                    // there yet is filled in.
                    for (channel, first) in &plan {
                        if !current.channels.contains_key(channel) {
                            current.channels.insert(*channel, first.clone());
                            added.push((*channel, first.status));
                        }
                    }
                    current.error = error.clone();
                    current.planned = true;
                    current.request_seq = seq;
                    true
                })
                .await?
                .ok_or_else(|| SharedError::Conflict(format!("status of {id} vanished while being planned")))?
        }
    };
    Ok(Recorded { recorded, wrote, added })
}
