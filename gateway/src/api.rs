//! The HTTP API of contract §6 (JSON in, JSON out, errors as `{"error":{code,message}}`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tidings_shared::{Channel, ErrorCode};

use crate::AppState;
use crate::error::{Error, Result};
use crate::extract::{Caller, Service};
use crate::position::StreamPosition;
use crate::presence::Presence;
use crate::publish;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/channels/{channel}/presence", get(presence))
        .route("/api/v1/channels/{channel}/history", get(history))
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
    /// Channels with local subscribers (each one NATS subscription pair).
    pub channels: usize,
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
        channels: state.hub.channel_count(),
        nats_connected: tidings_shared::nats::is_connected(&state.nats),
        draining: state.health.is_draining(),
        pid: std::process::id(),
    })
}

/// Body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    /// Channel name.
    pub channel: String,
    /// Event name.
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Idempotency key and message id.
    #[serde(default)]
    pub id: Option<String>,
}

/// Answer of `POST /api/v1/publish`.
#[derive(Debug, Serialize)]
pub struct Published {
    /// The stored sequence.
    pub seq: u64,
}

async fn publish(
    State(state): State<AppState>,
    Caller(claims): Caller,
    headers: axum::http::HeaderMap,
    body: std::result::Result<Json<PublishRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Published>)> {
    let Json(req) = body?;
    let channel = Channel::parse(&req.channel)?;
    if !claims.can_publish(&channel) {
        return Err(Error::api(
            ErrorCode::Forbidden,
            format!("this token may not publish to {channel}"),
        ));
    }
    let prepared = publish::prepare(
        &state,
        publish::Origin::Caller(&claims.sub),
        &channel,
        req.event,
        req.data,
        req.id,
        true,
    )?;
    let span =
        tidings_shared::telemetry::request_span(&headers, || tracing::info_span!("POST /api/v1/publish", %channel));
    let seq = tracing::Instrument::instrument(prepared.send_durable(&state), span).await?;
    Ok((StatusCode::ACCEPTED, Json(Published { seq })))
}

async fn presence(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(channel): Path<String>,
) -> Result<Json<Presence>> {
    let channel = Channel::parse(&channel)?;
    if !claims.can_read(&channel) {
        return Err(Error::api(
            ErrorCode::Forbidden,
            format!("this token may not read {channel}"),
        ));
    }
    Ok(Json(state.presence.get(&channel, claims.is_service()).await?))
}

/// Query of the history route.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Return messages after this sequence (0 or absent: from the oldest held).
    #[serde(default)]
    pub since: u64,
    /// At most this many (default 100, at most 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The epoch `since` belongs to.
    #[serde(default)]
    pub epoch: Option<String>,
}

/// Answer of the history route.
#[derive(Debug, Serialize)]
pub struct History {
    /// `message` frames, oldest first, as encoded once (not parsed again: a message can
    /// take many times its size as a `serde_json::Value`).
    pub messages: Vec<Box<serde_json::value::RawValue>>,
    /// Whether these complete the history after `since` (false: some were dropped by
    /// retention, or `epoch` is not the current one).
    pub recovered: bool,
    /// Whether more messages follow (ask again with `since` = the last `seq`).
    pub more: bool,
    /// The stream's epoch.
    pub epoch: String,
}

async fn history(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(channel): Path<String>,
    query: std::result::Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<History>> {
    let Query(q) = query.map_err(|e| Error::api(ErrorCode::BadRequest, e.body_text()))?;
    let channel = Channel::parse(&channel)?;
    if !claims.can_read(&channel) {
        return Err(Error::api(
            ErrorCode::Forbidden,
            format!("this token may not read {channel}"),
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let replay = crate::history::replay(
        &state,
        &channel,
        &StreamPosition {
            seq: q.since,
            epoch: q.epoch,
        },
        limit,
        None,
    )
    .await?;
    // A page holds at most one replay budget of messages; `more` says there is a next one.
    let (page, cut) = match replay.reader {
        Some(reader) => reader.collect(&state.metrics, state.config.replay_budget()).await?,
        None => (Vec::new(), false),
    };
    let messages = page
        .iter()
        .filter_map(|m| serde_json::value::RawValue::from_string(m.json().to_owned()).ok())
        .collect();
    Ok(Json(History {
        messages,
        // A page cut by `limit` is not a hole in the history.
        recovered: replay.complete,
        more: replay.truncated || cut,
        epoch: replay.epoch,
    }))
}
