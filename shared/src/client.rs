//! A Rust client for Tidings gateways (feature `client`), used by the integration tests and
//! by `tidings-loadtest`, and a reference for client SDKs.
//!
//! It keeps, per channel, the last durable `seq` it delivered and the stream `epoch`, and
//! after any disconnect (network, gateway crash, drain, slow-consumer kick) reconnects with
//! exponential backoff and full jitter — rotating over the configured gateways — and
//! re-subscribes with `since`, so the application sees every durable message once and in
//! order. It checks `prev` on every message: a duplicate (`seq` already delivered) is
//! dropped, a gap (`prev` beyond the last delivered) triggers a re-subscription with
//! `since`. When the gateway answers `recovered:false`, the application gets
//! [`Event::Reset`] and should reload that channel's state.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::channel::Channel;
use crate::codec::WireFormat;
use crate::frame::{MessageFrame, Reply, ServerFrame};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Gateway base URLs (`http://host:port`), tried in turn.
    pub urls: Vec<String>,
    /// The JWT.
    pub token: String,
    /// Wire format.
    pub format: WireFormat,
    /// Channels to keep subscribed.
    pub channels: Vec<Channel>,
    /// First reconnect delay cap; doubles per failed attempt.
    pub backoff_base: Duration,
    /// Largest reconnect delay cap.
    pub backoff_max: Duration,
    /// Events buffered for the application before the client stops reading the socket.
    pub buffer: usize,
    /// Socket receive buffer (small values make a slow application visible to the gateway
    /// sooner; tests use it).
    pub recv_buffer: Option<u32>,
}

impl ClientOptions {
    /// Defaults: JSON, 100 ms to 5 s backoff, 1,024 buffered events.
    pub fn new(urls: Vec<String>, token: impl Into<String>, channels: Vec<Channel>) -> Self {
        ClientOptions {
            urls,
            token: token.into(),
            format: WireFormat::Json,
            channels,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            buffer: 1024,
            recv_buffer: None,
        }
    }
}

/// The connection as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting (again); `attempt` counts failures since the last success.
    Connecting {
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Connected and subscribed.
    Connected {
        /// The gateway node.
        node: String,
    },
    /// Stopped for good (the client was closed).
    Closed,
}

/// What the client hands the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A channel message, durable ones exactly once and in order.
    Message(MessageFrame),
    /// The channel's history could not be completed (retention, new epoch): reload its state.
    /// Messages still held follow.
    Reset {
        /// The channel.
        channel: Channel,
    },
}

/// A running client; dropping it disconnects.
pub struct Client {
    events: mpsc::Receiver<Event>,
    state: watch::Receiver<ConnectionState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts connecting in the background.
    pub fn connect(options: ClientOptions) -> Client {
        let (tx, events) = mpsc::channel(options.buffer.max(1));
        let (state_tx, state) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let task = tokio::spawn(run(options, tx, state_tx));
        Client { events, state, task }
    }

    /// The next event; `None` once the client stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The connection state, to watch.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }
}

/// Delay before reconnect attempt `attempt` (1-based): full jitter over an exponential cap.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let cap = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    Duration::from_millis(fastrand::u64(0..=cap.as_millis() as u64))
}

/// Per-channel position, kept across connections.
#[derive(Debug, Default)]
struct Positions {
    last: HashMap<Channel, u64>,
    epoch: Option<String>,
    /// Channels whose next durable message starts a new chain (after `recovered:false`).
    rebase: HashSet<Channel>,
}

enum Ended {
    /// The gateway asked us to reconnect (drain) after about this long.
    Reconnect(Duration),
    /// Connection failed or dropped.
    Failed(String),
    /// The application went away.
    Stopped,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn run(options: ClientOptions, tx: mpsc::Sender<Event>, state: watch::Sender<ConnectionState>) {
    let mut positions = Positions::default();
    let mut attempt = 0u32;
    // The first URL first (a load balancer, or the preferred gateway), then the others in
    // turn after each failure.
    let mut next_url = 0usize;
    loop {
        let Some(url) = options.urls.get(next_url % options.urls.len().max(1)).cloned() else {
            let _ = state.send(ConnectionState::Closed);
            return;
        };
        next_url += 1;
        let _ = state.send(ConnectionState::Connecting { attempt });
        match session(&options, &url, &mut positions, &tx, &state).await {
            Ended::Stopped => {
                let _ = state.send(ConnectionState::Closed);
                return;
            }
            Ended::Reconnect(after) => {
                attempt = 0;
                tokio::time::sleep(after).await;
            }
            Ended::Failed(reason) => {
                attempt += 1;
                let delay = backoff(attempt, options.backoff_base, options.backoff_max);
                let url = crate::redact::url(&url);
                tracing::debug!(%url, %reason, attempt, ?delay, "tidings client reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn open(options: &ClientOptions, base: &str) -> Result<Ws, String> {
    let ws_url = format!(
        "{}/ws?token={}",
        base.replacen("http://", "ws://", 1).trim_end_matches('/'),
        options.token
    );
    let mut req = ws_url.as_str().into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(options.format.subprotocol()),
    );
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let addr = tokio::net::lookup_host(host)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(size) = options.recv_buffer {
        sock.set_recv_buffer_size(size).map_err(|e| e.to_string())?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn decode(format: WireFormat, msg: Message) -> Option<Result<ServerFrame, String>> {
    match msg {
        Message::Text(t) => Some(WireFormat::Json.decode(t.as_bytes()).map_err(|e| e.to_string())),
        Message::Binary(b) => Some(format.decode(&b).map_err(|e| e.to_string())),
        Message::Close(c) => Some(Err(format!("closed: {c:?}"))),
        _ => None,
    }
}

async fn subscribe(
    ws: &mut Ws,
    format: WireFormat,
    id: u64,
    channel: &Channel,
    positions: &Positions,
) -> Result<(), String> {
    let mut frame = json!({"type": "subscribe", "id": id, "channel": channel.to_string()});
    if let Some(since) = positions.last.get(channel) {
        frame["since"] = json!(since);
        if let Some(e) = &positions.epoch {
            frame["epoch"] = json!(e);
        }
    }
    let bytes = format.encode(&frame).map_err(|e| e.to_string())?;
    let msg = if format.is_binary() {
        Message::Binary(bytes)
    } else {
        Message::Text(String::from_utf8_lossy(&bytes).into_owned().into())
    };
    ws.send(msg).await.map_err(|e| e.to_string())
}

/// One connection: opens it, then handles frames until it ends.
async fn session(
    options: &ClientOptions,
    url: &str,
    positions: &mut Positions,
    tx: &mpsc::Sender<Event>,
    state: &watch::Sender<ConnectionState>,
) -> Ended {
    let ws = match open(options, url).await {
        Ok(ws) => ws,
        Err(e) => return Ended::Failed(e),
    };
    let mut session = Session {
        options,
        positions,
        tx,
        state,
        ws,
        by_id: HashMap::new(),
        next_id: 1,
        welcomed: false,
        node: String::new(),
        unconfirmed: HashSet::new(),
    };
    loop {
        if tx.is_closed() {
            return Ended::Stopped;
        }
        let next = match tokio::time::timeout(Duration::from_secs(60), session.ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Ended::Failed(e.to_string()),
            Ok(None) => return Ended::Failed("connection ended".into()),
            Err(_) => return Ended::Failed("no traffic for 60 s".into()),
        };
        let frame = match decode(options.format, next) {
            None => continue,
            Some(Ok(f)) => f,
            Some(Err(e)) => return Ended::Failed(e),
        };
        if let Err(ended) = session.handle(frame).await {
            return ended;
        }
    }
}

/// The state of one connection; its handlers return `Err` when the connection ends.
struct Session<'a> {
    options: &'a ClientOptions,
    positions: &'a mut Positions,
    tx: &'a mpsc::Sender<Event>,
    state: &'a watch::Sender<ConnectionState>,
    ws: Ws,
    /// Subscribe ids map back to channels.
    by_id: HashMap<u64, Channel>,
    next_id: u64,
    welcomed: bool,
    /// The node, and the subscriptions still unconfirmed: the state turns `Connected` once
    /// every channel's subscription is confirmed, so "connected" means messages flow.
    node: String,
    unconfirmed: HashSet<u64>,
}

impl Session<'_> {
    async fn handle(&mut self, frame: ServerFrame) -> Result<(), Ended> {
        match frame {
            ServerFrame::Welcome(w) => self.on_welcome(w.node).await,
            ServerFrame::Reply(Reply {
                id: Some(id),
                ok,
                error,
                recovered,
                epoch,
                seq,
                ..
            }) => {
                let Some(channel) = self.by_id.get(&id).cloned() else {
                    return Ok(());
                };
                if !ok {
                    return Err(Ended::Failed(format!("subscribe {channel} refused: {error:?}")));
                }
                if self.unconfirmed.remove(&id) && self.unconfirmed.is_empty() {
                    self.connected();
                }
                self.on_subscribed(channel, recovered, epoch, seq).await
            }
            ServerFrame::Message(m) => self.on_message(m).await,
            ServerFrame::Reconnect { retry_ms, .. } => {
                let _ = self.ws.close(None).await;
                Err(Ended::Reconnect(Duration::from_millis(retry_ms)))
            }
            // The channel is no longer delivered; this client keeps its position, should it
            // subscribe again on its next connection.
            ServerFrame::Unsubscribed { .. } => Ok(()),
            ServerFrame::Reply(_) | ServerFrame::Pong { .. } | ServerFrame::Error { .. } => {
                if !self.welcomed {
                    return Err(Ended::Failed("refused before welcome".into()));
                }
                Ok(())
            }
        }
    }

    fn connected(&self) {
        let _ = self.state.send(ConnectionState::Connected {
            node: self.node.clone(),
        });
    }

    /// Subscribes every configured channel (with `since` where a position is held).
    async fn on_welcome(&mut self, node: String) -> Result<(), Ended> {
        self.welcomed = true;
        self.node = node;
        let options = self.options;
        for channel in &options.channels {
            let id = self.subscribe(channel).await?;
            self.unconfirmed.insert(id);
        }
        if self.unconfirmed.is_empty() {
            self.connected();
        }
        Ok(())
    }

    /// Sends a subscription for `channel` under a fresh id, which it returns.
    async fn subscribe(&mut self, channel: &Channel) -> Result<u64, Ended> {
        let id = self.next_id;
        self.next_id += 1;
        self.by_id.insert(id, channel.clone());
        subscribe(&mut self.ws, self.options.format, id, channel, self.positions)
            .await
            .map_err(Ended::Failed)?;
        Ok(id)
    }

    /// Takes the position a confirmed subscription reports; `recovered:false` on a channel
    /// we hold a position for is a reset for the application.
    async fn on_subscribed(
        &mut self,
        channel: Channel,
        recovered: Option<bool>,
        epoch: Option<String>,
        seq: Option<u64>,
    ) -> Result<(), Ended> {
        let positions = &mut *self.positions;
        if let Some(e) = epoch {
            positions.epoch = Some(e);
        }
        // Nothing received yet: the gateway says from where it delivers everything.
        if let Some(position) = seq {
            positions.last.entry(channel.clone()).or_insert(position);
        }
        if recovered == Some(false) && positions.last.contains_key(&channel) {
            positions.rebase.insert(channel.clone());
            if self.tx.send(Event::Reset { channel }).await.is_err() {
                return Err(Ended::Stopped);
            }
        }
        Ok(())
    }

    /// Delivers a message once and in order: drops duplicates, and on a gap has the
    /// gateway replay from what we hold.
    async fn on_message(&mut self, m: MessageFrame) -> Result<(), Ended> {
        if let (Some(seq), Some(prev)) = (m.seq, m.prev) {
            let rebase = self.positions.rebase.remove(&m.channel);
            if let Some(&last) = self.positions.last.get(&m.channel).filter(|_| !rebase) {
                if seq <= last {
                    return Ok(()); // duplicate
                }
                if prev > last {
                    self.subscribe(&m.channel).await?;
                    return Ok(());
                }
            }
            self.positions.last.insert(m.channel.clone(), seq);
        }
        if self.tx.send(Event::Message(m)).await.is_err() {
            return Err(Ended::Stopped);
        }
        Ok(())
    }
}
