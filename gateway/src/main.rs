//! `tidings-gateway` binary: parse configuration, set up telemetry, run until SIGTERM.

use clap::Parser;
use tidings_shared::config::GatewayConfig;
use tidings_shared::{ops, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    if let Err(e) = config.validate() {
        // The same exit code as clap's own refusals of a setting.
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let _telemetry = telemetry::init(
        "tidings-gateway",
        config.common.log_format,
        config.common.otlp_endpoint.as_deref(),
    )?;
    if let Err(e) = tidings_gateway::run(config, ops::shutdown_signal()).await {
        tracing::error!(error = %e, "gateway failed");
        return Err(e.into());
    }
    Ok(())
}
