//! `tidings_worker_breaker_open{channel,target}`: the breakers open (or probing) now, kept
//! current by a watch on `TIDINGS_BREAKERS`, so every worker reports every open breaker,
//! whichever worker opened or closed it.
//!
//! Label cardinality: `target` is the redacted origin of a target, and webhook origins are
//! chosen by users, so the series are bounded twice: only breakers open now have a series
//! (a closed one's is removed), and at most [`MAX_TARGET_SERIES`] targets per channel are
//! named; the rest are counted under `target="other"`, which always exists (0 when none).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use prometheus::IntGaugeVec;
use tidings_shared::notify::DeliveryChannel;

use super::{Record, State};

/// Targets per channel named in the gauge; the others are summed under `target="other"`.
pub const MAX_TARGET_SERIES: usize = 50;
/// The label of targets past [`MAX_TARGET_SERIES`].
pub const OTHER: &str = "other";

/// An open breaker as the gauge knows it.
#[derive(Debug, Clone)]
pub struct Open {
    /// Its channel.
    pub channel: DeliveryChannel,
    /// Its redacted target.
    pub target: String,
    /// End of its open time or of its probe's lease (ms since the epoch).
    pub until_ms: i64,
}

/// The gauge's series, `(channel, target)` → open breakers, for the open breakers `open`
/// (by key) at `now`: named ones first come, first named (by key order, so every worker
/// names the same ones). A breaker whose open time ended more than `stale_ms` ago without a
/// probe has no job waiting for its target (a probe would have come by then): it leaves the
/// gauge, so an alert does not fire for a day over a target nobody sends to any more (its
/// record stays until the next job probes it, or expires).
pub fn series(open: &BTreeMap<String, Open>, now: i64, stale_ms: i64) -> HashMap<(DeliveryChannel, String), i64> {
    let mut out: HashMap<(DeliveryChannel, String), i64> = HashMap::new();
    let mut named: HashMap<DeliveryChannel, usize> = HashMap::new();
    for Open { channel, target, .. } in open.values().filter(|o| now < o.until_ms.saturating_add(stale_ms)) {
        let n = named.entry(*channel).or_default();
        let label = if *n < MAX_TARGET_SERIES && target != OTHER {
            *n += 1;
            target.clone()
        } else {
            OTHER.to_owned()
        };
        *out.entry((*channel, label)).or_default() += 1;
    }
    out
}

/// Sets `gauge` to `want`: series no longer wanted are removed (the `other` ones set to 0),
/// the others set, with no moment at which a wanted series is missing.
fn apply(
    gauge: &IntGaugeVec,
    have: &mut HashMap<(DeliveryChannel, String), i64>,
    want: HashMap<(DeliveryChannel, String), i64>,
) {
    for key @ (channel, target) in have.keys() {
        if !want.contains_key(key) {
            if target == OTHER {
                gauge.with_label_values(&[channel.as_str(), OTHER]).set(0);
            } else if let Err(e) = gauge.remove_label_values(&[channel.as_str(), target]) {
                tracing::debug!(error = %e, "removing a breaker series");
            }
        }
    }
    for ((channel, target), n) in &want {
        gauge.with_label_values(&[channel.as_str(), target]).set(*n);
    }
    *have = want;
}

/// How often the gauge is recomputed without a change (for breakers going stale).
const REFRESH: Duration = Duration::from_secs(5);

/// Follows the bucket for ever, keeping `gauge` current (see [`series`] for `stale`); a
/// failed watch is started again (from every entry's current value) after a second.
pub async fn follow(bucket: kv::Store, gauge: IntGaugeVec, stale: Duration) {
    let mut have = HashMap::new();
    let stale_ms = stale.as_millis() as i64;
    let now = || jiff::Timestamp::now().as_millisecond();
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        let mut watch = match bucket.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "watching the breakers failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut open = BTreeMap::new();
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                _ = refresh.tick() => {
                    apply(&gauge, &mut have, series(&open, now(), stale_ms));
                    continue;
                }
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "breaker watch hiccup");
                    break;
                }
            };
            let rec = (entry.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice::<Record>(&entry.value).ok())
                .flatten();
            match rec {
                Some(r) if r.state != State::Closed => {
                    let (channel, target, until_ms) = (r.channel, r.target, r.until_ms);
                    open.insert(
                        entry.key,
                        Open {
                            channel,
                            target,
                            until_ms,
                        },
                    );
                }
                _ => {
                    open.remove(&entry.key);
                }
            }
            apply(&gauge, &mut have, series(&open, now(), stale_ms));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_past_the_cap_are_counted_under_other() {
        let mut open = BTreeMap::new();
        let open_until = |channel, target: String| Open {
            channel,
            target,
            until_ms: 1_000,
        };
        for i in 0..(MAX_TARGET_SERIES + 3) {
            open.insert(
                format!("webhook.{i:04}"),
                open_until(DeliveryChannel::Webhook, format!("https://h{i:04}.example")),
            );
        }
        open.insert(
            "sms.x".into(),
            open_until(DeliveryChannel::Sms, "https://api.twilio.com".into()),
        );
        let s = series(&open, 0, 500);
        assert_eq!(s.len(), MAX_TARGET_SERIES + 2);
        assert_eq!(s[&(DeliveryChannel::Webhook, OTHER.to_owned())], 3);
        assert_eq!(s[&(DeliveryChannel::Webhook, "https://h0000.example".to_owned())], 1);
        assert_eq!(s[&(DeliveryChannel::Sms, "https://api.twilio.com".to_owned())], 1);

        let gauge = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["channel", "target"]).unwrap();
        let mut have = HashMap::new();
        // Past the open time, a breaker no job came to probe goes stale.
        assert_eq!(series(&open, 1_499, 500).len(), MAX_TARGET_SERIES + 2);
        assert!(series(&open, 1_500, 500).is_empty());
        apply(&gauge, &mut have, s);
        open.clear();
        apply(&gauge, &mut have, series(&open, 0, 500));
        let families = {
            let r = prometheus::Registry::new();
            r.register(Box::new(gauge.clone())).unwrap();
            r.gather()
        };
        let left: Vec<_> = families[0]
            .get_metric()
            .iter()
            .map(|m| m.get_gauge().get_value())
            .collect();
        assert_eq!(left, vec![0.0], "only the webhook `other` series is left, at 0");
    }
}
