//! One soak client: a WebSocket subscribed to one channel, counting what it was owed.
//!
//! What a client is owed (its *window*): every message of its channel numbered from `start`
//! (the number the publisher had issued when the client's `subscribe` was confirmed: any
//! message issued later was published after the gateway held the subscription) up to, not
//! including, `end` (the number the publisher had seen acknowledged when the client was told
//! to close). Told to close, a client keeps reading until it holds message `end - 1` (at
//! most [`DRAIN`]), then closes: messages published after that moment are in flight, not
//! owed. Lost = window numbers never received; duplicate = a number received at or below
//! one already received. A connection the gateway drops (slow consumer, anything
//! unplanned) is counted and resumed with `since` = the last `seq` held, as real clients do;
//! its window continues.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::TidingsWs;

/// How long a closing client waits for the last message it is owed.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Connection attempts per client before it gives up (each failure is counted).
const ATTEMPTS: u32 = 5;

/// What every client shares: where to connect, the publisher's counters, the tallies.
pub struct Ctx {
    pub addr: SocketAddr,
    pub host: String,
    pub secret: String,
    pub prefix: String,
    /// Per channel: messages the publisher has started to publish (numbers issued).
    pub issued: Vec<AtomicU64>,
    /// Per channel: every number below this one is acknowledged by JetStream.
    pub acked: Vec<AtomicU64>,
    /// Connection setups in progress at once (initial burst).
    pub gate: Arc<Semaphore>,
    pub tally: Tally,
}

/// Totals over every client, live.
#[derive(Default)]
pub struct Tally {
    /// Clients with a confirmed subscription right now.
    pub subscribed: AtomicU64,
    /// Clients that ever subscribed.
    pub opened: AtomicU64,
    /// Clients that finished (closed as told, or gave up).
    pub finished: AtomicU64,
    /// Messages received (all of them, duplicates and pre-window ones included).
    pub deliveries: AtomicU64,
    /// Sum of the window sizes of finished clients.
    pub owed: AtomicU64,
    pub lost: AtomicU64,
    pub duplicates: AtomicU64,
    /// Connection or subscription attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections the gateway ended without being asked (each resumed with `since`).
    pub dropped: AtomicU64,
    /// Resubscriptions answered `recovered:false`.
    pub resets: AtomicU64,
    /// Closing clients that did not get their last owed message within [`DRAIN`].
    pub drain_timeouts: AtomicU64,
}

/// A client's window and what it received of it (see the module doc).
#[derive(Debug)]
pub struct Window {
    start: u64,
    /// Every number below it was received or is in `gaps`.
    cursor: u64,
    last: Option<u64>,
    gaps: Vec<Range<u64>>,
    duplicates: u64,
}

impl Window {
    pub fn new(start: u64) -> Self {
        Window {
            start,
            cursor: start,
            last: None,
            gaps: Vec::new(),
            duplicates: 0,
        }
    }

    /// Counts message number `n`.
    pub fn record(&mut self, n: u64) {
        if self.last.is_some_and(|l| n <= l) {
            self.duplicates += 1;
            return;
        }
        self.last = Some(n);
        if n >= self.cursor {
            if n > self.cursor {
                self.gaps.push(self.cursor..n);
            }
            self.cursor = n + 1;
        }
    }

    /// Whether everything below `end` was received or skipped.
    pub fn reached(&self, end: u64) -> bool {
        self.cursor >= end
    }

    /// Owed numbers in `[start, end)`.
    pub fn owed(&self, end: u64) -> u64 {
        end.saturating_sub(self.start)
    }

    /// Owed numbers below `end` never received.
    pub fn lost(&self, end: u64) -> u64 {
        let skipped: u64 = self.gaps.iter().map(|g| g.end.min(end).saturating_sub(g.start)).sum();
        skipped + end.saturating_sub(self.cursor)
    }
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    n: u64,
}

/// How one connection of a client ended.
enum Ended {
    /// Told to close, and drained (or timed out draining).
    Closed,
    /// The gateway ended it unasked.
    Dropped,
}

/// What a client keeps across its connections.
struct State {
    channel: String,
    c: usize,
    window: Option<Window>,
    /// Last durable position held (`since` for a resume).
    last_seq: u64,
    /// Window end and drain deadline, once told to close.
    end: Option<(u64, Instant)>,
}

/// Runs client `user` on channel `c` until `close` fires (or its sender is dropped) and
/// it has drained; adds its figures to the tally.
pub async fn run(ctx: Arc<Ctx>, c: usize, user: u64, mut close: oneshot::Receiver<()>) {
    let mut st = State {
        channel: format!("project:{}-{c}", ctx.prefix),
        c,
        window: None,
        last_seq: 0,
        end: None,
    };
    let Ok(token) = crate::mint(&ctx.secret, &format!("loadtest-soak-{user}"), &["*"], None) else {
        ctx.tally.connect_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let url = format!("ws://{}/ws?token={token}", ctx.host);
    let source = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let mut failures = 0;
    loop {
        let since = st.window.as_ref().map(|_| st.last_seq);
        let permit = ctx.gate.clone().acquire_owned().await;
        let connected = subscribe(&ctx, source, &url, &st.channel, since).await;
        drop(permit);
        let (mut ws, seq) = match connected {
            Ok(c) => c,
            Err(_) => {
                ctx.tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                if failures >= ATTEMPTS || st.end.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                continue;
            }
        };
        if st.window.is_none() {
            // Confirmed: every number issued from now on is owed.
            st.window = Some(Window::new(ctx.issued[c].load(Ordering::Acquire)));
            st.last_seq = seq.0;
            ctx.tally.opened.fetch_add(1, Ordering::Relaxed);
        } else if !seq.1 {
            ctx.tally.resets.fetch_add(1, Ordering::Relaxed);
        }
        ctx.tally.subscribed.fetch_add(1, Ordering::Relaxed);
        let ended = session(&ctx, &mut ws, &mut st, &mut close).await;
        ctx.tally.subscribed.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ended::Closed => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break;
            }
            Ended::Dropped => {
                ctx.tally.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    finish(&ctx, &st);
}

/// Adds a finished client's window to the tally.
fn finish(ctx: &Ctx, st: &State) {
    let t = &ctx.tally;
    t.finished.fetch_add(1, Ordering::Relaxed);
    let Some(w) = &st.window else { return };
    let end = st
        .end
        .map_or_else(|| ctx.acked[st.c].load(Ordering::Acquire), |(e, _)| e);
    t.owed.fetch_add(w.owed(end), Ordering::Relaxed);
    t.lost.fetch_add(w.lost(end), Ordering::Relaxed);
    t.duplicates.fetch_add(w.duplicates, Ordering::Relaxed);
}

/// Reads one connection until told to close and drained, or until the gateway ends it.
async fn session(ctx: &Ctx, ws: &mut TidingsWs, st: &mut State, close: &mut oneshot::Receiver<()>) -> Ended {
    loop {
        if let (Some((end, _)), Some(w)) = (st.end, &st.window)
            && w.reached(end)
        {
            return Ended::Closed;
        }
        let drain = st.end.map(|(_, d)| d);
        let drained = async {
            match drain {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut *close, if st.end.is_none() => {
                st.end = Some((ctx.acked[st.c].load(Ordering::Acquire), Instant::now() + DRAIN));
            }
            () = drained => {
                ctx.tally.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                return Ended::Closed;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => on_text(ctx, st, t.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    return if st.end.is_some() { Ended::Closed } else { Ended::Dropped };
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

fn on_text(ctx: &Ctx, st: &mut State, text: &str) {
    let Ok(f) = serde_json::from_str::<Frame>(text) else {
        return;
    };
    if f.kind != "message" {
        return;
    }
    ctx.tally.deliveries.fetch_add(1, Ordering::Relaxed);
    if let Some(seq) = f.seq {
        st.last_seq = st.last_seq.max(seq);
    }
    if let (Some(d), Some(w)) = (f.data, st.window.as_mut()) {
        w.record(d.n);
    }
}

/// Opens a WebSocket and subscribes (with `since` on a resume); returns it with the
/// reply's position (`seq`, or `since`) and `recovered`.
async fn subscribe(
    ctx: &Ctx,
    source: IpAddr,
    url: &str,
    channel: &str,
    since: Option<u64>,
) -> anyhow::Result<(TidingsWs, (u64, bool))> {
    let setup = async {
        let stream = crate::connect_from(source, ctx.addr).await?;
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        let mut sub = serde_json::json!({"type": "subscribe", "id": 1, "channel": channel});
        if let Some(s) = since {
            sub["since"] = s.into();
        }
        ws.send(Message::Text(sub.to_string().into())).await?;
        while let Some(frame) = ws.next().await {
            let Message::Text(t) = frame? else { continue };
            let f: Frame = serde_json::from_str(t.as_str())?;
            if f.kind == "reply" {
                anyhow::ensure!(f.ok == Some(true), "subscribe refused: {t}");
                let seq = f.seq.or(since).unwrap_or(0);
                return Ok((ws, (seq, f.recovered.unwrap_or(true))));
            }
        }
        anyhow::bail!("closed before the subscribe reply")
    };
    tokio::time::timeout(Duration::from_secs(30), setup).await?
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn a_complete_window_loses_nothing() {
        let mut w = Window::new(5);
        // Numbers before the window are welcome but not owed.
        for n in 3..12 {
            w.record(n);
        }
        assert!(w.reached(10));
        assert_eq!((w.owed(10), w.lost(10), w.duplicates), (5, 0, 0));
    }

    #[test]
    fn gaps_tails_and_repeats_are_counted_within_the_window_only() {
        let mut w = Window::new(0);
        for n in [0, 1, 4, 4, 2, 5, 9] {
            w.record(n);
        }
        // 2 and 3 skipped (2 arriving late is a repeat in a per-channel order), 4 twice,
        // 6..9 skipped; the window ends at 8: 6 and 7 lost, 8 in flight.
        assert_eq!(w.duplicates, 2);
        assert_eq!(w.lost(8), 4);
        assert_eq!(w.owed(8), 8);
        // Told to close at 12: the tail 10 and 11 never came.
        assert!(!w.reached(12));
        assert_eq!(w.lost(12), 2 + 3 + 2);
    }
}
