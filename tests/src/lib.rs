//! Test support for Tidings' integration tests: real `nats-server` processes (single node
//! and three-node cluster), the project's own binaries as child processes, and waiting on
//! conditions with a deadline instead of fixed sleeps; for fault tests, private networks of
//! namespaces with nftables partitions and loss ([`netns`]) and a latency proxy ([`delay`]).

pub mod delay;
pub mod fakes;
pub mod gateway;
pub mod nats;
pub mod netns;
pub mod process;
pub mod smtp;
pub mod tokens;
pub mod ws;

use std::time::{Duration, Instant};

pub use nats::{NatsCluster, NatsServer, free_port, nats_server_binary, workspace_root};
pub use process::{Process, http_get};
pub use ws::{Incoming, TokenIn, WsClient};

/// Reads a `text/event-stream` response one event at a time; keep-alive comments (blocks of
/// `:` lines only) are skipped.
pub struct SseEvents {
    response: reqwest::Response,
    buf: String,
}

impl SseEvents {
    /// Wraps an SSE response.
    pub fn new(response: reqwest::Response) -> Self {
        SseEvents {
            response,
            buf: String::new(),
        }
    }

    /// The next event's lines (with the blank line that ends it); panics if none arrives
    /// within `timeout` or the stream ends.
    pub async fn next(&mut self, timeout: Duration) -> String {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                if event.lines().any(|l| !l.is_empty() && !l.starts_with(':')) {
                    return event;
                }
            }
            let chunk = tokio::time::timeout(timeout, self.response.chunk())
                .await
                .expect("an SSE event in time")
                .expect("reading the SSE stream")
                .expect("the SSE stream is still open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Polls `check` until it returns `Some`, or gives up with `None` after `timeout`. For
/// conditions with no event to wait on (an HTTP status, a metric): waits on the condition,
/// never a fixed time. The check runs at least once, and once more at the deadline.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Like [`wait_for`], but panics after `timeout`, naming `what` it waited for.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match wait_for(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}
