//! One local connection as the rest of the gateway sees it: its id, the close codes it can
//! be told to go with, what its writer sends, and the handle the fan-out holds on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use axum::extract::ws::Message;
use tidings_shared::Channel;
use tokio::sync::{Notify, mpsc};

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
    notify: Notify,
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
            self.notify.notify_one();
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

    /// Resolves once a close was requested.
    pub async fn closed(&self) -> u16 {
        loop {
            let code = self.code();
            if code != 0 {
                return code;
            }
            self.notify.notified().await;
        }
    }
}

/// The fan-out's handle on one connection.
#[derive(Clone)]
pub struct ConnHandle {
    /// Bounded outbound queue, drained by the connection's writer.
    pub tx: mpsc::Sender<Outbound>,
    /// Close requests.
    pub signal: Arc<ConnSignal>,
    /// The connection's user (for presence).
    pub user: Arc<str>,
}
