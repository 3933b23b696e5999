//! A channel's feed from NATS: the task that owns its two core subscriptions (durable
//! re-publish `tidings.stored.<…>` and ephemeral `tidings.live.<…>`), keeps the durable
//! messages in order ([`Chain`]), reads missed ones back from the stream (gap repair) and
//! hands every message, encoded once, to an [`Outlet`] (the hub's subscribers).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use tidings_shared::Channel;
use tokio::sync::watch;

use crate::message::{self, Encoded};
use crate::metrics::Metrics;
use crate::position::{Link, Opening};

/// Most messages one gap repair reads back (a larger gap is left to the clients).
pub const REPAIR_MAX: usize = 10_000;
/// Most bytes of messages one gap repair holds (a larger gap is left to the clients, who
/// recover it with `since`, through the per-connection replay budget).
pub const REPAIR_BYTES: usize = 8 << 20;

/// What a feed needs from the node: NATS, metrics, the payload limit, and the stream's
/// generation (bumped when `TIDINGS_EVENTS` is recreated, so feeds restart their sequences).
#[derive(Clone)]
pub struct FeedCtx {
    /// The NATS connection the subscriptions are made on.
    pub nats: async_nats::Client,
    /// Rejected and recovered message counters.
    pub metrics: Metrics,
    /// Largest publisher body and frame delivered.
    pub limits: crate::message::Limits,
    /// The stream's generation.
    pub generation: Arc<AtomicU64>,
    /// Moves after every NATS reconnect (see [`tidings_shared::nats::Provisioner::rounds`]).
    pub reconnects: watch::Receiver<u64>,
    /// Bounds how many channels read the stream back at once (gap repairs, position checks
    /// after a reconnect).
    pub checks: Arc<tokio::sync::Semaphore>,
}

/// Where a feed delivers: a channel's local subscribers.
pub trait Outlet: Send + 'static {
    /// Offers one encoded message to every subscriber, never waiting.
    fn deliver(&self, message: &Arc<Encoded>);
    /// The channel was opened at stream position `seq`: new subscribers start there.
    fn opened(&self, seq: u64);
    /// The stream was recreated: positions start again from 0.
    fn restarted(&self);
}

/// What to do with a durable message, given the chain so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already seen: drop it.
    Duplicate,
    /// Deliver it with this link (`prev` = the previous message delivered here).
    Deliver(Link),
    /// Messages between `after` and `next` were missed: repair, then [`Chain::resume`].
    Gap {
        /// The last sequence seen.
        after: u64,
        /// The message that revealed the gap.
        next: Link,
    },
}

/// The order of a channel's durable messages on this node: the last sequence seen
/// (delivered or dropped; `None` until this node knows where the channel stands) and the
/// last delivered, so that `prev` always names the previous message delivered here and
/// clients see an unbroken chain even when a malformed message in between was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    seen: Option<u64>,
    delivered: u64,
}

impl Chain {
    /// The chain of a channel opened at `opening`.
    pub fn new(opening: Opening) -> Chain {
        Chain {
            seen: opening.stream,
            delivered: opening.channel_last,
        }
    }

    /// The last sequence seen (`None`: not known yet).
    pub fn seen(&self) -> Option<u64> {
        self.seen
    }

    /// The last sequence delivered (0 if none).
    pub fn last_delivered(&self) -> u64 {
        self.delivered
    }

    /// Classifies the next durable message. `Gap` changes nothing: repair, then `resume`.
    pub fn accept(&mut self, link: Link) -> Step {
        if self.seen.is_some_and(|l| link.seq <= l) {
            return Step::Duplicate;
        }
        if let Some(after) = self.seen.filter(|l| link.prev > *l) {
            return Step::Gap { after, next: link };
        }
        Step::Deliver(self.admit(link))
    }

    /// After a gap before `next`: `repaired` is the last sequence the repair delivered, or
    /// `None` if it failed (then `next` shows its real `prev`, so clients see the gap and
    /// recover with `since` themselves). Returns the link to deliver `next` with.
    pub fn resume(&mut self, next: Link, repaired: Option<u64>) -> Link {
        self.delivered = repaired.unwrap_or(next.prev);
        self.admit(next)
    }

    /// Everything up to `seen` was read back, the last delivered being `delivered`.
    pub fn caught_up(&mut self, seen: u64, delivered: u64) {
        self.seen = Some(seen);
        self.delivered = delivered;
    }

    /// `seq` was delivered (its message could be encoded).
    pub fn delivered(&mut self, seq: u64) {
        self.delivered = seq;
    }

    /// The stream was recreated: sequences start again from 1.
    pub fn restart(&mut self) {
        self.seen = Some(0);
        self.delivered = 0;
    }

    fn admit(&mut self, link: Link) -> Link {
        let prev = if self.seen.is_some() { self.delivered } else { link.prev };
        self.seen = Some(link.seq);
        Link { seq: link.seq, prev }
    }
}

/// Owns a channel's NATS subscriptions; aborted (unsubscribing) when the last local
/// subscriber leaves.
///
/// Durable messages are checked against the last sequence this node saw on the channel: a
/// `Nats-Last-Sequence` beyond it means this node missed messages (a NATS reconnect, a lost
/// route), so they are read back from the stream and delivered first; a sequence already
/// seen is a duplicate and dropped.
pub async fn channel_task(
    ctx: FeedCtx,
    channel: Channel,
    outlet: impl Outlet,
    ready: watch::Sender<bool>,
    opening: Option<Opening>,
) {
    let js = async_nats::jetstream::new(ctx.nats.clone());
    // Where the channel stands before the subscription exists: anything stored after this
    // and before the subscription is active shows up as a gap and is repaired.
    let opening = match opening {
        Some(known) => known,
        None => opening_position(&js, &channel).await,
    };
    outlet.opened(opening.stream.unwrap_or(0));
    let Some((stored, live)) = subscribe(&ctx.nats, &channel).await else {
        return;
    };
    let mut chain = Chain::new(opening);
    // Anything stored between the opening position and the subscription becoming active did
    // not come through it: read it back before anyone is told the channel is ready, so a
    // subscriber answered from the opening position misses nothing, even on a channel that
    // then stays quiet (otherwise it would wait for the next message to reveal the gap).
    if let Some(after) = opening.stream
        && let Some(now) = last_stored(&js, &channel).await.filter(|l| *l > after)
        && let Some(last) = repair_gap(&ctx, &js, &channel, &outlet, after, now + 1, chain.last_delivered()).await
    {
        chain.caught_up(now, last);
    }
    let _ = ready.send(true);
    let mut merged = futures::stream::select(stored.map(|m| (true, m)), live.map(|m| (false, m)));
    let mut reconnects = ctx.reconnects.clone();
    reconnects.borrow_and_update();
    let mut feed = Feed {
        generation: ctx.generation.load(Ordering::Acquire),
        ctx: &ctx,
        js: &js,
        channel: &channel,
        outlet: &outlet,
        chain,
        logged: [false; 2],
    };
    loop {
        tokio::select! {
            next = merged.next() => match next {
                Some((durable, msg)) => feed.message(durable, &msg).await,
                None => break,
            },
            Ok(()) = reconnects.changed() => {
                // Messages stored while NATS was away never reached the subscription: a
                // quiet channel would show them only with its next message. Look now.
                feed.check_generation();
                catch_up_after_reconnect(&ctx, &js, &channel, &outlet, &mut feed.chain).await;
            }
        }
    }
}

/// A running channel feed: where its chain stands, and what it delivers to.
struct Feed<'a, O> {
    ctx: &'a FeedCtx,
    js: &'a async_nats::jetstream::Context,
    channel: &'a Channel,
    outlet: &'a O,
    chain: Chain,
    generation: u64,
    /// Whether a bad publisher was logged, per subject (durable, live): once, not per message.
    logged: [bool; 2],
}

impl<O: Outlet> Feed<'_, O> {
    /// After `TIDINGS_EVENTS` was recreated, sequences start again from 1.
    fn check_generation(&mut self) {
        let current = self.ctx.generation.load(Ordering::Acquire);
        if current != self.generation {
            self.generation = current;
            self.chain.restart();
            self.outlet.restarted();
        }
    }

    /// One message from the stored or the live subject.
    async fn message(&mut self, durable: bool, msg: &async_nats::Message) {
        self.check_generation();
        let ctx = self.ctx;
        let link = if durable {
            let Some(link) = message::stored_position(msg) else {
                ctx.metrics.rejected_messages.with_label_values(&["invalid"]).inc();
                return;
            };
            match self.chain.accept(link) {
                Step::Duplicate => return,
                Step::Deliver(link) => Some(link),
                Step::Gap { after, next } => {
                    let last = self.chain.last_delivered();
                    let repaired = repair_gap(ctx, self.js, self.channel, self.outlet, after, next.seq, last).await;
                    Some(self.chain.resume(next, repaired))
                }
            }
        } else {
            None
        };
        match message::from_nats(msg, self.channel, link, ctx.limits) {
            Ok(mut encoded) => {
                if let Some(link) = link {
                    self.chain.delivered(link.seq);
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
                if !std::mem::replace(&mut self.logged[usize::from(durable)], true) {
                    tracing::warn!(subject = %msg.subject, reason = rejected.reason, detail = %rejected.detail,
                        "dropping publisher message (logged once per subject)");
                }
            }
        }
    }
}

/// After a reconnect: reads back what was stored on the channel beyond what this node saw.
async fn catch_up_after_reconnect(
    ctx: &FeedCtx,
    js: &async_nats::jetstream::Context,
    channel: &Channel,
    outlet: &impl Outlet,
    chain: &mut Chain,
) {
    let Some(seen) = chain.seen() else {
        return;
    };
    let now = {
        let Ok(_permit) = ctx.checks.acquire().await else {
            return;
        };
        last_stored(js, channel).await
    };
    if let Some(now) = now.filter(|l| *l > seen) {
        tracing::info!(%channel, seen, now, "messages stored while NATS was away: reading them back");
        if let Some(last) = repair_gap(ctx, js, channel, outlet, seen, now + 1, chain.last_delivered()).await {
            chain.caught_up(now, last);
        }
    }
}

/// The channel's durable and live subscriptions, confirmed by NATS (flushed); `None` (logged)
/// if NATS refused them.
async fn subscribe(
    nats: &async_nats::Client,
    channel: &Channel,
) -> Option<(async_nats::Subscriber, async_nats::Subscriber)> {
    let (stored, live) = match (
        nats.subscribe(channel.stored_subject()).await,
        nats.subscribe(channel.live_subject()).await,
    ) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "NATS subscribe failed");
            return None;
        }
    };
    if let Err(e) = nats.flush().await {
        tracing::warn!(error = %e, "NATS flush after subscribe failed");
        return None;
    }
    Some((stored, live))
}

/// Where `channel` stands now (see [`Opening`]); `stream: None` and `channel_last: 0` if
/// NATS cannot tell right now.
pub async fn opening_position(js: &async_nats::jetstream::Context, channel: &Channel) -> Opening {
    let unknown = Opening::default();
    let Ok(mut stream) = js.get_stream(tidings_shared::subject::EVENTS_STREAM).await else {
        return unknown;
    };
    match stream.direct_get_last_for_subject(channel.durable_subject()).await {
        Ok(m) => Opening {
            stream: Some(m.sequence),
            channel_last: m.sequence,
        },
        // No message of the channel yet: its next one has `prev` 0.
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Opening {
            stream: stream.info().await.ok().map(|i| i.state.last_sequence),
            channel_last: 0,
        },
        Err(_) => unknown,
    }
}

/// The channel's last stored sequence now; `None` if it has none or NATS cannot tell.
async fn last_stored(js: &async_nats::jetstream::Context, channel: &Channel) -> Option<u64> {
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
    js: &async_nats::jetstream::Context,
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

    fn link(seq: u64, prev: u64) -> Link {
        Link { seq, prev }
    }

    fn opened(stream: Option<u64>, channel_last: u64) -> Chain {
        Chain::new(Opening { stream, channel_last })
    }

    #[test]
    fn in_order_messages_are_delivered_as_they_come() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.accept(link(11, 10)), Step::Deliver(link(11, 10)));
        c.delivered(11);
        assert_eq!(c.accept(link(14, 11)), Step::Deliver(link(14, 11)));
    }

    #[test]
    fn a_sequence_already_seen_is_a_duplicate() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.accept(link(10, 7)), Step::Duplicate);
        assert_eq!(c.accept(link(3, 0)), Step::Duplicate);
        assert_eq!(c.accept(link(11, 10)), Step::Deliver(link(11, 10)));
        assert_eq!(c.accept(link(11, 10)), Step::Duplicate);
    }

    #[test]
    fn a_prev_beyond_the_last_seen_is_a_gap_that_changes_nothing() {
        let mut c = opened(Some(10), 10);
        let step = c.accept(link(15, 12));
        assert_eq!(
            step,
            Step::Gap {
                after: 10,
                next: link(15, 12)
            }
        );
        assert_eq!(c, opened(Some(10), 10));
    }

    #[test]
    fn after_a_repair_prev_names_the_last_repaired() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.resume(link(15, 12), Some(12)), link(15, 12));
        c.delivered(15);
        assert_eq!(c.accept(link(16, 15)), Step::Deliver(link(16, 15)));
    }

    #[test]
    fn after_a_failed_repair_the_real_prev_shows_the_gap() {
        let mut c = opened(Some(10), 10);
        assert_eq!(c.resume(link(15, 12), None), link(15, 12));
    }

    #[test]
    fn a_dropped_message_keeps_the_chain_on_the_last_delivered() {
        let mut c = opened(Some(10), 10);
        // 11 is seen but could not be encoded: never `delivered`.
        assert_eq!(c.accept(link(11, 10)), Step::Deliver(link(11, 10)));
        assert_eq!(c.accept(link(12, 11)), Step::Deliver(link(12, 10)));
    }

    #[test]
    fn an_unknown_opening_trusts_the_message_prev() {
        let mut c = opened(None, 0);
        assert_eq!(c.accept(link(42, 40)), Step::Deliver(link(42, 40)));
        c.delivered(42);
        assert_eq!(c.accept(link(42, 40)), Step::Duplicate);
        assert_eq!(c.accept(link(43, 42)), Step::Deliver(link(43, 42)));
    }

    #[test]
    fn caught_up_moves_both_ends() {
        let mut c = opened(Some(10), 4);
        c.caught_up(20, 18);
        assert_eq!(c.last_delivered(), 18);
        assert_eq!(c.accept(link(20, 18)), Step::Duplicate);
        assert_eq!(c.accept(link(21, 20)), Step::Deliver(link(21, 18)));
    }

    #[test]
    fn a_restart_begins_again_from_zero() {
        let mut c = opened(Some(500), 500);
        c.restart();
        assert_eq!(c.accept(link(1, 0)), Step::Deliver(link(1, 0)));
        c.delivered(1);
        assert_eq!(
            c.accept(link(3, 2)),
            Step::Gap {
                after: 1,
                next: link(3, 2)
            }
        );
    }
}
