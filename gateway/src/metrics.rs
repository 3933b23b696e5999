//! The gateway's Prometheus metrics (contract §8), all registered at startup so that every
//! series exists (at zero) before the first event.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tidings_shared::AuthReason;
use tidings_shared::telemetry::register;

use crate::error::Result;

/// Every gateway metric, cheap to clone (each field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Open client connections (WebSocket and SSE).
    pub connections: IntGauge,
    /// Client subscriptions (one per connection and channel).
    pub subscriptions: IntGauge,
    /// Frames written to clients carrying a channel message.
    pub messages_delivered: IntCounter,
    /// Connections closed with 4009 because their outbound queue was full.
    pub slow_consumer_disconnects: IntCounter,
    /// Refused tokens, by reason.
    pub auth_failures: IntCounterVec,
    /// Missed durable messages sent to clients on `subscribe` with `since` (and gap repair).
    pub recovered_messages: IntCounter,
    /// Publisher bodies dropped as unparseable or too large, by reason.
    pub rejected_messages: IntCounterVec,
    /// Stored in NATS → frame written to the socket.
    pub delivery_latency: Histogram,
    /// GitHub webhook deliveries, by event and outcome (published, duplicate, ignored, …).
    pub github_webhooks: IntCounterVec,
    /// Connections or sessions refused before they started, by reason.
    pub refused_connections: IntCounterVec,
    /// Commands and HTTP requests refused by a rate limit, by scope.
    pub rate_limited: IntCounterVec,
    /// Connections closed because a write made no progress within the write deadline.
    pub write_timeouts: IntCounter,
    /// Operator controls sent from this node, by action.
    pub control_actions: IntCounterVec,
    /// `tidings_gateway_tasks`: the runtime's alive tasks, read at each scrape.
    pub tasks: AliveTasks,
    /// Connections those controls affected across the cluster, by action.
    pub control_affected: IntCounterVec,
}

const AUTH_REASONS: [AuthReason; 13] = [
    AuthReason::Revoked,
    AuthReason::LifetimeTooLong,
    AuthReason::Missing,
    AuthReason::Malformed,
    AuthReason::AlgNone,
    AuthReason::AlgorithmNotAllowed,
    AuthReason::BadSignature,
    AuthReason::Expired,
    AuthReason::NotYetValid,
    AuthReason::MissingExp,
    AuthReason::MissingSub,
    AuthReason::BadSub,
    AuthReason::NoKeyConfigured,
];

/// Labels of `tidings_gateway_rejected_messages_total{reason}` (`overflow`: held by a channel
/// that was opening or repairing a gap, past `feed::HELD_MAX`).
pub const REJECT_REASONS: [&str; 5] = ["invalid", "too_large", "bad_subject", "frame_too_large", "overflow"];

/// Labels of `tidings_gateway_refused_connections_total{reason}`.
pub const REFUSAL_REASONS: [&str; 4] = ["pending_limit", "connection_limit", "user_limit", "draining"];

/// Labels of `tidings_gateway_rate_limited_total{scope}`.
pub const RATE_LIMIT_SCOPES: [&str; 3] = ["command", "http_token", "http_address"];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let m = Metrics {
            connections: register(
                r,
                IntGauge::new("tidings_gateway_connections", "Open client connections")?,
            )?,
            subscriptions: register(
                r,
                IntGauge::new("tidings_gateway_subscriptions", "Client channel subscriptions")?,
            )?,
            messages_delivered: counter(
                r,
                "tidings_gateway_messages_delivered_total",
                "Channel messages written to clients",
            )?,
            slow_consumer_disconnects: counter(
                r,
                "tidings_gateway_slow_consumer_disconnects_total",
                "Connections closed (4009) because their outbound queue was full",
            )?,
            auth_failures: counter_vec(r, "tidings_gateway_auth_failures_total", "Refused tokens", &["reason"])?,
            recovered_messages: counter(
                r,
                "tidings_gateway_recovered_messages_total",
                "Missed durable messages replayed to clients",
            )?,
            rejected_messages: counter_vec(
                r,
                "tidings_gateway_rejected_messages_total",
                "Publisher messages dropped, by reason",
                &["reason"],
            )?,
            delivery_latency: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tidings_gateway_delivery_latency_seconds",
                        "Time from a message being stored in NATS to its frame being written",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                )?,
            )?,
            github_webhooks: counter_vec(
                r,
                "tidings_gateway_github_webhooks_total",
                "GitHub webhook deliveries, by event and outcome",
                &["event", "outcome"],
            )?,
            refused_connections: counter_vec(
                r,
                "tidings_gateway_refused_connections_total",
                "Connections or sessions refused before they started, by reason",
                &["reason"],
            )?,
            rate_limited: counter_vec(
                r,
                "tidings_gateway_rate_limited_total",
                "Commands and HTTP requests refused by a rate limit, by scope",
                &["scope"],
            )?,
            control_actions: counter_vec(
                r,
                "tidings_gateway_control_actions_total",
                "Operator controls (disconnect, revoke, unsubscribe) taken by this node",
                &["action"],
            )?,
            control_affected: counter_vec(
                r,
                "tidings_gateway_control_affected_connections_total",
                "Connections affected cluster-wide by the operator controls this node took",
                &["action"],
            )?,
            write_timeouts: counter(
                r,
                "tidings_gateway_write_timeouts_total",
                "Connections closed because the peer read nothing within the write deadline",
            )?,
            tasks: register(
                r,
                AliveTasks(IntGauge::new(
                    "tidings_gateway_tasks",
                    "Tasks alive in the gateway's runtime (every connection holds a few)",
                )?),
            )?,
            registry,
        };
        m.create_labelled_series();
        Ok(m)
    }

    /// Creates every known label set at zero, so that dashboards and alerts see the
    /// series before the first event.
    fn create_labelled_series(&self) {
        for r in AUTH_REASONS {
            self.auth_failures.with_label_values(&[r.as_str()]);
        }
        for r in REJECT_REASONS {
            self.rejected_messages.with_label_values(&[r]);
        }
        for r in REFUSAL_REASONS {
            self.refused_connections.with_label_values(&[r]);
        }
        for a in crate::control::ACTIONS {
            self.control_actions.with_label_values(&[a]);
            self.control_affected.with_label_values(&[a]);
        }
        for s in RATE_LIMIT_SCOPES {
            self.rate_limited.with_label_values(&[s]);
        }
        for event in crate::github::EVENTS.into_iter().chain(["other"]) {
            for outcome in crate::github::OUTCOMES {
                self.github_webhooks.with_label_values(&[event, outcome]);
            }
        }
    }
}

/// The number of tasks alive in the runtime, set when the registry is gathered (`/metrics`)
/// from the runtime the scrape runs on. Not in the contract's list (an addition): tasks that
/// outlive their connection are a leak that shows here long before it shows in memory, so the
/// soak test (`tidings-loadtest soak`) samples it.
#[derive(Clone)]
pub struct AliveTasks(IntGauge);

impl prometheus::core::Collector for AliveTasks {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.0
                .set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        self.0.collect()
    }
}

/// A registered counter.
fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    Ok(register(registry, IntCounter::new(name, help)?)?)
}

/// A registered counter with `labels`.
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    Ok(register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)?)
}
