//! `GET /sse?channels=…`: Server-Sent Events for clients that cannot use WebSockets
//! (contract §5). Same tokens, same access rules, same message JSON, same bounded queue and
//! slow-consumer rule as WebSocket connections.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidings_shared::auth::Claims;
use tidings_shared::{Channel, ErrorCode};

use crate::AppState;
use crate::conn::{CLOSE_UNAUTHORIZED, ConnHandle, ConnSignal, Outbound, Outbox, OutboxReader};
use crate::error::{Error, Result};
use crate::extract::bearer_token;
use crate::history::Reader;
use crate::position::StreamPosition;
use crate::server::{Authenticated, PendingSlot};
use crate::session::{self, Registration};

/// Query of `GET /sse`.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    /// Comma-separated channel names.
    pub channels: String,
    /// The cursor to resume from, for a client that opens a new `EventSource` (which cannot
    /// set `Last-Event-ID`), e.g. because its channel list changed. The header wins.
    #[serde(default)]
    pub last_event_id: Option<String>,
}

/// Where an SSE client is: the stream's epoch, the stream position when it first connected
/// (`w`), and the last durable sequence it got per channel. Sent as the event `id`, e.g.
/// `e1732237200000000000;w120;project:p1=124;user:u1=130`, and read back from
/// `Last-Event-ID` on reconnect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Epoch of `TIDINGS_EVENTS` the sequences belong to.
    pub epoch: String,
    /// Stream position at first connect: nothing of any listed channel up to it is missing.
    pub watermark: u64,
    /// Last sequence received per channel.
    pub seqs: BTreeMap<Channel, u64>,
}

impl Cursor {
    /// The `id:` value.
    pub fn encode(&self) -> String {
        let mut out = format!("e{};w{}", self.epoch, self.watermark);
        for (c, s) in &self.seqs {
            out.push_str(&format!(";{c}={s}"));
        }
        out
    }

    /// Parses a `Last-Event-ID`; `None` for anything malformed (then the client starts afresh).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split(';');
        let epoch = parts.next()?.strip_prefix('e')?.to_owned();
        // An epoch is a stream's creation time in nanoseconds: digits, and not many.
        if epoch.len() > 40 || !epoch.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let watermark = parts.next()?.strip_prefix('w')?.parse().ok()?;
        let mut seqs = BTreeMap::new();
        for p in parts {
            let (c, seq) = p.rsplit_once('=')?;
            seqs.insert(Channel::parse(c).ok()?, seq.parse().ok()?);
        }
        Some(Cursor { epoch, watermark, seqs })
    }

    /// Where to recover `channel` from.
    fn since(&self, channel: &Channel) -> u64 {
        self.seqs.get(channel).copied().unwrap_or(0).max(self.watermark)
    }
}

/// Longest `Last-Event-ID` (header or query) read: a cursor names at most the channels of
/// one connection.
pub const MAX_CURSOR_BYTES: usize = 80 * 1024;

/// The handler.
pub async fn handler(State(state): State<AppState>, parts: Parts, Query(q): Query<SseQuery>) -> Result<Response> {
    session::admit(&state)?;
    let claims = state
        .authenticate(bearer_token(&parts).as_deref())
        .await
        .map_err(|r| Error::api(ErrorCode::Unauthorized, format!("unauthorized: {r}")))?;
    let channels = requested_channels(&q.channels, &claims, state.config.max_subscriptions)?;
    let tx = Outbox::new(state.config.outbound_queue as usize);
    let rx = OutboxReader(tx.clone());
    let signal = Arc::new(ConnSignal::default());
    let handle = ConnHandle {
        tx,
        signal: signal.clone(),
        user: claims.sub.as_str().into(),
    };
    let registration = Registration::new(state.clone(), handle, &claims)?;
    // Out of the pool of pending connections for as long as the stream lasts.
    let exchange = parts
        .extensions
        .get::<Arc<PendingSlot>>()
        .map(|slot| slot.authenticated());
    // Resume from Last-Event-ID, or start at the stream's current position: either way each
    // channel is subscribed holding, read back from its position, then joined with what was
    // held, so nothing stored around the connect is missed or repeated. That happens as the
    // stream is read, one channel and one chunk at a time, so memory stays bounded.
    let mut cursor = starting_cursor(&state, &parts, q.last_event_id.as_deref()).await?;
    // A cursor names only what this stream carries: it is echoed in every event id.
    cursor.seqs.retain(|c, _| channels.contains(c));
    let expires = session::token_deadline(claims.exp, state.verifier.leeway());
    let sse = SseStream {
        rx,
        signal,
        expires,
        cursor,
        pending: VecDeque::new(),
        batch: Vec::new(),
        registration,
        joining: channels.into(),
        catching_up: None,
        _exchange: exchange,
        farewell_sent: false,
    };
    let stream = futures::stream::unfold(sse, |mut sse| async move {
        let event = sse.next_event().await?;
        Some((Ok::<_, Infallible>(event), sse))
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_millis(state.config.heartbeat_ms));
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// The channels of `?channels=a,b`, each readable with `claims`, without repeats: at least
/// one, at most `max`.
fn requested_channels(list: &str, claims: &Claims, max: usize) -> Result<Vec<Channel>> {
    let mut channels: Vec<Channel> = Vec::new();
    for name in list.split(',').filter(|s| !s.is_empty()) {
        let c = Channel::parse(name)?;
        if !claims.can_read(&c) {
            return Err(Error::api(ErrorCode::Forbidden, format!("this token may not read {c}")));
        }
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    if channels.is_empty() {
        return Err(Error::api(ErrorCode::BadRequest, "channels is empty"));
    }
    if channels.len() > max {
        let msg = format!("at most {max} channels per connection");
        return Err(Error::api(ErrorCode::BadRequest, msg));
    }
    Ok(channels)
}

/// Where the client resumes: its `Last-Event-ID` (header, else query), or the stream's
/// current position.
async fn starting_cursor(state: &AppState, parts: &Parts, last_event_id: Option<&str>) -> Result<Cursor> {
    let given = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(last_event_id);
    if given.is_some_and(|c| c.len() > MAX_CURSOR_BYTES) {
        return Err(Error::api(
            ErrorCode::BadRequest,
            format!("Last-Event-ID is over {MAX_CURSOR_BYTES} bytes"),
        ));
    }
    let resume = given.and_then(Cursor::parse);
    if let Some(c) = resume {
        return Ok(c);
    }
    let mut stream = crate::history::stream(state).await?;
    let info = stream.info().await.map_err(tidings_shared::Error::nats)?;
    Ok(Cursor {
        epoch: tidings_shared::nats::epoch_of(info),
        watermark: info.state.last_sequence,
        seqs: BTreeMap::new(),
    })
}

/// The SSE event for a message; durable ones advance the cursor and carry it as `id`. A
/// durable message at or below the channel's last one sent is not sent again.
fn event_for(enc: &crate::message::Encoded, cursor: &mut Cursor) -> Option<Event> {
    let event = Event::default().event("message").data(enc.json());
    match enc.frame.seq {
        Some(seq) if cursor.seqs.get(&enc.frame.channel).is_some_and(|last| seq <= *last) => None,
        Some(seq) => {
            cursor.seqs.insert(enc.frame.channel.clone(), seq);
            Some(event.id(cursor.encode()))
        }
        None => Some(event),
    }
}

/// One SSE client: its queue, its cursor, and its registration (dropped with the response
/// body when the client goes away, which unsubscribes it).
struct SseStream {
    rx: OutboxReader,
    signal: Arc<ConnSignal>,
    expires: tokio::time::Instant,
    cursor: Cursor,
    pending: VecDeque<Event>,
    batch: Vec<Outbound>,
    registration: Registration,
    /// Channels not joined yet, in the order asked.
    joining: VecDeque<Channel>,
    /// The channel being caught up, with what is left of its history read.
    catching_up: Option<(Channel, Option<Reader>)>,
    /// Keeps the connection out of the pending pool while the stream lasts.
    _exchange: Option<Authenticated>,
    /// Whether the closing `revoked` event went out.
    farewell_sent: bool,
}

impl SseStream {
    /// The next event, or `None` when the stream ends (closed by the server, token expired,
    /// a history read failed: the client resumes from its last event id).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.signal.code() != 0 {
                return self.farewell();
            }
            if tokio::time::Instant::now() >= self.expires {
                return None;
            }
            match self.catch_up_step().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "SSE catch-up failed: ending the stream");
                    return None;
                }
            }
            tokio::select! {
                biased;
                _ = self.signal.closed() => return self.farewell(),
                () = tokio::time::sleep_until(self.expires) => return None,
                n = self.rx.0.recv_many(&mut self.batch, 256) => {
                    if n == 0 {
                        return None;
                    }
                    let metrics = self.registration.state.metrics.clone();
                    let mut batch = std::mem::take(&mut self.batch);
                    for out in batch.drain(..) {
                        let enc = match out {
                            Outbound::Message(enc) => enc,
                            Outbound::Unsubscribed(channel) => {
                                self.registration.unsubscribe(&channel);
                                let data = serde_json::json!({"channel": *channel, "reason": "server"});
                                self.pending.push_back(Event::default().event("unsubscribed").data(data.to_string()));
                                continue;
                            }
                            Outbound::Frame(_) => continue,
                        };
                        let Some(event) = event_for(&enc, &mut self.cursor) else { continue };
                        let latency = SystemTime::now().duration_since(enc.stored_at).unwrap_or_default();
                        metrics.delivery_latency.observe(latency.as_secs_f64());
                        metrics.messages_delivered.inc();
                        self.pending.push_back(event);
                    }
                    self.batch = batch;
                }
            }
        }
    }

    /// One step of catching up: join the next channel (holding its live messages), or queue
    /// the next chunk of its history, or release what was held. `false` once every channel
    /// is caught up.
    async fn catch_up_step(&mut self) -> Result<bool> {
        if let Some((channel, reader)) = &mut self.catching_up {
            if let Some(r) = reader {
                let metrics = self.registration.state.metrics.clone();
                if let Some(chunk) = r.next_chunk(&metrics).await? {
                    metrics.recovered_messages.inc_by(chunk.len() as u64);
                    self.queue(chunk);
                    return Ok(true);
                }
            }
            let held = self.registration.release(channel);
            self.catching_up = None;
            self.queue(held);
            return Ok(true);
        }
        let Some(c) = self.joining.pop_front() else {
            return Ok(false);
        };
        self.registration.join(&c, true).await?;
        // The cursor, not the registration, keeps what was sent on each channel.
        self.registration.channels.insert(c.clone(), 0);
        let since = StreamPosition {
            seq: self.cursor.since(&c),
            epoch: Some(self.cursor.epoch.clone()),
        };
        let replay = self.registration.catch_up(&c, &since, None).await?;
        if replay.epoch != self.cursor.epoch {
            // Old epoch: sequences restart, so does the cursor.
            self.cursor = Cursor {
                epoch: replay.epoch.clone(),
                watermark: 0,
                seqs: BTreeMap::new(),
            };
        }
        self.catching_up = Some((c, replay.reader));
        Ok(true)
    }

    /// The last event of a stream the server closes: `event: revoked` when an operator
    /// disconnected the user or revoked the token (EventSource shows no close reason, and the
    /// client must get a new token rather than reconnect with this one); then the end.
    fn farewell(&mut self) -> Option<Event> {
        if self.signal.code() != CLOSE_UNAUTHORIZED || std::mem::replace(&mut self.farewell_sent, true) {
            return None;
        }
        let data = serde_json::json!({"reason": crate::ws::REVOKED});
        Some(Event::default().event("revoked").data(data.to_string()))
    }

    /// Queues the events of messages not sent yet.
    fn queue(&mut self, messages: Vec<Arc<crate::message::Encoded>>) {
        let metrics = &self.registration.state.metrics;
        for m in messages {
            if let Some(e) = event_for(&m, &mut self.cursor) {
                metrics.messages_delivered.inc();
                self.pending.push_back(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let mut c = Cursor {
            epoch: "123".into(),
            watermark: 7,
            seqs: BTreeMap::new(),
        };
        c.seqs.insert(Channel::parse("project:p1").unwrap(), 12);
        c.seqs.insert(Channel::parse("user:u1").unwrap(), 40);
        assert_eq!(c.encode(), "e123;w7;project:p1=12;user:u1=40");
        assert_eq!(Cursor::parse(&c.encode()), Some(c.clone()));
        assert_eq!(c.since(&Channel::parse("project:p1").unwrap()), 12);
        assert_eq!(c.since(&Channel::Broadcast), 7);
        let long = format!("e{};w1", "1".repeat(41));
        for bad in [
            "",
            "x",
            "e1",
            "e1;wx",
            "e1;w2;project:a.b=3",
            "e1;w2;project:p=x",
            "eabc;w1",
            &long,
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
