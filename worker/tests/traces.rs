//! Traces across NATS hops: with `TIDINGS_OTLP_ENDPOINT` set, one trace follows a message
//! from `POST /api/v1/publish` through JetStream to the gateway's fan-out and the frame
//! write, and a notification from `POST /api/v1/notifications` through the worker's intake
//! and delivery to the webhook call, which receives `traceparent`. The collector is an
//! OTLP/HTTP receiver in this test, decoding what the real binaries export.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::json;
use tidings_tests::{TokenIn, WsClient, eventually};

use common::*;

/// One exported span.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP (protobuf) traces receiver: its base URL and what it received.
async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let mut out = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref()?.value.as_ref())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        out.push(Span {
                            service: service.clone(),
                            name: s.name,
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                        });
                    }
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, spans)
}

/// A webhook endpoint recording the `traceparent` of every call.
async fn traced_hook() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let sink = sink.clone();
            async move {
                let tp = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push(tp);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("{base}/hook"), seen)
}

/// Waits until the trace holds a span of each of `names`; returns them by name (the first of
/// each).
async fn wait_trace(spans: &Spans, trace: &str, names: &[&str]) -> HashMap<String, Span> {
    eventually(
        Duration::from_secs(30),
        &format!("spans {names:?} in trace {trace}"),
        || async {
            let all = spans.lock().unwrap();
            let mut by_name = HashMap::new();
            for s in all.iter().filter(|s| s.trace_id == trace) {
                by_name.entry(s.name.clone()).or_insert_with(|| s.clone());
            }
            names.iter().all(|n| by_name.contains_key(*n)).then_some(by_name)
        },
    )
    .await
}

/// Asserts `child`'s parent is `parent`, naming both.
fn parent_of(spans: &HashMap<String, Span>, child: &str, parent: &str) {
    let (c, p) = (&spans[child], &spans[parent]);
    assert_eq!(
        c.parent, p.span_id,
        "{child:?} must be a child of {parent:?}: {spans:#?}"
    );
}

/// Every span of `trace` has its parent in the trace, except the root whose parent is
/// `caller` (the span id the test sent in `traceparent`).
fn linked(spans: &Spans, trace: &str, caller: &str) {
    let all: Vec<Span> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect();
    let ids: Vec<&str> = all.iter().map(|s| s.span_id.as_str()).collect();
    for s in &all {
        assert!(
            s.parent == caller || ids.contains(&s.parent.as_str()),
            "span {s:?} has a parent outside the trace: {all:#?}"
        );
    }
}

#[tokio::test]
async fn one_trace_spans_publish_fan_out_and_write_and_request_intake_delivery_and_webhook() {
    let (otlp, spans) = collector().await;
    let tracing_env = [
        ("TIDINGS_OTLP_ENDPOINT", otlp.clone()),
        // Export quickly rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let env = start_full(1, &tracing_env, &tracing_env).await;

    // 1. HTTP publish → JetStream → fan-out → frame write.
    let user = token("tracer", false);
    let mut ws = WsClient::connect(&env.gateway, TokenIn::Query(user), None)
        .await
        .unwrap();
    ws.frame_of("welcome").await;
    ws.subscribe("project:traced").await;
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = env
        .http
        .post(format!("{}/api/v1/publish", env.gateway))
        .bearer_auth(&env.svc)
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"channel":"project:traced","event":"progress","data":{"pct":1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let frame = ws.frame_of("message").await;
    assert_eq!(frame["channel"], "project:traced");

    let names = ["POST /api/v1/publish", "nats publish", "fanout", "frame write"];
    let got = wait_trace(&spans, trace, &names).await;
    assert_eq!(got["POST /api/v1/publish"].parent, caller);
    parent_of(&got, "nats publish", "POST /api/v1/publish");
    parent_of(&got, "fanout", "nats publish");
    parent_of(&got, "frame write", "fanout");
    assert!(got.values().all(|s| s.service == "tidings-gateway"), "{got:#?}");
    linked(&spans, trace, caller);

    // 2. Notification request → worker intake → delivery → webhook call.
    let (hook, calls) = traced_hook().await;
    let (code, body) = env
        .put("/api/v1/users/tracer/preferences", json!({"webhook_url": hook}))
        .await;
    assert_eq!(code, 200, "{body}");
    let (trace, caller) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let r = env
        .http
        .post(format!("{}/api/v1/notifications", env.gateway))
        .bearer_auth(&env.svc)
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"id":"traced-1","user":"tracer","template":"pr_merged","data":{"pr":1,"title":"t"},"channels":["webhook"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    env.wait_channel("traced-1", "webhook", "sent", Duration::from_secs(20))
        .await;

    let names = [
        "POST /api/v1/notifications",
        "intake",
        "notification",
        "delivery",
        "webhook POST",
    ];
    let got = wait_trace(&spans, trace, &names).await;
    assert_eq!(got["POST /api/v1/notifications"].parent, caller);
    assert_eq!(got["POST /api/v1/notifications"].service, "tidings-gateway");
    parent_of(&got, "intake", "POST /api/v1/notifications");
    parent_of(&got, "notification", "intake");
    parent_of(&got, "webhook POST", "delivery");
    for name in ["intake", "notification", "delivery", "webhook POST"] {
        assert_eq!(got[name].service, "tidings-worker", "{name}: {got:#?}");
    }
    // The delivery job was queued inside the notification's span (or one below it).
    let all: Vec<Span> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect();
    let mut up = got["delivery"].parent.clone();
    let mut chain = Vec::new();
    while let Some(p) = all.iter().find(|s| s.span_id == up) {
        chain.push(p.name.clone());
        up = p.parent.clone();
    }
    assert!(
        chain.contains(&"notification".to_owned()),
        "delivery's ancestors: {chain:?}"
    );
    linked(&spans, trace, caller);

    // The webhook received the provider-call span as its parent.
    let received = calls.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![format!("00-{trace}-{}-01", got["webhook POST"].span_id)],
        "the webhook's traceparent"
    );
}
