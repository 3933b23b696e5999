//! Which local connections listen to which channel, and the NATS subscriptions behind them.
//!
//! A channel with local subscribers has exactly one pair of core NATS subscriptions on this
//! node (durable re-publish `tidings.stored.<…>` and ephemeral `tidings.live.<…>`), opened by
//! the first local subscriber and closed when the last one leaves. Each NATS message is
//! parsed and encoded once ([`crate::message`]) and offered to every subscriber's bounded
//! queue with `try_send`: the fan-out never waits for a socket, and a full queue closes that
//! one connection with 4009 (slow consumer) without touching anyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::ws::Message;
use futures::StreamExt as _;
use tidings_shared::Channel;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::AbortHandle;
use tracing::Instrument as _;

use crate::message::{self, Encoded};
use crate::metrics::Metrics;

/// Close code for a connection whose outbound queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4009;
/// Close code for a token that is missing, invalid or expired.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code for sustained rate-limit abuse.
pub const CLOSE_RATE_LIMITED: u16 = 4008;
/// Close code of a draining node.
pub const CLOSE_DRAINING: u16 = 1012;
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
}

/// State a connection shares with the fan-out: how to tell it to go away.
#[derive(Default)]
pub struct ConnSignal {
    notify: Notify,
    code: AtomicU16,
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

/// One connection's subscription to one channel.
struct Sub {
    handle: ConnHandle,
    /// Set while the connection replays history: live messages are held in `held` instead of
    /// queued, then handed over by [`Hub::release`], so replay and live join with no gap and
    /// no duplicate.
    holding: AtomicBool,
    held: Mutex<Vec<Arc<Encoded>>>,
}

/// A channel's local subscribers, and how far its fan-out has gone.
#[derive(Default)]
struct ChannelSubs {
    subs: HashMap<ConnId, Sub>,
    /// Stream sequence up to which this channel's durable messages have been fanned out (or,
    /// before the first, the stream position when the channel was opened). Read under the
    /// write lock when a subscriber joins and written under the read lock by the fan-out, so
    /// a new subscriber gets every durable message after it: its starting position.
    position: AtomicU64,
    /// The position when the channel was opened (for subscribers that joined before it was
    /// known: they get every message fanned out since).
    opening: AtomicU64,
}

type Subscribers = Arc<RwLock<ChannelSubs>>;

struct ChannelEntry {
    subscribers: Subscribers,
    /// Users of local subscribers, with how many of their connections (for presence).
    users: HashMap<Arc<str>, u32>,
    ready: watch::Receiver<bool>,
    task: AbortHandle,
}

impl Drop for ChannelEntry {
    fn drop(&mut self) {
        // Dropping the task drops its NATS subscribers, which unsubscribes them.
        self.task.abort();
    }
}

/// Why a subscription could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// NATS did not confirm the subscription in time.
    Unavailable,
}

/// A channel's local users, for presence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPresence {
    /// Distinct users subscribed on this node.
    pub users: Vec<String>,
    /// Connections subscribed on this node.
    pub connections: u64,
}

/// The registry of local connections and channel subscriptions.
pub struct Hub {
    channels: Mutex<HashMap<Channel, ChannelEntry>>,
    connections: Mutex<HashMap<ConnId, ConnHandle>>,
    next_id: AtomicU64,
    nats: async_nats::Client,
    metrics: Metrics,
    max_payload: usize,
    /// Live messages held per recovering subscription before it counts as a slow consumer.
    hold_limit: usize,
    presence_dirty: Mutex<Vec<Channel>>,
    presence_changed: Notify,
    /// Set by [`Hub::drain`]: connections registering later are told to go at once.
    draining: std::sync::atomic::AtomicBool,
    /// Bumped when `TIDINGS_EVENTS` is recreated, so channel tasks restart their sequences.
    generation: AtomicU64,
}

impl Hub {
    /// An empty hub fanning out from `nats`.
    pub fn new(nats: async_nats::Client, metrics: Metrics, max_payload: usize, hold_limit: usize) -> Arc<Self> {
        Arc::new(Hub {
            hold_limit,
            channels: Mutex::default(),
            connections: Mutex::default(),
            next_id: AtomicU64::new(1),
            nats,
            metrics,
            max_payload,
            presence_dirty: Mutex::default(),
            presence_changed: Notify::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    /// Registers a connection; it then counts in the gauge and is reached by [`Hub::drain`].
    pub fn register(&self, handle: ConnHandle) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.draining.load(Ordering::Acquire) {
            // Authenticated after the drain started: reconnect elsewhere right away.
            handle.signal.close(CLOSE_DRAINING);
        }
        lock(&self.connections).insert(id, handle);
        self.metrics.connections.inc();
        id
    }

    /// Called when `TIDINGS_EVENTS` was (re)created under the running node.
    pub fn stream_recreated(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Positions in the old stream mean nothing in the new one: until a channel sees a
        // message of the new stream, a subscriber's position is 0 (everything), and no
        // `subscribe` with `since` is answered from the position without reading the stream.
        for entry in lock(&self.channels).values() {
            let guard = read(&entry.subscribers);
            guard.position.store(0, Ordering::Release);
            guard.opening.store(0, Ordering::Release);
        }
    }

    /// Removes a connection and every subscription it still had.
    pub fn unregister(&self, id: ConnId, channels: impl IntoIterator<Item = Channel>) {
        for c in channels {
            self.unsubscribe(id, &c);
        }
        if lock(&self.connections).remove(&id).is_some() {
            self.metrics.connections.dec();
        }
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.connections).len()
    }

    /// Whether this node holds a NATS subscription for `channel` (tests and stats).
    pub fn has_channel(&self, channel: &Channel) -> bool {
        lock(&self.channels).contains_key(channel)
    }

    /// Number of channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Adds `id` to `channel`'s subscribers, opening the NATS subscriptions if it is the first,
    /// and waits until NATS has them (so no message published after the reply is missed).
    /// With `hold`, live messages are held for [`Hub::release`] instead of queued (also when
    /// the connection was already subscribed: a re-subscription to recover).
    pub async fn subscribe(
        self: &Arc<Self>,
        id: ConnId,
        channel: &Channel,
        handle: ConnHandle,
        hold: bool,
    ) -> Result<u64, SubscribeError> {
        // A channel is opened at a known stream position, found before anyone registers on
        // it: whatever is stored after it reaches every subscriber (live, or repaired as a
        // gap), so the position a subscriber is given is never ahead of what it gets.
        let opening = if lock(&self.channels).contains_key(channel) {
            None
        } else {
            Some(opening_position(&async_nats::jetstream::new(self.nats.clone()), channel).await)
        };
        let position;
        let mut ready = {
            let mut channels = lock(&self.channels);
            let entry = channels
                .entry(channel.clone())
                .or_insert_with(|| self.open_channel(channel, opening));
            let user = handle.user.clone();
            let mut guard = write(&entry.subscribers);
            position = guard.position.load(Ordering::Acquire);
            let subs = &mut guard.subs;
            match subs.get(&id) {
                Some(existing) => existing.holding.store(hold, Ordering::Release),
                None => {
                    let sub = Sub {
                        handle,
                        holding: AtomicBool::new(hold),
                        held: Mutex::default(),
                    };
                    subs.insert(id, sub);
                    *entry.users.entry(user).or_insert(0) += 1;
                    self.metrics.subscriptions.inc();
                }
            }
            drop(guard);
            entry.ready.clone()
        };
        self.mark_presence(channel);
        let confirmed = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        if matches!(confirmed, Ok(Ok(_))) {
            // Joined before the channel task knew where the channel stood: everything fanned
            // out since it opened reaches this subscriber. The task sets it before `ready`.
            Ok(if position == 0 { self.opening(channel) } else { position })
        } else {
            self.unsubscribe(id, channel);
            Err(SubscribeError::Unavailable)
        }
    }

    /// Removes `id` from `channel`; the last local subscriber leaving closes the NATS
    /// subscriptions. Returns whether it was subscribed.
    pub fn unsubscribe(&self, id: ConnId, channel: &Channel) -> bool {
        let mut channels = lock(&self.channels);
        let Some(entry) = channels.get_mut(channel) else {
            return false;
        };
        let (removed, now_empty) = {
            let mut guard = write(&entry.subscribers);
            let removed = guard.subs.remove(&id);
            (removed, guard.subs.is_empty())
        };
        let Some(sub) = removed else {
            return false;
        };
        self.metrics.subscriptions.dec();
        if let Some(n) = entry.users.get_mut(&sub.handle.user) {
            *n -= 1;
            if *n == 0 {
                entry.users.remove(&sub.handle.user);
            }
        }
        if now_empty {
            channels.remove(channel);
            tracing::debug!(%channel, "last local subscriber left: NATS subscriptions closed");
        }
        drop(channels);
        self.mark_presence(channel);
        true
    }

    /// Ends holding for `id` on `channel` and returns what was held meanwhile, oldest first.
    /// From now on its messages are queued as usual; the caller writes the returned ones
    /// (those after what it replayed) before anything queued.
    pub fn release(&self, id: ConnId, channel: &Channel) -> Vec<Arc<Encoded>> {
        let channels = lock(&self.channels);
        let Some(entry) = channels.get(channel) else {
            return Vec::new();
        };
        let guard = read(&entry.subscribers);
        let Some(sub) = guard.subs.get(&id) else {
            return Vec::new();
        };
        let mut held = lock(&sub.held);
        sub.holding.store(false, Ordering::Release);
        std::mem::take(&mut *held)
    }

    /// Where `channel` stood when this node opened it (0 if it has no subscribers here).
    fn opening(&self, channel: &Channel) -> u64 {
        let channels = lock(&self.channels);
        channels
            .get(channel)
            .map(|e| read(&e.subscribers).opening.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// This node's subscribers of `channel`.
    pub fn local_presence(&self, channel: &Channel) -> LocalPresence {
        let channels = lock(&self.channels);
        let Some(entry) = channels.get(channel) else {
            return LocalPresence::default();
        };
        let mut users: Vec<String> = entry.users.keys().map(|u| u.to_string()).collect();
        users.sort();
        LocalPresence {
            users,
            connections: entry.users.values().map(|n| u64::from(*n)).sum(),
        }
    }

    /// Channels whose local presence changed since the last call.
    pub fn take_presence_changes(&self) -> Vec<Channel> {
        std::mem::take(&mut *lock(&self.presence_dirty))
    }

    /// Resolves when presence changed.
    pub async fn presence_changed(&self) {
        self.presence_changed.notified().await;
    }

    /// Every channel with local subscribers.
    pub fn channels(&self) -> Vec<Channel> {
        lock(&self.channels).keys().cloned().collect()
    }

    fn mark_presence(&self, channel: &Channel) {
        lock(&self.presence_dirty).push(channel.clone());
        self.presence_changed.notify_one();
    }

    /// Closes every connection with `code`, spread evenly over `over` so that clients do not
    /// all reconnect to the other nodes at the same instant.
    pub async fn drain(&self, code: u16, over: Duration) {
        self.draining.store(true, Ordering::Release);
        let conns: Vec<ConnHandle> = lock(&self.connections).values().cloned().collect();
        let n = conns.len().max(1) as u32;
        let step = over / n;
        tracing::info!(
            connections = conns.len(),
            over_ms = over.as_millis() as u64,
            "draining connections"
        );
        let start = tokio::time::Instant::now();
        for (i, c) in conns.iter().enumerate() {
            tokio::time::sleep_until(start + step * i as u32).await;
            c.signal.close(code);
        }
    }

    /// Opens a channel at `opening` (see [`opening_position`]); `None` (a channel reopened
    /// while it was being looked up) lets its task find the position itself.
    fn open_channel(self: &Arc<Self>, channel: &Channel, opening: Option<(Option<u64>, u64)>) -> ChannelEntry {
        let subscribers: Subscribers = Arc::default();
        if let Some((Some(position), _)) = opening {
            let guard = read(&subscribers);
            guard.opening.store(position, Ordering::Release);
            guard.position.store(position, Ordering::Release);
        }
        let (ready_tx, ready) = watch::channel(false);
        let span = tracing::info_span!("channel", %channel);
        let task = tokio::spawn(
            channel_task(self.clone(), channel.clone(), subscribers.clone(), ready_tx, opening).instrument(span),
        )
        .abort_handle();
        ChannelEntry {
            subscribers,
            users: HashMap::new(),
            ready,
            task,
        }
    }

    /// Offers one encoded message to every subscriber of a channel, never waiting.
    fn fan_out(&self, subscribers: &Subscribers, encoded: &Arc<Encoded>) {
        let guard = read(subscribers);
        for sub in guard.subs.values() {
            let handle = &sub.handle;
            if sub.holding.load(Ordering::Acquire) {
                let mut held = lock(&sub.held);
                // Re-checked under the lock: `release` clears the flag while holding it.
                if sub.holding.load(Ordering::Acquire) {
                    if held.len() >= self.hold_limit {
                        if handle.signal.close(CLOSE_SLOW_CONSUMER) {
                            self.metrics.slow_consumer_disconnects.inc();
                        }
                    } else {
                        held.push(encoded.clone());
                    }
                    continue;
                }
            }
            match handle.tx.try_send(Outbound::Message(encoded.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if handle.signal.close(CLOSE_SLOW_CONSUMER) {
                        self.metrics.slow_consumer_disconnects.inc();
                        tracing::info!(user = %handle.user, "slow consumer: outbound queue full, closing with 4009");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if let Some(seq) = encoded.frame.seq {
            guard.position.store(seq, Ordering::Release);
        }
    }
}

/// Owns a channel's NATS subscriptions; aborted (unsubscribing) when the last local
/// subscriber leaves.
///
/// Durable messages are checked against the last sequence this node saw on the channel: a
/// `Nats-Last-Sequence` beyond it means this node missed messages (a NATS reconnect, a lost
/// route), so they are read back from the stream and delivered first; a sequence already
/// seen is a duplicate and dropped. `prev` is always the previous message this node
/// delivered on the channel, so clients see an unbroken chain even when a malformed message
/// in between was dropped.
async fn channel_task(
    hub: Arc<Hub>,
    channel: Channel,
    subscribers: Subscribers,
    ready: watch::Sender<bool>,
    opening: Option<(Option<u64>, u64)>,
) {
    let js = async_nats::jetstream::new(hub.nats.clone());
    // Where the channel stands before the subscription exists: anything stored after this
    // and before the subscription is active shows up as a gap and is repaired.
    let (opening, channel_last) = match opening {
        Some(known) => known,
        None => opening_position(&js, &channel).await,
    };
    {
        let guard = read(&subscribers);
        guard.opening.store(opening.unwrap_or(0), Ordering::Release);
        guard.position.store(opening.unwrap_or(0), Ordering::Release);
    }
    let (stored, live) = match (
        hub.nats.subscribe(channel.stored_subject()).await,
        hub.nats.subscribe(channel.live_subject()).await,
    ) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "NATS subscribe failed");
            return;
        }
    };
    if let Err(e) = hub.nats.flush().await {
        tracing::warn!(error = %e, "NATS flush after subscribe failed");
        return;
    }
    // Last sequence seen (delivered or dropped) and last delivered; 0 when unknown.
    // `None` until this node knows where the channel stands (NATS could not tell at open).
    let mut last_seen = opening;
    let mut last_delivered = channel_last;
    // Anything stored between the opening position and the subscription becoming active did
    // not come through it: read it back before anyone is told the channel is ready, so a
    // subscriber answered from the opening position misses nothing, even on a channel that
    // then stays quiet (otherwise it would wait for the next message to reveal the gap).
    if let Some(after) = opening
        && let Some(now) = last_stored(&js, &channel).await.filter(|l| *l > after)
        && let Some(last) = repair_gap(&hub, &js, &channel, &subscribers, after, now + 1, last_delivered).await
    {
        last_delivered = last;
        last_seen = Some(now);
    }
    let _ = ready.send(true);
    let mut merged = futures::stream::select(stored.map(|m| (true, m)), live.map(|m| (false, m)));
    // Log a bad publisher once per subject (durable, live), not once per message.
    let mut logged = [false; 2];
    let mut generation = hub.generation.load(Ordering::Acquire);
    while let Some((durable, msg)) = merged.next().await {
        let current = hub.generation.load(Ordering::Acquire);
        if current != generation {
            // TIDINGS_EVENTS was recreated: sequences start again from 1.
            generation = current;
            last_seen = Some(0);
            last_delivered = 0;
            read(&subscribers).position.store(0, Ordering::Release);
        }
        let position = if durable {
            let Some((seq, prev)) = message::stored_position(&msg) else {
                hub.metrics.rejected_messages.with_label_values(&["invalid"]).inc();
                continue;
            };
            if last_seen.is_some_and(|l| seq <= l) {
                continue;
            }
            if let Some(after) = last_seen.filter(|l| prev > *l) {
                match repair_gap(&hub, &js, &channel, &subscribers, after, seq, last_delivered).await {
                    Some(last) => last_delivered = last,
                    // Not repaired: show the real `prev`, so clients see the gap and recover
                    // with `since` themselves.
                    None => last_delivered = prev,
                }
            }
            let shown_prev = if last_seen.is_some() { last_delivered } else { prev };
            last_seen = Some(seq);
            Some((seq, shown_prev))
        } else {
            None
        };
        match message::from_nats(&msg, &channel, position, hub.max_payload) {
            Ok(encoded) => {
                if let Some((seq, _)) = position {
                    last_delivered = seq;
                }
                hub.fan_out(&subscribers, &encoded);
            }
            Err(rejected) => {
                hub.metrics
                    .rejected_messages
                    .with_label_values(&[rejected.reason])
                    .inc();
                if !std::mem::replace(&mut logged[usize::from(durable)], true) {
                    tracing::warn!(subject = %msg.subject, reason = rejected.reason, detail = %rejected.detail,
                        "dropping publisher message (logged once per subject)");
                }
            }
        }
    }
}

/// The channel's last stored sequence, or (if it has none) the stream's: the position from
/// which everything of the channel is still to come; and the channel's own last sequence
/// (0 if none), which the next message's `prev` names. Zeros if NATS cannot tell right now.
async fn opening_position(js: &async_nats::jetstream::Context, channel: &Channel) -> (Option<u64>, u64) {
    let Ok(mut stream) = js.get_stream(tidings_shared::subject::EVENTS_STREAM).await else {
        return (None, 0);
    };
    match stream.direct_get_last_for_subject(channel.durable_subject()).await {
        Ok(m) => (Some(m.sequence), m.sequence),
        // No message of the channel yet: its next one has `prev` 0.
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
            (stream.info().await.ok().map(|i| i.state.last_sequence), 0)
        }
        Err(_) => (None, 0),
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

/// Most messages one gap repair reads back (a larger gap is left to the clients).
const REPAIR_MAX: usize = 10_000;

/// Reads the messages between `after` and `before` (exclusive) back from the stream and fans
/// them out; returns the last delivered sequence.
async fn repair_gap(
    hub: &Hub,
    js: &async_nats::jetstream::Context,
    channel: &Channel,
    subscribers: &Subscribers,
    after: u64,
    before: u64,
    last_delivered: u64,
) -> Option<u64> {
    let read = async {
        let stream = js
            .get_stream(tidings_shared::subject::EVENTS_STREAM)
            .await
            .map_err(tidings_shared::Error::nats)?;
        crate::history::read(
            &stream,
            channel,
            after + 1,
            Some(before),
            last_delivered,
            REPAIR_MAX,
            &hub.metrics,
            hub.max_payload,
        )
        .await
    };
    match read.await {
        Ok(crate::history::Read { truncated: true, .. }) => {
            // Too much to hold in memory: clients see the gap and recover with `since`.
            tracing::warn!(%channel, after, before, "gap too large to repair here");
            None
        }
        Ok(crate::history::Read { messages: missed, .. }) => {
            tracing::info!(%channel, after, before, repaired = missed.len(), "gap in the stored sequence repaired from the stream");
            let mut last = last_delivered;
            for m in &missed {
                hub.fan_out(subscribers, m);
                last = m.frame.seq.unwrap_or(last);
            }
            hub.metrics.recovered_messages.inc_by(missed.len() as u64);
            Some(last)
        }
        Err(e) => {
            // Clients still see the gap through `prev` and recover with `since`.
            tracing::warn!(%channel, after, before, error = %e, "gap repair failed");
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
