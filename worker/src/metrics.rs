//! The worker's Prometheus metrics (contract §8), every labelled series initialised at
//! startup for each delivery channel and status, so dashboards and alerts see zeros rather
//! than missing series.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tidings_shared::notify::{DeliveryChannel, DeliveryStatus};
use tidings_shared::telemetry::register;

use crate::error::Result;

/// Every worker metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Channel outcomes: `{channel, status}`.
    pub notifications: IntCounterVec,
    /// Delivery attempts that will be retried: `{channel}`.
    pub retries: IntCounterVec,
    /// Deliveries given up on and copied to the dead-letter stream: `{channel}`.
    pub dead_letters: IntCounterVec,
    /// Time one delivery attempt took: `{channel}`.
    pub delivery_duration: HistogramVec,
    /// Circuit breakers open or probing now: `{channel, target}` (see `breaker::gauge` for
    /// the bound on `target`).
    pub breaker_open: IntGaugeVec,
    /// Jobs handed back because their target's breaker was open: `{channel}`.
    pub breaker_deferrals: IntCounterVec,
    /// Half-open probes sent to a target whose breaker was open: `{channel}`.
    pub breaker_probes: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let m = Metrics {
            notifications: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("tidings_worker_notifications_total", "Notification channel outcomes"),
                    &["channel", "status"],
                )?,
            )?,
            retries: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("tidings_worker_retries_total", "Delivery attempts to be retried"),
                    &["channel"],
                )?,
            )?,
            dead_letters: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "tidings_worker_dead_letters_total",
                        "Deliveries dead-lettered after the last attempt",
                    ),
                    &["channel"],
                )?,
            )?,
            delivery_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tidings_worker_delivery_duration_seconds",
                        "Duration of one delivery attempt",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["channel"],
                )?,
            )?,
            breaker_open: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tidings_worker_breaker_open",
                        "Circuit breakers open or probing per delivery target (redacted origin; targets past 50 per channel summed under target=\"other\")",
                    ),
                    &["channel", "target"],
                )?,
            )?,
            breaker_deferrals: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "tidings_worker_breaker_deferrals_total",
                        "Delivery jobs deferred because their target's circuit breaker was open",
                    ),
                    &["channel"],
                )?,
            )?,
            breaker_probes: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "tidings_worker_breaker_probes_total",
                        "Half-open probe attempts to a target whose circuit breaker was open",
                    ),
                    &["channel"],
                )?,
            )?,
            registry,
        };
        for ch in DeliveryChannel::ALL {
            for st in DeliveryStatus::REPORTED {
                m.notifications.with_label_values(&[ch.as_str(), st.as_str()]);
            }
            m.retries.with_label_values(&[ch.as_str()]);
            m.dead_letters.with_label_values(&[ch.as_str()]);
            m.delivery_duration.with_label_values(&[ch.as_str()]);
            if ch != DeliveryChannel::InApp {
                m.breaker_open
                    .with_label_values(&[ch.as_str(), crate::breaker::gauge::OTHER]);
                m.breaker_deferrals.with_label_values(&[ch.as_str()]);
                m.breaker_probes.with_label_values(&[ch.as_str()]);
            }
        }
        // Notification requests given up on before any channel was planned.
        m.dead_letters.with_label_values(&["intake"]);
        Ok(m)
    }
}
