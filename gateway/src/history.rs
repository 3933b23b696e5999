//! Reading a channel's stored messages back from `TIDINGS_EVENTS`: recovery on `subscribe`
//! with `since`, the history route, SSE resume and gap repair all come through here.
//!
//! Messages are read with one ephemeral pull consumer (no acks, in memory) filtered on the
//! channel's subject, starting at a sequence, pulled in requests bounded in bytes by the
//! budget (async-nats' ordered consumer cannot bound its pulls in bytes, so a count small
//! enough for the largest messages made 10,000 small ones 625 round trips); the consumer is
//! deleted afterwards rather than left to expire. A read is a [`Reader`] handing out chunks
//! of at most a byte budget, which the caller writes before it asks for the next: memory per
//! replay is a few budgets (the chunk, its encodings, what the NATS client pulled ahead), not
//! a function of how many messages were missed or how large they are.
//!
//! A read waits for its next message as long as it makes progress, and no longer than
//! [`STALL_LIMIT`] without any. The NATS client's pull pipeline behind a consumer's message
//! stream can wedge (measured on a loaded machine: the server had delivered every message
//! pulled and had no pull request waiting, while the client waited for more and pulled
//! nothing): a read that hears nothing for [`PROBE_AFTER`] while the server holds no pull
//! request of it reopens its consumer where it stopped, which pulls afresh.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt as _;
use tidings_shared::nats::epoch_of;
use tidings_shared::subject::EVENTS_STREAM;
use tidings_shared::{Channel, Error as SharedError};

use crate::AppState;
use crate::error::Result;
use crate::message::{Encoded, Limits, encode_stored};
use crate::metrics::Metrics;
use crate::position::{Link, StreamPosition};

/// How long a read waits for its next message before it asks the server whether a pull
/// request of it is still being served (if none is, the read reopens its consumer).
const PROBE_AFTER: Duration = Duration::from_secs(2);
/// How long a read may go without receiving any message before it is abandoned.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Most messages one pull of a history read asks for (its bytes are bounded by the budget).
const MAX_PULL: usize = 500;
/// How long the server keeps a history read's consumer once nobody reads it (a reader that
/// vanished without deleting it).
const CONSUMER_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Bytes of the first chunk a read hands out; each next one is twice as large, up to the
/// budget. The first messages reach the client while the rest is still being pulled
/// (with whole-budget chunks, a recovery of 10,000 small messages wrote nothing for its
/// first 40 ms), and a long read still moves in budget-sized chunks.
const FIRST_CHUNK: usize = 16 << 10;

/// What a recovery found.
pub struct Replay {
    /// The stream's current epoch.
    pub epoch: String,
    /// Whether the messages returned complete the client's history after `since`.
    pub recovered: bool,
    /// The missed messages, read chunk by chunk (none when nothing is missed).
    pub reader: Option<Reader>,
    /// How many messages the reader will hand out (fewer if some cannot be delivered).
    pub missed: u64,
    /// Whether more messages were held than returned (over the cap or the limit).
    pub truncated: bool,
    /// Whether the client's epoch was the current one (else its sequences mean nothing now).
    pub same_epoch: bool,
    /// Whether everything after `since` is still held (same epoch, nothing dropped), however
    /// much of it was returned.
    pub complete: bool,
}

/// How long an epoch read from the stream is trusted for a client that missed nothing.
const EPOCH_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

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
            reader: None,
            missed: 0,
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
    // A client exactly at the live position needs only the epoch: one read within
    // `EPOCH_FRESH` answers every client of a reconnect storm. Only exactly there: a client
    // past the position holds a sequence this node has not seen on the channel, which a
    // recreated stream (whose advisory may not have arrived yet) also looks like, so the
    // stream is read for it as before.
    if let Some(position) = live_from
        && since.seq == position
        && let Some(current) = state.recent_epoch(EPOCH_FRESH)
        && since.epoch.as_deref().is_none_or(|e| e == current)
    {
        return Ok(Replay::up_to_date(current));
    }
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
    let reader = if start.seq > info.state.last_sequence {
        None
    } else {
        Some(Reader::open(&stream, channel, start, None, cap, ReadBudget::of(state)).await?)
    };
    let held = reader.as_ref().map_or(0, |r| r.held);
    let truncated = reader.as_ref().is_some_and(|r| r.truncated);
    let complete = same_epoch
        && complete_after(
            &stream,
            channel,
            since,
            held,
            info.state.first_sequence,
            info.config.max_messages_per_subject,
        )
        .await;
    Ok(Replay {
        epoch: current,
        recovered: complete && !truncated,
        missed: held.min(cap as u64),
        reader,
        truncated,
        complete,
        same_epoch,
    })
}

/// How much a read may hold at once.
#[derive(Debug, Clone, Copy)]
pub struct ReadBudget {
    /// Bytes of stored messages per chunk (`TIDINGS_REPLAY_BUDGET_BYTES`).
    pub bytes: usize,
    /// The message limits (a stored message can be at most `payload` bytes and still be sent).
    pub limits: Limits,
    /// The largest message the NATS server accepts (its `max_payload`, headers included): a
    /// pull is never smaller, or one stored message larger than the budget would stop the
    /// read (the server refuses a pull that no message fits).
    pub largest: usize,
}

impl ReadBudget {
    /// The node's budget.
    pub fn of(state: &AppState) -> Self {
        ReadBudget {
            bytes: state.config.replay_budget(),
            limits: Limits::of(&state.config),
            largest: largest_message(&state.nats),
        }
    }

    /// Bytes per pull: the budget, so that what the NATS client buffers ahead stays within
    /// a few budgets. Pulls are bounded by bytes, not by a message count derived from the
    /// largest payload allowed: that count (16 at 64 KiB payloads and a 1 MiB budget) made a
    /// recovery of 10,000 small messages 625 round trips instead of 20.
    fn pull_bytes(&self) -> usize {
        // Room for the subject and the protocol line around the largest message (at least
        // NATS's default limit: `largest` can be lower than what another server of the
        // cluster, or this one before its limit was lowered, stored).
        self.bytes.max(self.largest.max(1 << 20).saturating_add(4096))
    }
}

/// The largest message `nats`' server accepts, headers included.
pub fn largest_message(nats: &async_nats::Client) -> usize {
    nats.server_info().max_payload
}

/// A message a read received, with what its delivery info says (parsed once).
struct Received {
    msg: async_nats::Message,
    /// Its stream sequence.
    seq: u64,
    /// Messages the consumer still holds after it.
    pending: u64,
    published: SystemTime,
}

/// A history read in progress: one channel's stored messages from a sequence on, handed out
/// in chunks of at most the budget's bytes, `prev` chained.
pub struct Reader {
    stream: JsStream,
    consumer: String,
    messages: Option<pull::Stream>,
    channel: Channel,
    budget: ReadBudget,
    /// Messages left to read from the stream (as the consumer counts them).
    pending: u64,
    /// Messages left to hand out (the cap).
    left: usize,
    until: Option<u64>,
    prev: u64,
    /// The stream sequence after the last message read: where a reopened consumer starts.
    next_seq: u64,
    /// Bytes of stored messages the next chunk holds at most.
    chunk_bytes: usize,
    /// The consumer sequence of the last message received from the current consumer.
    consumer_seq: u64,
    /// How many messages of the channel the stream held from the start sequence on.
    pub held: u64,
    /// Whether more were held than the cap lets out.
    pub truncated: bool,
}

impl Reader {
    /// Starts reading `channel` at `from.seq`, the first message chained to `from.prev`;
    /// sequences at or after `until` (exclusive) are not read; at most `cap` are handed out.
    pub async fn open(
        stream: &JsStream,
        channel: &Channel,
        from: Link,
        until: Option<u64>,
        cap: usize,
        budget: ReadBudget,
    ) -> Result<Reader> {
        let (consumer, messages, held) = open_consumer(stream, channel, from.seq.max(1), budget).await?;
        Ok(Reader {
            stream: stream.clone(),
            consumer,
            messages,
            channel: channel.clone(),
            budget,
            pending: held,
            left: cap,
            until,
            prev: from.prev,
            next_seq: from.seq.max(1),
            chunk_bytes: FIRST_CHUNK.min(budget.bytes),
            consumer_seq: 0,
            held,
            truncated: until.is_none() && held > cap as u64,
        })
    }

    /// The next chunk, oldest first, at most the budget's bytes of stored messages (at least
    /// one message; the first chunks smaller, see [`FIRST_CHUNK`]); `None` once everything
    /// is handed out (the consumer is then deleted).
    pub async fn next_chunk(&mut self, metrics: &Metrics) -> Result<Option<Vec<Arc<Encoded>>>> {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        let limit = self.chunk_bytes;
        self.chunk_bytes = limit.saturating_mul(2).min(self.budget.bytes);
        // Rejected messages are not handed out: a chunk that has only met those reads on (an
        // empty chunk means the end of the read).
        while bytes < limit || chunk.is_empty() {
            let Some(next) = self.next_stored().await? else {
                break;
            };
            let (payload, headers, link, stored_at) = next;
            bytes += payload.len();
            match encode_stored(
                &payload,
                headers.as_ref(),
                &self.channel,
                Some(link),
                stored_at,
                self.budget.limits,
            ) {
                Ok(m) => {
                    self.prev = link.seq;
                    self.left -= 1;
                    chunk.push(m);
                }
                // Never delivered live either; keep the chain pointing at what was.
                Err(rejected) => metrics.rejected_messages.with_label_values(&[rejected.reason]).inc(),
            }
        }
        let exhausted = self.pending == 0 || (self.left == 0 && self.until.is_none());
        if chunk.is_empty() || exhausted {
            // Deleted as soon as nothing is left to read, before the last chunk is written.
            self.finish().await;
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }

    /// The next stored message in range, with its link (chained to the last handed out).
    async fn next_stored(&mut self) -> Result<Option<(bytes::Bytes, Option<async_nats::HeaderMap>, Link, SystemTime)>> {
        if self.pending == 0 {
            return Ok(None);
        }
        let capped = self.left == 0;
        if capped && self.until.is_none() {
            return Ok(None);
        }
        let Some(Received {
            msg,
            seq,
            pending,
            published,
        }) = self.next_message().await?
        else {
            return Ok(None);
        };
        self.pending = pending;
        self.next_seq = seq.saturating_add(1);
        if self.until.is_some_and(|u| seq >= u) {
            self.pending = 0;
            return Ok(None);
        }
        if capped {
            // A message before `until` beyond the cap: the range is more than was handed out.
            self.truncated = true;
            self.pending = 0;
            return Ok(None);
        }
        let link = Link { seq, prev: self.prev };
        Ok(Some((msg.payload, msg.headers, link, published)))
    }

    /// The next message the consumer delivers; `None` if a reopened consumer finds nothing
    /// left. Waits while the read makes progress (a message, or the server still serving a
    /// pull request of it), reopening the consumer where it stopped when it does not, and
    /// gives up after [`STALL_LIMIT`] without a message.
    ///
    /// The consumer acknowledges nothing, so the server counts a message delivered once it
    /// sent it: a pull lost on the way (a NATS reconnect) shows as a jump in the consumer's
    /// sequence, and the read reopens where it stopped rather than skip what was lost. An
    /// error from the consumer (deleted for idleness while the caller did not ask for more,
    /// lost with its server) is answered the same way, once; a second in a row fails the read.
    async fn next_message(&mut self) -> Result<Option<Received>> {
        let quiet_since = Instant::now();
        let mut failed = false;
        loop {
            if quiet_since.elapsed() >= STALL_LIMIT {
                return Err(SharedError::Timeout("a history read").into());
            }
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            let reopen = match tokio::time::timeout(PROBE_AFTER, messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let info = m.info().map_err(SharedError::nats)?;
                    if info.consumer_sequence == self.consumer_seq + 1 {
                        self.consumer_seq = info.consumer_sequence;
                        let (seq, pending) = (info.stream_sequence, info.pending);
                        let published = SystemTime::from(info.published);
                        let msg = m.split().0;
                        return Ok(Some(Received {
                            msg,
                            seq,
                            pending,
                            published,
                        }));
                    }
                    tracing::info!(channel = %self.channel, from = self.next_seq, "history read lost messages in transit; reopening its consumer");
                    true
                }
                Ok(Some(Err(e))) if !failed => {
                    tracing::info!(channel = %self.channel, from = self.next_seq, error = %e, "history read failed; reopening its consumer");
                    failed = true;
                    true
                }
                Ok(Some(Err(e))) => return Err(SharedError::nats(e).into()),
                // The client ended the consumer's stream (it should not): read on afresh.
                Ok(None) => true,
                Err(_) => !pull_waiting(&self.stream, &self.consumer).await,
            };
            if reopen {
                self.reopen().await?;
            }
        }
    }

    /// Replaces the consumer with a new one starting after the last message read.
    async fn reopen(&mut self) -> Result<()> {
        self.messages = None;
        self.delete_consumer().await;
        let (consumer, messages, pending) =
            open_consumer(&self.stream, &self.channel, self.next_seq, self.budget).await?;
        self.consumer = consumer;
        self.messages = messages;
        self.pending = pending;
        self.consumer_seq = 0;
        Ok(())
    }

    async fn delete_consumer(&mut self) {
        if !self.consumer.is_empty() {
            let name = std::mem::take(&mut self.consumer);
            if let Err(e) = self.stream.delete_consumer(&name).await {
                tracing::debug!(error = %e, "deleting a history consumer failed (it expires by itself)");
            }
        }
    }

    /// Deletes the consumer (it would expire by itself, later).
    async fn finish(&mut self) {
        self.pending = 0;
        self.messages = None;
        self.delete_consumer().await;
    }

    /// Reads everything left into memory, stopping past `max_bytes` of stored messages (then
    /// `truncated` is set): for short reads (gap repair, a history page).
    pub async fn collect(mut self, metrics: &Metrics, max_bytes: usize) -> Result<(Vec<Arc<Encoded>>, bool)> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(chunk) = self.next_chunk(metrics).await? {
            bytes += chunk.iter().map(|m| m.json().len()).sum::<usize>();
            out.extend(chunk);
            if bytes > max_bytes {
                self.finish().await;
                return Ok((out, true));
            }
        }
        Ok((out, self.truncated))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A read abandoned half-way (the client went): delete its consumer off this task.
        if !self.consumer.is_empty() {
            let stream = self.stream.clone();
            let name = std::mem::take(&mut self.consumer);
            tokio::spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

/// Whether the server holds a pull request of `consumer` (then it is serving the read,
/// however slowly). False if the consumer is gone or cannot be asked. (A free function: a
/// `&Reader` held across an await would make the replay's future not `Send`.)
async fn pull_waiting(stream: &JsStream, consumer: &str) -> bool {
    match stream.consumer_info(consumer).await {
        Ok(info) => info.num_waiting > 0,
        Err(_) => false,
    }
}

/// Creates a consumer of `channel` from `start` on: its name, its messages (none if it holds
/// nothing) and how many it holds. Like an ordered consumer (no acks, one replica, in
/// memory, gone soon after its reader), but its pulls are bounded by the budget's bytes.
async fn open_consumer(
    stream: &JsStream,
    channel: &Channel,
    start: u64,
    budget: ReadBudget,
) -> Result<(String, Option<pull::Stream>, u64)> {
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: channel.durable_subject(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ack_policy: AckPolicy::None,
            inactive_threshold: CONSUMER_IDLE_LIMIT,
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(SharedError::nats)?;
    let held = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let messages = if held > 0 {
        let pulls = consumer
            .stream()
            .max_messages_per_batch(MAX_PULL)
            .max_bytes_per_batch(budget.pull_bytes());
        Some(pulls.messages().await.map_err(SharedError::nats)?)
    } else {
        None
    };
    Ok((name, messages, held))
}

/// The stream handle, for callers that read several ranges.
pub async fn stream(state: &AppState) -> Result<JsStream> {
    events_stream(&state.js).await
}
