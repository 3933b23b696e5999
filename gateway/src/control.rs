//! Operator controls (service tokens only), carried to every gateway over NATS so that any
//! gateway can take the request: each gateway acts on its own connections and answers how
//! many it affected; the one that took the request sums the answers.
//!
//! - `POST /api/v1/users/{user}/disconnect`: every connection of the user closes with 4001
//!   `revoked` (the SDK asks for a new token instead of reconnecting with its old one);
//! - `POST /api/v1/users/{user}/revoke` `{"before": <unix seconds>}`: tokens of the user
//!   issued (`iat`) before the instant are refused from now on, on every gateway, including
//!   gateways started later (the revocation is kept in the KV bucket `TIDINGS_REVOCATIONS`
//!   for `TIDINGS_TOKEN_MAX_LIFETIME`, the longest lifetime a token may have), and open
//!   connections with such tokens close as for `disconnect`;
//! - `POST /api/v1/channels/{channel}/unsubscribe` `{"user"?}`: the subscriptions to the
//!   channel (of that user) end with an `unsubscribed` frame.
//!
//! Which gateways should answer is read from the KV bucket `TIDINGS_NODES`, where each
//! gateway announces itself every [`ANNOUNCE`]; the answer names those that did not answer
//! within `TIDINGS_CONTROL_TIMEOUT_MS`.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tidings_shared::auth::Claims;
use tidings_shared::{AuthReason, Channel, Error as SharedError, ErrorCode};

use crate::AppState;
use crate::conn::CLOSE_UNAUTHORIZED;
use crate::error::{Error, Result};
use crate::extract::Service;

/// Core NATS subject every gateway listens on for controls.
pub const SUBJECT: &str = "tidings.control";
/// KV bucket of revocations: user → the instant before which their tokens are refused.
pub const REVOCATIONS_BUCKET: &str = "TIDINGS_REVOCATIONS";
/// KV bucket of live gateways: node id → when it last announced itself.
pub const NODES_BUCKET: &str = "TIDINGS_NODES";
/// How long a node that has not read the revocations yet asks the bucket during an auth.
const UNLOADED_CHECK: Duration = Duration::from_millis(500);

/// How often a gateway announces itself in [`NODES_BUCKET`] (entries live three times that).
pub const ANNOUNCE: Duration = Duration::from_secs(10);

/// A control, as carried on [`SUBJECT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Command {
    /// Close every connection of `user`.
    Disconnect {
        /// The user.
        user: String,
    },
    /// Refuse `user`'s tokens issued before `before`, and close connections running on them.
    Revoke {
        /// The user.
        user: String,
        /// Unix seconds.
        before: u64,
    },
    /// End the subscriptions to `channel` (only `user`'s, if given).
    Unsubscribe {
        /// The channel.
        channel: Channel,
        /// The user, if only theirs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

impl Command {
    /// The metric label of the action.
    pub fn action(&self) -> &'static str {
        match self {
            Command::Disconnect { .. } => "disconnect",
            Command::Revoke { .. } => "revoke",
            Command::Unsubscribe { .. } => "unsubscribe",
        }
    }
}

/// Labels of `tidings_gateway_control_actions_total{action}`.
pub const ACTIONS: [&str; 3] = ["disconnect", "revoke", "unsubscribe"];

/// One gateway's answer.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    node: String,
    connections: u64,
}

/// What a control did across the cluster.
#[derive(Debug, Serialize)]
pub struct Tally {
    /// Connections affected on every gateway that answered.
    pub connections: u64,
    /// Gateways that answered.
    pub nodes: usize,
    /// Gateways known to be running that did not answer in time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// The revocations this node knows, kept current from [`REVOCATIONS_BUCKET`].
#[derive(Debug, Default)]
pub struct Revocations {
    before: RwLock<HashMap<String, u64>>,
    loaded: AtomicBool,
}

impl Revocations {
    /// Records that `user`'s tokens issued before `before` are refused (the latest instant
    /// wins); whether that raised what this node knew.
    pub fn record(&self, user: &str, before: u64) -> bool {
        let Ok(mut map) = self.before.write() else {
            return false;
        };
        let entry = map.entry(user.to_owned()).or_insert(0);
        let raised = before > *entry;
        *entry = (*entry).max(before);
        raised
    }

    /// Forgets `user`'s revocation (deleted from the bucket: lifted by an operator).
    fn forget(&self, user: &str) {
        if let Ok(mut map) = self.before.write() {
            map.remove(user);
        }
    }

    /// Whether `claims` were issued before a revocation this node knows (no NATS round trip:
    /// for the re-check once a connection is registered).
    pub fn known_revoked(&self, claims: &Claims) -> bool {
        self.get(&claims.sub)
            .is_some_and(|before| claims.iat.unwrap_or(0) < before)
    }

    /// The instant before which `user`'s tokens are refused, if any, as far as this node
    /// knows; `None` from [`Revocations::is_loaded`] = false means "ask the bucket".
    fn get(&self, user: &str) -> Option<u64> {
        self.before.read().ok()?.get(user).copied()
    }

    /// Whether every stored revocation has been read.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

/// Refuses `claims` if they were issued (`iat`) before a revocation of their user (a token
/// without `iat` counts as issued before any). Until this node has read the bucket, it asks
/// the bucket itself.
pub async fn check_revocation(state: &AppState, claims: &Claims) -> std::result::Result<(), AuthReason> {
    let before = if state.revocations.is_loaded() {
        state.revocations.get(&claims.sub)
    } else {
        // Not read yet (a node just started): ask the bucket, briefly. With NATS away this
        // fails open to what the node knows: a node without NATS delivers nothing anyway,
        // and failing closed would send every client to its token provider and `error`.
        let asked = tokio::time::timeout(UNLOADED_CHECK, async {
            let kv = revocations_bucket(state).await.ok()?;
            let value = kv.get(&claims.sub).await.ok()??;
            std::str::from_utf8(&value).ok()?.parse::<u64>().ok()
        })
        .await;
        asked.ok().flatten().or_else(|| state.revocations.get(&claims.sub))
    };
    match before {
        Some(before) if claims.iat.unwrap_or(0) < before => Err(AuthReason::Revoked),
        _ => Ok(()),
    }
}

async fn bucket(
    state: &AppState,
    name: &str,
    max_age: Duration,
    storage: jetstream::stream::StorageType,
) -> Result<kv::Store> {
    let cfg = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age,
        storage,
        num_replicas: usize::from(state.config.common.stream_replicas),
        ..Default::default()
    };
    Ok(tidings_shared::store::ensure_kv_with(&state.js, cfg).await?)
}

async fn revocations_bucket(state: &AppState) -> Result<kv::Store> {
    let max_age = state.config.token_max_lifetime;
    bucket(state, REVOCATIONS_BUCKET, max_age, jetstream::stream::StorageType::File).await
}

async fn nodes_bucket(state: &AppState) -> Result<kv::Store> {
    bucket(
        state,
        NODES_BUCKET,
        ANNOUNCE * 3,
        jetstream::stream::StorageType::Memory,
    )
    .await
}

/// What one node does with a control: how many of its connections it affected.
pub fn apply(state: &AppState, command: &Command) -> u64 {
    match command {
        Command::Disconnect { user } => state.hub.close_user(user, u64::MAX, CLOSE_UNAUTHORIZED),
        Command::Revoke { user, before } => {
            let _ = state.revocations.record(user, *before);
            state.hub.close_user(user, *before, CLOSE_UNAUTHORIZED)
        }
        Command::Unsubscribe { channel, user } => state.hub.force_unsubscribe(channel, user.as_deref()),
    }
}

/// Runs on every gateway until the process ends: announces the node, keeps the revocations
/// current, and applies the controls it receives.
pub async fn run(state: AppState) {
    tokio::spawn(announce(state.clone()));
    tokio::spawn(watch_revocations(state.clone()));
    loop {
        match state.nats.subscribe(SUBJECT).await {
            Ok(mut sub) => {
                while let Some(msg) = sub.next().await {
                    answer(&state, msg).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for operator controls"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn answer(state: &AppState, msg: async_nats::Message) {
    let command: Command = match serde_json::from_slice(&msg.payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable operator control ignored");
            return;
        }
    };
    let connections = apply(state, &command);
    tracing::info!(action = command.action(), connections, "operator control applied");
    if let Some(reply) = msg.reply {
        let answer = Answer {
            node: state.node_id.to_string(),
            connections,
        };
        if let Ok(bytes) = serde_json::to_vec(&answer)
            && let Err(e) = state.nats.publish(reply, bytes.into()).await
        {
            tracing::debug!(error = %e, "answering an operator control failed");
        }
    }
}

async fn announce(state: AppState) {
    let mut tick = tokio::time::interval(ANNOUNCE);
    loop {
        tick.tick().await;
        let put = async {
            let kv = nodes_bucket(&state).await?;
            let now = tidings_shared::auth::now_unix().to_string();
            kv.put(&*state.node_id, now.into()).await.map_err(SharedError::nats)?;
            Ok::<_, Error>(())
        };
        if let Err(e) = put.await {
            tracing::debug!(error = %e, "announcing this gateway failed; trying again");
        }
    }
}

async fn watch_revocations(state: AppState) {
    loop {
        let watched = async {
            let kv = revocations_bucket(&state).await?;
            let mut watch = kv.watch_with_history(">").await.map_err(SharedError::nats)?;
            // An empty bucket sends nothing: loaded at once.
            if kv.status().await.map(|s| s.values() == 0).unwrap_or(false) {
                state.revocations.loaded.store(true, Ordering::Release);
            }
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(SharedError::nats)?;
                if entry.operation != kv::Operation::Put {
                    state.revocations.forget(&entry.key);
                } else if let Some(before) = std::str::from_utf8(&entry.value).ok().and_then(|v| v.parse().ok())
                    && state.revocations.record(&entry.key, before)
                {
                    // News to this node: it missed the broadcast (reconnecting at the time),
                    // so it closes the connections running on revoked tokens itself.
                    state.hub.close_user(&entry.key, before, CLOSE_UNAUTHORIZED);
                }
                if entry.delta == 0 {
                    state.revocations.loaded.store(true, Ordering::Release);
                }
            }
            Ok::<_, Error>(())
        };
        if let Err(e) = watched.await {
            tracing::debug!(error = %e, "watching revocations failed; trying again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends a control to every gateway (this one included) and sums their answers.
pub async fn broadcast(state: &AppState, command: &Command) -> Result<Tally> {
    let mut expected: BTreeSet<String> = BTreeSet::new();
    if let Ok(kv) = nodes_bucket(state).await
        && let Ok(mut keys) = kv.keys().await
    {
        while let Some(Ok(k)) = keys.next().await {
            expected.insert(k);
        }
    }
    expected.insert(state.node_id.to_string());
    let inbox = state.nats.new_inbox();
    let mut answers = state.nats.subscribe(inbox.clone()).await.map_err(SharedError::nats)?;
    let payload = serde_json::to_vec(command).map_err(|e| SharedError::Encode(e.to_string()))?;
    state
        .nats
        .publish_with_reply(SUBJECT, inbox, payload.into())
        .await
        .map_err(SharedError::nats)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(state.config.control_timeout_ms);
    let mut tally = Tally {
        connections: 0,
        nodes: 0,
        missing: Vec::new(),
    };
    while !expected.is_empty() {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await else {
            break;
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload) else {
            continue;
        };
        expected.remove(&answer.node);
        tally.connections += answer.connections;
        tally.nodes += 1;
    }
    tally.missing = expected.into_iter().collect();
    let action = command.action();
    state.metrics.control_actions.with_label_values(&[action]).inc();
    state
        .metrics
        .control_affected
        .with_label_values(&[action])
        .inc_by(tally.connections);
    Ok(tally)
}

/// Body of `revoke`.
#[derive(Debug, Deserialize)]
struct RevokeBody {
    before: u64,
}

/// Body of `unsubscribe`.
#[derive(Debug, Default, Deserialize)]
struct UnsubscribeBody {
    #[serde(default)]
    user: Option<String>,
}

fn valid_user(user: &str) -> Result<()> {
    if tidings_shared::channel::is_valid_id(user) {
        Ok(())
    } else {
        Err(Error::api(
            ErrorCode::BadRequest,
            "user must match [A-Za-z0-9_-]{1,128}",
        ))
    }
}

async fn disconnect(State(state): State<AppState>, _: Service, Path(user): Path<String>) -> Result<Json<Tally>> {
    valid_user(&user)?;
    Ok(Json(broadcast(&state, &Command::Disconnect { user }).await?))
}

async fn revoke(
    State(state): State<AppState>,
    _: Service,
    Path(user): Path<String>,
    body: std::result::Result<Json<RevokeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Tally>> {
    valid_user(&user)?;
    let Json(RevokeBody { before }) = body?;
    let now = tidings_shared::auth::now_unix();
    if before > now + REVOKE_AHEAD_SECS {
        // Most likely milliseconds: tokens issued after now would then be refused too.
        return Err(Error::api(
            ErrorCode::BadRequest,
            format!("before ({before}) is in the future: unix seconds, at most now ({now})"),
        ));
    }
    // Every running gateway records it and closes the connections (counted); then it is
    // stored, for gateways started later and any that missed the broadcast (their watch of
    // the bucket closes what they hold).
    let tally = broadcast(
        &state,
        &Command::Revoke {
            user: user.clone(),
            before,
        },
    )
    .await?;
    store_revocation(&state, &user, before).await?;
    Ok(Json(tally))
}

/// Clock skew allowed on a revocation's `before`, seconds.
const REVOKE_AHEAD_SECS: u64 = 60;

/// Stores `user`'s revocation, keeping the later instant if one is stored (a revisioned
/// update: two revocations at once cannot leave the earlier one). Returns the instant kept.
async fn store_revocation(state: &AppState, user: &str, before: u64) -> Result<u64> {
    let kv = revocations_bucket(state).await?;
    for _ in 0..5 {
        let current = kv.entry(user).await.map_err(SharedError::nats)?;
        let kept = current
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok());
        let value = kept.map_or(before, |k| k.max(before));
        let written = match current {
            Some(e) => kv.update(user, value.to_string().into(), e.revision).await.is_ok(),
            None => kv.create(user, value.to_string().into()).await.is_ok(),
        };
        if written {
            return Ok(value);
        }
    }
    Err(SharedError::Conflict(format!("the revocation of {user} kept changing; retry")).into())
}

async fn unsubscribe(
    State(state): State<AppState>,
    _: Service,
    Path(channel): Path<String>,
    body: Option<Json<UnsubscribeBody>>,
) -> Result<Json<Tally>> {
    let channel = Channel::parse(&channel)?;
    let user = body.and_then(|Json(b)| b.user);
    if let Some(u) = &user {
        valid_user(u)?;
    }
    Ok(Json(broadcast(&state, &Command::Unsubscribe { channel, user }).await?))
}

/// The control routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{user}/disconnect", post(disconnect))
        .route("/api/v1/users/{user}/revoke", post(revoke))
        .route("/api/v1/channels/{channel}/unsubscribe", post(unsubscribe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_tagged_json() {
        let c = Command::Unsubscribe {
            channel: Channel::parse("project:p1").unwrap(),
            user: None,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"action":"unsubscribe","channel":"project:p1"}"#);
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c);
    }

    #[test]
    fn the_latest_revocation_wins() {
        let r = Revocations::default();
        r.record("u1", 100);
        r.record("u1", 50);
        assert_eq!(r.get("u1"), Some(100));
        assert_eq!(r.get("u2"), None);
    }
}
