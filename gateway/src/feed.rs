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
/// Most messages a feed holds while it opens or repairs a gap. Past it, durable messages
/// are dropped and show up as the next gap (repaired in turn, or recovered by clients);
/// ephemeral ones are lost, as they would be to a slow consumer.
pub const HELD_MAX: usize = 10_000;
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

/// What a feed is doing with arriving messages.
enum Mode {
    /// Subscribed, position not known yet: hold them.
    Opening(VecDeque<Held>),
    /// Deliver them as they come.
    Live,
    /// Reading missed messages back: hold them until the repair is delivered.
    Repairing(VecDeque<Held>),
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
            hold(held, (durable, msg), &self.ctx.metrics);
            return;
        }
        if let Some(gap) = self.process(&mut st, durable, msg) {
            st.mode = Mode::Repairing(VecDeque::new());
            drop(st);
            tokio::spawn(self.repair(gap));
        }
    }
}

fn hold(held: &mut VecDeque<Held>, message: Held, metrics: &Metrics) {
    if held.len() < HELD_MAX {
        held.push_back(message);
    } else {
        metrics.rejected_messages.with_label_values(&["overflow"]).inc();
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
                mode: Mode::Opening(VecDeque::new()),
                chain: Chain::new(Opening::default()),
                generation,
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
        let gap = {
            let mut st = lock(&self.state);
            st.chain = chain;
            let held = match &mut st.mode {
                Mode::Opening(held) => std::mem::take(held),
                _ => VecDeque::new(),
            };
            self.drain(&mut st, held)
        };
        self.set_status(OPEN);
        if let Some(gap) = gap {
            self.repair(gap).await;
        }
    }

    /// Delivers held messages in order until one reveals a gap: then the rest stay held
    /// (the feed is `Repairing`) and the gap is returned.
    fn drain(&self, st: &mut State, mut held: VecDeque<Held>) -> Option<Gap> {
        while let Some((durable, msg)) = held.pop_front() {
            if let Some(gap) = self.process(st, durable, msg) {
                st.mode = Mode::Repairing(held);
                return Some(gap);
            }
        }
        st.mode = Mode::Live;
        None
    }

    /// After a NATS reconnect: reads back what was stored on the channel beyond what this
    /// node saw (a quiet channel would otherwise show it only with its next message).
    pub async fn catch_up(self: Arc<Self>) {
        let seen = {
            let mut st = lock(&self.state);
            self.check_generation(&mut st);
            match (&st.mode, st.chain.seen()) {
                (Mode::Live, Some(seen)) => seen,
                _ => return,
            }
        };
        let now = {
            let Ok(_permit) = self.ctx.checks.acquire().await else {
                return;
            };
            last_stored(&self.ctx, &self.channel).await
        };
        let Some(now) = now.filter(|n| *n > seen) else {
            return;
        };
        let gap = {
            let mut st = lock(&self.state);
            let Some(after) = st.chain.seen().filter(|s| matches!(st.mode, Mode::Live) && *s < now) else {
                return;
            };
            st.mode = Mode::Repairing(VecDeque::new());
            Gap {
                after,
                before: now + 1,
                next: None,
            }
        };
        tracing::info!(channel = %self.channel, seen, now, "messages stored while NATS was away: reading them back");
        self.repair(gap).await;
    }

    /// Reads missed messages back and delivers them, then what was held meanwhile; again
    /// for every further gap found in what was held.
    async fn repair(self: Arc<Self>, mut gap: Gap) {
        loop {
            let last = lock(&self.state).chain.last_delivered();
            let repaired = repair_gap(&self.ctx, &self.channel, &self.outlet, gap.after, gap.before, last).await;
            let mut st = lock(&self.state);
            match gap.next {
                Some((next, msg)) => {
                    let link = st.chain.resume(next, repaired);
                    self.emit(&mut st, true, &msg, Some(link));
                }
                None => {
                    if let Some(last) = repaired {
                        st.chain.caught_up(gap.before - 1, last);
                    }
                }
            }
            let held = match &mut st.mode {
                Mode::Repairing(held) => std::mem::take(held),
                _ => VecDeque::new(),
            };
            match self.drain(&mut st, held) {
                Some(next) => gap = next,
                None => return,
            }
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
