//! `POST /api/v1/webhooks/github` (contract §6): GitHub's pull-request and check events
//! become durable `pr_notification` / `validation_update` messages on
//! `project:<repository.id>`, so a dashboard shows them next to everything else.
//!
//! Order of checks: route configured (else 404), body size, signature over the raw bytes in
//! constant time (else 401: nothing about the body is trusted or even parsed before this),
//! then the event. A redelivery (GitHub's "Redeliver" button, or its own retry after a
//! timeout) carries the same `X-GitHub-Delivery`; it is recognised for as long as the
//! deliveries bucket remembers it (7 days), and within JetStream's duplicate window even
//! when two copies race, because the message's `Nats-Msg-Id` is derived from it.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use tidings_shared::{Channel, Error as SharedError, ErrorCode};
use tokio::sync::OnceCell;

use crate::AppState;
use crate::error::{Error, Result};
use crate::publish;

/// The KV bucket remembering delivery ids already published (id → seq).
pub const DELIVERIES_BUCKET: &str = "TIDINGS_GITHUB_DELIVERIES";
/// How long a delivery id is remembered; GitHub lets users redeliver for 3 days.
const REMEMBER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest webhook body accepted. GitHub caps payloads at 25 MB; pull-request payloads
/// are tens of kilobytes, and only a few fields are kept.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The GitHub events Tidings publishes, and the outcomes counted per event.
pub const EVENTS: [&str; 4] = ["pull_request", "check_run", "check_suite", "ping"];
/// Outcomes of `tidings_gateway_github_webhooks_total`.
pub const OUTCOMES: [&str; 5] = ["published", "duplicate", "ignored", "unauthorized", "invalid"];

/// The route. While `TIDINGS_GITHUB_WEBHOOK_SECRET` is unset it answers 404 without reading
/// the body.
pub fn router(configured: bool) -> Router<AppState> {
    let handler = if configured {
        post(receive).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
    } else {
        post(|| async { Error::api(ErrorCode::NotFound, "the GitHub route is not configured") })
    };
    Router::new().route("/api/v1/webhooks/github", handler)
}

/// The webhook secret as an HMAC key, and the deliveries bucket opened on first use.
pub struct GitHub {
    key: hmac::Key,
    deliveries: OnceCell<kv::Store>,
}

impl GitHub {
    /// A receiver verifying with `secret`.
    pub fn new(secret: &str) -> Self {
        GitHub {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            deliveries: OnceCell::new(),
        }
    }

    /// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body`, in constant time.
    pub fn verify(&self, header: &str, body: &[u8]) -> bool {
        let Some(hex) = header.trim().strip_prefix("sha256=") else {
            return false;
        };
        match decode_hex(hex) {
            Some(tag) => hmac::verify(&self.key, body, &tag).is_ok(),
            None => false,
        }
    }

    async fn deliveries(&self, js: &jetstream::Context, replicas: usize) -> Result<&kv::Store> {
        self.deliveries
            .get_or_try_init(|| async {
                let cfg = kv::Config {
                    bucket: DELIVERIES_BUCKET.to_owned(),
                    description: "Tidings: GitHub delivery ids already published (id -> seq)".to_owned(),
                    history: 1,
                    max_age: REMEMBER,
                    num_replicas: replicas,
                    ..Default::default()
                };
                tidings_shared::store::ensure_kv_with(js, cfg).await
            })
            .await
            .map_err(Error::from)
    }
}

/// The `X-Hub-Signature-256` GitHub sends for `body` signed with `secret` (`sha256=<hex>`):
/// for senders and tests; receiving goes through [`GitHub::verify`].
pub fn signature(secret: &str, body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the route answers.
#[derive(Debug, Serialize)]
pub struct Answer {
    /// The GitHub event.
    pub event: String,
    /// `published`, `duplicate` or `ignored`.
    pub outcome: &'static str,
    /// Where it went, when published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Its sequence in `TIDINGS_EVENTS`, when published (the first copy's, for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<(StatusCode, Json<Answer>)> {
    let Some(github) = state.github.as_ref() else {
        return Err(Error::api(ErrorCode::NotFound, "the GitHub route is not configured"));
    };
    let event = header(&headers, "x-github-event").unwrap_or("").to_owned();
    let count = |outcome: &str| {
        let label = if EVENTS.contains(&event.as_str()) {
            event.as_str()
        } else {
            "other"
        };
        state.metrics.github_webhooks.with_label_values(&[label, outcome]).inc();
    };
    let Some(signature) = header(&headers, "x-hub-signature-256") else {
        count("unauthorized");
        let why = if headers.contains_key("x-hub-signature") {
            "X-Hub-Signature (SHA-1) is not accepted; X-Hub-Signature-256 is required"
        } else {
            "X-Hub-Signature-256 is missing"
        };
        return Err(Error::api(ErrorCode::Unauthorized, why));
    };
    if !github.verify(signature, &body) {
        count("unauthorized");
        return Err(Error::api(
            ErrorCode::Unauthorized,
            "X-Hub-Signature-256 does not match the body",
        ));
    }
    let outcome = handle(&state, github, &headers, &event, &body).await;
    match &outcome {
        Ok((_, answer)) => count(answer.outcome),
        Err(e) if e.code() == ErrorCode::BadRequest => count("invalid"),
        Err(_) => {}
    }
    outcome
}

/// After the signature: map, deduplicate and publish.
async fn handle(
    state: &AppState,
    github: &GitHub,
    headers: &HeaderMap,
    event: &str,
    body: &[u8],
) -> Result<(StatusCode, Json<Answer>)> {
    let answer = |outcome, channel, seq| Answer {
        event: event.to_owned(),
        outcome,
        channel,
        seq,
    };
    if event.is_empty() {
        return Err(Error::api(ErrorCode::BadRequest, "X-GitHub-Event is missing"));
    }
    let Some(kind) = Kind::of(event) else {
        // `ping` and every event Tidings does not show: acknowledged, nothing published.
        return Ok((StatusCode::OK, Json(answer("ignored", None, None))));
    };
    let delivery = header(headers, "x-github-delivery").unwrap_or("");
    if delivery.is_empty()
        || delivery.len() > 64
        || !delivery
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::api(
            ErrorCode::BadRequest,
            "X-GitHub-Delivery must be 1..=64 letters, digits, dashes or underscores",
        ));
    }
    let payload = parse_payload(header(headers, "content-type"), body)?;
    let (channel, data) = kind.map(&payload)?;
    let deliveries = github
        .deliveries(&state.js, usize::from(state.config.common.stream_replicas))
        .await?;
    if let Some(entry) = deliveries.get(delivery).await.map_err(SharedError::nats)? {
        let seq = std::str::from_utf8(&entry).ok().and_then(|s| s.parse().ok());
        return Ok((
            StatusCode::OK,
            Json(answer("duplicate", Some(channel.to_string()), seq)),
        ));
    }
    let msg_id = format!("github-{delivery}");
    let prepared = publish::prepare(
        state,
        publish::Origin::GitHub,
        &channel,
        kind.tidings_event().to_owned(),
        data,
        Some(msg_id),
        true,
    )?;
    let seq = prepared.send_durable(state).await?;
    // Remembered after the publish: a failure before this point leaves GitHub free to retry.
    if let Err(e) = deliveries.put(delivery, seq.to_string().into()).await {
        tracing::warn!(error = %e, delivery, "could not remember a GitHub delivery; a late redelivery would publish again");
    }
    tracing::info!(event, delivery, %channel, seq, "GitHub event published");
    Ok((
        StatusCode::ACCEPTED,
        Json(answer("published", Some(channel.to_string()), Some(seq))),
    ))
}

/// The payload: JSON, or the `payload` field of a form (GitHub's other content type).
/// Public so that the fuzzing entry points (`fuzz-entries`) feed it what the route would.
pub fn parse_payload(content_type: Option<&str>, body: &[u8]) -> Result<Value> {
    let bad = |e: String| Error::api(ErrorCode::BadRequest, format!("payload: {e}"));
    if content_type.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) {
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| bad(e.to_string()))?;
        let json = fields
            .into_iter()
            .find_map(|(k, v)| (k == "payload").then_some(v))
            .ok_or_else(|| bad("the form has no payload field".into()))?;
        return serde_json::from_str(&json).map_err(|e| bad(e.to_string()));
    }
    serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
}

/// The events Tidings publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pull_request`, every action.
    PullRequest,
    /// `check_run`.
    CheckRun,
    /// `check_suite`.
    CheckSuite,
}

impl Kind {
    /// The kind of a GitHub event name; `None` for events that publish nothing.
    pub fn of(event: &str) -> Option<Kind> {
        match event {
            "pull_request" => Some(Kind::PullRequest),
            "check_run" => Some(Kind::CheckRun),
            "check_suite" => Some(Kind::CheckSuite),
            _ => None,
        }
    }

    /// The Tidings event name.
    pub fn tidings_event(self) -> &'static str {
        match self {
            Kind::PullRequest => "pr_notification",
            Kind::CheckRun | Kind::CheckSuite => "validation_update",
        }
    }

    /// The channel and the `data` of contract §6.
    pub fn map(self, p: &Value) -> Result<(Channel, Value)> {
        let repo_id = p
            .pointer("/repository/id")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::api(ErrorCode::BadRequest, "payload: repository.id is missing"))?;
        let channel = Channel::parse(&format!("project:{repo_id}"))?;
        let s = |ptr: &str| p.pointer(ptr).cloned().unwrap_or(Value::Null);
        let repository = s("/repository/full_name");
        let data = match self {
            Kind::PullRequest => json!({
                "action": s("/action"),
                "number": s("/pull_request/number"),
                "title": s("/pull_request/title"),
                "state": s("/pull_request/state"),
                "merged": p.pointer("/pull_request/merged").and_then(Value::as_bool).unwrap_or(false),
                "url": s("/pull_request/html_url"),
                "author": s("/pull_request/user/login"),
                "head_sha": s("/pull_request/head/sha"),
                "repository": repository,
            }),
            Kind::CheckRun => json!({
                "action": s("/action"),
                "name": s("/check_run/name"),
                "status": s("/check_run/status"),
                "conclusion": s("/check_run/conclusion"),
                "url": s("/check_run/html_url"),
                "head_sha": s("/check_run/head_sha"),
                "app": s("/check_run/app/name"),
                "repository": repository,
            }),
            Kind::CheckSuite => {
                // A suite has no name or page of its own: it is its app's run on a commit.
                let head_sha = s("/check_suite/head_sha");
                let url = match (
                    p.pointer("/repository/html_url").and_then(Value::as_str),
                    head_sha.as_str(),
                ) {
                    (Some(repo), Some(sha)) => Value::String(format!("{repo}/commit/{sha}/checks")),
                    _ => Value::Null,
                };
                json!({
                    "action": s("/action"),
                    "name": s("/check_suite/app/name"),
                    "status": s("/check_suite/status"),
                    "conclusion": s("/check_suite/conclusion"),
                    "url": url,
                    "head_sha": head_sha,
                    "app": s("/check_suite/app/name"),
                    "repository": repository,
                })
            }
        };
        Ok((channel, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_checked_against_the_raw_body() {
        let gh = GitHub::new("It's a Secret to Everybody");
        // GitHub's documented example: this secret, this body, this signature.
        let body = b"Hello, World!";
        let documented = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(gh.verify(documented, body));
        assert_eq!(signature("It's a Secret to Everybody", body), documented);
        assert!(!gh.verify(documented, b"Hello, World?"));
        assert!(!gh.verify(&signature("another secret", body), body));
        assert!(!gh.verify("sha1=757107ea0eb2509fc211221cce984b8a37570b6d", body));
        assert!(!gh.verify("sha256=zz", body));
        assert!(!gh.verify("sha256=757", body));
    }

    #[test]
    fn a_pull_request_maps_to_the_contract_fields() {
        let p = json!({"action":"closed","number":7,"pull_request":{"number":7,"title":"Fix","state":"closed",
            "merged":true,"html_url":"https://github.com/o/r/pull/7","user":{"login":"octocat"},"head":{"sha":"abc"}},
            "repository":{"id":42,"full_name":"o/r"}});
        let (channel, data) = Kind::PullRequest.map(&p).unwrap();
        assert_eq!(channel.to_string(), "project:42");
        assert_eq!(
            data,
            json!({"action":"closed","number":7,"title":"Fix","state":"closed","merged":true,
                "url":"https://github.com/o/r/pull/7","author":"octocat","head_sha":"abc","repository":"o/r"})
        );
        assert!(Kind::PullRequest.map(&json!({"action":"opened"})).is_err());
    }

    #[test]
    fn a_form_encoded_delivery_is_read_from_its_payload_field() {
        let v = parse_payload(Some("application/x-www-form-urlencoded"), b"payload=%7B%22a%22%3A1%7D").unwrap();
        assert_eq!(v, json!({"a":1}));
        assert!(parse_payload(Some("application/x-www-form-urlencoded"), b"other=1").is_err());
        assert!(parse_payload(Some("application/json"), b"{").is_err());
    }
}
