//! Batching: `low` and `normal` requests with the same `batch_key` for the same user inside
//! `TIDINGS_BATCH_WINDOW_MS` go out as one digest per external channel.
//!
//! Everything lives in JetStream, so a batch window survives worker restarts: each waiting
//! notification is a message on `tidings.batch.<user>.<key hash>.<channel>`; the open batch
//! is a KV entry; and the first notification of a batch queues one flush job that becomes
//! due when the window closes. The flush closes the batch (later notifications open a new
//! one), renders the template over `items` and `count`, sends it once, and marks every
//! notification in it `sent` with the digest's id.

use std::time::Duration;

use async_nats::HeaderMap;
use aws_lc_rs::digest;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tidings_shared::Error as SharedError;
use tidings_shared::nats::publish_acked;
use tidings_shared::notify::Rendered;
use tidings_shared::notify::names::{BATCH_ITEMS_STREAM, BATCH_PREFIX};
use tidings_shared::notify::{BatchItem, DeliveryChannel, DeliveryJob, DigestRef, NotificationRequest};

use crate::Ctx;
use crate::error::Result;

/// The KV value of an open batch.
#[derive(Debug, Serialize, Deserialize)]
struct OpenBatch {
    digest_id: String,
    template: String,
    due_ms: i64,
}

/// A stable, subject-safe name for a batch key.
fn key_hash(batch_key: &str) -> String {
    let d = digest::digest(&digest::SHA256, batch_key.as_bytes());
    d.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Puts a notification into its batch, opening the batch (and queueing its flush) if it is
/// the first. Idempotent: a redelivered request neither adds it twice nor loses the flush.
#[allow(clippy::too_many_arguments)]
pub async fn add(
    ctx: &Ctx,
    req: &NotificationRequest,
    id: &str,
    channel: DeliveryChannel,
    batch_key: &str,
    created_at: &str,
    quiet_until: Option<jiff::Timestamp>,
) -> Result<()> {
    let key = format!("{}.{}.{}", req.user, key_hash(batch_key), channel.as_str());
    let subject = format!("{BATCH_PREFIX}.{key}");
    let item = BatchItem {
        id: id.to_owned(),
        data: req.data.clone(),
        created_at: created_at.to_owned(),
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("batch.{id}.{}", channel.as_str()).as_str());
    let bytes = serde_json::to_vec(&item).map_err(|e| SharedError::Encode(e.to_string()))?;
    publish_acked(&ctx.js, subject.clone(), headers, bytes.into())
        .await
        .map_err(SharedError::nats)?;

    let now = jiff::Timestamp::now().as_millisecond();
    let window_end = now + ctx.batch_window.as_millis() as i64;
    let due_ms = quiet_until.map_or(window_end, |u| u.as_millisecond().max(window_end));
    let open = OpenBatch {
        digest_id: format!("digest-{}", nuid::next()),
        template: req.template.clone(),
        due_ms,
    };
    let value = serde_json::to_vec(&open).map_err(|e| SharedError::Encode(e.to_string()))?;
    let open = match ctx.batches.create(&key, value.into()).await {
        Ok(_) => open,
        // Already open: make sure its flush is queued (a redelivered first request).
        Err(_) => match ctx.batches.get(&key).await.map_err(SharedError::nats)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| SharedError::Stored(format!("open batch: {e}")))?,
            None => return Err(SharedError::Conflict("batch closed while joining".into()).into()),
        },
    };
    let flush = DeliveryJob {
        id: open.digest_id.clone(),
        user: req.user.clone(),
        channel,
        project: req.project.clone(),
        priority: req.priority,
        category: req.category.clone(),
        content: Rendered {
            title: None,
            body: String::new(),
            html: None,
            url: None,
            fields: None,
        },
        data: serde_json::Value::Null,
        not_before_ms: Some(open.due_ms),
        created_at: created_at.to_owned(),
        digest: Some(DigestRef {
            key,
            subject,
            template: open.template,
        }),
    };
    crate::jobs::queue(ctx, &flush).await
}

/// The notifications waiting in a batch, oldest first and each once, with the last one's
/// sequence.
pub async fn items(ctx: &Ctx, subject: &str) -> Result<(Vec<BatchItem>, u64)> {
    let stream = ctx.js.get_stream(BATCH_ITEMS_STREAM).await.map_err(SharedError::nats)?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(SharedError::nats)?;
    let name = consumer.cached_info().name.clone();
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut last = 0;
    if pending > 0 {
        let mut messages = consumer.messages().await.map_err(SharedError::nats)?;
        while pending > 0 {
            let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await else {
                return Err(SharedError::Timeout("reading a batch").into());
            };
            let info = msg.info().map_err(SharedError::nats)?;
            pending = info.pending;
            last = info.stream_sequence;
            // A request carried out again long after it joined (past the stream's duplicate
            // window) may have added its item twice: each notification is listed once.
            if let Ok(item) = serde_json::from_slice::<BatchItem>(&msg.payload)
                && seen.insert(item.id.clone())
            {
                out.push(item);
            }
        }
    }
    let _ = stream.delete_consumer(&name).await;
    Ok((out, last))
}

/// Removes a sent (or failed) batch's items, up to and including `last`.
pub async fn clear(ctx: &Ctx, subject: &str, last: u64) -> Result<()> {
    let stream = ctx.js.get_stream(BATCH_ITEMS_STREAM).await.map_err(SharedError::nats)?;
    stream
        .purge()
        .filter(subject)
        .sequence(last + 1)
        .await
        .map_err(SharedError::nats)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_hash_is_stable_and_subject_safe() {
        let h = super::key_hash("p1 reviews.*>");
        assert_eq!(h, super::key_hash("p1 reviews.*>"));
        assert_eq!(h.len(), 24);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(h, super::key_hash("p2"));
    }
}
