//! The gateway's own NATS connection for channel subscriptions: one TCP connection, one
//! task, every channel's subjects as rows of one table.
//!
//! async-nats gives each subscription its own queue (a 32-slot block of ~190-byte messages,
//! allocated up front) and the gateway a task per channel to drain it: ~25 KB per channel,
//! which in a notification system (a `user:<id>` channel per user) was most of a user's
//! cost. Here a subscription is a row `sid → (subject, receiver)`; the connection task reads
//! `MSG`/`HMSG`, looks the sid up and hands the message to its receiver right there (the
//! channel's feed, which never waits). A channel costs bytes; nothing is queued per channel.
//!
//! The rest of the gateway (JetStream reads, KV, publishes) stays on async-nats. This
//! connection speaks the core protocol only: `CONNECT` (with the credentials
//! `TIDINGS_NATS_URL` carries), `SUB`, `UNSUB`, `PING`/`PONG`. It reconnects forever with
//! the same backoff as the main client, subscribes every row again, and then moves
//! [`Subscriptions::reconnects`] so that channels read back what was stored meanwhile. It
//! pings every [`PING_INTERVAL`] and counts the connection dead after [`MAX_PINGS_OUT`]
//! unanswered pings, so a silent partition is noticed in seconds (and `/readyz` says so).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue, ServerAddr, Subject};
use bytes::{Buf as _, Bytes, BytesMut};
use tidings_shared::nats::{Credentials, credentials, reconnect_delay, server_addrs};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, watch};

use crate::hub::{read, write};

/// How often the connection pings the server.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered pings after which the connection is taken for dead.
pub const MAX_PINGS_OUT: usize = 3;
/// How long connecting (TCP, `INFO`, `CONNECT`, the first `PONG`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one write to the server may take: a server that reads nothing for this long
/// (a partition with a full socket buffer) is as gone as one that does not answer pings.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest protocol line the server sends us (an `INFO` with many cluster URLs is the
/// longest); a longer one is a broken stream.
const MAX_LINE: usize = 64 * 1024;
/// Largest message accepted (NATS's own maximum `max_payload`).
const MAX_MESSAGE: usize = 64 << 20;
/// Read buffer: one per node, so it may be roomy.
const READ_CHUNK: usize = 64 * 1024;

/// Takes the messages of one subscription. Called on the connection's task: it must not
/// block (the feed hands messages to bounded queues and never waits).
pub trait Receiver: Send + Sync + 'static {
    /// One message of the subject this receiver was subscribed with; `durable` as given to
    /// [`Subscriptions::add`].
    fn receive(self: Arc<Self>, durable: bool, msg: async_nats::Message);
}

/// Why a subscription could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum SubsError {
    /// The connection is down (it keeps reconnecting).
    #[error("the NATS subscription connection is down")]
    Disconnected,
    /// The server did not answer the confirming ping in time.
    #[error("NATS did not confirm the subscription within {0:?}")]
    Timeout(Duration),
}

struct Route {
    subject: Arc<str>,
    durable: bool,
    receiver: Arc<dyn Receiver>,
}

enum Command {
    Sub(u64, Arc<str>),
    Unsub(u64),
    /// A ping whose pong confirms everything written before it.
    Ping(oneshot::Sender<()>),
}

struct Inner {
    routes: RwLock<HashMap<u64, Route>>,
    next_sid: AtomicU64,
    commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    reconnects: watch::Sender<u64>,
}

/// Handle on the subscription connection (cheap to clone).
#[derive(Clone)]
pub struct Subscriptions(Arc<Inner>);

/// A subscription row; dropping it unsubscribes.
pub struct Subscription {
    subs: Subscriptions,
    sid: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subs.remove(self.sid);
    }
}

impl Subscriptions {
    /// Starts the connection to `urls` (`TIDINGS_NATS_URL`) in the background; it connects,
    /// and reconnects, by itself.
    pub fn start(urls: &str, name: &str) -> tidings_shared::Result<Self> {
        let addrs = server_addrs(urls)?;
        let creds = credentials(&addrs);
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            routes: RwLock::default(),
            next_sid: AtomicU64::new(1),
            commands,
            connected: Arc::default(),
            reconnects: watch::Sender::new(0),
        });
        let conn = Connector {
            inner: inner.clone(),
            addrs,
            creds,
            name: name.to_owned(),
            commands: rx,
        };
        tokio::spawn(conn.run());
        Ok(Subscriptions(inner))
    }

    /// Whether the connection is up (for `/readyz`).
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.0.connected.clone()
    }

    /// Moves after every reconnect (not the first connect), once every row is subscribed
    /// again.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.0.reconnects.subscribe()
    }

    /// Subscribes `receiver` to `subject`, now or at the next connect. Confirm with
    /// [`Subscriptions::confirm`].
    pub fn add(&self, subject: String, durable: bool, receiver: Arc<dyn Receiver>) -> Subscription {
        let sid = self.0.next_sid.fetch_add(1, Ordering::Relaxed);
        let subject: Arc<str> = subject.into();
        let mut routes = write(&self.0.routes);
        // Under the table's lock: a reconnect snapshots the table and drops queued commands
        // under the same lock, so a row is subscribed exactly once per connection.
        let _ = self.0.commands.send(Command::Sub(sid, subject.clone()));
        routes.insert(
            sid,
            Route {
                subject,
                durable,
                receiver,
            },
        );
        Subscription {
            subs: self.clone(),
            sid,
        }
    }

    /// Waits until the server has processed every subscription added before this call.
    pub async fn confirm(&self, within: Duration) -> Result<(), SubsError> {
        if !self.0.connected.load(Ordering::Acquire) {
            return Err(SubsError::Disconnected);
        }
        let (tx, rx) = oneshot::channel();
        if self.0.commands.send(Command::Ping(tx)).is_err() {
            return Err(SubsError::Disconnected);
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SubsError::Disconnected),
            Err(_) => Err(SubsError::Timeout(within)),
        }
    }

    fn remove(&self, sid: u64) {
        let mut routes = write(&self.0.routes);
        if routes.remove(&sid).is_some() {
            let _ = self.0.commands.send(Command::Unsub(sid));
        }
    }

    /// Number of subscription rows (two per channel).
    pub fn len(&self) -> usize {
        read(&self.0.routes).len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's byte stream (plain TCP today; TLS would be another implementation).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server: {0}")]
    Server(String),
    #[error("{0} unanswered pings")]
    Stale(usize),
    #[error("timed out connecting or writing")]
    Timeout,
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Owns the socket: connects, reads, writes, reconnects.
struct Connector {
    inner: Arc<Inner>,
    addrs: Vec<ServerAddr>,
    creds: Option<Credentials>,
    name: String,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Connector {
    async fn run(mut self) {
        let mut attempt = 0usize;
        let mut connections = 0u64;
        loop {
            let addr = self.addrs[attempt % self.addrs.len()].clone();
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&addr)).await {
                Ok(Ok((io, buf))) => match timed_write(self.resubscribe(io)).await {
                    Ok(io) => {
                        attempt = 0;
                        connections += 1;
                        let mut session = Session::new(io, buf);
                        // Up (and, after a reconnect, channels told to catch up) only once the
                        // server has taken every row again: a read-back asked earlier could
                        // miss what is stored before the rows are active.
                        let (confirmed, taken) = oneshot::channel();
                        session.out.extend_from_slice(b"PING\r\n");
                        session.pongs.push_back(Some(confirmed));
                        let inner = self.inner.clone();
                        let reconnected = connections > 1;
                        let server = host(&addr);
                        let announce = tokio::spawn(async move {
                            if taken.await.is_ok() {
                                inner.connected.store(true, Ordering::Release);
                                tracing::info!(%server, "NATS subscription connection up");
                                if reconnected {
                                    inner.reconnects.send_modify(|n| *n += 1);
                                }
                            }
                        });
                        let e = session.serve(&self.inner, &mut self.commands).await;
                        announce.abort();
                        self.inner.connected.store(false, Ordering::Release);
                        tracing::warn!(error = %e, "NATS subscription connection lost; reconnecting");
                    }
                    // Tried again after the usual backoff, on the next server.
                    Err(e) => tracing::warn!(error = %e, "NATS subscription connection: subscribing failed"),
                },
                Ok(Err(e)) => tracing::warn!(server = %host(&addr), error = %e, "NATS subscription connection failed"),
                Err(_) => {
                    tracing::warn!(server = %host(&addr), error = %ConnError::Timeout, "NATS subscription connection failed")
                }
            }
            attempt += 1;
            // Pings and commands queued while down fail now (their rows are re-sent on connect).
            while self.commands.try_recv().is_ok() {}
            tokio::time::sleep(reconnect_delay(attempt)).await;
        }
    }

    /// TCP, `INFO`, `CONNECT` + `PING`, and the answering `PONG`.
    async fn connect(&self, addr: &ServerAddr) -> Result<(Box<dyn Io>, BytesMut), ConnError> {
        if addr.tls_required() || addr.is_websocket() {
            return Err(ConnError::Unsupported(
                "the subscription connection speaks plain nats:// only (TLS belongs at the network layer here)",
            ));
        }
        let tcp = tokio::net::TcpStream::connect((addr.host(), addr.port())).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = Box::new(tcp);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let info = read_line(&mut io, &mut buf).await?;
        let info = info
            .strip_prefix("INFO ")
            .ok_or_else(|| ConnError::Protocol(format!("expected INFO, got {:?}", truncate(&info))))?;
        let info: serde_json::Value =
            serde_json::from_str(info).map_err(|e| ConnError::Protocol(format!("INFO: {e}")))?;
        if info.get("tls_required").and_then(serde_json::Value::as_bool) == Some(true) {
            return Err(ConnError::Unsupported("the server requires TLS"));
        }
        let mut connect = serde_json::json!({
            "verbose": false, "pedantic": false, "lang": "rust", "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1, "headers": true, "no_responders": true, "name": self.name,
        });
        match &self.creds {
            Some(Credentials::UserPassword(u, p)) => {
                connect["user"] = u.as_str().into();
                connect["pass"] = p.as_str().into();
            }
            Some(Credentials::Token(t)) => connect["auth_token"] = t.as_str().into(),
            None => {}
        }
        io.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
            .await?;
        io.flush().await?;
        loop {
            let line = read_line(&mut io, &mut buf).await?;
            match line.as_str() {
                "PONG" => return Ok((io, buf)),
                "+OK" => {}
                l if l.starts_with("INFO ") => {}
                l if l.starts_with("-ERR") => return Err(ConnError::Server(l.to_owned())),
                l => return Err(ConnError::Protocol(format!("unexpected {:?}", truncate(l)))),
            }
        }
    }

    /// Subscribes every row again, dropping the commands queued meanwhile (under the table's
    /// lock, so none is sent twice).
    async fn resubscribe(&mut self, mut io: Box<dyn Io>) -> Result<Box<dyn Io>, ConnError> {
        let mut out = Vec::new();
        {
            let routes = read(&self.inner.routes);
            while self.commands.try_recv().is_ok() {}
            for (sid, route) in routes.iter() {
                push_sub(&mut out, *sid, &route.subject);
            }
        }
        io.write_all(&out).await?;
        io.flush().await?;
        Ok(io)
    }
}

/// One live connection.
struct Session {
    io: Box<dyn Io>,
    buf: BytesMut,
    out: Vec<u8>,
    /// Waiters for the pongs still to come, in order (`None`: a keep-alive ping).
    pongs: VecDeque<Option<oneshot::Sender<()>>>,
}

impl Session {
    fn new(io: Box<dyn Io>, buf: BytesMut) -> Self {
        Session {
            io,
            buf,
            out: Vec::new(),
            pongs: VecDeque::new(),
        }
    }

    async fn serve(&mut self, inner: &Inner, commands: &mut mpsc::UnboundedReceiver<Command>) -> ConnError {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Everything already parsed in the buffer first.
            if let Err(e) = self.dispatch(inner) {
                return e;
            }
            if !self.out.is_empty() {
                if let Err(e) = timed_write(async { Ok(self.io.write_all(&self.out).await?) }).await {
                    return e;
                }
                self.out.clear();
            }
            tokio::select! {
                read = self.io.read_buf(&mut self.buf) => match read {
                    Ok(0) => return ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) => return e.into(),
                },
                Some(cmd) = commands.recv() => {
                    self.command(cmd);
                    while let Ok(cmd) = commands.try_recv() {
                        self.command(cmd);
                    }
                }
                _ = ping.tick() => {
                    if self.pongs.iter().filter(|p| p.is_none()).count() >= MAX_PINGS_OUT {
                        return ConnError::Stale(MAX_PINGS_OUT);
                    }
                    self.out.extend_from_slice(b"PING\r\n");
                    self.pongs.push_back(None);
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_CHUNK);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Sub(sid, subject) => push_sub(&mut self.out, sid, &subject),
            Command::Unsub(sid) => self.out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes()),
            Command::Ping(waiter) => {
                self.out.extend_from_slice(b"PING\r\n");
                self.pongs.push_back(Some(waiter));
            }
        }
    }

    /// Handles every complete operation in the buffer.
    fn dispatch(&mut self, inner: &Inner) -> Result<(), ConnError> {
        loop {
            let Some(end) = find_crlf(&self.buf) else {
                if self.buf.len() > MAX_LINE {
                    return Err(ConnError::Protocol("control line too long".into()));
                }
                return Ok(());
            };
            let line = &self.buf[..end];
            let op = Op::parse(line)?;
            let needed = end + 2 + if let Op::Msg(m) = &op { m.total + 2 } else { 0 };
            if self.buf.len() < needed {
                return Ok(());
            }
            let line = self.buf.split_to(end + 2);
            match op {
                Op::Ping => self.out.extend_from_slice(b"PONG\r\n"),
                Op::Pong => {
                    if let Some(Some(waiter)) = self.pongs.pop_front() {
                        let _ = waiter.send(());
                    }
                }
                Op::Ok | Op::Info => {}
                Op::Err => {
                    let text = String::from_utf8_lossy(&line[..end]).into_owned();
                    tracing::warn!(error = %text, "NATS subscription connection: server error");
                    if text.to_ascii_lowercase().contains("permissions violation") {
                        continue;
                    }
                    return Err(ConnError::Server(text));
                }
                Op::Msg(m) => {
                    let body = self.buf.split_to(m.total).freeze();
                    self.buf.advance(2);
                    deliver(inner, &line[..end], &m, body);
                }
            }
        }
    }
}

/// A parsed `MSG`/`HMSG` control line: where the subject and sid are, and the sizes.
struct MsgLine {
    subject: std::ops::Range<usize>,
    sid: u64,
    headers: usize,
    total: usize,
}

enum Op {
    Msg(MsgLine),
    Ping,
    Pong,
    Ok,
    Err,
    Info,
}

impl Op {
    fn parse(line: &[u8]) -> Result<Op, ConnError> {
        let bad = || {
            ConnError::Protocol(format!(
                "unexpected line {:?}",
                truncate(&String::from_utf8_lossy(line))
            ))
        };
        let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let verb = words.next().ok_or_else(bad)?;
        match verb {
            b"MSG" | b"HMSG" => {
                let fields: Vec<&[u8]> = words.collect();
                let with_headers = verb == b"HMSG";
                // MSG subject sid [reply] size | HMSG subject sid [reply] hsize size
                let sizes = if with_headers { 2 } else { 1 };
                if fields.len() != 2 + sizes && fields.len() != 3 + sizes {
                    return Err(bad());
                }
                let num = |w: &[u8]| std::str::from_utf8(w).ok().and_then(|s| s.parse::<usize>().ok());
                let total = num(fields[fields.len() - 1]).ok_or_else(bad)?;
                let headers = if with_headers {
                    num(fields[fields.len() - 2]).ok_or_else(bad)?
                } else {
                    0
                };
                if total > MAX_MESSAGE || headers > total {
                    return Err(bad());
                }
                let start = fields[0].as_ptr() as usize - line.as_ptr() as usize;
                Ok(Op::Msg(MsgLine {
                    subject: start..start + fields[0].len(),
                    sid: num(fields[1]).ok_or_else(bad)? as u64,
                    headers,
                    total,
                }))
            }
            b"PING" => Ok(Op::Ping),
            b"PONG" => Ok(Op::Pong),
            b"+OK" => Ok(Op::Ok),
            b"-ERR" => Ok(Op::Err),
            b"INFO" => Ok(Op::Info),
            _ => Err(bad()),
        }
    }
}

/// Hands a message to its subscription's receiver (dropped if the row is gone: a late
/// message of an unsubscribed channel).
fn deliver(inner: &Inner, line: &[u8], m: &MsgLine, body: Bytes) {
    let (receiver, durable) = {
        let routes = read(&inner.routes);
        let Some(route) = routes.get(&m.sid) else {
            return;
        };
        (route.receiver.clone(), route.durable)
    };
    let Ok(subject) = Subject::from_utf8(Bytes::copy_from_slice(&line[m.subject.clone()])) else {
        return;
    };
    let headers = (m.headers > 0).then(|| parse_headers(&body[..m.headers]));
    let payload = body.slice(m.headers..);
    let msg = async_nats::Message {
        subject,
        reply: None,
        payload,
        headers,
        status: None,
        description: None,
        length: m.total,
    };
    receiver.receive(durable, msg);
}

/// The headers of an `HMSG` (`NATS/1.0\r\nName: value\r\n…\r\n\r\n`). A line that is not a
/// valid header is skipped, not fatal: publishers choose headers, and one bad header must
/// not cost the node its subscriptions (the message is judged by the feed as usual).
fn parse_headers(block: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Ok(text) = std::str::from_utf8(block) else {
        return headers;
    };
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(name) = name.parse::<HeaderName>() else {
            continue;
        };
        let Ok(value) = value.trim().parse::<HeaderValue>() else {
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// A write to the server, within [`WRITE_TIMEOUT`].
async fn timed_write<T>(write: impl Future<Output = Result<T, ConnError>>) -> Result<T, ConnError> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or(Err(ConnError::Timeout))
}

fn push_sub(out: &mut Vec<u8>, sid: u64, subject: &str) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Reads one line during the handshake.
async fn read_line(io: &mut Box<dyn Io>, buf: &mut BytesMut) -> Result<String, ConnError> {
    loop {
        if let Some(end) = find_crlf(buf) {
            let line = buf.split_to(end + 2);
            return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        if buf.len() > MAX_LINE {
            return Err(ConnError::Protocol("control line too long".into()));
        }
        if io.read_buf(buf).await? == 0 {
            return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn host(addr: &ServerAddr) -> String {
    format!("{}:{}", addr.host(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_lines_parse_with_and_without_reply_and_headers() {
        let Op::Msg(m) = Op::parse(b"MSG tidings.stored.user.u1 7 12").unwrap() else {
            panic!("not a MSG")
        };
        assert_eq!((m.sid, m.headers, m.total), (7, 0, 12));
        assert_eq!(
            &b"MSG tidings.stored.user.u1 7 12"[m.subject.clone()],
            b"tidings.stored.user.u1"
        );
        let Op::Msg(m) = Op::parse(b"HMSG a.b 3 _INBOX.x 30 42").unwrap() else {
            panic!("not an HMSG")
        };
        assert_eq!((m.sid, m.headers, m.total), (3, 30, 42));
        assert!(Op::parse(b"MSG a.b 3").is_err());
        assert!(
            Op::parse(b"HMSG a.b 3 50 42").is_err(),
            "headers larger than the message"
        );
        assert!(Op::parse(b"MSG a.b x 4").is_err());
        assert!(Op::parse(b"BOGUS").is_err());
        assert!(Op::parse(format!("MSG a 1 {}", MAX_MESSAGE + 1).as_bytes()).is_err());
    }

    #[test]
    fn bad_header_lines_are_skipped_not_fatal() {
        let h = parse_headers(
            b"NATS/1.0\r\nNats-Sequence: 12\r\nbad line\r\nBad Name: x\r\nNats-Last-Sequence:  9 \r\n\r\n",
        );
        assert_eq!(h.get("Nats-Sequence").map(|v| v.as_str()), Some("12"));
        assert_eq!(h.get("Nats-Last-Sequence").map(|v| v.as_str()), Some("9"));
        assert!(parse_headers(b"\xff\xfe").is_empty());
    }
}
