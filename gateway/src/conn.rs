//! One local connection as the rest of the gateway sees it: its id, the close codes it can
//! be told to go with, what its writer sends, and the handle the fan-out holds on it.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use axum::extract::ws::Message;
use futures::task::AtomicWaker;
use tidings_shared::Channel;

use crate::message::Encoded;

/// Close code for a connection whose outbound queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4009;
/// Close code for a token that is missing, invalid or expired.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code for sustained rate-limit abuse.
pub const CLOSE_RATE_LIMITED: u16 = 4008;
/// Close code of a draining node.
pub const CLOSE_DRAINING: u16 = 1012;
/// Close code when the node failed half-way through something (a replay): resume.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_LARGE: u16 = 1009;

/// Id of a local connection, unique for the process's lifetime.
pub type ConnId = u64;

/// What a connection's writer sends.
pub enum Outbound {
    /// A channel message, shared by every recipient.
    Message(Arc<Encoded>),
    /// A frame encoded for this connection only (e.g. a reply produced by another task);
    /// boxed so that the queue's slots stay two words wide.
    Frame(Box<Message>),
    /// An operator ended the connection's subscription to this channel: leave it and say so.
    Unsubscribed(Box<Channel>),
}

/// State a connection shares with the fan-out: how to tell it to go away.
#[derive(Default)]
pub struct ConnSignal {
    /// The connection's own task, while it waits for a close request (only that task
    /// waits: one waker, and the waiting future is a pointer, not a `Notified`'s 64 bytes
    /// in every idle session's state).
    waker: AtomicWaker,
    code: AtomicU16,
    /// `iat` of the connection's current token (0: none), for revocations.
    issued_at: AtomicU64,
}

impl ConnSignal {
    /// Asks the connection to close with `code`. Returns true for the first request only, so
    /// a slow consumer is counted once however many messages it misses.
    pub fn close(&self, code: u16) -> bool {
        let first = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// Records the `iat` of the token the connection now runs on (0 without one).
    pub fn set_issued_at(&self, iat: Option<u64>) {
        self.issued_at.store(iat.unwrap_or(0), Ordering::Release);
    }

    /// `iat` of the connection's token (0: none).
    pub fn issued_at(&self) -> u64 {
        self.issued_at.load(Ordering::Acquire)
    }

    /// The requested close code, 0 if none.
    pub fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }

    /// Resolves once a close was requested. Awaited by the connection's own task only: the
    /// signal keeps one waker, so a second task waiting at the same time would take the
    /// wake-up from the first.
    pub fn closed(&self) -> impl Future<Output = u16> + '_ {
        poll_fn(|cx| {
            if self.code() == 0 {
                self.waker.register(cx.waker());
            }
            // Read again after registering: a close between the two is not missed.
            match self.code() {
                0 => Poll::Pending,
                code => Poll::Ready(code),
            }
        })
    }
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds as many frames as it may: the connection is a slow consumer.
    Full,
    /// The connection's writer is gone.
    Closed,
}

/// A connection's bounded outbound queue: filled by the fan-out (never waiting), drained by
/// the connection's own task.
///
/// A `VecDeque` behind a mutex rather than an `mpsc` channel: an idle connection's queue is
/// then ~100 bytes with no buffer at all (tokio's channel allocates a block of 32 slots and
/// two cache-padded halves, ~1.1 KB, up front), the buffer grows only while frames are
/// waiting, and a push is one uncontended lock and, only when the writer sleeps, one wake.
pub struct Outbox {
    state: Mutex<OutboxState>,
    capacity: usize,
}

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Outbound>,
    /// The writer's waker while it waits for frames.
    waker: Option<Waker>,
    closed: bool,
}

/// A drained queue keeps at most this many slots (more were needed only for a burst).
const OUTBOX_KEEP: usize = 64;

impl Outbox {
    /// An empty queue holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Outbox {
            state: Mutex::default(),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        crate::hub::lock(&self.state)
    }

    /// Queues `frame` unless the queue is full or its writer gone; never waits.
    pub fn try_send(&self, frame: Outbound) -> Result<(), QueueError> {
        let waker = {
            let mut st = self.lock();
            if st.closed {
                return Err(QueueError::Closed);
            }
            if st.queue.len() >= self.capacity {
                return Err(QueueError::Full);
            }
            st.queue.push_back(frame);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Waits for frames, then moves up to `limit` of them into `batch`; how many.
    pub async fn recv_many(&self, batch: &mut Vec<Outbound>, limit: usize) -> usize {
        poll_fn(|cx| {
            let mut st = self.lock();
            if st.queue.is_empty() {
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let n = st.queue.len().min(limit);
            batch.extend(st.queue.drain(..n));
            if st.queue.is_empty() && st.queue.capacity() > OUTBOX_KEEP {
                st.queue = VecDeque::new();
            }
            Poll::Ready(n)
        })
        .await
    }

    /// The writer is gone: later frames are refused, and those waiting dropped.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.queue = VecDeque::new();
        st.waker = None;
    }
}

/// Closes an [`Outbox`] when the connection's writer ends.
pub struct OutboxReader(pub Arc<Outbox>);

impl Drop for OutboxReader {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The fan-out's handle on one connection.
#[derive(Clone)]
pub struct ConnHandle {
    /// Bounded outbound queue, drained by the connection's writer.
    pub tx: Arc<Outbox>,
    /// Close requests.
    pub signal: Arc<ConnSignal>,
    /// The connection's user (for presence).
    pub user: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_close_wakes_the_waiting_task_once_with_the_first_code() {
        let signal = Arc::new(ConnSignal::default());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.closed().await }
        });
        // The waiter registers before the close or sees its code: either way it wakes.
        tokio::task::yield_now().await;
        assert!(signal.close(CLOSE_SLOW_CONSUMER));
        assert!(!signal.close(CLOSE_DRAINING), "only the first request counts");
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert_eq!(woken.ok().and_then(Result::ok), Some(CLOSE_SLOW_CONSUMER), "not woken");
        // A close asked before anyone waits is seen at once.
        assert_eq!(signal.closed().await, CLOSE_SLOW_CONSUMER);
    }
}
