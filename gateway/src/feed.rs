//! A channel's feed from NATS: its two subscriptions (durable re-publish `tidings.stored.<…>`
//! and ephemeral `tidings.live.<…>`, rows of [`crate::subs`]), the order of its durable
//! messages ([`Chain`]), reading missed ones back from the stream (gap repair), and handing
//! every message, encoded once, to an [`Outlet`] (the hub's subscribers).
//!
//! A feed is a small object, not a task: the subscription connection calls
//! [`ChannelFeed::receive`] with each message, which is classified and fanned out right
//! there. Only the rare slow paths (opening the channel, repairing a gap, catching up after a
//! reconnect) run as short-lived tasks; meanwhile new messages wait in the feed, in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_shared::Channel;
use tokio::sync::Notify;

use crate::chain::{Chain, Step};
use crate::hub::lock;
use crate::message::{self, Encoded};
use crate::metrics::Metrics;
use crate::position::{Link, Opening};
use crate::subs::{self, Subscriptions};

/// Most messages one gap repair reads back (a larger gap is left to the clients).
pub const REPAIR_MAX: usize = 10_000;
/// Most bytes of messages one gap repair holds (a larger gap is left to the clients, who
/// recover it with `since`, through the per-connection replay budget).
pub const REPAIR_BYTES: usize = 8 << 20;
/// Most messages a feed holds while it opens or repairs a gap. Past it (or past
/// [`HELD_BYTES`]), durable messages are dropped and show up as the next gap (repaired in
/// turn, or recovered by clients); ephemeral ones are lost, as they would be to a slow
/// consumer.
pub const HELD_MAX: usize = 10_000;
/// Most bytes (headers and payloads) a feed holds while it opens or repairs a gap.
pub const HELD_BYTES: usize = 8 << 20;
/// How long opening a channel waits for NATS to confirm its subscriptions.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// What a feed needs from the node: NATS, metrics, the payload limit, and the stream's
/// generation (bumped when `TIDINGS_EVENTS` is recreated, so feeds restart their sequences).
pub struct FeedCtx {
    /// The NATS connection JetStream reads are made on.
    pub nats: async_nats::Client,
    /// The connection the channels' subscriptions are rows of.
    pub subs: Subscriptions,
    /// Rejected and recovered message counters.
    pub metrics: Metrics,
    /// Largest publisher body and frame delivered.
    pub limits: crate::message::Limits,
    /// The stream's generation.
    pub generation: Arc<AtomicU64>,
    /// The highest stream sequence this node has seen (0: none yet, or the stream was
    /// recreated): a channel with no message yet opens there without asking for the
    /// stream's info, since nothing of it is stored up to that point.
    pub stream_seen: AtomicU64,
    /// Bounds how many channels read the stream back at once (gap repairs, position checks
    /// after a reconnect).
    pub checks: tokio::sync::Semaphore,
}

/// Where a feed delivers: a channel's local subscribers.
pub trait Outlet: Send + Sync + 'static {
    /// Offers one encoded message to every subscriber, never waiting.
    fn deliver(&self, message: &Arc<Encoded>);
    /// The channel was opened at stream position `seq`: new subscribers start there.
    fn opened(&self, seq: u64);
    /// The stream was recreated: positions start again from 0.
    fn restarted(&self);
}

/// A message waiting in a feed that is opening or repairing: (durable, message).
type Held = (bool, async_nats::Message);

/// Messages waiting in a feed, in order, bounded in number and bytes.
#[derive(Default)]
struct Holding {
    queue: VecDeque<Held>,
    bytes: usize,
}

impl Holding {
    /// Holds one more message; false if it was dropped (over a bound).
    fn push(&mut self, durable: bool, mut msg: async_nats::Message, metrics: &Metrics) -> bool {
        let size = held_size(&msg);
        if self.queue.len() >= HELD_MAX || self.bytes.saturating_add(size) > HELD_BYTES {
            metrics.rejected_messages.with_label_values(&["overflow"]).inc();
            return false;
        }
        detach(&mut msg);
        self.bytes += size;
        self.queue.push_back((durable, msg));
        true
    }

    /// The oldest message held.
    fn pop(&mut self) -> Option<Held> {
        let held = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(held_size(&held.1));
        Some(held)
    }
}

/// Gives a message that will wait its own payload. A received payload is a slice of the
/// subscription connection's read buffer (64 KiB chunks): kept as is, every small message
/// waiting would keep a whole chunk alive.
fn detach(msg: &mut async_nats::Message) {
    msg.payload = bytes::Bytes::copy_from_slice(&msg.payload);
}

/// What a held message counts against [`HELD_BYTES`]: headers and payload (a publisher's
/// headers travel with the re-published message and can be as large as its payload).
fn held_size(msg: &async_nats::Message) -> usize {
    msg.length.max(msg.payload.len())
}

/// What a feed is doing with arriving messages.
enum Mode {
    /// Subscribed, position not known yet: hold them.
    Opening(Holding),
    /// Deliver them as they come.
    Live,
    /// Reading missed messages back: hold them until the repair is delivered.
    Repairing(Holding),
}

/// Missed messages to read back: those after `after` and before `before`, then `next` (the
/// message that revealed the gap, if one did).
struct Gap {
    after: u64,
    before: u64,
    next: Option<(Link, async_nats::Message)>,
}

struct State {
    mode: Mode,
    chain: Chain,
    generation: u64,
    /// A catch-up is due once the feed is live: a NATS reconnect asked for one while the
    /// feed was opening or repairing (what was stored while NATS was away may lie beyond
    /// what the opening or the repair reads), or a durable message overflowed the holding.
    catch_up_pending: bool,
    /// Whether a bad publisher was logged, per subject (live, durable): once, not per message.
    logged: [bool; 2],
}

/// One channel's feed on this node (see the module's documentation).
pub struct ChannelFeed<O> {
    ctx: Arc<FeedCtx>,
    channel: Channel,
    outlet: O,
    state: Mutex<State>,
    /// [`OPENING`], [`OPEN`] or [`FAILED`]; subscribers wait for it on `opened` (a `Notify`
    /// and a byte rather than a `watch` channel, whose eight-fold notifier would cost a
    /// channel ~350 bytes for as long as it is open).
    status: AtomicU8,
    opened: Notify,
}

/// The feed is confirming its rows and finding its position.
const OPENING: u8 = 0;
/// Subscribers can be answered.
const OPEN: u8 = 1;
/// NATS did not confirm the rows: subscribers are refused (and leave, closing the channel).
const FAILED: u8 = 2;

impl<O: Outlet> subs::Receiver for ChannelFeed<O> {
    fn receive(self: Arc<Self>, durable: bool, msg: async_nats::Message) {
        let mut st = lock(&self.state);
        if let Mode::Opening(held) | Mode::Repairing(held) = &mut st.mode {
            if !held.push(durable, msg, &self.ctx.metrics) && durable {
                // Read back once live, even if the channel then stays quiet (no next
                // message would reveal the gap).
                st.catch_up_pending = true;
            }
            return;
        }
        if let Some(gap) = self.process(&mut st, durable, msg) {
            st.mode = Mode::Repairing(Holding::default());
            drop(st);
            tokio::spawn(self.repair(gap));
        }
    }
}

impl<O: Outlet> ChannelFeed<O> {
    /// A feed for `channel`, holding what arrives until [`ChannelFeed::open`] knows where the
    /// channel stands.
    pub fn new(ctx: Arc<FeedCtx>, channel: Channel, outlet: O) -> Arc<Self> {
        let generation = ctx.generation.load(Ordering::Acquire);
        Arc::new(ChannelFeed {
            ctx,
            channel,
            outlet,
            state: Mutex::new(State {
                mode: Mode::Opening(Holding::default()),
                chain: Chain::new(Opening::default()),
                generation,
                catch_up_pending: false,
                logged: [false; 2],
            }),
            status: AtomicU8::new(OPENING),
            opened: Notify::new(),
        })
    }

    /// Waits until the channel is open: `true`, or `false` if it could not be opened.
    pub async fn wait_open(&self) -> bool {
        loop {
            let notified = self.opened.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status.load(Ordering::Acquire) {
                OPENING => notified.await,
                status => return status == OPEN,
            }
        }
    }

    fn set_status(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        self.opened.notify_waiters();
    }

    /// The channel's subject rows, subscribed on the node's subscription connection;
    /// dropping them unsubscribes.
    pub fn subscribe(self: &Arc<Self>) -> [subs::Subscription; 2] {
        let subs = &self.ctx.subs;
        [
            subs.add(self.channel.stored_subject(), true, self.clone()),
            subs.add(self.channel.live_subject(), false, self.clone()),
        ]
    }

    /// Opens the channel once its rows are subscribed. `opening` is where the channel stood
    /// before anyone subscribed (read before the rows were added; `None`: find it now).
    /// Once NATS confirms the rows, whatever is stored on the channel reaches them; what was
    /// stored between `opening` and that moment is read back from the stream before anyone
    /// is answered, so a subscriber misses nothing stored after it asked, even on a channel
    /// that then stays quiet. Subscribers waiting in [`ChannelFeed::wait_open`] are answered
    /// then (refused if NATS did not confirm the rows).
    pub async fn open(self: Arc<Self>, opening: Option<Opening>) {
        if let Err(e) = self.ctx.subs.confirm(CONFIRM_TIMEOUT).await {
            tracing::warn!(channel = %self.channel, error = %e, "channel not opened");
            self.set_status(FAILED);
            return;
        }
        let opening = match opening {
            Some(known) => known,
            None => {
                let found = opening_position(&self.ctx, &self.channel).await;
                self.outlet.opened(found.stream.unwrap_or(0));
                found
            }
        };
        let mut chain = Chain::new(opening);
        if let Some(after) = opening.stream
            && let Some(now) = last_stored(&self.ctx, &self.channel).await.filter(|l| *l > after)
            && let Some(last) = repair_gap(
                &self.ctx,
                &self.channel,
                &self.outlet,
                after,
                now + 1,
                chain.last_delivered(),
            )
            .await
        {
            chain.caught_up(now, last);
        }
        let (gap, catch_up) = {
            let mut st = lock(&self.state);
            st.chain = chain;
            let held = match &mut st.mode {
                Mode::Opening(held) => std::mem::take(held),
                _ => Holding::default(),
            };
            let gap = self.drain(&mut st, held);
            let catch_up = gap.is_none() && std::mem::take(&mut st.catch_up_pending);
            (gap, catch_up)
        };
        self.set_status(OPEN);
        if let Some(gap) = gap {
            self.repair(gap).await;
        } else if catch_up {
            self.catch_up().await;
        }
    }

    /// Delivers held messages in order until one reveals a gap: then the rest stay held
    /// (the feed is `Repairing`) and the gap is returned.
    fn drain(&self, st: &mut State, mut held: Holding) -> Option<Gap> {
        while let Some((durable, msg)) = held.pop() {
            if let Some(gap) = self.process(st, durable, msg) {
                st.mode = Mode::Repairing(held);
                return Some(gap);
            }
        }
        st.mode = Mode::Live;
        None
    }

    /// After a NATS reconnect: reads back what was stored on the channel beyond what this
    /// node saw (a quiet channel would otherwise show it only with its next message). A
    /// feed still opening or repairing catches up once it is live.
    pub async fn catch_up(self: Arc<Self>) {
        if let Some(gap) = self.catch_up_gap().await {
            self.repair(gap).await;
        }
    }

    /// What a catch-up must read back (the feed is then `Repairing`); `None` if nothing, or
    /// if the feed is not live (then it catches up once it is).
    async fn catch_up_gap(&self) -> Option<Gap> {
        let seen = {
            let mut st = lock(&self.state);
            self.check_generation(&mut st);
            match (&st.mode, st.chain.seen()) {
                (Mode::Live, Some(seen)) => seen,
                (Mode::Live, None) => return None,
                _ => {
                    st.catch_up_pending = true;
                    return None;
                }
            }
        };
        let now = {
            let _permit = self.ctx.checks.acquire().await.ok()?;
            last_stored(&self.ctx, &self.channel).await
        };
        let now = now.filter(|n| *n > seen)?;
        let mut st = lock(&self.state);
        if !matches!(st.mode, Mode::Live) {
            // A gap found meanwhile is being repaired: catch up after it.
            st.catch_up_pending = true;
            return None;
        }
        let after = st.chain.seen().filter(|s| *s < now)?;
        st.mode = Mode::Repairing(Holding::default());
        tracing::info!(channel = %self.channel, seen, now, "stored messages this node did not receive (NATS was away, or they overflowed while the channel opened or repaired): reading them back");
        Some(Gap {
            after,
            before: now + 1,
            next: None,
        })
    }

    /// Reads missed messages back and delivers them, then what was held meanwhile; again
    /// for every further gap found in what was held.
    async fn repair(self: Arc<Self>, mut gap: Gap) {
        loop {
            let last = lock(&self.state).chain.last_delivered();
            let repaired = repair_gap(&self.ctx, &self.channel, &self.outlet, gap.after, gap.before, last).await;
            let found = {
                let mut st = lock(&self.state);
                match gap.next {
                    Some((next, msg)) => {
                        let link = st.chain.resume(next, repaired);
                        self.emit(&mut st, true, &msg, Some(link));
                    }
                    None => {
                        // Failed (too large to repair here): the next message then names the
                        // channel's real last sequence as its `prev`, so clients see the gap
                        // and recover with `since`, and this node does not read it again.
                        let last = repaired.unwrap_or(gap.before - 1);
                        st.chain.caught_up(gap.before - 1, last);
                    }
                }
                let held = match &mut st.mode {
                    Mode::Repairing(held) => std::mem::take(held),
                    _ => Holding::default(),
                };
                let found = self.drain(&mut st, held);
                if found.is_none() && !std::mem::take(&mut st.catch_up_pending) {
                    return;
                }
                found
            };
            gap = match found {
                Some(next) => next,
                // Live again, with a catch-up due.
                None => match self.catch_up_gap().await {
                    Some(next) => next,
                    None => return,
                },
            };
        }
    }

    /// After `TIDINGS_EVENTS` was recreated, sequences start again from 1.
    fn check_generation(&self, st: &mut State) {
        let current = self.ctx.generation.load(Ordering::Acquire);
        if current != st.generation {
            st.generation = current;
            st.chain.restart();
            self.outlet.restarted();
        }
    }

    /// Classifies one message and delivers it, unless it reveals a gap (returned).
    fn process(&self, st: &mut State, durable: bool, msg: async_nats::Message) -> Option<Gap> {
        self.check_generation(st);
        let link = if durable {
            let Some(link) = message::stored_position(&msg) else {
                self.ctx.metrics.rejected_messages.with_label_values(&["invalid"]).inc();
                return None;
            };
            self.ctx.stream_seen.fetch_max(link.seq, Ordering::AcqRel);
            match st.chain.accept(link) {
                Step::Duplicate => return None,
                Step::Deliver(link) => Some(link),
                Step::Gap { after, next } => {
                    // Waits for the repair, maybe behind other channels'.
                    let mut msg = msg;
                    detach(&mut msg);
                    return Some(Gap {
                        after,
                        before: next.seq,
                        next: Some((next, msg)),
                    });
                }
            }
        } else {
            None
        };
        self.emit(st, durable, &msg, link);
        None
    }

    /// Encodes a message once and offers it to every subscriber.
    fn emit(&self, st: &mut State, durable: bool, msg: &async_nats::Message, link: Option<Link>) {
        let ctx = &self.ctx;
        match message::from_nats(msg, &self.channel, link, ctx.limits) {
            Ok(mut encoded) => {
                if let Some(link) = link {
                    st.chain.delivered(link.seq);
                }
                match tidings_shared::telemetry::TraceParent::from_nats(msg.headers.as_ref()) {
                    None => self.outlet.deliver(&encoded),
                    Some(parent) => {
                        let span = tracing::info_span!("fanout", channel = %self.channel);
                        parent.adopt(&span);
                        if let Some(e) = Arc::get_mut(&mut encoded) {
                            e.trace = tidings_shared::telemetry::TraceParent::of_span(&span);
                        }
                        span.in_scope(|| self.outlet.deliver(&encoded));
                    }
                }
            }
            Err(rejected) => {
                ctx.metrics
                    .rejected_messages
                    .with_label_values(&[rejected.reason])
                    .inc();
                if !std::mem::replace(&mut st.logged[usize::from(durable)], true) {
                    tracing::warn!(subject = %msg.subject, reason = rejected.reason, detail = %rejected.detail,
                        "dropping publisher message (logged once per subject)");
                }
            }
        }
    }
}

/// Where `channel` stands now (see [`Opening`]); `stream: None` and `channel_last: 0` if
/// NATS cannot tell right now.
pub async fn opening_position(ctx: &FeedCtx, channel: &Channel) -> Opening {
    let js = async_nats::jetstream::new(ctx.nats.clone());
    let Ok(stream) = js.get_stream_no_info(tidings_shared::subject::EVENTS_STREAM).await else {
        return Opening::default();
    };
    match stream.direct_get_last_for_subject(channel.durable_subject()).await {
        Ok(m) => {
            ctx.stream_seen.fetch_max(m.sequence, Ordering::AcqRel);
            Opening {
                stream: Some(m.sequence),
                channel_last: m.sequence,
            }
        }
        // No message of the channel yet: its next one has `prev` 0, and nothing of it is
        // stored up to any sequence the stream already had, such as the highest this node
        // has seen (asking for the stream's info only while it has seen none).
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
            let seen = ctx.stream_seen.load(Ordering::Acquire);
            let stream = if seen > 0 {
                Some(seen)
            } else {
                let last = js
                    .get_stream(tidings_shared::subject::EVENTS_STREAM)
                    .await
                    .ok()
                    .map(|s| s.cached_info().state.last_sequence);
                if let Some(last) = last {
                    ctx.stream_seen.fetch_max(last, Ordering::AcqRel);
                }
                last
            };
            Opening {
                stream,
                channel_last: 0,
            }
        }
        Err(_) => Opening::default(),
    }
}

/// The channel's last stored sequence now; `None` if it has none or NATS cannot tell.
async fn last_stored(ctx: &FeedCtx, channel: &Channel) -> Option<u64> {
    let js = async_nats::jetstream::new(ctx.nats.clone());
    let stream = js
        .get_stream_no_info(tidings_shared::subject::EVENTS_STREAM)
        .await
        .ok()?;
    stream
        .direct_get_last_for_subject(channel.durable_subject())
        .await
        .ok()
        .map(|m| m.sequence)
}

/// Reads the messages between `after` and `before` (exclusive) back from the stream and
/// delivers them, the first chained to `last_delivered`; returns the last delivered sequence.
async fn repair_gap(
    ctx: &FeedCtx,
    channel: &Channel,
    outlet: &impl Outlet,
    after: u64,
    before: u64,
    last_delivered: u64,
) -> Option<u64> {
    // Bounded across channels: after a reconnect every channel may find a gap at once.
    let Ok(_permit) = ctx.checks.acquire().await else {
        return None;
    };
    let js = async_nats::jetstream::new(ctx.nats.clone());
    let read = async {
        let stream = js
            .get_stream(tidings_shared::subject::EVENTS_STREAM)
            .await
            .map_err(tidings_shared::Error::nats)?;
        let from = Link {
            seq: after + 1,
            prev: last_delivered,
        };
        let budget = crate::history::ReadBudget {
            bytes: REPAIR_BYTES,
            limits: ctx.limits,
            largest: crate::history::largest_message(&ctx.nats),
        };
        let reader = crate::history::Reader::open(&stream, channel, from, Some(before), REPAIR_MAX, budget).await?;
        reader.collect(&ctx.metrics, REPAIR_BYTES).await
    };
    match read.await {
        Ok((_, true)) => {
            // Too much to hold in memory: clients see the gap and recover with `since`.
            tracing::warn!(%channel, after, before, "gap too large to repair here");
            None
        }
        Ok((missed, false)) => {
            tracing::info!(%channel, after, before, repaired = missed.len(), "gap in the stored sequence repaired from the stream");
            let mut last = last_delivered;
            for m in &missed {
                outlet.deliver(m);
                last = m.frame.seq.unwrap_or(last);
            }
            ctx.metrics.recovered_messages.inc_by(missed.len() as u64);
            Some(last)
        }
        Err(e) => {
            // Clients still see the gap through `prev` and recover with `since`.
            tracing::warn!(%channel, after, before, error = %e, "gap repair failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: bytes::Bytes) -> async_nats::Message {
        async_nats::Message {
            subject: async_nats::Subject::from_static("tidings.live.project.p1"),
            reply: None,
            length: payload.len(),
            payload,
            headers: None,
            status: None,
            description: None,
        }
    }

    #[test]
    fn held_messages_are_bounded_in_bytes_and_keep_no_read_buffer_alive() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new()?;
        // One read chunk of the subscription connection, each message a slice of it.
        let chunk = bytes::Bytes::from(vec![7u8; 64 << 10]);
        let mut held = Holding::default();
        assert!(held.push(true, message(chunk.slice(0..100)), &metrics));
        assert_eq!(held.queue[0].1.payload.len(), 100);
        assert!(chunk.is_unique(), "a held payload still points into the read chunk");

        let big = bytes::Bytes::from(vec![1u8; HELD_BYTES / 2]);
        assert!(held.push(true, message(big.clone()), &metrics));
        assert!(!held.push(true, message(big), &metrics));
        assert_eq!(held.queue.len(), 2, "the third message is past the byte bound");
        let overflow = metrics.rejected_messages.with_label_values(&["overflow"]).get();
        assert_eq!(overflow, 1);
        assert!(held.pop().is_some());
        assert_eq!(held.bytes, HELD_BYTES / 2);
        Ok(())
    }

    #[test]
    fn held_messages_are_bounded_in_number() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::new()?;
        let mut held = Holding::default();
        for _ in 0..HELD_MAX {
            assert!(held.push(false, message(bytes::Bytes::from_static(b"{}")), &metrics));
        }
        assert!(!held.push(false, message(bytes::Bytes::from_static(b"{}")), &metrics));
        assert_eq!(held.queue.len(), HELD_MAX);
        Ok(())
    }
}
