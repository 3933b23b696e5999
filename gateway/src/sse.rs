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
use tidings_shared::auth::now_unix;
use tidings_shared::{Channel, ErrorCode};
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::{Error, Result};
use crate::extract::bearer_token;
use crate::hub::{ConnHandle, ConnId, ConnSignal, Outbound};

/// Query of `GET /sse`.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    /// Comma-separated channel names.
    pub channels: String,
}

/// Unregisters the connection when the client goes away (the response stream is dropped).
struct Registration {
    state: AppState,
    id: ConnId,
    channels: Vec<Channel>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.state.hub.unregister(self.id, self.channels.drain(..));
    }
}

/// The SSE event id: the last durable sequence per channel, e.g. `project:p1=12,user:u1=40`.
fn cursor(seqs: &BTreeMap<Channel, u64>) -> String {
    seqs.iter()
        .map(|(c, s)| format!("{c}={s}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The handler.
pub async fn handler(State(state): State<AppState>, parts: Parts, Query(q): Query<SseQuery>) -> Result<Response> {
    if state.health.is_draining() {
        return Err(Error::api(
            ErrorCode::Unavailable,
            "node is draining; reconnect to another",
        ));
    }
    if state.hub.connection_count() >= state.config.max_connections {
        return Err(Error::api(ErrorCode::Unavailable, "node is at its connection limit"));
    }
    let claims = state
        .verify(bearer_token(&parts).as_deref())
        .map_err(|r| Error::api(ErrorCode::Unauthorized, format!("unauthorized: {r}")))?;
    let mut channels: Vec<Channel> = Vec::new();
    for name in q.channels.split(',').filter(|s| !s.is_empty()) {
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
    if channels.len() > state.config.max_subscriptions {
        let msg = format!("at most {} channels per connection", state.config.max_subscriptions);
        return Err(Error::api(ErrorCode::BadRequest, msg));
    }
    let (tx, rx) = mpsc::channel(state.config.outbound_queue as usize);
    let signal = Arc::new(ConnSignal::default());
    let handle = ConnHandle {
        tx,
        signal: signal.clone(),
        user: claims.sub.as_str().into(),
    };
    let id = state.hub.register(handle.clone());
    let mut registration = Registration {
        state: state.clone(),
        id,
        channels: Vec::new(),
    };
    for c in &channels {
        if state.hub.subscribe(id, c, handle.clone()).await.is_err() {
            return Err(Error::api(
                ErrorCode::Unavailable,
                "NATS did not confirm the subscription; retry",
            ));
        }
        registration.channels.push(c.clone());
    }
    let expires = tokio::time::Instant::now()
        + Duration::from_secs(
            claims
                .exp
                .saturating_add(state.verifier.leeway())
                .saturating_sub(now_unix()),
        );
    let sse = SseStream {
        rx,
        signal,
        expires,
        seqs: BTreeMap::new(),
        pending: VecDeque::new(),
        batch: Vec::new(),
        registration,
    };
    let stream = futures::stream::unfold(sse, |mut sse| async move {
        let event = sse.next_event().await?;
        Some((Ok::<_, Infallible>(event), sse))
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_millis(state.config.heartbeat_ms));
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// One SSE client: its queue, its cursor, and its registration (dropped with the response
/// body when the client goes away, which unsubscribes it).
struct SseStream {
    rx: mpsc::Receiver<Outbound>,
    signal: Arc<ConnSignal>,
    expires: tokio::time::Instant,
    seqs: BTreeMap<Channel, u64>,
    pending: VecDeque<Event>,
    batch: Vec<Outbound>,
    registration: Registration,
}

impl SseStream {
    /// The next event, or `None` when the stream ends (closed by the server, token expired).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            tokio::select! {
                biased;
                _ = self.signal.closed() => return None,
                () = tokio::time::sleep_until(self.expires) => return None,
                n = self.rx.recv_many(&mut self.batch, 256) => {
                    if n == 0 {
                        return None;
                    }
                    let metrics = &self.registration.state.metrics;
                    for out in self.batch.drain(..) {
                        let Outbound::Message(enc) = out else { continue };
                        let mut event = Event::default().event("message").data(enc.json());
                        if let Some(seq) = enc.frame.seq {
                            self.seqs.insert(enc.frame.channel.clone(), seq);
                            event = event.id(cursor(&self.seqs));
                        }
                        let latency = SystemTime::now().duration_since(enc.stored_at).unwrap_or_default();
                        metrics.delivery_latency.observe(latency.as_secs_f64());
                        metrics.messages_delivered.inc();
                        self.pending.push_back(event);
                    }
                }
            }
        }
    }
}
