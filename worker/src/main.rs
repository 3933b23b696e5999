//! `tidings-worker` binary: parse configuration, set up telemetry, run until SIGTERM.

use clap::Parser;
use tidings_shared::config::WorkerConfig;
use tidings_shared::{ops, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    let _telemetry = telemetry::init(
        "tidings-worker",
        config.common.log_format,
        config.common.otlp_endpoint.as_deref(),
    )?;
    if let Err(e) = tidings_worker::run(config, ops::shutdown_signal()).await {
        tracing::error!(error = %e, "worker failed");
        return Err(e.into());
    }
    Ok(())
}
