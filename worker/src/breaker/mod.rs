//! Circuit breakers per delivery target: a webhook origin, an SMTP relay, the SMS provider,
//! a push service origin. A dead target would otherwise take every job to it through all its
//! retries, hammering it and filling the delivery queue; with a breaker, after
//! `TIDINGS_BREAKER_FAILURES` consecutive failures (or a failure rate over a window) the
//! target's jobs are deferred — handed back to JetStream until the breaker's open time ends,
//! with no attempt counted — and one job at a time probes it: success closes the breaker,
//! failure opens it again for twice as long (capped).
//!
//! The state is shared by every worker through the KV bucket `TIDINGS_BREAKERS` (one entry
//! per target, written with create/update-at-revision so two workers never lose each
//! other's update), so a second worker does not hammer a target the first found dead. A
//! healthy target costs one KV read per attempt and no write: entries are written only for
//! targets with recent failures. [`state`] holds the transitions, free of I/O.

pub mod gauge;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use aws_lc_rs::digest;
use tidings_shared::Error as SharedError;
use tidings_shared::notify::DeliveryChannel;
use tidings_shared::notify::names::BREAKERS_BUCKET;

use crate::error::Result;
pub use state::{Health, Record, State, Thresholds};

/// The error a channel deferred by an open breaker shows.
pub const TARGET_UNAVAILABLE: &str = "target unavailable";
/// How long an entry lives without a write (the bucket's TTL): longer than any open time,
/// so an open breaker never lapses by itself; a target that recovered long ago is forgotten.
pub const ENTRY_TTL: Duration = Duration::from_secs(86_400);
/// Conditional writes tried before an update is given up (the counts are best effort; the
/// next attempt to the target writes again).
const WRITE_TRIES: usize = 5;

/// One delivery target: the key of its breaker and how it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The channel whose jobs go to it.
    pub channel: DeliveryChannel,
    /// Its KV key: `<channel>.<hash of the target>` (a URL is no safe key, and may be a
    /// capability URL that must not be shown).
    pub key: String,
    /// The redacted target (`scheme://host[:port]`), for statuses, logs and metrics.
    pub display: String,
}

impl Target {
    /// The target named by `identity` (an origin, a relay URL): keyed by its hash, shown
    /// redacted.
    pub fn new(channel: DeliveryChannel, identity: &str) -> Target {
        let d = digest::digest(&digest::SHA256, identity.as_bytes());
        let hash: String = d.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        Target {
            channel,
            key: format!("{}.{hash}", channel.as_str()),
            display: tidings_shared::redact::url(identity),
        }
    }

    /// The target of a URL: its origin (scheme, host and port, the default port made
    /// explicit), so every path of one receiver shares a breaker; `None` if it does not parse.
    pub fn of_url(channel: DeliveryChannel, url: &str) -> Option<Target> {
        let parsed = url::Url::parse(url).ok()?;
        let host = parsed.host_str()?;
        let port = parsed.port_or_known_default()?;
        Some(Target::new(channel, &format!("{}://{host}:{port}", parsed.scheme())))
    }
}

/// A target a job may be sent to now, and whether this attempt is its breaker's probe.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The target.
    pub target: Target,
    /// This attempt is the half-open probe: its result closes or re-opens the breaker.
    pub probe: bool,
    /// The breaker as read when admitting (written, for a probe): a success to a target
    /// with no failure streak is then recorded without reading it again.
    pub seen: Option<Record>,
}

/// What the breakers say about a job's targets.
#[derive(Debug)]
pub struct Gate {
    /// The targets that may be tried now.
    pub admitted: Vec<Admitted>,
    /// When the earliest of the others may be tried again (ms since the epoch), if any is held.
    pub held_until_ms: Option<i64>,
}

/// Most targets whose successes are held locally (see [`Breakers::report`]); past it, the
/// counts of targets not seen within a window are dropped first (their window is over:
/// those successes no longer count anyway).
const MAX_HELD_SUCCESSES: usize = 10_000;

/// The breakers, over their KV bucket; cheap to clone.
#[derive(Clone)]
pub struct Breakers {
    kv: kv::Store,
    thresholds: Thresholds,
    /// Successes to targets with failures in their window, not yet written: they join the
    /// record with its next failure (where the rate is decided), so that a busy target with
    /// one failure does not turn every success into a contended write.
    successes: Arc<Mutex<HashMap<String, HeldSuccesses>>>,
}

/// Successes held for one target, and when the last one was.
#[derive(Debug, Clone, Copy)]
struct HeldSuccesses {
    count: u32,
    last_ms: i64,
}

/// The bucket's configuration: one value per key, entries forgotten after [`ENTRY_TTL`].
fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: BREAKERS_BUCKET.to_owned(),
        description: "Tidings circuit breakers per delivery target".to_owned(),
        history: 1,
        max_age: ENTRY_TTL,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Breakers {
    /// Opens (creating if needed) the bucket.
    pub async fn open(js: &async_nats::jetstream::Context, replicas: usize, thresholds: Thresholds) -> Result<Self> {
        let kv = tidings_shared::store::ensure_kv_with(js, bucket_config(replicas)).await?;
        Ok(Breakers {
            kv,
            thresholds,
            successes: Arc::default(),
        })
    }

    /// The bucket (for the gauge's watch).
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The target's record and the revision to write over (`None`: no entry). A value that
    /// does not parse counts as no record, and is overwritten.
    async fn read(&self, key: &str) -> Result<(Option<Record>, Option<u64>)> {
        let entry = self.kv.entry(key).await.map_err(SharedError::nats)?;
        Ok(match entry {
            None => (None, None),
            Some(e) if e.operation != kv::Operation::Put => (None, Some(e.revision)),
            Some(e) => match serde_json::from_slice::<Record>(&e.value) {
                Ok(r) => (Some(r), Some(e.revision)),
                Err(err) => {
                    tracing::warn!(key, error = %err, "unreadable breaker entry; starting it afresh");
                    (None, Some(e.revision))
                }
            },
        })
    }

    /// Writes `rec` if the entry is still at `revision`; `false` if someone wrote first.
    async fn write(&self, key: &str, rec: &Record, revision: Option<u64>) -> Result<bool> {
        let bytes = serde_json::to_vec(rec).map_err(|e| SharedError::Encode(e.to_string()))?;
        let written = match revision {
            None => self.kv.create(key, bytes.into()).await.map(|_| ()).map_err(|e| {
                (e.kind() == kv::CreateErrorKind::AlreadyExists)
                    .then_some(())
                    .ok_or_else(|| SharedError::nats(e))
            }),
            Some(rev) => self.kv.update(key, bytes.into(), rev).await.map(|_| ()).map_err(|e| {
                (e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                    .then_some(())
                    .ok_or_else(|| SharedError::nats(e))
            }),
        };
        match written {
            Ok(()) => Ok(true),
            Err(Ok(())) => Ok(false),
            Err(Err(e)) => Err(e.into()),
        }
    }

    /// Whether `target` may be tried now: closed, or open past its open time and this
    /// attempt takes the probe (held for `lease`, after which another job may probe: a probe
    /// whose worker died does not hold the target shut); else until when it is held.
    pub async fn admit(&self, target: &Target, lease: Duration) -> Result<Result<Admitted, i64>> {
        for _ in 0..WRITE_TRIES {
            let (rec, revision) = self.read(&target.key).await?;
            match state::admit(rec.as_ref(), now_ms(), lease, &self.thresholds) {
                state::Admit::Pass => {
                    return Ok(Ok(Admitted {
                        target: target.clone(),
                        probe: false,
                        seen: rec,
                    }));
                }
                state::Admit::Hold(until) => return Ok(Err(until)),
                state::Admit::Probe(next) => {
                    if self.write(&target.key, &next, revision).await? {
                        tracing::info!(target = %target.display, channel = target.channel.as_str(), "breaker half-open: probing");
                        return Ok(Ok(Admitted {
                            target: target.clone(),
                            probe: true,
                            seen: Some(next),
                        }));
                    }
                }
            }
        }
        // Others keep taking the probe: let them.
        Ok(Err(now_ms() + self.thresholds.open.as_millis() as i64))
    }

    /// [`Breakers::admit`] for each of a job's targets.
    pub async fn gate(&self, targets: &[Target], lease: Duration) -> Result<Gate> {
        let mut gate = Gate {
            admitted: Vec::new(),
            held_until_ms: None,
        };
        for t in targets {
            match self.admit(t, lease).await? {
                Ok(a) => gate.admitted.push(a),
                Err(until) => gate.held_until_ms = Some(gate.held_until_ms.map_or(until, |u| u.min(until))),
            }
        }
        Ok(gate)
    }

    /// Records the result of an attempt to an admitted target. Returns the breaker's new
    /// state when this changed it.
    ///
    /// A success costs nothing when the target had no failure streak when admitted: none
    /// at all if it had no recent failure, else it is held in memory and joins the record
    /// with the target's next failure. Only failures, the end of a streak and probes write.
    pub async fn report(&self, admitted: &Admitted, health: Health) -> Result<Option<State>> {
        let target = &admitted.target;
        if !admitted.probe && health == Health::Up {
            match &admitted.seen {
                Some(r) if r.state == State::Closed && r.consecutive > 0 => {}
                // Failures in the current window: the success counts against them.
                Some(r)
                    if r.state == State::Closed
                        && r.failures > 0
                        && now_ms() - r.window_start_ms < self.thresholds.window.as_millis() as i64 =>
                {
                    self.hold_success(&target.key);
                    return Ok(None);
                }
                _ => return Ok(None),
            }
        }
        let held = self.take_successes(&target.key);
        for _ in 0..WRITE_TRIES {
            let (mut rec, revision) = self.read(&target.key).await?;
            if let Some(r) = rec.as_mut().filter(|r| r.state == State::Closed) {
                r.requests = r.requests.saturating_add(held);
            }
            let before = rec.as_ref().map_or(State::Closed, |r| r.state);
            let Some(next) = state::after(
                rec.as_ref(),
                target,
                admitted.probe,
                &health,
                now_ms(),
                &self.thresholds,
            ) else {
                return Ok(None);
            };
            if self.write(&target.key, &next, revision).await? {
                if next.state == before {
                    return Ok(None);
                }
                match next.state {
                    State::Open => tracing::warn!(
                        target = %target.display, channel = target.channel.as_str(),
                        until_ms = next.until_ms, error = next.last_error.as_deref().unwrap_or_default(),
                        "breaker open: deferring the target's jobs"
                    ),
                    State::Closed => {
                        tracing::info!(target = %target.display, channel = target.channel.as_str(), "breaker closed")
                    }
                    State::HalfOpen => {}
                }
                return Ok(Some(next.state));
            }
        }
        tracing::debug!(target = %target.display, "breaker update kept conflicting; skipped");
        Ok(None)
    }

    /// Counts a success to `key` in memory (see [`Breakers::report`]).
    fn hold_success(&self, key: &str) {
        let Ok(mut held) = self.successes.lock() else { return };
        let now = now_ms();
        if let Some(h) = held.get_mut(key) {
            h.count = h.count.saturating_add(1);
            h.last_ms = now;
            return;
        }
        if held.len() >= MAX_HELD_SUCCESSES {
            // Targets without a success for a whole window: their window is over.
            let window = self.thresholds.window.as_millis() as i64;
            held.retain(|_, h| now - h.last_ms < window);
        }
        if held.len() < MAX_HELD_SUCCESSES {
            held.insert(key.to_owned(), HeldSuccesses { count: 1, last_ms: now });
        }
    }

    /// The successes to `key` held in memory, taken out.
    fn take_successes(&self, key: &str) -> u32 {
        self.successes
            .lock()
            .ok()
            .and_then(|mut held| held.remove(key))
            .map_or(0, |h| h.count)
    }

    /// When a job held until `until_ms` should come back: then, plus a random spread (up to
    /// a fifth of the open time, at most 5 s), so a target's deferred jobs do not all wake at
    /// once to find one probe in flight.
    pub fn wake_at(&self, until_ms: i64) -> i64 {
        let spread = (self.thresholds.open.as_millis() as u64 / 5).clamp(50, 5_000);
        until_ms.max(now_ms()) + fastrand::u64(0..=spread) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_origins_keyed_by_hash_and_shown_redacted() {
        let a = Target::of_url(
            DeliveryChannel::Webhook,
            "https://u:p@hooks.example.com/secret/path?k=v",
        )
        .unwrap();
        let b = Target::of_url(DeliveryChannel::Webhook, "https://hooks.example.com:443/other").unwrap();
        assert_eq!(a, b, "one origin, one breaker");
        assert_eq!(a.display, "https://hooks.example.com");
        assert!(a.key.starts_with("webhook."));
        assert!(a.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
        let c = Target::of_url(DeliveryChannel::Webhook, "https://hooks.example.com:8443/").unwrap();
        assert_ne!(a.key, c.key);
        assert_eq!(c.display, "https://hooks.example.com:8443");
        let push = Target::of_url(DeliveryChannel::Push, "https://hooks.example.com/").unwrap();
        assert_ne!(a.key, push.key, "each channel has its own breakers");
        assert!(Target::of_url(DeliveryChannel::Webhook, "not a url").is_none());
        let relay = Target::new(DeliveryChannel::Email, "smtp+starttls://user:pw@mail:587");
        assert_eq!(relay.display, "smtp+starttls://mail:587");
    }
}
