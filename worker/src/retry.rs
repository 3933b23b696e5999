//! When to try a failed delivery again: exponential backoff with full jitter, or what the
//! receiver asked for with `Retry-After`.

use std::time::Duration;

/// Longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// Delay before attempt `attempt + 1` after `attempt` failures (1-based): a random time up
/// to `base × 2^(attempt-1)`, capped (full jitter spreads a fleet's retries out).
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    let cap = backoff_cap(attempt, base);
    Duration::from_millis(fastrand::u64(0..=cap.as_millis() as u64))
}

/// The longest [`backoff`] after `attempt` failures: `base × 2^(attempt-1)`, at most
/// [`MAX_DELAY`].
pub fn backoff_cap(attempt: u32, base: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(MAX_DELAY)
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
    fn backoff_cap_doubles_from_base_up_to_the_maximum() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff_cap(1, base), base);
        assert_eq!(backoff_cap(2, base), base * 2);
        assert_eq!(backoff_cap(3, base), base * 4);
        assert_eq!(backoff_cap(30, base), MAX_DELAY);
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range_up_to_the_cap() {
        fastrand::seed(7);
        let base = Duration::from_millis(100);
        let attempt = 5;
        let cap = backoff_cap(attempt, base);
        let samples: Vec<Duration> = (0..200).map(|_| backoff(attempt, base)).collect();
        assert!(samples.iter().all(|d| *d <= cap));
        assert!(samples.iter().any(|d| *d < cap / 4), "some below a quarter of the cap");
        assert!(samples.iter().any(|d| *d > cap * 3 / 4), "some above three quarters");
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
