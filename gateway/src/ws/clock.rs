//! A session's own deadlines: the next heartbeat (a ping, after checking the peer was heard
//! from lately) and the token's expiry, on one timer.
//!
//! One timer rather than an interval and a sleep: an idle connection then holds a single
//! timer entry, armed for whichever comes first.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What [`Clock::due`] found due.
pub(super) enum Due {
    /// Nothing yet (the timer was re-armed).
    Nothing,
    /// Time for a heartbeat ping.
    Ping,
    /// Time for a heartbeat, but the peer sent nothing for two of them: it is gone.
    Silent,
    /// The token expired.
    Expired,
}

pub(super) struct Clock {
    /// Fires at the earlier of `next_ping` and `expires`.
    pub(super) timer: Pin<Box<Sleep>>,
    heartbeat: Duration,
    next_ping: Instant,
    expires: Instant,
    /// When the peer last sent anything.
    last_seen: Instant,
}

impl Clock {
    /// A clock whose first heartbeat is one `heartbeat` from now and which expires at
    /// `expires`.
    pub(super) fn new(heartbeat: Duration, expires: Instant) -> Self {
        let mut clock = Clock {
            timer: Box::pin(tokio::time::sleep_until(expires)),
            heartbeat,
            next_ping: expires,
            expires,
            last_seen: Instant::now(),
        };
        clock.restart();
        clock
    }

    /// The peer sent something.
    pub(super) fn seen(&mut self) {
        self.last_seen = Instant::now();
    }

    /// The token now expires at `expires` (a refresh).
    pub(super) fn expire_at(&mut self, expires: Instant) {
        self.expires = expires;
        self.arm();
    }

    /// Starts the heartbeats over from now (the session loop begins).
    pub(super) fn restart(&mut self) {
        let now = Instant::now();
        self.last_seen = now;
        self.next_ping = now + self.heartbeat;
        self.arm();
    }

    /// What is due now that the timer fired; the timer is armed again for what comes next
    /// (unless the token expired: the session ends). A heartbeat due at the same time as the
    /// expiry comes first, as it did when they were two timers: a silent peer is closed as
    /// gone (1001), a live one is pinged and the expiry fires right after.
    pub(super) fn due(&mut self) -> Due {
        let now = Instant::now();
        if now >= self.next_ping {
            // As a missed tick of an interval that delays: the next one a whole period on.
            self.next_ping = now + self.heartbeat;
            self.arm();
            return if now.duration_since(self.last_seen) > self.heartbeat * 2 {
                Due::Silent
            } else {
                Due::Ping
            };
        }
        if now >= self.expires {
            return Due::Expired;
        }
        self.arm();
        Due::Nothing
    }

    fn arm(&mut self) {
        let at = self.next_ping.min(self.expires);
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(25);

    #[tokio::test(start_paused = true)]
    async fn pings_each_heartbeat_while_the_peer_is_heard_from() {
        let mut clock = Clock::new(BEAT, Instant::now() + Duration::from_secs(3600));
        for _ in 0..3 {
            clock.timer.as_mut().await;
            clock.seen();
            assert!(matches!(clock.due(), Due::Ping));
        }
        assert_eq!(clock.timer.deadline(), Instant::now() + BEAT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_silent_for_two_heartbeats_is_gone() {
        let mut clock = Clock::new(BEAT, Instant::now() + Duration::from_secs(3600));
        clock.timer.as_mut().await;
        assert!(matches!(clock.due(), Due::Ping));
        clock.timer.as_mut().await;
        assert!(
            matches!(clock.due(), Due::Ping),
            "two heartbeats exactly is not yet silent"
        );
        clock.timer.as_mut().await;
        assert!(matches!(clock.due(), Due::Silent));
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_fires_between_heartbeats_and_moves_with_a_refresh() {
        let start = Instant::now();
        let mut clock = Clock::new(BEAT, start + Duration::from_secs(10));
        clock.expire_at(start + Duration::from_secs(40));
        clock.timer.as_mut().await;
        assert_eq!(Instant::now(), start + BEAT);
        clock.seen();
        assert!(matches!(clock.due(), Due::Ping));
        clock.timer.as_mut().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(40));
        assert!(matches!(clock.due(), Due::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_due_with_the_expiry_comes_first() {
        let start = Instant::now();
        let mut clock = Clock::new(BEAT, start + BEAT * 3);
        clock.timer.as_mut().await;
        assert!(matches!(clock.due(), Due::Ping));
        clock.timer.as_mut().await;
        assert!(matches!(clock.due(), Due::Ping));
        clock.timer.as_mut().await;
        assert_eq!(Instant::now(), start + BEAT * 3);
        assert!(
            matches!(clock.due(), Due::Silent),
            "silent for three heartbeats: gone, not expired"
        );
        let mut live = Clock::new(BEAT, Instant::now() + BEAT);
        live.timer.as_mut().await;
        live.seen();
        assert!(matches!(live.due(), Due::Ping));
        live.timer.as_mut().await;
        assert!(
            matches!(live.due(), Due::Expired),
            "the expiry fires right after the ping"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_may_bring_the_expiry_closer() {
        let start = Instant::now();
        let mut clock = Clock::new(BEAT, start + Duration::from_secs(3600));
        clock.expire_at(start + Duration::from_secs(5));
        clock.timer.as_mut().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(5));
        assert!(matches!(clock.due(), Due::Expired));
    }
}
