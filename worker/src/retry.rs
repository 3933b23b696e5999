//! When to try a failed delivery again: exponential backoff with full jitter, or what the
//! receiver asked for with `Retry-After`.

use std::time::Duration;

/// Longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// Delay before attempt `attempt + 1` after `attempt` failures (1-based): a random time up
/// to `base × 2^(attempt-1)`, capped (full jitter spreads a fleet's retries out).
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    let cap = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(MAX_DELAY);
    Duration::from_millis(fastrand::u64(0..=cap.as_millis() as u64))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_DELAY));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or_default().min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(100);
        for attempt in 1..30 {
            let cap = base.saturating_mul(1 << (attempt - 1).min(20)).min(MAX_DELAY);
            for _ in 0..50 {
                assert!(backoff(attempt, base) <= cap);
            }
        }
        assert!(backoff(1, base) <= base);
    }

    #[test]
    fn retry_after_forms() {
        let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("999999", now), Some(MAX_DELAY));
    }
}
