//! A breaker's transitions, free of I/O so they can be tested on their own: whether an
//! attempt may go to a target ([`admit`]) and what its result does to the breaker
//! ([`after`]).
//!
//! Closed: attempts go; failures count (consecutively, and as a rate over a window); either
//! threshold opens it. Open: attempts are held until its open time ends; then the first job
//! to come takes the probe (half-open, leased so that a probe whose worker died does not
//! hold the target shut). A probe's success closes it; its failure opens it again for twice
//! the previous time, capped. Results of attempts admitted before the breaker opened are
//! ignored: only the probe decides.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_shared::config::BreakerConfig;
use tidings_shared::notify::DeliveryChannel;

use super::Target;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Attempts go.
    Closed,
    /// Attempts are held until `until_ms`.
    Open,
    /// One attempt (the probe) is in flight, leased until `until_ms`.
    HalfOpen,
}

/// A target's breaker as stored in `TIDINGS_BREAKERS` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The channel whose jobs go to the target.
    pub channel: DeliveryChannel,
    /// The target, redacted (`scheme://host[:port]`), for operators and the gauge.
    pub target: String,
    /// Where the breaker is.
    pub state: State,
    /// Failed attempts in a row.
    pub consecutive: u32,
    /// Start of the failure-rate window (ms since the epoch).
    pub window_start_ms: i64,
    /// Attempts recorded in the window (only counted once the window holds a failure).
    pub requests: u32,
    /// Failed attempts in the window.
    pub failures: u32,
    /// Times opened since it was last closed: the open time doubles with each.
    pub trips: u32,
    /// Open: end of the open time; half-open: end of the probe's lease (ms since the epoch).
    pub until_ms: i64,
    /// The last failure, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Last change (ms since the epoch).
    pub updated_ms: i64,
}

/// What an attempt said about its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It answered (2xx, or a refusal that is the receiver's decision, like a 4xx).
    Up,
    /// Connection error, timeout, 5xx or 429.
    Down(String),
    /// The target was not reached for a reason of ours (an invalid URL, say).
    Unknown,
}

/// The thresholds (`TIDINGS_BREAKER_*`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Consecutive failures that open.
    pub failures: u32,
    /// Length of the failure-rate window.
    pub window: Duration,
    /// Failure rate that opens, in (0, 1].
    pub rate: f64,
    /// Attempts the window must hold before the rate counts.
    pub min_requests: u32,
    /// First open time.
    pub open: Duration,
    /// Longest open time.
    pub max_open: Duration,
}

impl Thresholds {
    /// From the settings (a maximum open time below the first is raised to it).
    pub fn from_config(c: &BreakerConfig) -> Self {
        Thresholds {
            failures: c.breaker_failures,
            window: Duration::from_millis(c.breaker_window_ms),
            rate: c.breaker_failure_rate,
            min_requests: c.breaker_min_requests,
            open: Duration::from_millis(c.breaker_open_ms),
            max_open: Duration::from_millis(c.breaker_max_open_ms.max(c.breaker_open_ms)),
        }
    }

    /// Open time after the `trips`-th opening in a row: `open × 2^(trips-1)`, capped.
    pub fn open_for(&self, trips: u32) -> Duration {
        self.open
            .saturating_mul(1u32 << trips.saturating_sub(1).min(20))
            .min(self.max_open)
    }
}

/// What [`admit`] decided.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// Closed: go.
    Pass,
    /// Held until then (ms since the epoch).
    Hold(i64),
    /// Take the probe: write this record (half-open, leased) and go if the write wins.
    Probe(Record),
}

/// Whether an attempt may go to the target whose breaker is `rec`, at `now`.
pub fn admit(rec: Option<&Record>, now: i64, lease: Duration, t: &Thresholds) -> Admit {
    let Some(rec) = rec else { return Admit::Pass };
    match rec.state {
        State::Closed => Admit::Pass,
        State::Open if now < rec.until_ms => Admit::Hold(rec.until_ms),
        // A probe is in flight: come back when it has had time to answer (at most its lease).
        State::HalfOpen if now < rec.until_ms => Admit::Hold(rec.until_ms.min(now + t.open.as_millis() as i64)),
        State::Open | State::HalfOpen => Admit::Probe(Record {
            state: State::HalfOpen,
            until_ms: now + lease.as_millis() as i64,
            updated_ms: now,
            ..rec.clone()
        }),
    }
}

/// A closed record of `target`, its window starting at `now`.
fn fresh(target: &Target, now: i64) -> Record {
    Record {
        channel: target.channel,
        target: target.display.clone(),
        state: State::Closed,
        consecutive: 0,
        window_start_ms: now,
        requests: 0,
        failures: 0,
        trips: 0,
        until_ms: 0,
        last_error: None,
        updated_ms: now,
    }
}

/// The breaker after an attempt (`probe` or not) to `target` came to `health`, from `rec`:
/// the record to write, or `None` when nothing changes (a healthy target with no recent
/// failure is never written).
pub fn after(
    rec: Option<&Record>,
    target: &Target,
    probe: bool,
    health: &Health,
    now: i64,
    t: &Thresholds,
) -> Option<Record> {
    let state = rec.map_or(State::Closed, |r| r.state);
    let mut next = rec.cloned().unwrap_or_else(|| fresh(target, now));
    next.updated_ms = now;
    if probe && state != State::Closed {
        match health {
            Health::Up => return Some(fresh(target, now)),
            Health::Down(e) => {
                next.trips = next.trips.saturating_add(1);
                next.state = State::Open;
                next.until_ms = now + t.open_for(next.trips).as_millis() as i64;
                next.consecutive = next.consecutive.saturating_add(1);
                next.last_error = Some(e.clone());
                return Some(next);
            }
            // Released: the next job probes.
            Health::Unknown => {
                next.state = State::Open;
                next.until_ms = now;
                return Some(next);
            }
        }
    }
    if state != State::Closed {
        return None;
    }
    if now - next.window_start_ms >= t.window.as_millis() as i64 {
        next.window_start_ms = now;
        next.requests = 0;
        next.failures = 0;
    }
    match health {
        Health::Unknown => None,
        Health::Up => {
            if next.consecutive == 0 && next.failures == 0 {
                return None;
            }
            next.consecutive = 0;
            next.requests = next.requests.saturating_add(1);
            Some(next)
        }
        Health::Down(e) => {
            next.consecutive = next.consecutive.saturating_add(1);
            next.requests = next.requests.saturating_add(1);
            next.failures = next.failures.saturating_add(1);
            next.last_error = Some(e.clone());
            let rate_tripped =
                next.requests >= t.min_requests && f64::from(next.failures) >= t.rate * f64::from(next.requests);
            if next.consecutive >= t.failures || rate_tripped {
                next.state = State::Open;
                next.trips = 1;
                next.until_ms = now + t.open_for(1).as_millis() as i64;
            }
            Some(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);

    fn t() -> Thresholds {
        Thresholds {
            failures: 3,
            window: Duration::from_secs(60),
            rate: 0.5,
            min_requests: 10,
            open: Duration::from_secs(30),
            max_open: Duration::from_secs(100),
        }
    }

    fn target() -> Target {
        Target::new(DeliveryChannel::Webhook, "https://hooks.example.com:443")
    }

    fn down() -> Health {
        Health::Down("HTTP 503".into())
    }

    /// Feeds `results` (non-probe) to a breaker starting closed at `now`.
    fn run(mut rec: Option<Record>, results: &[Health], now: i64) -> Option<Record> {
        for h in results {
            if let Some(next) = after(rec.as_ref(), &target(), false, h, now, &t()) {
                rec = Some(next);
            }
        }
        rec
    }

    #[test]
    fn consecutive_failures_open_and_a_success_in_between_resets() {
        assert_eq!(
            after(None, &target(), false, &Health::Up, 0, &t()),
            None,
            "healthy: no write"
        );
        let rec = run(None, &[down(), down()], 0).unwrap();
        assert_eq!((rec.state, rec.consecutive), (State::Closed, 2));
        let rec = run(Some(rec), &[Health::Up, down(), down()], 0).unwrap();
        assert_eq!((rec.state, rec.consecutive), (State::Closed, 2));
        let rec = run(Some(rec), &[down()], 1_000).unwrap();
        assert_eq!(rec.state, State::Open);
        assert_eq!(rec.until_ms, 31_000);
        assert_eq!(rec.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(admit(Some(&rec), 30_999, LEASE, &t()), Admit::Hold(31_000));
        // Late results of attempts admitted before it opened change nothing.
        assert_eq!(after(Some(&rec), &target(), false, &Health::Up, 2_000, &t()), None);
        assert_eq!(after(Some(&rec), &target(), false, &down(), 2_000, &t()), None);
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_once_enough_attempts_were_seen() {
        // Alternating: never 3 in a row, but half of the attempts fail.
        let mut results = Vec::new();
        for _ in 0..4 {
            results.extend([down(), Health::Up]);
        }
        let rec = run(None, &results, 0).unwrap();
        assert_eq!((rec.state, rec.requests, rec.failures), (State::Closed, 8, 4));
        let rec = run(Some(rec), &[Health::Up, down()], 0).unwrap();
        assert_eq!(rec.state, State::Open, "5 of 10 failed: {rec:?}");
        // The same attempts spread over two windows do not.
        let first = run(None, &results, 0).unwrap();
        let rec = run(Some(first), &[Health::Up, down()], 60_000).unwrap();
        assert_eq!((rec.state, rec.requests), (State::Closed, 1));
    }

    #[test]
    fn one_probe_at_a_time_success_closes_failure_reopens_longer_up_to_the_cap() {
        let mut rec = run(None, &[down(), down(), down()], 0).unwrap();
        let mut now = rec.until_ms;
        for (trip, open_s) in [(2, 60), (3, 100), (4, 100)] {
            let Admit::Probe(half) = admit(Some(&rec), now, LEASE, &t()) else {
                panic!("probe expected")
            };
            assert_eq!(half.state, State::HalfOpen);
            // Anyone else waits while the probe is leased.
            assert!(matches!(admit(Some(&half), now + 1, LEASE, &t()), Admit::Hold(_)));
            rec = after(Some(&half), &target(), true, &down(), now, &t()).unwrap();
            assert_eq!((rec.state, rec.trips), (State::Open, trip));
            assert_eq!(rec.until_ms - now, open_s * 1_000);
            now = rec.until_ms;
        }
        let Admit::Probe(half) = admit(Some(&rec), now, LEASE, &t()) else {
            panic!("probe expected")
        };
        // A probe whose worker died: once the lease is over, another job probes.
        assert!(matches!(admit(Some(&half), now + 60_000, LEASE, &t()), Admit::Probe(_)));
        let closed = after(Some(&half), &target(), true, &Health::Up, now, &t()).unwrap();
        assert_eq!((closed.state, closed.trips, closed.consecutive), (State::Closed, 0, 0));
        assert_eq!(admit(Some(&closed), now, LEASE, &t()), Admit::Pass);
        // A probe that never reached the target hands the probe on at once.
        let released = after(Some(&half), &target(), true, &Health::Unknown, now, &t()).unwrap();
        assert!(matches!(admit(Some(&released), now, LEASE, &t()), Admit::Probe(_)));
    }
}
