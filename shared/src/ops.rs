//! Operational endpoints every process serves: `/healthz`, `/readyz` and `/metrics`, plus
//! the signal handling that starts a graceful shutdown.
//!
//! Kubernetes routes traffic by `/readyz`: it is 200 only while NATS is connected, the
//! streams are in place and the process is not draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::Client;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::nats::{Provisioner, is_connected};

/// Everything `/readyz` looks at.
#[derive(Clone)]
pub struct Health {
    nats: Client,
    provisioner: Provisioner,
    draining: Arc<AtomicBool>,
    registry: prometheus::Registry,
    gauges: Arc<ScrapeGauges>,
    /// Further conditions (a connection of the process's own), each with the reason
    /// `/readyz` gives while it is false.
    required: Vec<(&'static str, Arc<AtomicBool>)>,
}

/// Gauges the alerts need that no event updates: set when `/metrics` is scraped.
struct ScrapeGauges {
    /// `tidings_nats_connected`: 1 while the NATS connection is up.
    nats_connected: prometheus::IntGauge,
    /// `tidings_ready`: 1 while `/readyz` answers 200.
    ready: prometheus::IntGauge,
    /// `process_open_fds` / `process_max_fds` (the usual names), from `/proc/self`.
    open_fds: prometheus::IntGauge,
    max_fds: prometheus::IntGauge,
}

impl ScrapeGauges {
    fn new(registry: &prometheus::Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric name");
            // A second Health on the same registry (tests) shares the first one's series.
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        ScrapeGauges {
            nats_connected: gauge("tidings_nats_connected", "1 while the NATS connection is up"),
            ready: gauge(
                "tidings_ready",
                "1 while /readyz answers 200 (NATS connected, streams in place, not draining)",
            ),
            open_fds: gauge("process_open_fds", "Open file descriptors"),
            max_fds: gauge("process_max_fds", "Limit on open file descriptors (RLIMIT_NOFILE soft)"),
        }
    }

    fn update(&self, health: &Health) {
        self.nats_connected.set(i64::from(is_connected(&health.nats)));
        self.ready.set(i64::from(health.not_ready_reason().is_none()));
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max);
        }
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux).
fn max_open_files() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Health {
    /// Readiness of a process using `nats`, with streams kept by `provisioner`, exporting
    /// `registry` at `/metrics`.
    pub fn new(nats: Client, provisioner: Provisioner, registry: prometheus::Registry) -> Self {
        let gauges = Arc::new(ScrapeGauges::new(&registry));
        Health {
            nats,
            provisioner,
            draining: Arc::new(AtomicBool::new(false)),
            registry,
            gauges,
            required: Vec::new(),
        }
    }

    /// Also requires `flag` for readiness; `reason` is what `/readyz` says while it is false.
    pub fn require(mut self, reason: &'static str, flag: Arc<AtomicBool>) -> Self {
        self.required.push((reason, flag));
        self
    }

    /// Why the process is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("draining")
        } else if !is_connected(&self.nats) {
            Some("NATS not connected")
        } else if !self.provisioner.is_ready() {
            Some("JetStream streams not ready")
        } else {
            self.required
                .iter()
                .find(|(_, flag)| !flag.load(Ordering::Acquire))
                .map(|(reason, _)| *reason)
        }
    }

    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The current epoch of `TIDINGS_EVENTS` (changes when the stream is recreated).
    pub fn epoch(&self) -> Option<String> {
        self.provisioner.epoch(crate::subject::EVENTS_STREAM)
    }

    /// The metrics registry served at `/metrics`.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// `/healthz`, `/readyz` and `/metrics`, ready to be merged into a service's router.
    pub fn router<S>(&self) -> Router<S> {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    match health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    health.gauges.update(&health);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::telemetry::render_metrics(&health.registry),
    )
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        () = term => tracing::info!("SIGTERM received: shutting down"),
    }
}
