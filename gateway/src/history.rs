//! Reading a channel's stored messages back from `TIDINGS_EVENTS`: recovery on `subscribe`
//! with `since`, the history route, SSE resume and gap repair all come through here.
//!
//! Messages are read with one ordered consumer filtered on the channel's subject, starting
//! at a sequence (the fastest way measured on this machine: ~3 ms for 1,000 messages, ~25 ms
//! for 10,000), and the consumer is deleted afterwards rather than left to expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt as _;
use tidings_shared::nats::epoch_of;
use tidings_shared::subject::EVENTS_STREAM;
use tidings_shared::{Channel, Error as SharedError};

use crate::AppState;
use crate::error::Result;
use crate::message::{Encoded, encode_stored};
use crate::metrics::Metrics;
use crate::position::{Link, StreamPosition};

/// How long one stored message may take to arrive while replaying.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a recovery found.
pub struct Replay {
    /// The stream's current epoch.
    pub epoch: String,
    /// Whether the messages returned complete the client's history after `since`.
    pub recovered: bool,
    /// The missed messages, oldest first, with `prev` chained.
    pub messages: Vec<Arc<Encoded>>,
    /// Whether more messages were held than returned (over the cap or the limit).
    pub truncated: bool,
    /// Whether the client's epoch was the current one (else its sequences mean nothing now).
    pub same_epoch: bool,
    /// Whether everything after `since` is still held (same epoch, nothing dropped), however
    /// much of it was returned.
    pub complete: bool,
}

async fn events_stream(js: &async_nats::jetstream::Context) -> Result<JsStream> {
    Ok(js.get_stream(EVENTS_STREAM).await.map_err(SharedError::nats)?)
}

impl Replay {
    /// Nothing to read back: the client already has everything up to the position from
    /// which its subscription delivers live.
    pub fn up_to_date(epoch: String) -> Replay {
        Replay {
            epoch,
            recovered: true,
            messages: Vec::new(),
            truncated: false,
            same_epoch: true,
            complete: true,
        }
    }
}

/// Whether every message of `channel` after `since` is still held, given that `held_after`
/// of them are. Retention drops oldest first: by age across the stream (so nothing after
/// `since` was dropped for age if the stream still starts at or before `since + 1`), and per
/// channel past `max_per_channel` (so nothing after `since` was dropped for that if fewer
/// are held). Failing both, the channel still holding a message at or before `since` proves
/// the same. `since` need not be a message of the channel (SSE cursors use the stream
/// position at connect time).
async fn complete_after(
    stream: &JsStream,
    channel: &Channel,
    since: u64,
    held_after: u64,
    first_seq: u64,
    max_per_channel: i64,
) -> bool {
    let under_limit = max_per_channel <= 0 || held_after < max_per_channel as u64;
    if first_seq <= since.saturating_add(1) && under_limit {
        return true;
    }
    match stream
        .direct_get_next_for_subject(channel.durable_subject(), Some(1))
        .await
    {
        Ok(first) => first.sequence <= since,
        Err(_) => false,
    }
}

/// The messages a client missed after `since` on `channel`, at most `cap` of them.
/// `since.epoch` is the epoch the client got `since.seq` with (none: assume the current
/// one). From another epoch, `since.seq` means nothing: every held message is sent,
/// `recovered: false`.
/// `live_from`: the position from which the caller's subscription already gets every message
/// live; a client at or past it (in the current epoch) missed nothing, and nothing is read —
/// one request (the stream's info) instead of a consumer's creation, fetch and deletion,
/// which is what lets a whole gateway's clients resume on another at once.
pub async fn replay(
    state: &AppState,
    channel: &Channel,
    since: &StreamPosition,
    cap: usize,
    live_from: Option<u64>,
) -> Result<Replay> {
    // `get_stream` has just fetched the stream's info: no second request for it.
    let stream = events_stream(&state.js).await?;
    let info = stream.cached_info().clone();
    let current = epoch_of(&info);
    state.remember_epoch(&current);
    let same_epoch = since.epoch.as_deref().is_none_or(|e| e == current);
    let since = since.seq;
    if same_epoch && live_from.is_some_and(|p| since >= p) {
        return Ok(Replay::up_to_date(current));
    }
    // The first sequence to read, and the one to chain it to.
    let start = if same_epoch {
        Link {
            seq: since.saturating_add(1),
            prev: since,
        }
    } else {
        Link { seq: 1, prev: 0 }
    };
    let max_payload = state.config.max_payload_bytes;
    let read = if start.seq > info.state.last_sequence {
        Read::default()
    } else {
        read(&stream, channel, start, None, cap, &state.metrics, max_payload).await?
    };
    let complete = same_epoch
        && complete_after(
            &stream,
            channel,
            since,
            read.held,
            info.state.first_sequence,
            info.config.max_messages_per_subject,
        )
        .await;
    Ok(Replay {
        epoch: current,
        recovered: complete && !read.truncated,
        messages: read.messages,
        truncated: read.truncated,
        complete,
        same_epoch,
    })
}

/// What [`read`] found.
#[derive(Default)]
pub struct Read {
    /// The messages, oldest first, `prev` chained.
    pub messages: Vec<Arc<Encoded>>,
    /// Whether more were held than `cap`.
    pub truncated: bool,
    /// How many messages of the channel the stream held from the start sequence on.
    pub held: u64,
}

/// Stored messages of `channel` with sequences in `from.seq..until` (until exclusive;
/// `None`: to the end), at most `cap`, the first chained to `from.prev`.
pub async fn read(
    stream: &JsStream,
    channel: &Channel,
    from: Link,
    until: Option<u64>,
    cap: usize,
    metrics: &Metrics,
    max_payload: usize,
) -> Result<Read> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: channel.durable_subject(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from.seq.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(SharedError::nats)?;
    let name = consumer.cached_info().name.clone();
    let mut pending = consumer.cached_info().num_pending;
    let held = pending;
    let mut prev = from.prev;
    let mut out = Vec::new();
    let mut truncated = false;
    if pending > 0 {
        let mut messages = consumer.messages().await.map_err(SharedError::nats)?;
        while pending > 0 {
            let next = tokio::time::timeout(READ_TIMEOUT, messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(SharedError::nats(e).into()),
                Ok(None) | Err(_) => return Err(SharedError::Timeout("a history read").into()),
            };
            let (seq, left, published) = match msg.info() {
                Ok(i) => (i.stream_sequence, i.pending, i.published),
                Err(e) => return Err(SharedError::nats(e).into()),
            };
            pending = left;
            if until.is_some_and(|u| seq >= u) {
                break;
            }
            if out.len() >= cap {
                truncated = true;
                break;
            }
            let stored_at = SystemTime::from(published);
            let durable = Some(Link { seq, prev });
            match encode_stored(
                &msg.payload,
                msg.headers.as_ref(),
                channel,
                durable,
                stored_at,
                max_payload,
            ) {
                Ok(m) => {
                    prev = seq;
                    out.push(m);
                }
                // Never delivered live either; keep the chain pointing at what was.
                Err(rejected) => metrics.rejected_messages.with_label_values(&[rejected.reason]).inc(),
            }
        }
    }
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %e, "deleting a history consumer failed (it expires by itself)");
    }
    Ok(Read {
        messages: out,
        truncated,
        held,
    })
}

/// The stream handle, for callers that read several ranges.
pub async fn stream(state: &AppState) -> Result<JsStream> {
    events_stream(&state.js).await
}
