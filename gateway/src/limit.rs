//! Per-connection command rate limit: a token bucket, plus a strike count that tells a
//! client that keeps hammering (close 4008) from one that bursts now and then (`rate_limited`).

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

/// A token bucket of `burst` tokens refilled at `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: f32,
    rate: f32,
    burst: f32,
    strikes: u32,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            tokens: burst as f32,
            rate: rate as f32,
            burst: burst as f32,
            strikes: 0,
            last: Instant::now(),
        }
    }

    /// Takes a token for one command at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_limits_then_refills() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(l.check(t0), Verdict::Allow);
        }
        assert_eq!(l.check(t0), Verdict::Limit);
        // 100 ms later one token is back.
        assert_eq!(l.check(t0 + Duration::from_millis(100)), Verdict::Allow);
    }

    #[test]
    fn sustained_abuse_is_detected() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1, 3);
        let verdicts: Vec<_> = (0..7).map(|_| l.check(t0)).collect();
        assert_eq!(&verdicts[..3], &[Verdict::Allow, Verdict::Allow, Verdict::Allow]);
        assert_eq!(&verdicts[3..5], &[Verdict::Limit, Verdict::Limit]);
        assert_eq!(verdicts[5], Verdict::Abuse);
    }
}
