//! `tidings-loadtest demo` (the quick start's traffic) against a real nats-server, gateway and
//! worker: one round puts both agent runs, the pull request through the signed GitHub route,
//! its checks and an inbox notification where the dashboard reads them.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tidings_tests::gateway::Launcher;
use tidings_tests::{NatsServer, Process, eventually, free_port, http_get, tokens};

const LOADTEST: &str = env!("CARGO_BIN_EXE_tidings-loadtest");
const SECRET: &str = "demo-secret-of-at-least-thirty-two-bytes";
const GITHUB_SECRET: &str = "demo-github-secret";

fn service_token() -> String {
    tokens::sign(&tokens::service(tokens::claims("ops", &[], &[], 600)), SECRET)
}

async fn get(url: &str) -> Value {
    let (status, body) = http_get(url, Some(&service_token())).await.expect("GET");
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn ready(url: String) {
    eventually(Duration::from_secs(30), &format!("{url} ready"), || async {
        (http_get(&url, None).await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
}

/// Runs `tidings-loadtest demo` for one round against `base`; it must succeed silently
/// within 60 s.
async fn run_one_demo_round(base: &str) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(LOADTEST)
            .args(["demo", "--url", base, "--rounds", "1", "--step", "1ms"])
            .env("TIDINGS_JWT_SECRET", SECRET)
            .env("TIDINGS_GITHUB_WEBHOOK_SECRET", GITHUB_SECRET)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("one round in time")
    .expect("run demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "demo: {stderr}");
}

#[tokio::test]
async fn one_demo_round_fills_every_panel_of_the_dashboard() {
    let nats = NatsServer::start().await.expect("nats-server");
    let bin = |name: &str| Path::new(LOADTEST).with_file_name(name);
    let gateways = Launcher {
        bin: bin("tidings-gateway"),
        secret: SECRET.into(),
    };
    let gateway = gateways
        .start(
            &nats.url(),
            &[("TIDINGS_GITHUB_WEBHOOK_SECRET", GITHUB_SECRET.to_owned())],
        )
        .await;
    let base = gateway.base.clone();
    let metrics = free_port();
    let _worker = Process::spawn(
        bin("tidings-worker"),
        &[
            ("TIDINGS_NATS_URL", nats.url()),
            ("TIDINGS_METRICS_LISTEN", format!("127.0.0.1:{metrics}")),
        ],
    )
    .expect("spawn worker");
    ready(format!("http://127.0.0.1:{metrics}/readyz")).await;

    run_one_demo_round(&base).await;

    let runs = get(&format!("{base}/api/v1/channels/project:demo/history?limit=1000")).await;
    let last = |run: &str| {
        runs["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["event"] == "agent_run_progress" && m["data"]["run_id"] == run)
            .map(|m| m["data"]["progress"].as_u64().unwrap_or(0))
            .next_back()
    };
    assert_eq!(last("run-a"), Some(100));
    assert_eq!(last("run-b"), Some(50));

    let github = get(&format!("{base}/api/v1/channels/project:1296269/history")).await;
    let events: Vec<(&str, &str)> = github["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["event"].as_str().unwrap_or(""),
                m["data"]["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("pr_notification", "opened"),
            ("validation_update", "created"),
            ("validation_update", "completed"),
            ("pr_notification", "closed"),
        ]
    );

    let inbox = eventually(Duration::from_secs(15), "the demo notification", || async {
        let inbox = get(&format!("{base}/api/v1/users/demo/inbox")).await;
        (inbox["unread"] == 1).then_some(inbox)
    })
    .await;
    assert_eq!(inbox["items"][0]["title"], "Run run-a finished");
}
