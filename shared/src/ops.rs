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
}

impl Health {
    /// Readiness of a process using `nats`, with streams kept by `provisioner`, exporting
    /// `registry` at `/metrics`.
    pub fn new(nats: Client, provisioner: Provisioner, registry: prometheus::Registry) -> Self {
        Health {
            nats,
            provisioner,
            draining: Arc::new(AtomicBool::new(false)),
            registry,
        }
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
            None
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
