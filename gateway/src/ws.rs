//! `GET /ws`: one WebSocket session (contract §4).
//!
//! Each connection is one task. It reads commands and answers them directly, and writes
//! channel messages from its bounded queue (filled by [`crate::hub`]) in batches: every
//! frame already queued goes out in one flush. Heartbeats, token expiry and close requests
//! (slow consumer, drain) are branches of the same `select!`, so an idle connection costs
//! one task, one queue and the socket's buffers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use tidings_shared::auth::{Claims, now_unix};
use tidings_shared::codec::WireFormat;
use tidings_shared::frame::{ClientFrame, ErrorBody, Reply, ServerFrame, Welcome};
use tidings_shared::{Channel, Error as SharedError, ErrorCode};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::AppState;
use crate::error::Error;
use crate::extract::bearer_token;
use crate::hub::{
    CLOSE_DRAINING, CLOSE_RATE_LIMITED, CLOSE_SLOW_CONSUMER, CLOSE_TOO_LARGE, CLOSE_UNAUTHORIZED, ConnHandle, ConnId,
    ConnSignal, Outbound,
};
use crate::limit::{RateLimiter, Verdict};
use crate::publish;

/// How many queued frames one write batch takes at most.
const WRITE_BATCH: usize = 256;
/// How long a close frame may take to leave before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection, allocated up front by tungstenite: small, because most
/// connections are idle and client commands are small; a larger frame still works (the
/// buffer grows to the frame's length, up to the frame limit). 1 KiB instead of the 128 KiB
/// default is most of what makes an idle connection cheap.
const READ_BUFFER: usize = 1024;
/// Bytes buffered before a write goes to the socket; batches are flushed explicitly anyway.
const WRITE_BUFFER: usize = 16 * 1024;

/// The subprotocol the client asked for, in its order of preference.
fn pick_format(headers: &HeaderMap) -> Option<WireFormat> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(WireFormat::from_subprotocol)
}

/// Upgrade handler. Authentication happens after the upgrade so that a browser can see the
/// 4001 close code (an HTTP 401 during the handshake is invisible to page scripts).
pub async fn handler(State(state): State<AppState>, parts: Parts, ws: WebSocketUpgrade) -> Response {
    if state.health.is_draining() {
        return Error::api(ErrorCode::Unavailable, "node is draining; reconnect to another").into_response();
    }
    if state.hub.connection_count() >= state.config.max_connections {
        return Error::api(ErrorCode::Unavailable, "node is at its connection limit").into_response();
    }
    let format = pick_format(&parts.headers);
    let token = bearer_token(&parts);
    let max = state.config.max_frame_bytes;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.max(WRITE_BUFFER) * 4 + WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max);
    let ws = match format {
        Some(f) => ws.protocols([f.subprotocol()]),
        None => ws,
    };
    // Split before the session future is built, so that the future holds two small halves
    // rather than the whole WebSocket for its lifetime.
    ws.on_upgrade(move |socket| {
        let (sink, stream) = socket.split();
        run(state, sink, stream, format.unwrap_or_default(), token)
    })
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

fn encode(format: WireFormat, frame: &ServerFrame) -> Option<Message> {
    match format.encode(frame) {
        Ok(bytes) if format.is_binary() => Some(Message::Binary(bytes)),
        Ok(bytes) => Utf8Bytes::try_from(bytes).ok().map(Message::Text),
        Err(e) => {
            tracing::error!(error = %e, "encoding a frame failed");
            None
        }
    }
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_owned()),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        sink.send(frame).await?;
        sink.close().await
    })
    .await;
}

/// Authenticates from the URL/header token or the first frame, within the configured auth
/// deadline (`TIDINGS_AUTH_DEADLINE_MS`).
async fn authenticate(
    state: &AppState,
    stream: &mut Stream,
    sink: &mut Sink,
    format: WireFormat,
    token: Option<String>,
) -> Result<(Claims, Option<u64>), String> {
    if let Some(token) = token {
        return state
            .verify(Some(&token))
            .map(|c| (c, None))
            .map_err(|r| r.as_str().to_owned());
    }
    let deadline = Duration::from_millis(state.config.auth_deadline_ms);
    let first = tokio::time::timeout(deadline, stream.next()).await;
    let frame = match first {
        Err(_) => {
            state.metrics.auth_failures.with_label_values(&["missing"]).inc();
            return Err(format!("no token within {deadline:?}"));
        }
        Ok(Some(Ok(Message::Text(t)))) => WireFormat::Json.decode_client(t.as_bytes(), state.config.max_frame_bytes),
        Ok(Some(Ok(Message::Binary(b)))) => WireFormat::Msgpack.decode_client(&b, state.config.max_frame_bytes),
        Ok(_) => return Err("connection closed before auth".to_owned()),
    };
    match frame {
        Ok(ClientFrame::Auth { id, token }) => state
            .verify(Some(&token))
            .map(|c| (c, id))
            .map_err(|r| r.as_str().to_owned()),
        _ => {
            let _ = send(
                sink,
                format,
                &ServerFrame::Error {
                    error: ErrorBody::new(ErrorCode::Unauthorized, "the first frame must be auth"),
                },
            )
            .await;
            state.metrics.auth_failures.with_label_values(&["missing"]).inc();
            Err("first frame was not auth".to_owned())
        }
    }
}

async fn send(sink: &mut Sink, format: WireFormat, frame: &ServerFrame) -> Result<(), axum::Error> {
    match encode(format, frame) {
        Some(m) => sink.send(m).await,
        None => Ok(()),
    }
}

async fn run(state: AppState, mut sink: Sink, mut stream: Stream, format: WireFormat, token: Option<String>) {
    let (claims, auth_id) = match Box::pin(authenticate(&state, &mut stream, &mut sink, format, token)).await {
        Ok(c) => c,
        Err(reason) => {
            tracing::debug!(%reason, "WebSocket refused");
            Box::pin(close(&mut sink, CLOSE_UNAUTHORIZED, &format!("unauthorized: {reason}"))).await;
            return;
        }
    };
    let (tx, rx) = mpsc::channel(state.config.outbound_queue as usize);
    let handle = ConnHandle {
        tx,
        signal: Arc::new(ConnSignal::default()),
        user: claims.sub.as_str().into(),
    };
    let id = state.hub.register(handle.clone());
    let session_id = format!("{}-{id}", state.node_id);
    let span = tracing::info_span!("ws", session = %session_id, user = %claims.sub);
    let mut session = Session {
        limiter: RateLimiter::new(state.config.command_rate, state.config.command_burst),
        state,
        id,
        handle,
        format,
        claims,
        channels: HashMap::new(),
        sink,
    };
    // The session is boxed apart from its rarely used parts (commands, closing), which are
    // boxed again where they run: an idle connection's task then holds only the loop's state.
    async move {
        if let Some(id) = auth_id {
            let reply = Reply {
                exp: Some(session.claims.exp),
                ..Reply::ok(Some(id))
            };
            session.send(&ServerFrame::Reply(reply)).await;
        }
        let welcome = ServerFrame::Welcome(Welcome {
            session: session_id,
            node: session.state.node_id.to_string(),
            user: session.claims.sub.clone(),
            heartbeat_ms: session.state.config.heartbeat_ms,
        });
        Box::pin(session.send(&welcome)).await;
        let reason = session.serve(stream, rx).await;
        tracing::debug!(reason, "WebSocket closed");
        session
            .state
            .hub
            .unregister(session.id, session.channels.drain().map(|(c, _)| c));
    }
    .instrument(span)
    .await;
}

struct Session {
    state: AppState,
    id: ConnId,
    handle: ConnHandle,
    format: WireFormat,
    claims: Claims,
    /// Subscribed channels, with the last durable `seq` written on each (0: none yet): a
    /// durable message at or below it is never written again, whichever way it came
    /// (replay, live, gap repair, a message queued before a re-subscription).
    channels: HashMap<Channel, u64>,
    sink: Sink,
    limiter: RateLimiter,
}

/// What [`Session::command`] tells the loop.
enum Next {
    Continue,
    Close(u16, &'static str),
}

/// When a session with a token expiring at `exp` ends: `exp` plus the same clock leeway the
/// verification allowed, so a token accepted within the leeway is not cut off at once.
fn token_deadline(exp: u64, leeway: u64) -> tokio::time::Instant {
    // Capped: an issuer may put any `exp` in a token.
    let left = exp
        .saturating_add(leeway)
        .saturating_sub(now_unix())
        .min(MAX_SESSION_SECS);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// Longest a token may keep a session open without a refresh (one year).
const MAX_SESSION_SECS: u64 = 365 * 86_400;

impl Session {
    async fn send(&mut self, frame: &ServerFrame) {
        if let Err(e) = send(&mut self.sink, self.format, frame).await {
            tracing::debug!(error = %e, "write failed");
        }
    }

    async fn reply(&mut self, reply: Reply) {
        self.send(&ServerFrame::Reply(reply)).await;
    }

    async fn error(&mut self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) {
        let frame = match id {
            Some(_) => ServerFrame::Reply(Reply::err(id, code, message)),
            None => ServerFrame::Error {
                error: ErrorBody::new(code, message),
            },
        };
        self.send(&frame).await;
    }

    /// The session loop; returns why it ended.
    async fn serve(&mut self, mut stream: Stream, mut rx: mpsc::Receiver<Outbound>) -> &'static str {
        let heartbeat = Duration::from_millis(self.state.config.heartbeat_ms);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = tokio::time::sleep_until(token_deadline(self.claims.exp, self.state.verifier.leeway()));
        tokio::pin!(expiry);
        let signal = self.handle.signal.clone();
        let mut last_seen = Instant::now();
        let mut batch: Vec<Outbound> = Vec::new();
        loop {
            tokio::select! {
                biased;
                code = signal.closed() => {
                    Box::pin(self.close_for(code)).await;
                    return "closed by server";
                }
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return "queue closed";
                    }
                    let written = tokio::select! {
                        r = self.write_batch(&mut batch) => r,
                        code = signal.closed() => {
                            Box::pin(self.close_for(code)).await;
                            return "closed by server during write";
                        }
                    };
                    if written.is_err() {
                        return "write failed";
                    }
                }
                incoming = stream.next() => {
                    last_seen = Instant::now();
                    match incoming {
                        None => return "peer went away",
                        Some(Err(e)) => {
                            if is_capacity_error(&e) {
                                Box::pin(close(&mut self.sink, CLOSE_TOO_LARGE, "frame too large")).await;
                                return "frame too large";
                            }
                            return "read error";
                        }
                        Some(Ok(Message::Close(_))) => return "peer closed",
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Text(t))) => {
                            let decoded = WireFormat::Json.decode_client(t.as_bytes(), self.state.config.max_frame_bytes);
                            if let Next::Close(code, reason) = Box::pin(self.command(decoded, &mut expiry)).await {
                                Box::pin(close(&mut self.sink, code, reason)).await;
                                return reason;
                            }
                        }
                        Some(Ok(Message::Binary(b))) => {
                            let decoded = WireFormat::Msgpack.decode_client(&b, self.state.config.max_frame_bytes);
                            if let Next::Close(code, reason) = Box::pin(self.command(decoded, &mut expiry)).await {
                                Box::pin(close(&mut self.sink, code, reason)).await;
                                return reason;
                            }
                        }
                    }
                }
                _ = ticker.tick() => {
                    if last_seen.elapsed() > heartbeat * 2 {
                        Box::pin(close(&mut self.sink, 1001, "heartbeat timeout")).await;
                        return "heartbeat timeout";
                    }
                    if self.sink.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                        return "write failed";
                    }
                }
                () = &mut expiry => {
                    Box::pin(close(&mut self.sink, CLOSE_UNAUTHORIZED, "token expired")).await;
                    return "token expired";
                }
            }
        }
    }

    /// Writes every queued frame, then flushes once.
    async fn write_batch(&mut self, batch: &mut Vec<Outbound>) -> Result<(), axum::Error> {
        let mut delivered = 0u64;
        for out in batch.drain(..) {
            let msg = match out {
                Outbound::Message(enc) => {
                    if !self.admit(&enc) {
                        continue;
                    }
                    delivered += 1;
                    let latency = SystemTime::now().duration_since(enc.stored_at).unwrap_or_default();
                    self.state.metrics.delivery_latency.observe(latency.as_secs_f64());
                    enc.ws_message(self.format)
                }
                Outbound::Frame(m) => *m,
            };
            self.sink.feed(msg).await?;
        }
        self.sink.flush().await?;
        self.state.metrics.messages_delivered.inc_by(delivered);
        Ok(())
    }

    /// Whether a channel message goes out: the channel is still subscribed and, for a
    /// durable message, its `seq` is beyond the last one written (which it then becomes).
    fn admit(&mut self, enc: &crate::message::Encoded) -> bool {
        let Some(last) = self.channels.get_mut(&enc.frame.channel) else {
            return false;
        };
        match enc.frame.seq {
            Some(seq) if seq <= *last => false,
            Some(seq) => {
                *last = seq;
                true
            }
            None => true,
        }
    }

    async fn close_for(&mut self, code: u16) {
        match code {
            CLOSE_DRAINING => {
                let frame = ServerFrame::Reconnect {
                    reason: "shutdown".into(),
                    retry_ms: fastrand::u64(0..=1000),
                };
                self.send(&frame).await;
                close(&mut self.sink, code, "node draining").await;
            }
            CLOSE_SLOW_CONSUMER => close(&mut self.sink, code, "slow consumer: outbound queue full").await,
            _ => close(&mut self.sink, code, "closed by server").await,
        }
    }

    /// Handles one decoded (or undecodable) client frame.
    async fn command(
        &mut self,
        decoded: Result<ClientFrame, SharedError>,
        expiry: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Next {
        match self.limiter.check(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Limit => {
                let id = decoded.as_ref().ok().and_then(ClientFrame::id);
                self.error(id, ErrorCode::RateLimited, "too many commands; slow down")
                    .await;
                return Next::Continue;
            }
            Verdict::Abuse => return Next::Close(CLOSE_RATE_LIMITED, "rate limit abused"),
        }
        let frame = match decoded {
            Ok(f) => f,
            Err(e) => {
                let id = match &e {
                    SharedError::BadFrame { id, .. } => *id,
                    _ => None,
                };
                self.error(id, e.code(), e.to_string()).await;
                return Next::Continue;
            }
        };
        match frame {
            ClientFrame::Ping { id } => self.send(&ServerFrame::Pong { id }).await,
            ClientFrame::Subscribe {
                id,
                channel,
                since,
                epoch,
            } => self.subscribe(id, &channel, since, epoch).await,
            ClientFrame::Unsubscribe { id, channel } => match Channel::parse(&channel) {
                Err(e) => self.error(id, e.code(), e.to_string()).await,
                Ok(c) => {
                    if self.channels.remove(&c).is_some() {
                        self.state.hub.unsubscribe(self.id, &c);
                    }
                    let reply = Reply {
                        channel: Some(c),
                        ..Reply::ok(id)
                    };
                    self.reply(reply).await;
                }
            },
            ClientFrame::Publish {
                id,
                channel,
                event,
                data,
                durable,
                msg_id,
            } => self.publish(id, &channel, event, data, durable, msg_id).await,
            ClientFrame::Ack { id, channel, seq } => self.ack(id, &channel, seq).await,
            ClientFrame::Auth { id, token } => self.refresh(id, &token, expiry).await,
            ClientFrame::Presence { id, channel } => self.presence(id, &channel).await,
        }
        Next::Continue
    }

    /// Parses a channel and checks the token may read it; answers the error itself.
    async fn readable(&mut self, id: Option<u64>, channel: &str) -> Option<Channel> {
        match Channel::parse(channel) {
            Err(e) => {
                self.error(id, e.code(), e.to_string()).await;
                None
            }
            Ok(c) if !self.claims.can_read(&c) => {
                self.error(id, ErrorCode::Forbidden, format!("this token may not read {c}"))
                    .await;
                None
            }
            Ok(c) => Some(c),
        }
    }

    async fn subscribe(&mut self, id: Option<u64>, channel: &str, since: Option<u64>, epoch: Option<String>) {
        let Some(c) = self.readable(id, channel).await else {
            return;
        };
        let is_new = !self.channels.contains_key(&c);
        if is_new && self.channels.len() >= self.state.config.max_subscriptions {
            let msg = format!(
                "at most {} subscriptions per connection",
                self.state.config.max_subscriptions
            );
            self.error(id, ErrorCode::BadRequest, msg).await;
            return;
        }
        // With `since`, live messages are held while the history is read, then joined.
        let hold = since.is_some();
        let Ok(position) = self.state.hub.subscribe(self.id, &c, self.handle.clone(), hold).await else {
            self.error(
                id,
                ErrorCode::Unavailable,
                "NATS did not confirm the subscription; retry",
            )
            .await;
            return;
        };
        let Some(since) = since else {
            self.channels.entry(c.clone()).or_insert(0);
            // `seq` (an extra field): the stream position from which this subscription
            // delivers every durable message of the channel. A client that has received
            // nothing yet recovers from there after a disconnect.
            let reply = Reply {
                channel: Some(c),
                epoch: self.state.current_epoch(),
                recovered: Some(true),
                missed: Some(0),
                seq: Some(position),
                ..Reply::ok(id)
            };
            return self.reply(reply).await;
        };
        // The client asks for everything after `since` (it may have dropped messages this
        // session already wrote, on seeing a gap): that is the floor now.
        self.channels.insert(c.clone(), since);
        let cap = self.state.config.replay_max as usize;
        // `live_from`: every message after `position` reaches this subscription live (held
        // until the reply is out; what was stored while the channel was being opened was read
        // back before it became ready). A client already past it is answered without reading
        // any message back, once the stream's current epoch is confirmed to be its own.
        let live_from = (position > 0).then_some(position);
        let replay = match crate::history::replay(&self.state, &c, since, epoch.as_deref(), cap, live_from).await {
            Ok(r) => r,
            Err(e) => {
                // Leave nothing half-done: the client retries the whole subscribe.
                self.channels.remove(&c);
                self.state.hub.unsubscribe(self.id, &c);
                return self
                    .error(id, ErrorCode::Unavailable, format!("history unavailable: {e}"))
                    .await;
            }
        };
        if !replay.same_epoch {
            // Sequences restarted: what was written before says nothing about them.
            self.channels.insert(c.clone(), 0);
        }
        let reply = Reply {
            channel: Some(c.clone()),
            epoch: Some(replay.epoch.clone()),
            recovered: Some(replay.recovered),
            missed: Some(replay.messages.len() as u64),
            ..Reply::ok(id)
        };
        self.reply(reply).await;
        let held = self.state.hub.release(self.id, &c);
        let replayed = replay.messages.len() as u64;
        let mut written = 0u64;
        for m in replay.messages.into_iter().chain(held) {
            if !self.admit(&m) {
                continue;
            }
            if self.sink.feed(m.ws_message(self.format)).await.is_err() {
                return;
            }
            written += 1;
        }
        if self.sink.flush().await.is_ok() {
            self.state.metrics.recovered_messages.inc_by(replayed);
            self.state.metrics.messages_delivered.inc_by(written);
        }
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        channel: &str,
        event: String,
        data: serde_json::Value,
        durable: bool,
        msg_id: Option<String>,
    ) {
        let c = match Channel::parse(channel) {
            Ok(c) => c,
            Err(e) => return self.error(id, e.code(), e.to_string()).await,
        };
        if !self.claims.can_publish(&c) {
            return self
                .error(id, ErrorCode::Forbidden, format!("this token may not publish to {c}"))
                .await;
        }
        let prepared = match publish::prepare(&self.state, &c, event, data, msg_id, durable) {
            Ok(p) => p,
            Err(e) => return self.error(id, e.code(), e.to_string()).await,
        };
        if !durable {
            return match prepared.send_live(&self.state).await {
                Ok(()) => self.reply(Reply::ok(id)).await,
                Err(e) => self.error(id, e.code(), e.to_string()).await,
            };
        }
        // Wait for the JetStream ack off this task, so the connection keeps reading and
        // writing meanwhile; the reply goes through the outbound queue.
        let state = self.state.clone();
        let tx = self.handle.tx.clone();
        let format = self.format;
        tokio::spawn(
            async move {
                let reply = match prepared.send_durable(&state).await {
                    Ok(seq) => Reply {
                        seq: Some(seq),
                        ..Reply::ok(id)
                    },
                    Err(e) => Reply::err(id, e.code(), e.to_string()),
                };
                if let Some(m) = encode(format, &ServerFrame::Reply(reply)) {
                    let _ = tx.try_send(Outbound::Frame(Box::new(m)));
                }
            }
            .in_current_span(),
        );
    }

    async fn ack(&mut self, id: Option<u64>, channel: &str, seq: u64) {
        let Some(c) = self.readable(id, channel).await else {
            return;
        };
        match publish::forward_ack(&self.state, &self.claims.sub, &c, seq).await {
            Ok(()) => {
                if id.is_some() {
                    self.reply(Reply::ok(id)).await;
                }
            }
            Err(e) => self.error(id, e.code(), e.to_string()).await,
        }
    }

    async fn refresh(&mut self, id: Option<u64>, token: &str, expiry: &mut std::pin::Pin<&mut tokio::time::Sleep>) {
        let claims = match self.state.verify(Some(token)) {
            Ok(c) => c,
            Err(reason) => {
                let msg = format!("token refused ({reason}); the current one stays until it expires");
                return self.error(id, ErrorCode::Unauthorized, msg).await;
            }
        };
        if claims.sub != self.claims.sub {
            return self
                .error(id, ErrorCode::Forbidden, "a refreshed token must be for the same user")
                .await;
        }
        // Rights may have shrunk: leave channels the new token may not read.
        let lost: Vec<Channel> = self.channels.keys().filter(|c| !claims.can_read(c)).cloned().collect();
        for c in lost {
            self.channels.remove(&c);
            self.state.hub.unsubscribe(self.id, &c);
        }
        expiry
            .as_mut()
            .reset(token_deadline(claims.exp, self.state.verifier.leeway()));
        let exp = claims.exp;
        self.claims = claims;
        self.reply(Reply {
            exp: Some(exp),
            ..Reply::ok(id)
        })
        .await;
    }

    async fn presence(&mut self, id: Option<u64>, channel: &str) {
        let Some(c) = self.readable(id, channel).await else {
            return;
        };
        match self.state.presence.get(&c).await {
            Ok(p) => {
                self.reply(Reply {
                    users: Some(p.users),
                    ..Reply::ok(id)
                })
                .await
            }
            Err(e) => self.error(id, e.code(), e.to_string()).await,
        }
    }
}

/// Whether a read error is tungstenite refusing a frame over the size limit.
fn is_capacity_error(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(t, tokio_tungstenite::tungstenite::Error::Capacity(_));
        }
        source = s.source();
    }
    e.to_string().contains("Space limit exceeded")
}
