//! Per-connection command rate limit: a token bucket in which each command costs what it
//! makes the node do (a `ping` 1, a `subscribe` that reads history back more, a WebSocket
//! control frame 1), plus a strike count that tells a client that keeps hammering (close
//! 4008) from one that bursts now and then (`rate_limited`).

use std::time::Instant;

/// Outcome of one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: answer `rate_limited`.
    Limit,
    /// Over the limit for `burst` commands in a row: close with 4008.
    Abuse,
}

/// A token bucket's state: what both the per-connection limit and the HTTP limits
/// ([`crate::throttle`]) keep per key, `burst` tokens refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(burst: f32, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Refills for the time since the last call, then takes `cost` tokens if there are that
    /// many.
    pub fn take(&mut self, now: Instant, cost: f32, rate: f32, burst: f32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled by `now` (nothing taken for long enough).
    pub fn is_full(&self, now: Instant, rate: f32, burst: f32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens + elapsed * rate >= burst
    }
}

/// The per-connection limit: a [`Bucket`], and the strikes of refusals in a row.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Bucket,
    rate: f32,
    burst: f32,
    strikes: u32,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            bucket: Bucket::full(burst as f32, Instant::now()),
            rate: rate as f32,
            burst: burst as f32,
            strikes: 0,
        }
    }

    /// Takes `cost` tokens for one command at `now` (a command costing more than the whole
    /// burst is allowed from a full bucket, which it empties).
    pub fn check(&mut self, now: Instant, cost: u32) -> Verdict {
        let cost = (cost as f32).min(self.burst);
        if self.bucket.take(now, cost, self.rate, self.burst) {
            self.strikes = 0;
            Verdict::Allow
        } else {
            self.strikes += 1;
            if self.strikes as f32 >= self.burst {
                Verdict::Abuse
            } else {
                Verdict::Limit
            }
        }
    }
}

impl RateLimiter {
    /// Charges work found out after a command was allowed (e.g. the messages a replay read
    /// back): the bucket may go into debt down to minus one burst, paid back before the next
    /// command is allowed.
    pub fn charge(&mut self, cost: u32) {
        self.bucket.tokens = (self.bucket.tokens - cost as f32).max(-self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_limits_then_refills() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(l.check(t0, 1), Verdict::Allow);
        }
        assert_eq!(l.check(t0, 1), Verdict::Limit);
        // 100 ms later one token is back.
        assert_eq!(l.check(t0 + Duration::from_millis(100), 1), Verdict::Allow);
    }

    #[test]
    fn costly_commands_and_charged_work_take_more_tokens() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 10);
        assert_eq!(l.check(t0, 8), Verdict::Allow);
        assert_eq!(l.check(t0, 4), Verdict::Limit);
        assert_eq!(l.check(t0, 2), Verdict::Allow);
        // Debt from a replay: a second later (10 tokens back) still nothing is allowed.
        l.charge(100);
        assert_eq!(l.check(t0 + Duration::from_secs(1), 1), Verdict::Limit);
        assert_eq!(l.check(t0 + Duration::from_secs(3), 1), Verdict::Allow);
    }

    #[test]
    fn sustained_abuse_is_detected() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1, 3);
        let verdicts: Vec<_> = (0..7).map(|_| l.check(t0, 1)).collect();
        assert_eq!(&verdicts[..3], &[Verdict::Allow, Verdict::Allow, Verdict::Allow]);
        assert_eq!(&verdicts[3..5], &[Verdict::Limit, Verdict::Limit]);
        assert_eq!(verdicts[5], Verdict::Abuse);
    }
}
