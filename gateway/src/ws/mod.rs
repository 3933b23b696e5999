//! `GET /ws`: one WebSocket session (contract §4).
//!
//! Each connection is one task. It reads commands and answers them directly (the handlers
//! are in [`commands`]; admission, registration and the token deadline in
//! [`crate::session`]), and writes channel messages from its bounded queue (filled by
//! [`crate::hub`]) in batches: every frame already queued goes out in one flush. Heartbeats, token expiry and close requests
//! (slow consumer, drain) are branches of the same `select!`, so an idle connection costs
//! one task, one queue and the socket's buffers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::future::OptionFuture;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use tidings_shared::ErrorCode;
use tidings_shared::auth::Claims;
use tidings_shared::codec::WireFormat;
use tidings_shared::frame::{ClientFrame, ErrorBody, Reply, ServerFrame, Welcome};
use tracing::Instrument as _;

use crate::AppState;
use crate::conn::{
    CLOSE_DRAINING, CLOSE_RATE_LIMITED, CLOSE_SLOW_CONSUMER, CLOSE_TOO_LARGE, CLOSE_UNAUTHORIZED, ConnHandle,
    ConnSignal, Outbound, Outbox, OutboxReader,
};
use crate::extract::bearer_token;
use crate::limit::{RateLimiter, Verdict};
use crate::server::{Authenticated, PendingSlot};
use crate::session::{self, Registration, token_deadline};

/// How many queued frames one write batch takes at most.
const WRITE_BATCH: usize = 256;
/// Capacity of the batch buffer a session keeps between writes (a burst's larger one is
/// freed after it).
const WRITE_BATCH_KEEP: usize = 16;
/// How long a close frame may take to leave before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection, allocated up front by tungstenite and kept: small, because
/// most connections are idle and client commands are small (a subscribe is ~100 bytes); a
/// larger frame still works (the buffer grows to the frame's length, up to the frame limit).
/// 256 bytes instead of the 128 KiB default is most of what makes an idle connection cheap
/// (1 KiB measured ~0.75 KB more per connection than this). It also caps one read: a frame
/// of 64 KiB takes 256 reads. Frames are rate-limited per frame, and large client frames
/// are rare (publishes), so the syscalls are the price of the memory.
const READ_BUFFER: usize = 256;
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
    if let Err(refused) = session::admit(&state) {
        return refused.into_response();
    }
    let format = pick_format(&parts.headers);
    let token = bearer_token(&parts);
    let pending = parts.extensions.get::<Arc<PendingSlot>>().cloned();
    let max = state.config.max_frame_bytes;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Room for the largest frame the gateway writes (larger messages are refused when
        // encoded, see `message::Encoded::new`) on top of a full buffer: no message the
        // gateway accepted can fail a connection's write.
        .max_write_buffer_size(state.config.outbound_frame_limit() + 2 * WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max);
    let ws = match format {
        Some(f) => ws.protocols([f.subprotocol()]),
        None => ws,
    };
    ws.on_upgrade(move |socket| session_task(state, socket, format.unwrap_or_default(), token, pending))
}

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

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_owned()),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        socket.send(frame).await?;
        socket.close().await
    })
    .await;
}

/// Close reason of a connection cut by an operator (`disconnect`, `revoke`): with 4001, the
/// client asks for a new token instead of reconnecting with its old one.
pub const REVOKED: &str = "revoked";

/// How long a closed session still reads what its peer sends.
const LINGER: Duration = Duration::from_secs(1);

/// The end of the closing handshake (RFC 6455 §7.1.1): read and drop what the peer still
/// sends until its Close or the end of the stream, for at most [`LINGER`]. A socket closed
/// with unread data makes Linux send RST instead of FIN, and an RST can destroy the Close
/// frame still on its way to the peer, which then sees no close code (not 4008, 4009, …).
async fn linger(mut socket: WebSocket) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Authenticates from the URL/header token or the first frame, within the configured auth
/// deadline (`TIDINGS_AUTH_DEADLINE_MS`).
async fn authenticate(
    state: &AppState,
    socket: &mut WebSocket,
    format: WireFormat,
    token: Option<String>,
) -> Result<(Claims, Option<u64>), String> {
    if let Some(token) = token {
        return state
            .authenticate(Some(&token))
            .await
            .map(|c| (c, None))
            .map_err(|r| r.as_str().to_owned());
    }
    let deadline = Duration::from_millis(state.config.auth_deadline_ms);
    let first = tokio::time::timeout(deadline, socket.next()).await;
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
            .authenticate(Some(&token))
            .await
            .map(|c| (c, id))
            .map_err(|r| r.as_str().to_owned()),
        _ => {
            let _ = send(
                socket,
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

async fn send(socket: &mut WebSocket, format: WireFormat, frame: &ServerFrame) -> Result<(), axum::Error> {
    match encode(format, frame) {
        Some(m) => socket.send(m).await,
        None => Ok(()),
    }
}

/// The connection's task, in three stages chained without an enclosing `async fn`, so that
/// an idle connection's task holds only the serving loop: [`open`] (authentication,
/// registration, welcome) runs boxed and is freed when done; [`Session::serve`] holds the
/// session by value; [`linger`] ends the closing handshake once the registration is gone.
/// (An `async fn` keeping them in one body kept room for its arguments, each stage's locals
/// and copies of what moved between them for the whole session: tokio's task cell was 2,688
/// bytes, it is 1,280 with the boxed branches of the loop.)
fn session_task(
    state: AppState,
    socket: WebSocket,
    format: WireFormat,
    token: Option<String>,
    pending: Option<Arc<PendingSlot>>,
) -> impl Future<Output = ()> + Send {
    Box::pin(open(state, socket, format, token, pending))
        .then(|opened| OptionFuture::from(opened.map(|(session, span)| session.serve().instrument(span))))
        .then(|closing| {
            // The connection stays out of the pool of pending ones while it lingers.
            OptionFuture::from(
                closing.map(|(socket, exchange, span)| linger(socket).map(move |()| drop(exchange)).instrument(span)),
            )
        })
        .map(drop)
}

/// Authenticates and registers the connection and welcomes it: the session and its span,
/// or `None` once the connection was refused (and closed).
async fn open(
    state: AppState,
    mut socket: WebSocket,
    format: WireFormat,
    token: Option<String>,
    pending: Option<Arc<PendingSlot>>,
) -> Option<(Session, tracing::Span)> {
    let authenticated = match &pending {
        // Closed to make room for newer connections while it had not authenticated.
        Some(slot) => tokio::select! {
            r = authenticate(&state, &mut socket, format, token) => r,
            () = slot.evicted() => Err("too many connections waiting to authenticate".to_owned()),
        },
        None => authenticate(&state, &mut socket, format, token).await,
    };
    let (claims, auth_id) = match authenticated {
        Ok(c) => c,
        Err(reason) => {
            tracing::debug!(%reason, "WebSocket refused");
            close(&mut socket, CLOSE_UNAUTHORIZED, &format!("unauthorized: {reason}")).await;
            return None;
        }
    };
    // Out of the pool of pending connections for as long as the session lasts.
    let exchange = pending.as_ref().map(|slot| slot.authenticated());
    let tx = Outbox::new(state.config.outbound_queue as usize);
    let rx = OutboxReader(tx.clone());
    let handle = ConnHandle {
        tx,
        signal: Arc::new(ConnSignal::default()),
        user: claims.sub.as_str().into(),
    };
    let limiter = RateLimiter::new(state.config.command_rate, state.config.command_burst);
    let heartbeat = Duration::from_millis(state.config.heartbeat_ms);
    let expires = token_deadline(claims.exp, state.verifier.leeway());
    let reg = match Registration::new(state, handle, &claims) {
        Ok(reg) => reg,
        Err(e) => {
            let (code, reason) = match e.code() {
                ErrorCode::Unauthorized => (CLOSE_UNAUTHORIZED, REVOKED.to_owned()),
                _ => (CLOSE_RATE_LIMITED, e.to_string()),
            };
            close(&mut socket, code, &reason).await;
            linger(socket).await;
            return None;
        }
    };
    let session_id = format!("{}-{}", reg.state.node_id, reg.id);
    let span = tracing::info_span!("ws", session = %session_id, user = %claims.sub);
    let mut session = Session {
        reg,
        format,
        claims,
        socket,
        rx,
        batch: Vec::new(),
        clock: Clock::new(heartbeat, expires),
        limiter,
        broken: false,
        _exchange: exchange,
    };
    session.welcome(session_id, auth_id).instrument(span.clone()).await;
    Some((session, span))
}

struct Session {
    /// The hub registration: state, id, queue handle and subscribed channels.
    reg: Registration,
    format: WireFormat,
    claims: Claims,
    /// The WebSocket, whole: the loop reads it while waiting and writes it in a branch
    /// (`select!` drops its waiting futures first), so it needs no split halves, which would
    /// move it into a shared lock of its own (~0.45 KB on the heap).
    socket: WebSocket,
    /// The connection's outbound queue, filled by the fan-out.
    rx: OutboxReader,
    /// Frames taken from the queue for one write (kept for its capacity).
    batch: Vec<Outbound>,
    clock: Clock,
    limiter: RateLimiter,
    /// A write failed (the peer is gone or read nothing within the write deadline): the
    /// session ends after the command that found it.
    broken: bool,
    /// Out of the pool of connections waiting to authenticate, while the session lasts.
    _exchange: Option<Authenticated>,
}

mod clock;
mod commands;

use clock::{Clock, Due};

/// What [`Session::command`] tells the loop.
enum Next {
    Continue,
    Close(u16, &'static str),
}

impl Session {
    /// The answer to a first-frame `auth` (with the token's expiry), then the welcome.
    async fn welcome(&mut self, session_id: String, auth_id: Option<u64>) {
        if let Some(id) = auth_id {
            let reply = Reply {
                exp: Some(self.claims.exp),
                ..Reply::ok(Some(id))
            };
            self.send(&ServerFrame::Reply(reply)).await;
        }
        let welcome = ServerFrame::Welcome(Welcome {
            session: session_id,
            node: self.reg.state.node_id.to_string(),
            user: self.claims.sub.clone(),
            heartbeat_ms: self.reg.state.config.heartbeat_ms,
        });
        self.send(&welcome).await;
    }

    async fn send(&mut self, frame: &ServerFrame) {
        let deadline = self.write_deadline();
        let written = tokio::time::timeout(deadline, send(&mut self.socket, self.format, frame)).await;
        self.settle_write(written);
    }

    /// `TIDINGS_WRITE_DEADLINE_MS`: how long one write (a frame, a batch, a replay chunk,
    /// each with its flush) may take, as NATS's `write_deadline`; the socket also fails a
    /// write that makes no progress for that long (see `server::DeadlineIo`).
    fn write_deadline(&self) -> Duration {
        Duration::from_millis(self.reg.state.config.write_deadline_ms)
    }

    /// How a write under the deadline went: `Some(reason)` when it failed, and the session
    /// is then broken. Past the deadline the peer is not reading: no close frame could go out
    /// either.
    fn settle_write<E: std::fmt::Display>(
        &mut self,
        written: Result<Result<(), E>, tokio::time::error::Elapsed>,
    ) -> Option<&'static str> {
        let reason = match written {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                "write failed"
            }
            Err(_) => {
                tracing::debug!("write deadline passed");
                self.reg.state.metrics.write_timeouts.inc();
                "write deadline passed"
            }
        };
        self.broken = true;
        Some(reason)
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

    /// The session loop, until the connection ends: what it still needs to close, the
    /// registration (with every subscription) being gone by then. Written as a block that
    /// captures the session rather than an `async fn` taking it, which would hold it twice.
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold the session twice (above)")]
    fn serve(mut self) -> impl Future<Output = (WebSocket, Option<Authenticated>, tracing::Span)> + Send {
        async move {
            let reason = self.serve_loop().await;
            tracing::debug!(reason, "WebSocket closed");
            let Session { socket, _exchange, .. } = self;
            // Lingering stays in the session's span (taken here rather than carried along,
            // so that the idle state does not hold a second copy of it).
            (socket, _exchange, tracing::Span::current())
        }
    }

    /// Runs until the session ends; returns why.
    async fn serve_loop(&mut self) -> &'static str {
        let signal = self.reg.handle.signal.clone();
        // Heartbeats count from here, after the welcome went out.
        self.clock.restart();
        loop {
            let ended = tokio::select! {
                biased;
                code = signal.closed() => {
                    Box::pin(self.close_for(code)).await;
                    Some("closed by server")
                }
                n = self.rx.0.recv_many(&mut self.batch, WRITE_BATCH) => {
                    if n == 0 {
                        return "queue closed";
                    }
                    // Boxed: the write's state is the largest of the loop's, and an idle
                    // connection would otherwise hold room for it.
                    Box::pin(self.write_queued(&signal)).await
                }
                incoming = self.socket.next() => {
                    self.clock.seen();
                    Box::pin(self.incoming(incoming)).await
                }
                () = self.clock.timer.as_mut() => match self.clock.due() {
                    Due::Nothing => None,
                    // Boxed, as the write: an idle session would otherwise hold room for it.
                    Due::Ping => Box::pin(self.ping()).await,
                    Due::Silent => {
                        Box::pin(close(&mut self.socket, 1001, "heartbeat timeout")).await;
                        return "heartbeat timeout";
                    }
                    Due::Expired => {
                        Box::pin(close(&mut self.socket, CLOSE_UNAUTHORIZED, "token expired")).await;
                        Some("token expired")
                    }
                },
            };
            if let Some(reason) = ended {
                return reason;
            }
        }
    }

    /// Writes what the queue held, within the write deadline, unless the session is told to
    /// close meanwhile. `Some(reason)` when the session ends.
    async fn write_queued(&mut self, signal: &ConnSignal) -> Option<&'static str> {
        let deadline = self.write_deadline();
        let mut batch = std::mem::take(&mut self.batch);
        let written = tokio::select! {
            r = tokio::time::timeout(deadline, self.write_batch(&mut batch)) => r,
            code = signal.closed() => {
                Box::pin(self.close_for(code)).await;
                return Some("closed by server during write");
            }
        };
        batch.clear();
        if batch.capacity() <= WRITE_BATCH_KEEP {
            self.batch = batch;
        }
        self.settle_write(written)
    }

    /// A WebSocket ping, within the write deadline.
    async fn ping(&mut self) -> Option<&'static str> {
        let deadline = self.write_deadline();
        let ping = self.socket.send(Message::Ping(bytes::Bytes::new()));
        let written = tokio::time::timeout(deadline, ping).await;
        self.settle_write(written)
    }

    /// Handles what the peer sent. `Some(reason)` when the session ends.
    async fn incoming(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Option<&'static str> {
        let max = self.reg.state.config.max_frame_bytes;
        let decoded = match incoming {
            None => return Some("peer went away"),
            Some(Err(e)) => {
                if is_capacity_error(&e) {
                    Box::pin(close(&mut self.socket, CLOSE_TOO_LARGE, "frame too large")).await;
                    return Some("frame too large");
                }
                return Some("read error");
            }
            Some(Ok(Message::Close(_))) => return Some("peer closed"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                // Control frames cost a token too: tungstenite answers every ping, so a ping
                // flood would otherwise be free.
                if self.limiter.check(Instant::now(), 1) == Verdict::Abuse {
                    Box::pin(close(&mut self.socket, CLOSE_RATE_LIMITED, "rate limit abused")).await;
                    return Some("rate limit abused");
                }
                return None;
            }
            Some(Ok(Message::Text(t))) => WireFormat::Json.decode_client(t.as_bytes(), max),
            Some(Ok(Message::Binary(b))) => WireFormat::Msgpack.decode_client(&b, max),
        };
        if let Next::Close(code, reason) = Box::pin(self.command(decoded)).await {
            Box::pin(close(&mut self.socket, code, reason)).await;
            return Some(reason);
        }
        self.broken.then_some("write failed")
    }

    /// Writes every queued frame, then flushes once.
    async fn write_batch(&mut self, batch: &mut Vec<Outbound>) -> Result<(), axum::Error> {
        let mut delivered = 0u64;
        for out in batch.drain(..) {
            let mut trace = None;
            let msg = match out {
                Outbound::Message(enc) => {
                    if !self.admit(&enc) {
                        continue;
                    }
                    delivered += 1;
                    let latency = SystemTime::now().duration_since(enc.stored_at).unwrap_or_default();
                    self.reg.state.metrics.delivery_latency.observe(latency.as_secs_f64());
                    trace = enc.trace;
                    enc.ws_message(self.format)
                }
                Outbound::Frame(m) => *m,
                Outbound::Unsubscribed(channel) => {
                    self.reg.unsubscribe(&channel);
                    let frame = ServerFrame::Unsubscribed {
                        channel: *channel,
                        reason: "server".into(),
                    };
                    let Some(m) = encode(self.format, &frame) else { continue };
                    m
                }
            };
            match trace {
                None => self.socket.feed(msg).await?,
                Some(parent) => {
                    let span = tracing::info_span!("frame write");
                    parent.adopt(&span);
                    tracing::Instrument::instrument(self.socket.feed(msg), span).await?
                }
            }
        }
        self.socket.flush().await?;
        self.reg.state.metrics.messages_delivered.inc_by(delivered);
        Ok(())
    }

    /// Whether a channel message goes out: the channel is still subscribed and, for a
    /// durable message, its `seq` is beyond the last one written (which it then becomes).
    fn admit(&mut self, enc: &crate::message::Encoded) -> bool {
        let Some(last) = self.reg.channels.get_mut(&enc.frame.channel) else {
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
                close(&mut self.socket, code, "node draining").await;
            }
            CLOSE_SLOW_CONSUMER => close(&mut self.socket, code, "slow consumer: outbound queue full").await,
            // Only an operator's disconnect or revoke asks this (an expired token closes in the
            // session loop): the client must get a new token, not reconnect with this one.
            CLOSE_UNAUTHORIZED => close(&mut self.socket, code, REVOKED).await,
            _ => close(&mut self.socket, code, "closed by server").await,
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
