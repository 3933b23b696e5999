//! The in-app channel: a durable `notification` message on `user:<id>` (so it reaches the
//! user's open connections now and replays after a reconnect) plus an inbox entry; and the
//! confirmations coming back from clients (`ack`), which mark the channel `delivered`.

use async_nats::HeaderMap;
use futures::StreamExt as _;
use tidings_shared::ack::{ACK_SUBJECT, ClientAck};
use tidings_shared::body::PublishBody;
use tidings_shared::nats::publish_acked;
use tidings_shared::notify::Rendered;
use tidings_shared::notify::names::NOTIFICATION_EVENT;
use tidings_shared::notify::{DeliveryChannel, DeliveryStatus, InboxItem, NotificationRequest};
use tidings_shared::store::Store;
use tidings_shared::subject::EVENTS_STREAM;
use tidings_shared::subject::stored_msg_id;
use tidings_shared::{Channel, Error as SharedError};

use crate::Ctx;
use crate::error::Result;

/// Stores the inbox entry and publishes the in-app message. Idempotent: the inbox entry,
/// keyed by the notification id, is only created if absent (a redelivered request does not
/// mark a read entry unread again), and the message carries `Nats-Msg-Id: inapp/user:<user>/<id>`.
pub async fn deliver(
    ctx: &Ctx,
    id: &str,
    req: &NotificationRequest,
    content: &Rendered,
    created_at: &str,
) -> Result<()> {
    let item = InboxItem {
        id: id.to_owned(),
        title: content.title.clone().unwrap_or_default(),
        body: content.body.clone(),
        project: req.project.clone(),
        priority: req.priority,
        created_at: created_at.to_owned(),
        read: false,
    };
    if ctx.store.create_inbox(&req.user, &item).await? && ctx.inbox_tally.added(&req.user) {
        trim(ctx, &req.user).await;
    }
    let body = PublishBody {
        event: NOTIFICATION_EVENT.to_owned(),
        data: serde_json::json!({
            "id": id,
            "title": item.title,
            "body": item.body,
            "project": req.project,
            "priority": req.priority,
            "category": req.category,
            "created_at": created_at,
        }),
        id: Some(id.to_owned()),
    };
    let channel = Channel::user(&req.user)?;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", inapp_msg_id(&channel, id).as_str());
    // The gateways' fan-out of the in-app message joins the notification's trace.
    tidings_shared::telemetry::inject_nats(&mut headers);
    publish_acked(&ctx.js, channel.durable_subject(), headers, body.to_json()?.into())
        .await
        .map_err(SharedError::nats)?;
    Ok(())
}

/// The `Nats-Msg-Id` of an in-app message: in a namespace only the worker publishes in (the
/// gateway puts clients' ids under `client.<user>/`), so an ack can tell a notification the
/// worker stored from a look-alike a user stored on their own channel.
fn inapp_msg_id(channel: &Channel, id: &str) -> String {
    stored_msg_id("inapp", channel, id)
}

/// Keeps `user`'s inbox within `TIDINGS_INBOX_MAX_PER_USER`: counted every few new entries
/// (see [`crate::inbox_tally`]), and trimmed to the bound, oldest first, once it is about a
/// tenth over (so a busy user's inbox is read whole once every many notifications, not
/// each time). A failure only delays the trim to the next count.
async fn trim(ctx: &Ctx, user: &str) {
    let max = ctx.inbox_max_per_user;
    let result = async {
        if ctx.store.inbox_len(user).await? <= ctx.inbox_tally.threshold() {
            return Ok(0);
        }
        ctx.store.trim_inbox(user, max).await
    };
    match result.await {
        Ok(0) => {}
        Ok(dropped) => tracing::debug!(dropped, "oldest inbox entries dropped"),
        Err(e) => tracing::warn!(error = %e, "trimming the inbox failed; trying again with the next entry"),
    }
}

/// Marks in-app notifications `delivered` as clients acknowledge them. One worker of the
/// queue group handles each ack.
pub async fn ack_loop(ctx: Ctx, store: Store) {
    let mut sub = match ctx
        .nats
        .queue_subscribe(ACK_SUBJECT, "tidings-workers".to_owned())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to client acks");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        if let Err(e) = handle_ack(&ctx, &store, &msg.payload).await {
            tracing::debug!(error = %e, "ack ignored");
        }
    }
}

async fn handle_ack(ctx: &Ctx, store: &Store, payload: &[u8]) -> Result<()> {
    let ack = ClientAck::decode(payload)?;
    let channel = Channel::user(&ack.user)?;
    if channel.to_string() != ack.channel {
        return Ok(()); // an ack of a project message: not a notification
    }
    let stream = ctx.js.get_stream(EVENTS_STREAM).await.map_err(SharedError::nats)?;
    let stored = stream.direct_get(ack.seq).await.map_err(SharedError::nats)?;
    if stored.subject.as_str() != channel.durable_subject() {
        return Ok(());
    }
    let body = PublishBody::decode(&stored.payload, None, usize::MAX)?;
    let (true, Some(id)) = (body.event == NOTIFICATION_EVENT, body.id) else {
        return Ok(());
    };
    // Only a message the worker itself published to this user counts: a user who may publish
    // on their own channel can store a `notification` naming any id, but not under this id.
    let msg_id = stored.headers.get("Nats-Msg-Id").map(|v| v.as_str());
    // `notif-<id>`: how the worker named them before ids were namespaced; the gateway never
    // stores a client's id under that name (it prefixes `client.<user>/`).
    let legacy = format!("notif-{id}");
    if msg_id != Some(inapp_msg_id(&channel, &id).as_str()) && msg_id != Some(legacy.as_str()) {
        tracing::debug!(user = %ack.user, seq = ack.seq, "ack of a notification the worker did not publish: ignored");
        return Ok(());
    }
    let mut changed = false;
    store
        .update_status(&id, |doc| match doc.channels.get_mut(&DeliveryChannel::InApp) {
            _ if doc.user != ack.user => false,
            Some(c) if c.status == DeliveryStatus::Sent => {
                c.status = DeliveryStatus::Delivered;
                c.updated_at = Store::now();
                changed = true;
                true
            }
            _ => false,
        })
        .await?;
    if changed {
        ctx.metrics
            .notifications
            .with_label_values(&["in_app", DeliveryStatus::Delivered.as_str()])
            .inc();
    }
    Ok(())
}
