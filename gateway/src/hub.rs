//! The registry of local connections and of which of them listen to which channel: the
//! subscriber fan-out, presence and drain.
//!
//! A channel with local subscribers has exactly one feed on this node ([`crate::feed`]),
//! opened by the first local subscriber and closed when the last one leaves. Each message the
//! feed hands over, encoded once, is offered to every subscriber's bounded queue with
//! `try_send`: the fan-out never waits for a socket, and a full queue closes that one
//! connection with 4009 (slow consumer) without touching anyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tidings_shared::Channel;
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

use crate::conn::{CLOSE_DRAINING, CLOSE_SLOW_CONSUMER, ConnHandle, ConnId, Outbound, QueueError};
use crate::feed::{self, ChannelFeed, FeedCtx, Outlet};
use crate::message::Encoded;
use crate::metrics::Metrics;
use crate::position::Opening;
use crate::subs::{Subscription, Subscriptions};

/// Channels checking their position at once after a NATS reconnect.
const POSITION_CHECKS: usize = 32;

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
    feed: Arc<ChannelFeed<ChannelOutlet>>,
    /// The channel's subscription rows: dropping the entry unsubscribes them.
    _rows: [Subscription; 2],
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
    /// Distinct users subscribed on this node, at most [`crate::presence::MAX_LISTED`].
    pub users: Vec<String>,
    /// How many distinct users are subscribed on this node.
    pub user_count: u64,
    /// Connections subscribed on this node.
    pub connections: u64,
}

/// The local connections, and how many each user has.
#[derive(Default)]
struct Connections {
    by_id: HashMap<ConnId, ConnHandle>,
    per_user: HashMap<Arc<str>, usize>,
}

/// A user already holds as many connections on this node as one may.
#[derive(Debug, PartialEq, Eq)]
pub struct UserLimit(pub usize);

/// The registry of local connections and channel subscriptions.
pub struct Hub {
    channels: Mutex<HashMap<Channel, ChannelEntry>>,
    connections: Mutex<Connections>,
    next_id: AtomicU64,
    /// What each channel's feed is given.
    feed: Arc<FeedCtx>,
    metrics: Metrics,
    /// Live messages held per recovering subscription before it counts as a slow consumer.
    hold_limit: usize,
    presence_dirty: Mutex<Vec<Channel>>,
    presence_changed: Notify,
    /// Set by [`Hub::drain`]: connections registering later are told to go at once.
    draining: AtomicBool,
}

impl Hub {
    /// An empty hub fanning out from `subs` (reading the stream back on `nats`).
    /// `reconnects` moves after every NATS reconnect of the main connection (as does
    /// `subs`'s own): each channel then checks its position.
    pub fn new(
        nats: async_nats::Client,
        subs: Subscriptions,
        metrics: Metrics,
        limits: crate::message::Limits,
        hold_limit: usize,
        reconnects: watch::Receiver<u64>,
    ) -> Arc<Self> {
        let hub = Arc::new(Hub {
            hold_limit,
            channels: Mutex::default(),
            connections: Mutex::default(),
            next_id: AtomicU64::new(1),
            feed: Arc::new(FeedCtx {
                nats,
                subs: subs.clone(),
                metrics: metrics.clone(),
                limits,
                generation: Arc::default(),
                stream_seen: AtomicU64::new(0),
                checks: tokio::sync::Semaphore::new(POSITION_CHECKS),
            }),
            metrics,
            presence_dirty: Mutex::default(),
            presence_changed: Notify::new(),
            draining: AtomicBool::new(false),
        });
        tokio::spawn(catch_up_after_reconnects(
            Arc::downgrade(&hub),
            reconnects,
            subs.reconnects(),
        ));
        hub
    }

    /// Registers a connection, unless its user already has `max_per_user` on this node; it
    /// then counts in the gauge and is reached by [`Hub::drain`].
    pub fn register(&self, handle: ConnHandle, max_per_user: usize) -> Result<ConnId, UserLimit> {
        let mut conns = lock(&self.connections);
        let held = conns.per_user.entry(handle.user.clone()).or_insert(0);
        if *held >= max_per_user {
            return Err(UserLimit(max_per_user));
        }
        *held += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.draining.load(Ordering::Acquire) {
            // Authenticated after the drain started: reconnect elsewhere right away.
            handle.signal.close(CLOSE_DRAINING);
        }
        conns.by_id.insert(id, handle);
        self.metrics.connections.inc();
        Ok(id)
    }

    /// Called when `TIDINGS_EVENTS` was (re)created under the running node.
    pub fn stream_recreated(&self) {
        self.feed.generation.fetch_add(1, Ordering::AcqRel);
        self.feed.stream_seen.store(0, Ordering::Release);
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
        let mut conns = lock(&self.connections);
        if let Some(handle) = conns.by_id.remove(&id) {
            self.metrics.connections.dec();
            if let Some(held) = conns.per_user.get_mut(&handle.user) {
                *held -= 1;
                if *held == 0 {
                    conns.per_user.remove(&handle.user);
                }
            }
        }
    }

    /// Asks every connection of `user` whose token was issued before `before` (`u64::MAX`:
    /// all of them) to close with `code`; how many there are (also those already closing: a
    /// revocation reaches a node both by the broadcast and by the bucket's watch).
    pub fn close_user(&self, user: &str, before: u64, code: u16) -> u64 {
        let conns = lock(&self.connections);
        let mut affected = 0;
        for h in conns.by_id.values() {
            if &*h.user == user && h.signal.issued_at() < before {
                h.signal.close(code);
                affected += 1;
            }
        }
        affected
    }

    /// Tells every local subscriber of `channel` (only `user`'s, if given) that it is
    /// unsubscribed: its session leaves the channel and tells its client. How many.
    pub fn force_unsubscribe(&self, channel: &Channel, user: Option<&str>) -> u64 {
        let handles: Vec<ConnHandle> = {
            let channels = lock(&self.channels);
            let Some(entry) = channels.get(channel) else {
                return 0;
            };
            read(&entry.subscribers)
                .subs
                .values()
                .filter(|s| user.is_none_or(|u| &*s.handle.user == u))
                .map(|s| s.handle.clone())
                .collect()
        };
        let mut told = 0;
        for h in &handles {
            match h.tx.try_send(Outbound::Unsubscribed(Box::new(channel.clone()))) {
                Ok(()) => told += 1,
                Err(QueueError::Full) => {
                    // A full queue: the connection is a slow consumer anyway.
                    if h.signal.close(CLOSE_SLOW_CONSUMER) {
                        self.metrics.slow_consumer_disconnects.inc();
                    }
                    told += 1;
                }
                // The connection is ending: nothing to tell.
                Err(QueueError::Closed) => {}
            }
        }
        told
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.connections).by_id.len()
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
        // it: whatever is stored after it reaches every subscriber (live, or read back as
        // the channel opens), so the position a subscriber is given is never ahead of what
        // it gets (see `ChannelFeed::open`).
        let opening = if lock(&self.channels).contains_key(channel) {
            None
        } else {
            Some(feed::opening_position(&self.feed, channel).await)
        };
        let position;
        let feed = {
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
            entry.feed.clone()
        };
        self.mark_presence(channel);
        let confirmed = tokio::time::timeout(Duration::from_secs(5), feed.wait_open()).await;
        if confirmed == Ok(true) {
            // Joined before the channel task knew where the channel stood: everything fanned
            // out since it opened reaches this subscriber. The task sets it before opening.
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
        // A bounded list: `broadcast` has every user of the node.
        let mut users: Vec<String> = entry
            .users
            .keys()
            .take(crate::presence::MAX_LISTED)
            .map(|u| u.to_string())
            .collect();
        users.sort();
        LocalPresence {
            users,
            user_count: entry.users.len() as u64,
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
        let conns: Vec<ConnHandle> = lock(&self.connections).by_id.values().cloned().collect();
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

    /// Opens a channel at `opening` (see [`feed::opening_position`]; `None`: a channel
    /// reopened while it was being looked up, whose task finds the position itself): its
    /// feed, its subscription rows, and the task that confirms them (then ends: an open
    /// channel has no task).
    fn open_channel(&self, channel: &Channel, opening: Option<Opening>) -> ChannelEntry {
        let subscribers: Subscribers = Arc::default();
        let outlet = ChannelOutlet {
            subscribers: subscribers.clone(),
            metrics: self.metrics.clone(),
            hold_limit: self.hold_limit,
        };
        if let Some(position) = opening.and_then(|o| o.stream) {
            outlet.opened(position);
        }
        let feed = ChannelFeed::new(self.feed.clone(), channel.clone(), outlet);
        let rows = feed.subscribe();
        let span = tracing::info_span!("channel", %channel);
        tokio::spawn(feed.clone().open(opening).instrument(span));
        ChannelEntry {
            subscribers,
            users: HashMap::new(),
            feed,
            _rows: rows,
        }
    }
}

/// After every reconnect (of the main connection, once the streams are in place again, or
/// of the subscription connection), each open channel checks whether messages were stored
/// while this node could not hear them, and reads them back.
async fn catch_up_after_reconnects(
    hub: std::sync::Weak<Hub>,
    mut main: watch::Receiver<u64>,
    mut subs: watch::Receiver<u64>,
) {
    main.borrow_and_update();
    subs.borrow_and_update();
    loop {
        tokio::select! {
            Ok(()) = main.changed() => {}
            Ok(()) = subs.changed() => {}
            else => return,
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let feeds: Vec<_> = lock(&hub.channels).values().map(|e| e.feed.clone()).collect();
        drop(hub);
        for feed in feeds {
            tokio::spawn(feed.catch_up());
        }
    }
}

/// The feed's way into one channel's subscribers: the subscriber fan-out.
struct ChannelOutlet {
    subscribers: Subscribers,
    metrics: Metrics,
    hold_limit: usize,
}

impl Outlet for ChannelOutlet {
    /// Offers one encoded message to every subscriber of the channel, never waiting.
    fn deliver(&self, encoded: &Arc<Encoded>) {
        let guard = read(&self.subscribers);
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
                Err(QueueError::Full) => {
                    if handle.signal.close(CLOSE_SLOW_CONSUMER) {
                        self.metrics.slow_consumer_disconnects.inc();
                        tracing::info!(user = %handle.user, "slow consumer: outbound queue full, closing with 4009");
                    }
                }
                Err(QueueError::Closed) => {}
            }
        }
        if let Some(seq) = encoded.frame.seq {
            guard.position.store(seq, Ordering::Release);
        }
    }

    fn opened(&self, seq: u64) {
        let guard = read(&self.subscribers);
        guard.opening.store(seq, Ordering::Release);
        guard.position.store(seq, Ordering::Release);
    }

    fn restarted(&self) {
        read(&self.subscribers).position.store(0, Ordering::Release);
    }
}

/// Locks `m`, taking over a lock poisoned by a panicked holder (the data stays consistent:
/// no holder leaves it half-changed across a panic point). Shared by the gateway's modules.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for reading an `RwLock`.
pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for writing an `RwLock`.
pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
