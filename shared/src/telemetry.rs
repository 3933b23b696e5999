//! Logging, tracing export and the Prometheus text endpoint's encoder.
//!
//! Every process calls [`init`] once in `main`. Spans carry the channel or notification id
//! they work on; when `TIDINGS_OTLP_ENDPOINT` is set they are also exported over OTLP/HTTP
//! in batches, so a notification can be followed from intake to delivery in a trace viewer.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::error::{Error, Result};

/// Flushes pending spans when dropped: keep it alive until `main` returns.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("tidings: flushing traces failed: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL for a collector base URL (`/v1/traces` appended unless a path is
/// already there).
pub fn otlp_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .map(|(_, rest)| rest.contains('/'))
        .unwrap_or(false);
    if has_path {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// Installs the global `tracing` subscriber: `RUST_LOG`-style filter (default `info`), pretty or
/// JSON lines on stderr, and OTLP export when `otlp_endpoint` is set.
pub fn init(service: &'static str, format: LogFormat, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = match otlp_endpoint.filter(|e| !e.trim().is_empty()) {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(otlp_traces_url(endpoint))
                .build()
                .map_err(|e| Error::Telemetry(format!("OTLP exporter for {endpoint}: {e}")))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build(),
            )
        }
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(endpoint = %crate::redact::url(endpoint), "exporting traces over OTLP/HTTP");
    }
    Ok(TelemetryGuard { provider })
}

/// Renders a Prometheus registry in the text exposition format.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::with_capacity(16 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Registers a collector, turning the (programming) error of a duplicate name into
/// [`Error::Telemetry`] instead of a panic.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &prometheus::Registry, c: C) -> Result<C> {
    registry
        .register(Box::new(c.clone()))
        .map_err(|e| Error::Telemetry(format!("registering metric: {e}")))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url() {
        assert_eq!(otlp_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(otlp_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            otlp_traces_url("http://c:4318/custom/v1/traces"),
            "http://c:4318/custom/v1/traces"
        );
    }

    #[test]
    fn registry_renders_text() {
        let r = prometheus::Registry::new();
        let c = register(&r, prometheus::IntCounter::new("x_total", "x").unwrap()).unwrap();
        c.inc();
        assert!(render_metrics(&r).contains("x_total 1"));
        assert!(register(&r, prometheus::IntCounter::new("x_total", "x").unwrap()).is_err());
    }
}
