//! The HTTP API of contract §6 (JSON in, JSON out, errors as `{"error":{code,message}}`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::AppState;
use crate::extract::Service;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/stats", get(stats))
}

/// `GET /api/v1/stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// This node's id.
    pub node: String,
    /// Open client connections.
    pub connections: i64,
    /// Client subscriptions.
    pub subscriptions: i64,
    /// Whether this node is connected to NATS.
    pub nats_connected: bool,
    /// Whether this node is draining.
    pub draining: bool,
    /// This process's id (the load test reads the gateway's RSS from /proc with it).
    pub pid: u32,
}

async fn stats(State(state): State<AppState>, _caller: Service) -> Json<Stats> {
    Json(Stats {
        node: state.node_id.to_string(),
        connections: state.metrics.connections.get(),
        subscriptions: state.metrics.subscriptions.get(),
        nats_connected: tidings_shared::nats::is_connected(&state.nats),
        draining: state.health.is_draining(),
        pid: std::process::id(),
    })
}
