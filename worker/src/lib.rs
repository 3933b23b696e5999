//! `tidings-worker`: the notification pipeline.
//!
//! Workers share one JetStream pull consumer on `TIDINGS_NOTIFY`, so any number of replicas
//! split the work; all their state lives in JetStream streams and KV buckets.
#![warn(missing_docs)]

pub mod error;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;

use tidings_shared::config::WorkerConfig;
use tidings_shared::nats::{self, Ownership, Provisioner};
use tidings_shared::ops::Health;
use tokio::sync::Notify;

pub use error::{Error, Result};
pub use metrics::Metrics;

/// The streams a worker keeps in place: it owns `TIDINGS_NOTIFY` and creates
/// `TIDINGS_EVENTS` with default retention if no gateway did yet (gateways own its settings).
pub fn streams(config: &WorkerConfig) -> Vec<(async_nats::jetstream::stream::Config, Ownership)> {
    let replicas = usize::from(config.common.stream_replicas);
    vec![
        (nats::notify_stream_config(replicas), Ownership::Owner),
        (
            nats::events_stream_config(std::time::Duration::from_secs(86_400), 10_000, replicas),
            Ownership::User,
        ),
    ]
}

/// Runs a worker until `shutdown` resolves.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let metrics = Metrics::new()?;
    let on_connect = Arc::new(Notify::new());
    let name = format!("tidings-worker/{}", tidings_shared::config::hostname());
    let client = nats::connect(&config.common.nats_url, &name, on_connect.clone()).await?;
    let provisioner = Provisioner::spawn(client.clone(), on_connect, streams(&config));
    let health = Health::new(client.clone(), provisioner, metrics.registry.clone());
    let listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "worker metrics listening");
    let drain = health.clone();
    axum::serve(listener, health.router::<()>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain.start_draining();
        })
        .await?;
    if let Err(e) = client.flush().await {
        tracing::debug!(error = %e, "final NATS flush failed");
    }
    tracing::info!("worker stopped");
    Ok(())
}
