//! The listener: accepting TCP connections and serving HTTP/1.1 on them with the limits a
//! node on the open internet needs, which `axum::serve` does not have.
//!
//! - **Header read timeout**: a request whose head is not complete within it is closed
//!   (slowloris). hyper starts that timer whenever it waits for a request head, so it is also
//!   the idle limit of a keep-alive connection between requests.
//! - **Write deadline** on every socket ([`DeadlineIo`]): a write that cannot make progress
//!   for that long fails, whatever is writing (a reply, a replay, SSE, a WebSocket frame), so
//!   a peer with a zero TCP window cannot pin a task and what it holds.
//! - **Pending connections**: connections that have not authenticated yet hold a place in a
//!   bounded pool ([`PendingSlot`]); when it is full, the oldest is closed to make room, so
//!   unauthenticated peers cannot take every file descriptor, and cannot keep new clients
//!   (or the health probes) out either: they lose the places they hold longest.
//! - **Bounded shutdown**: once the drain future ends, idle connections are closed, the rest
//!   get `grace` to finish, and the server returns whatever is still open.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Sleep;
use tower::ServiceExt as _;

use crate::Metrics;

/// Largest request head (request line and headers) read, bytes; more is answered 431.
pub const MAX_HEAD_BYTES: usize = 96 * 1024;

/// The listener's limits (settings of the same names, in `--help`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `TIDINGS_HEADER_READ_TIMEOUT_MS`.
    pub header_read_timeout: Duration,
    /// `TIDINGS_WRITE_DEADLINE_MS`.
    pub write_deadline: Duration,
    /// `TIDINGS_MAX_PENDING_CONNECTIONS`.
    pub max_pending: usize,
    /// `TIDINGS_SHUTDOWN_GRACE_MS`.
    pub grace: Duration,
}

/// The peer address of a request's connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The connections not in an authenticated exchange, oldest first: the ones that have not
/// authenticated yet, and keep-alive connections idle between authenticated requests.
struct PendingPool {
    max: usize,
    /// The last id given, and the pending connections by id (ids grow: oldest first).
    waiting: Mutex<(u64, BTreeMap<u64, Arc<Eviction>>)>,
    metrics: Metrics,
}

/// How the pool closes one connection.
#[derive(Default)]
struct Eviction {
    notify: Notify,
    done: AtomicBool,
}

impl PendingPool {
    /// A place for a new connection, closing the oldest pending one if the pool is full.
    fn admit(self: &Arc<Self>) -> Arc<PendingSlot> {
        let eviction = Arc::new(Eviction::default());
        let id = self.enter(&eviction);
        Arc::new(PendingSlot {
            pool: self.clone(),
            eviction,
            state: Mutex::new(SlotState { id: Some(id), busy: 0 }),
        })
    }

    /// Puts a connection (back) in the pool as the newest, making room first.
    fn enter(&self, eviction: &Arc<Eviction>) -> u64 {
        let mut waiting = lock(&self.waiting);
        while waiting.1.len() >= self.max {
            let Some((_, oldest)) = waiting.1.pop_first() else {
                break;
            };
            oldest.done.store(true, Ordering::Release);
            oldest.notify.notify_one();
            self.metrics
                .refused_connections
                .with_label_values(&["pending_limit"])
                .inc();
        }
        waiting.0 += 1;
        let id = waiting.0;
        waiting.1.insert(id, eviction.clone());
        id
    }

    fn leave(&self, id: u64) {
        lock(&self.waiting).1.remove(&id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a connection stands: its place in the pool (none while authenticated exchanges
/// run), and how many run.
struct SlotState {
    id: Option<u64>,
    busy: usize,
}

/// A connection's place in the pool of pending connections (a request extension, shared by
/// every request of the connection and by its WebSocket session).
pub struct PendingSlot {
    pool: Arc<PendingPool>,
    eviction: Arc<Eviction>,
    state: Mutex<SlotState>,
}

impl PendingSlot {
    /// The connection starts an authenticated exchange (a request with a valid token, a
    /// WebSocket or SSE session): it leaves the pool until the guard is dropped, then comes
    /// back as the newest pending connection (an idle keep-alive connection can be closed
    /// to make room; one in the middle of a request cannot).
    pub fn authenticated(self: &Arc<Self>) -> Authenticated {
        let mut state = lock(&self.state);
        state.busy += 1;
        if let Some(id) = state.id.take() {
            self.pool.leave(id);
        }
        Authenticated(self.clone())
    }

    /// Resolves when the pool, full, closes this connection to make room.
    pub async fn evicted(&self) {
        loop {
            let notified = self.eviction.notify.notified();
            if self.eviction.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(id) = lock(&self.state).id.take() {
            self.pool.leave(id);
        }
    }
}

/// An authenticated exchange in progress on a connection (see [`PendingSlot::authenticated`]).
pub struct Authenticated(Arc<PendingSlot>);

impl Drop for Authenticated {
    fn drop(&mut self) {
        let slot = &self.0;
        let mut state = lock(&slot.state);
        state.busy -= 1;
        if state.busy == 0 && !slot.eviction.done.load(Ordering::Acquire) {
            state.id = Some(slot.pool.enter(&slot.eviction));
        }
    }
}

/// Serves `app` on `listener` until `drained` resolves; then stops accepting and gives the
/// open connections, and `settled` (what else must finish: upgraded sessions closing), at
/// most `limits.grace` together.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    drained: impl Future<Output = ()>,
    settled: impl Future<Output = ()>,
) {
    let pending = Arc::new(PendingPool {
        max: limits.max_pending,
        waiting: Mutex::default(),
        metrics: metrics.clone(),
    });
    let (stop, stopping) = watch::channel(false);
    let open = Arc::new(OpenConnections::default());
    tokio::pin!(drained);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut drained => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: pause instead of spinning, and
                    // let connections that end give some back.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            timeouts: metrics.write_timeouts.clone(),
            slot: pending.admit(),
            peer: Peer(peer),
            limits,
        };
        let guard = open.enter();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            conn.run(tcp, stopping).await;
            drop(guard);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let finished = async { tokio::join!(open.all_closed(), settled) };
    if tokio::time::timeout(limits.grace, finished).await.is_err() {
        tracing::warn!(
            open = open.count(),
            "shutdown grace over: dropping the connections still open"
        );
    }
}

/// One accepted connection.
struct Connection {
    app: Router,
    timeouts: prometheus::IntCounter,
    slot: Arc<PendingSlot>,
    peer: Peer,
    limits: Limits,
}

impl Connection {
    async fn run(self, tcp: TcpStream, mut stopping: watch::Receiver<bool>) {
        let Connection {
            app,
            timeouts,
            slot,
            peer,
            limits,
        } = self;
        let pending = slot.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(slot.clone());
            req.extensions_mut().insert(peer);
            app.clone().oneshot(req)
        });
        let io = TokioIo::new(DeadlineIo::new(tcp, limits.write_deadline).counted(timeouts));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            () = pending.evicted() => tracing::debug!("pending connection closed to make room"),
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// Counts connection tasks, so that shutdown can wait for the last one.
#[derive(Default)]
struct OpenConnections {
    count: AtomicUsize,
    none_left: Notify,
}

struct OpenGuard(Arc<OpenConnections>);

impl OpenConnections {
    fn enter(self: &Arc<Self>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.clone())
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// A socket whose writes fail with `TimedOut` once one has been unable to make progress for
/// the deadline. The timer exists only while a write is blocked, so an idle or flowing
/// connection pays nothing for it.
pub struct DeadlineIo<T> {
    inner: T,
    deadline: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
    /// `tidings_gateway_write_timeouts_total`, when counted.
    timeouts: Option<prometheus::IntCounter>,
}

impl<T> DeadlineIo<T> {
    /// Wraps `inner` with a write deadline.
    pub fn new(inner: T, deadline: Duration) -> Self {
        DeadlineIo {
            inner,
            deadline,
            blocked: None,
            timeouts: None,
        }
    }

    /// Counts the deadlines that ran out in `counter`.
    pub fn counted(mut self, counter: prometheus::IntCounter) -> Self {
        self.timeouts = Some(counter);
        self
    }

    /// Records the outcome of a write-side poll: progress clears the timer; being blocked
    /// starts it, or fails once it has run out.
    fn watch<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let timer = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
                ready!(timer.as_mut().poll(cx));
                if let Some(c) = self.timeouts.take() {
                    c.inc();
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {deadline:?} (write deadline)"),
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_progress_fails_at_the_deadline() {
        // A pipe whose reader never reads: 64 bytes of room, then every write blocks.
        let (writer, _reader) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(writer, Duration::from_secs(10));
        io.write_all(&[0; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline() {
        let (writer, mut reader) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(writer, Duration::from_secs(10));
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // Reads 64 bytes every 6 s: never 10 s without progress.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tokio::io::AsyncReadExt::read_exact(&mut reader, &mut buf)
                    .await
                    .unwrap();
            }
        });
        io.write_all(&[0; 64 * 4]).await.unwrap();
        drain.await.unwrap();
    }
}
