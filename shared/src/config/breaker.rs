//! The worker's circuit-breaker settings (flattened into [`super::WorkerConfig`]): when a
//! delivery target (webhook origin, SMTP relay, SMS provider, push service origin) is taken
//! out of rotation, and for how long. Kept apart so `config.rs` stays readable.

use clap::Args;

/// Thresholds of the circuit breakers per delivery target.
#[derive(Debug, Clone, Args)]
pub struct BreakerConfig {
    /// Consecutive failed attempts (connection errors, timeouts, 5xx, 429) to one target,
    /// counted across all workers, that open its circuit breaker.
    #[arg(long, env = "TIDINGS_BREAKER_FAILURES", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub breaker_failures: u32,

    /// Window over which a target's failure rate is measured, in milliseconds.
    #[arg(long, env = "TIDINGS_BREAKER_WINDOW_MS", default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub breaker_window_ms: u64,

    /// Failure rate (0 < rate <= 1) within the window that opens a target's breaker, once the
    /// window holds at least TIDINGS_BREAKER_MIN_REQUESTS attempts.
    #[arg(long, env = "TIDINGS_BREAKER_FAILURE_RATE", default_value_t = 0.5, value_parser = rate)]
    pub breaker_failure_rate: f64,

    /// Attempts a window must hold before its failure rate can open the breaker (a few
    /// unlucky requests to a quiet target are not a trend).
    #[arg(long, env = "TIDINGS_BREAKER_MIN_REQUESTS", default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub breaker_min_requests: u32,

    /// How long an opened breaker defers its target's jobs before one probes, in
    /// milliseconds; doubled after each failed probe, up to TIDINGS_BREAKER_MAX_OPEN_MS.
    #[arg(long, env = "TIDINGS_BREAKER_OPEN_MS", default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub breaker_open_ms: u64,

    /// Longest open time after repeated failed probes, in milliseconds (at least
    /// TIDINGS_BREAKER_OPEN_MS: a smaller value is raised to it).
    #[arg(long, env = "TIDINGS_BREAKER_MAX_OPEN_MS", default_value_t = 600_000,
        value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub breaker_max_open_ms: u64,
}

/// A failure rate: a number in (0, 1].
fn rate(s: &str) -> std::result::Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a rate like 0.5"))?;
    if r > 0.0 && r <= 1.0 {
        Ok(r)
    } else {
        Err(format!("{r} is outside (0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::config::WorkerConfig;

    #[test]
    fn breaker_settings_have_defaults_and_bounds() {
        let w = WorkerConfig::try_parse_from(["tidings-worker"]).unwrap();
        let b = &w.breaker;
        assert_eq!(b.breaker_failures, 5);
        assert_eq!(b.breaker_window_ms, 60_000);
        assert_eq!(b.breaker_failure_rate, 0.5);
        assert_eq!(b.breaker_min_requests, 20);
        assert_eq!(b.breaker_open_ms, 30_000);
        assert_eq!(b.breaker_max_open_ms, 600_000);
        for (flag, value) in [
            ("--breaker-failures", "0"),
            ("--breaker-window-ms", "10"),
            ("--breaker-failure-rate", "0"),
            ("--breaker-failure-rate", "1.5"),
            ("--breaker-failure-rate", "half"),
            ("--breaker-min-requests", "0"),
            ("--breaker-open-ms", "5"),
            ("--breaker-max-open-ms", "99999999999"),
        ] {
            let err = WorkerConfig::try_parse_from(["tidings-worker", flag, value]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        let w = WorkerConfig::try_parse_from(["tidings-worker", "--breaker-failure-rate", "1"]).unwrap();
        assert_eq!(w.breaker.breaker_failure_rate, 1.0);
    }
}
