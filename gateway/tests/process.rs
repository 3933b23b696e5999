//! The real `tidings-gateway` binary against a real `nats-server`: readiness that follows
//! NATS, stream provisioning, metrics, authenticated stats, clean exit on SIGTERM, trace export.

use std::time::Duration;

use tidings_tests::{NatsCluster, NatsServer, Process, free_port, http_get, tokens};

mod common;
use common::{BIN, Gateway, SECRET, gateways};

fn spawn_gateway(nats_url: &str, extra: &[(&str, String)]) -> Gateway {
    gateways().spawn(nats_url, extra)
}

async fn status(url: &str) -> Option<u16> {
    http_get(url, None).await.map(|(s, _)| s)
}

async fn wait_status(gw: &Gateway, path: &str, want: u16, timeout: Duration) {
    gw.wait_status(path, want, timeout).await;
}

fn token(role: Option<&str>) -> String {
    let mut claims = tokens::claims("u1", &["p1"], &[], 600);
    claims.role = role.map(Into::into);
    tokens::sign(&claims, SECRET)
}

#[tokio::test]
async fn readyz_follows_nats_within_five_seconds() {
    let mut nats = NatsServer::start().await.unwrap();
    let gw = spawn_gateway(&nats.url(), &[]);
    wait_status(&gw, "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(status(&format!("{}/healthz", gw.base)).await, Some(200));

    nats.kill();
    wait_status(&gw, "/readyz", 503, Duration::from_secs(5)).await;
    // Liveness does not depend on NATS: Kubernetes must not restart a gateway for it.
    assert_eq!(status(&format!("{}/healthz", gw.base)).await, Some(200));
    let (_, body) = http_get(&format!("{}/readyz", gw.base), None).await.unwrap();
    assert!(body.contains("NATS"), "{body}");

    nats.restart().await.unwrap();
    wait_status(&gw, "/readyz", 200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn starts_before_nats_and_becomes_ready_when_it_arrives() {
    let mut nats = NatsServer::start().await.unwrap();
    nats.kill();
    let gw = spawn_gateway(&nats.url(), &[]);
    wait_status(&gw, "/readyz", 503, Duration::from_secs(30)).await;
    nats.restart().await.unwrap();
    wait_status(&gw, "/readyz", 200, Duration::from_secs(10)).await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    assert!(js.get_stream("TIDINGS_EVENTS").await.is_ok());
}

#[tokio::test]
async fn creates_both_streams_and_nats_monitoring_lists_them() {
    let nats = NatsServer::start().await.unwrap();
    let gw = spawn_gateway(
        &nats.url(),
        &[
            ("TIDINGS_EVENTS_MAX_AGE", "2h".into()),
            ("TIDINGS_EVENTS_MAX_PER_CHANNEL", "77".into()),
        ],
    );
    wait_status(&gw, "/readyz", 200, Duration::from_secs(30)).await;

    let (code, jsz) = http_get(&format!("{}/jsz?streams=true", nats.monitor_url()), None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        jsz.contains("TIDINGS_EVENTS") && jsz.contains("TIDINGS_NOTIFY"),
        "{jsz}"
    );

    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let cfg = events.info().await.unwrap().config.clone();
    assert_eq!(cfg.subjects, vec!["tidings.events.>".to_string()]);
    assert_eq!(cfg.max_age, Duration::from_secs(7200));
    assert_eq!(cfg.max_messages_per_subject, 77);
    assert_eq!(
        cfg.republish.map(|r| r.destination),
        Some("tidings.stored.>".to_string())
    );
    let mut notify = js.get_stream("TIDINGS_NOTIFY").await.unwrap();
    let ncfg = notify.info().await.unwrap().config.clone();
    assert_eq!(
        ncfg.retention,
        async_nats::jetstream::stream::RetentionPolicy::WorkQueue
    );
    assert_eq!(ncfg.subjects, vec!["tidings.notify".to_string()]);
}

#[tokio::test]
async fn metrics_stats_and_clean_sigterm() {
    let nats = NatsServer::start().await.unwrap();
    let mut gw = spawn_gateway(&nats.url(), &[]);
    wait_status(&gw, "/readyz", 200, Duration::from_secs(30)).await;

    let (code, metrics) = http_get(&format!("{}/metrics", gw.base), None).await.unwrap();
    assert_eq!(code, 200);
    for name in [
        "tidings_gateway_connections",
        "tidings_gateway_subscriptions",
        "tidings_gateway_messages_delivered_total",
        "tidings_gateway_slow_consumer_disconnects_total",
        "tidings_gateway_auth_failures_total",
        "tidings_gateway_recovered_messages_total",
        "tidings_gateway_rejected_messages_total",
        "tidings_gateway_delivery_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // An addition to the contract's list: the runtime's alive tasks, never zero in a
    // running gateway (its listener, NATS subscriptions and timers are tasks).
    let tasks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidings_gateway_tasks "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(tasks.is_some_and(|n| n > 0.0), "tidings_gateway_tasks in\n{metrics}");

    let stats = format!("{}/api/v1/stats", gw.base);
    assert_eq!(http_get(&stats, None).await.unwrap().0, 401);
    assert_eq!(http_get(&stats, Some("not-a-jwt")).await.unwrap().0, 401);
    let (code, body) = http_get(&stats, Some(&token(None))).await.unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"code\":\"forbidden\""), "{body}");
    let (code, body) = http_get(&stats, Some(&token(Some("service")))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["node"].as_str().is_some_and(|n| n.starts_with("gw-")), "{v}");
    assert_eq!(v["connections"], 0);
    assert_eq!(v["pid"], gw.process.pid());
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base), None).await.unwrap();
    assert!(
        metrics.contains("tidings_gateway_auth_failures_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidings_gateway_auth_failures_total{reason=\"malformed\"} 1"),
        "{metrics}"
    );

    gw.process.signal("TERM").unwrap();
    let exit = gw
        .process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("gateway did not exit after SIGTERM");
    assert!(exit.success(), "exit {exit:?}\n{}", gw.process.log());
}

#[tokio::test]
async fn refuses_to_start_without_a_jwt_key() {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port();
    let mut p = Process::spawn(
        BIN,
        &[
            ("TIDINGS_NATS_URL", nats.url()),
            ("TIDINGS_LISTEN", format!("127.0.0.1:{port}")),
        ],
    )
    .unwrap();
    let exit = p.wait_exit(Duration::from_secs(10)).await.expect("should exit");
    assert!(!exit.success());
    assert!(p.log().contains("TIDINGS_JWT_SECRET"), "{}", p.log());
}

#[tokio::test]
async fn replicas_three_on_a_three_node_cluster() {
    let cluster = NatsCluster::start(3).await.unwrap();
    let gw = spawn_gateway(&cluster.urls(), &[("TIDINGS_STREAM_REPLICAS", "3".into())]);
    wait_status(&gw, "/readyz", 200, Duration::from_secs(30)).await;
    let js = async_nats::jetstream::new(cluster.nodes[1].client().await.unwrap());
    let mut events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(
        info.cluster.as_ref().map(|c| c.replicas.len()),
        Some(2),
        "{:?}",
        info.cluster
    );
}

/// A minimal OTLP/HTTP collector: accepts connections and reports each request line.
async fn fake_collector() -> (String, tokio::sync::mpsc::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if seen.len() >= head_end + 4 + len {
                        let _ = tx.send(text.lines().next().unwrap_or_default().to_owned()).await;
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        seen.clear();
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), rx)
}

#[tokio::test]
async fn exports_traces_over_otlp_when_configured() {
    let nats = NatsServer::start().await.unwrap();
    let (endpoint, mut requests) = fake_collector().await;
    let mut gw = spawn_gateway(&nats.url(), &[("TIDINGS_OTLP_ENDPOINT", endpoint)]);
    wait_status(&gw, "/readyz", 200, Duration::from_secs(30)).await;
    // Shutdown flushes the batch of spans recorded while provisioning the streams.
    gw.process.signal("TERM").unwrap();
    let line = tokio::time::timeout(Duration::from_secs(15), requests.recv())
        .await
        .expect("no OTLP request")
        .unwrap();
    assert!(line.starts_with("POST /v1/traces"), "{line}");
    let exit = gw.process.wait_exit(Duration::from_secs(15)).await.expect("exit");
    assert!(exit.success(), "{}", gw.process.log());
}
