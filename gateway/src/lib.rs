//! `tidings-gateway`: the stateless edge of Tidings.
//!
//! It terminates client connections, verifies their tokens and fans NATS messages out to
//! them. It holds no state that matters: any gateway can serve any client, and a client that
//! reconnects elsewhere recovers what it missed from JetStream.
#![warn(missing_docs)]

pub mod api;
pub mod assets;
pub mod chain;
pub mod conn;
pub mod control;
pub mod cors;
pub mod error;
pub mod extract;
pub mod feed;
pub mod github;
pub mod history;
pub mod hub;
pub mod limit;
pub mod message;
pub mod metrics;
pub mod notifications;
pub mod position;
pub mod presence;
pub mod publish;
pub mod server;
pub mod session;
pub mod sse;
pub mod subs;
pub mod throttle;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tidings_shared::auth::Verifier;
use tidings_shared::config::GatewayConfig;
use tidings_shared::nats::{self, Ownership, Provisioner};
use tidings_shared::ops::Health;
use tokio::sync::Notify;

pub use error::{Error, Result};
pub use metrics::Metrics;

/// What every handler shares: one pointer, so that each of the (many) connection tasks
/// holding it stays small.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The gateway's shared parts, reached through [`AppState`].
pub struct App {
    /// The configuration the process started with.
    pub config: Arc<GatewayConfig>,
    /// This node's id.
    pub node_id: Arc<str>,
    /// Token verifier.
    pub verifier: Arc<Verifier>,
    /// The NATS connection (one per process, multiplexing every subscription).
    pub nats: async_nats::Client,
    /// JetStream on that connection.
    pub js: async_nats::jetstream::Context,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness and drain state.
    pub health: Health,
    /// Local connections and channel subscriptions.
    pub hub: Arc<hub::Hub>,
    /// Cluster-wide presence.
    pub presence: presence::PresenceBoard,
    /// The last epoch of `TIDINGS_EVENTS` seen while reading it, and when.
    epoch: std::sync::RwLock<Option<(String, std::time::Instant)>>,
    /// The notification pipeline's state, opened on first use (NATS may be down at start).
    store: tokio::sync::OnceCell<tidings_shared::store::Store>,
    /// The VAPID public key browsers subscribe with, when push is configured.
    pub vapid_public_key: Option<String>,
    /// The GitHub webhook receiver, when `TIDINGS_GITHUB_WEBHOOK_SECRET` is set.
    pub github: Option<github::GitHub>,
    /// Rate limits of the HTTP API.
    pub http_limits: throttle::HttpLimits,
    /// Revoked tokens, as far as this node knows.
    pub revocations: control::Revocations,
}

impl App {
    /// Records the epoch seen while reading the stream (it changes when the stream is
    /// recreated).
    pub fn remember_epoch(&self, epoch: &str) {
        if let Ok(mut e) = self.epoch.write() {
            match &mut *e {
                Some((known, at)) if known == epoch => *at = std::time::Instant::now(),
                _ => *e = Some((epoch.to_owned(), std::time::Instant::now())),
            }
        }
    }

    /// The epoch of `TIDINGS_EVENTS` if it was read from the stream within `fresh`.
    pub fn recent_epoch(&self, fresh: Duration) -> Option<String> {
        let e = self.epoch.read().ok()?;
        e.as_ref()
            .filter(|(_, at)| at.elapsed() <= fresh)
            .map(|(epoch, _)| epoch.clone())
    }

    /// The notification store (preferences, templates, inbox, statuses).
    pub async fn store(&self) -> Result<&tidings_shared::store::Store> {
        let replicas = usize::from(self.config.common.stream_replicas);
        Ok(self
            .store
            .get_or_try_init(|| tidings_shared::store::Store::open(self.js.clone(), replicas))
            .await?)
    }

    /// The current epoch of `TIDINGS_EVENTS`, as last seen.
    pub fn current_epoch(&self) -> Option<String> {
        self.epoch
            .read()
            .ok()
            .and_then(|e| e.as_ref().map(|(epoch, _)| epoch.clone()))
            .or_else(|| self.health.epoch())
    }
}

/// The streams a gateway keeps in place: it owns `TIDINGS_EVENTS` (its retention settings are
/// the gateway's) and creates `TIDINGS_NOTIFY` if no worker did yet.
pub fn streams(config: &GatewayConfig) -> Vec<(async_nats::jetstream::stream::Config, Ownership)> {
    let replicas = usize::from(config.common.stream_replicas);
    vec![
        (
            async_nats::jetstream::stream::Config {
                max_bytes: config.events_max_bytes,
                ..nats::events_stream_config(config.events_max_age, config.events_max_per_channel, replicas)
            },
            Ownership::Owner,
        ),
        (nats::notify_stream_config(replicas), Ownership::User),
    ]
}

/// Tells the hub when `TIDINGS_EVENTS` is created again under a running node (deleted and
/// recreated by an operator, or by a provisioner after a NATS store was lost), so channels
/// restart their sequence bookkeeping instead of dropping the new, lower sequences, and
/// forgets the epoch last read.
async fn watch_stream_recreation(client: async_nats::Client, state: AppState) {
    use futures::StreamExt as _;
    let subject = format!(
        "$JS.EVENT.ADVISORY.STREAM.CREATED.{}",
        tidings_shared::subject::EVENTS_STREAM
    );
    let Ok(mut advisories) = client.subscribe(subject).await else {
        tracing::warn!("cannot watch for stream recreation");
        return;
    };
    let js = async_nats::jetstream::new(client);
    let epoch_now = || async {
        let mut stream = js.get_stream(tidings_shared::subject::EVENTS_STREAM).await.ok()?;
        stream.info().await.ok().map(nats::epoch_of)
    };
    // The creation this node may itself have caused at startup is not a recreation: only a
    // change of epoch from one this node already saw is.
    let mut known = epoch_now().await;
    while advisories.next().await.is_some() {
        let current = epoch_now().await;
        if known.is_some() && current.is_some() && current != known {
            tracing::warn!("TIDINGS_EVENTS was recreated: sequences start again");
            state.hub.stream_recreated();
            if let Ok(mut e) = state.epoch.write() {
                *e = None;
            }
        }
        if current.is_some() {
            known = current;
        }
    }
}

/// Builds the whole HTTP router.
pub fn router(state: AppState) -> Router {
    // JSON bodies may carry a payload of the configured size plus the envelope.
    let body_limit = state.config.max_payload_bytes + 4096;
    Router::new()
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::handler))
        .merge(
            api::router()
                .merge(notifications::router())
                .merge(control::router())
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), throttle::limit)),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        // After the default limit, so that its own (larger) limit wins on its route.
        .merge(
            github::router(state.github.is_some())
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), throttle::limit)),
        )
        .with_state(state.clone())
        .merge(state.health.router())
        .merge(assets::router())
}

/// Runs a gateway until `shutdown` resolves, then drains and returns.
pub async fn run(config: GatewayConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let node_id: Arc<str> = config.node_id().into();
    let verifier = Arc::new(config.verifier()?);
    let vapid_public_key = match &config.common.vapid_private_key_file {
        Some(path) => Some(tidings_shared::vapid::Vapid::from_file(path)?.public_key().to_owned()),
        None => None,
    };
    let metrics = Metrics::new()?;
    let cors = cors::layer(&config.cors_origins)?;
    let state_github = config.github_webhook_secret.as_deref().map(github::GitHub::new);
    let on_connect = Arc::new(Notify::new());
    let client = nats::connect(
        &config.common.nats_url,
        &format!("tidings-gateway/{node_id}"),
        on_connect.clone(),
    )
    .await?;
    let provisioner = Provisioner::spawn(client.clone(), on_connect, streams(&config));
    let reconnects = provisioner.rounds();
    // Channel subscriptions ride on a connection of their own (see `subs`).
    let subs = subs::Subscriptions::start(&config.common.nats_url, &format!("tidings-gateway/{node_id}/subs"))?;
    let health = Health::new(client.clone(), provisioner, metrics.registry.clone())
        .require("NATS subscription connection down", subs.connected_flag());
    let js = async_nats::jetstream::new(client.clone());
    // A recovering subscription may hold up to 4 queues' worth of live messages.
    let hold_limit = config.outbound_queue as usize * 4;
    let hub = hub::Hub::new(
        client.clone(),
        subs,
        metrics.clone(),
        message::Limits::of(&config),
        hold_limit,
        reconnects,
    );
    let presence = presence::PresenceBoard::new(
        js.clone(),
        node_id.clone(),
        hub.clone(),
        usize::from(config.common.stream_replicas),
    );
    tokio::spawn(presence.clone().publish_loop());
    let http_limits = throttle::HttpLimits::new(&config);
    let state = AppState(Arc::new(App {
        config: Arc::new(config),
        node_id: node_id.clone(),
        verifier,
        js,
        nats: client.clone(),
        metrics,
        health: health.clone(),
        hub: hub.clone(),
        presence,
        epoch: std::sync::RwLock::new(None),
        store: tokio::sync::OnceCell::new(),
        vapid_public_key,
        github: state_github,
        http_limits,
        revocations: control::Revocations::default(),
    }));
    tokio::spawn(control::run(state.clone()));
    tokio::spawn(watch_stream_recreation(client.clone(), state.clone()));
    let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
    tracing::info!(node = %node_id, addr = %listener.local_addr()?, algorithms = ?state.verifier.algorithms(), "gateway listening");
    let drain = Duration::from_millis(state.config.drain_ms);
    let state_grace = state.config.shutdown_grace_ms;
    let limits = server::Limits {
        header_read_timeout: Duration::from_millis(state.config.header_read_timeout_ms),
        write_deadline: Duration::from_millis(state.config.write_deadline_ms),
        max_pending: state.config.max_pending_connections,
        grace: Duration::from_millis(state.config.shutdown_grace_ms),
    };
    let metrics = state.metrics.clone();
    let app = match cors {
        Some(cors) => router(state).layer(cors),
        None => router(state),
    };
    let draining = hub.clone();
    let drained = async move {
        shutdown.await;
        health.start_draining();
        tracing::info!("draining: /readyz now answers 503");
        draining.drain(conn::CLOSE_DRAINING, drain).await;
    };
    let sessions = hub.clone();
    let settled = async move {
        // The sessions told to go send their close frames.
        while sessions.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    server::serve(listener, app, limits, metrics, drained, settled).await;
    // Bounded: with NATS away, a flush would wait for the reconnect.
    let grace = Duration::from_millis(state_grace);
    match tokio::time::timeout(grace, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "final NATS flush failed"),
        Err(_) => tracing::warn!("final NATS flush timed out (NATS unreachable)"),
    }
    tracing::info!("gateway stopped");
    Ok(())
}
