//! Logging, tracing export and the Prometheus text endpoint's encoder.
//!
//! Every process calls [`init`] once in `main`. Spans carry the channel or notification id
//! they work on; when `TIDINGS_OTLP_ENDPOINT` is set they are also exported over OTLP/HTTP
//! in batches, so a notification can be followed from intake to delivery in a trace viewer.
//!
//! Traces cross NATS in the W3C `traceparent` header ([`TraceParent`]): a publisher's span
//! is the parent of the gateway's fan-out and of every frame write, a notification request's
//! of the worker's intake, its delivery jobs and the provider call (the webhook receives
//! `traceparent` too). With export off ([`exporting`] false) none of it runs: no header is
//! read or written and nothing is allocated per message.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
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
    EXPORTING.store(provider.is_some(), Ordering::Release);
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

/// Whether spans are exported (set once by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The header carrying the trace context across NATS and HTTP (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported: every propagation step is skipped when they are not.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A span's W3C trace context (`traceparent`): small and `Copy`, so a message shared by
/// many recipients can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The parent span's id (8 bytes, not all zero).
    pub span_id: [u8; 8],
    /// The sampled flag.
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>` (other versions: the same first four fields).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex_into(trace, &mut trace_id)?;
        hex_into(span, &mut span_id)?;
        hex_into(flags, &mut flag)?;
        let p = TraceParent {
            trace_id,
            span_id,
            sampled: flag[0] & 1 == 1,
        };
        (p.trace_id != [0; 16] && p.span_id != [0; 8]).then_some(p)
    }

    /// The header value.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// The context of `span`, if it is exported.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if !exporting() || span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: sc.is_sampled(),
        })
    }

    /// The context of the current span, if it is exported.
    pub fn current() -> Option<Self> {
        if !exporting() {
            return None;
        }
        Self::of_span(&tracing::Span::current())
    }

    /// The trace context carried by NATS headers, when spans are exported.
    pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Option<Self> {
        if !exporting() {
            return None;
        }
        Self::parse(headers?.get(TRACEPARENT)?.as_str())
    }

    /// Makes `span` (not yet entered) a child of this remote span.
    pub fn adopt(&self, span: &tracing::Span) {
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Makes `span` a child of the trace in `headers` (a message from NATS), when spans are
/// exported and the message carries one.
pub fn follow_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(p) = TraceParent::from_nats(headers) {
        p.adopt(span);
    }
}

/// A span made by `make` when spans are exported, [`tracing::Span::none`] otherwise (no cost
/// on paths taken per message).
#[inline]
pub fn span_if_exporting(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if exporting() { make() } else { tracing::Span::none() }
}

/// A request's span (from `make`, when spans are exported) continuing the caller's trace
/// when its HTTP headers carry `traceparent`.
pub fn request_span(headers: &axum::http::HeaderMap, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let span = make();
    if let Some(p) = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
    {
        p.adopt(&span);
    }
    span
}

/// Adds `traceparent` for the current span to headers published to NATS, when spans are
/// exported.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    if let Some(p) = TraceParent::current() {
        headers.insert(TRACEPARENT, p.encode().as_str());
    }
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
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
    fn traceparent_round_trip() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert!(p.sampled);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(p.encode(), v);
        assert_eq!(
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").map(|p| p.sampled),
            Some(false)
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn nothing_is_propagated_while_export_is_off() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(TraceParent::from_nats(Some(&h)), None);
        let mut out = async_nats::HeaderMap::new();
        inject_nats(&mut out);
        assert!(out.get(TRACEPARENT).is_none());
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
