//! The real gateway's browser-facing routes against a real `nats-server`: the GitHub webhook
//! (signatures, mapping, redeliveries, metrics), CORS for SDKs on other origins, and the
//! embedded dashboard and SDK build.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tidings_tests::NatsServer;

mod common;
use common::{Gateway, gateways, service_token};

const GH_SECRET: &str = "github-test-secret";

use tidings_gateway::github::signature;

fn pull_request(repo_id: u64, action: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action, "number": 12,
        "pull_request": {"number": 12, "title": "Speed up fan-out", "state": "open", "merged": false,
            "html_url": "https://github.com/acme/tidings/pull/12", "user": {"login": "ada"},
            "head": {"sha": "0123abcd"}},
        "repository": {"id": repo_id, "full_name": "acme/tidings", "html_url": "https://github.com/acme/tidings"},
        "sender": {"login": "ada"}
    }))
    .unwrap()
}

async fn deliver(gw: &Gateway, event: &str, delivery: &str, body: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/webhooks/github", gw.base))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn history(gw: &Gateway, channel: &str) -> Vec<Value> {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/channels/{channel}/history", gw.base))
        .bearer_auth(service_token())
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_signed_pull_request_becomes_one_pr_notification_even_when_redelivered() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_GITHUB_WEBHOOK_SECRET", GH_SECRET.into())])
        .await;
    let client = nats.client().await.unwrap();
    let mut live = client.subscribe("tidings.events.project.4242").await.unwrap();
    client.flush().await.unwrap();

    let body = pull_request(4242, "opened");
    let sig = signature(GH_SECRET, &body);
    let (status, answer) = deliver(
        &gw,
        "pull_request",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &body,
        Some(&sig),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["outcome"], "published");
    assert_eq!(answer["channel"], "project:4242");
    let seq = answer["seq"].as_u64().unwrap();

    let msg = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str()),
        Some("github/project:4242/github-72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    let published: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(published["event"], "pr_notification");
    assert_eq!(
        published["data"],
        json!({"action":"opened","number":12,"title":"Speed up fan-out","state":"open","merged":false,
            "url":"https://github.com/acme/tidings/pull/12","author":"ada","head_sha":"0123abcd","repository":"acme/tidings"})
    );

    // GitHub's redelivery: same delivery id, same body. Answered, not published again.
    let (status, again) = deliver(
        &gw,
        "pull_request",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &body,
        Some(&sig),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["outcome"], "duplicate");
    assert_eq!(again["seq"].as_u64(), Some(seq));
    // A new delivery of the same event is a new message.
    let (status, _) = deliver(&gw, "pull_request", "second-delivery", &body, Some(&sig)).await;
    assert_eq!(status, 202);
    let stored = history(&gw, "project:4242").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0]["seq"].as_u64(), Some(seq));

    gw.wait_metric(
        "tidings_gateway_github_webhooks_total{event=\"pull_request\",outcome=\"duplicate\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        gw.metric("tidings_gateway_github_webhooks_total{event=\"pull_request\",outcome=\"published\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn bad_signatures_and_sha1_are_refused_and_ping_and_other_events_publish_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_GITHUB_WEBHOOK_SECRET", GH_SECRET.into())])
        .await;
    let body = pull_request(77, "closed");

    let (status, err) = deliver(&gw, "pull_request", "d1", &body, None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = deliver(
        &gw,
        "pull_request",
        "d1",
        &body,
        Some(&signature("wrong secret", &body)),
    )
    .await;
    assert_eq!(status, 401);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let (status, _) = deliver(&gw, "pull_request", "d1", &tampered, Some(&signature(GH_SECRET, &body))).await;
    assert_eq!(status, 401);
    // SHA-1 alone: refused with a message that says why.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/webhooks/github", gw.base))
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", "d1")
        .header("X-Hub-Signature", "sha1=0000000000000000000000000000000000000000")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.text().await.unwrap().contains("SHA-1"));

    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1,"repository":{"id":77,"full_name":"acme/x"}}"#;
    let (status, answer) = deliver(&gw, "ping", "d2", ping, Some(&signature(GH_SECRET, ping))).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("ignored")));
    let (status, _) = deliver(&gw, "issues", "d3", &body, Some(&signature(GH_SECRET, &body))).await;
    assert_eq!(status, 200);
    // Signed but not JSON: a clear 400.
    let (status, err) = deliver(
        &gw,
        "pull_request",
        "d4",
        b"{not json",
        Some(&signature(GH_SECRET, b"{not json")),
    )
    .await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("bad_request")));
    assert!(history(&gw, "project:77").await.is_empty());
    assert_eq!(
        gw.metric("tidings_gateway_github_webhooks_total{event=\"ping\",outcome=\"ignored\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("tidings_gateway_github_webhooks_total{event=\"other\",outcome=\"ignored\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("tidings_gateway_github_webhooks_total{event=\"pull_request\",outcome=\"unauthorized\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn without_a_secret_the_github_route_does_not_exist() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let body = pull_request(1, "opened");
    let (status, _) = deliver(&gw, "pull_request", "d1", &body, Some(&signature(GH_SECRET, &body))).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn cors_answers_listed_origins_only() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(
            &nats.url(),
            &[(
                "TIDINGS_CORS_ORIGINS",
                "https://app.example.com,http://localhost:3000".into(),
            )],
        )
        .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/api/v1/publish", gw.base))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert!(ok.status().is_success());
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    let methods = ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());

    let sdk = http
        .get(format!("{}/client/tidings.mjs", gw.base))
        .header("Origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(sdk.headers()["access-control-allow-origin"], "http://localhost:3000");

    // Without the setting, no origin is allowed.
    let plain = gateways().start(&nats.url(), &[]).await;
    let resp = http
        .get(format!("{}/healthz", plain.base))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_dashboard_and_the_sdk_are_served_from_the_binary() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/", gw.base)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/dashboard.js"), "{html}");

    let sdk = http
        .get(format!("{}/client/tidings.mjs", gw.base))
        .send()
        .await
        .unwrap();
    assert!(
        sdk.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = sdk.headers()["etag"].to_str().unwrap().to_owned();
    assert!(sdk.text().await.unwrap().contains("TidingsClient"));
    let again = http
        .get(format!("{}/client/tidings.mjs", gw.base))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    for path in ["/assets/dashboard.js", "/assets/dashboard.css"] {
        let resp = http.get(format!("{}{path}", gw.base)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
}
