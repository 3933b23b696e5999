//! A short smoke run of every load scenario (small N, a few seconds each) against a real
//! nats-server (with its WebSocket listener, for `--baseline nats-ws`), real gateways and a
//! real worker, through the real `tidings-loadtest` binary. Asserts what must hold at any
//! load: nothing lost, nothing duplicated, every client connected; figures are not
//! asserted (performance is measured in benchmarks, not tests).

use std::time::Duration;

use serde_json::Value;
use tidings_tests::gateway::{Gateway, Launcher};
use tidings_tests::{NatsServer, Process, eventually, free_port, http_get};

mod common;
use common::binary;

const SECRET: &str = "smoke-secret-of-at-least-thirty-two-bytes";

struct Stack {
    nats: NatsServer,
    gateways: Vec<Gateway>,
    worker: Option<Process>,
}

async fn ready(url: String) {
    eventually(Duration::from_secs(30), &format!("{url} ready"), || async {
        (http_get(&url, None).await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
}

impl Stack {
    async fn start(gateways: usize, worker: bool) -> Stack {
        let nats = NatsServer::start_with_websocket().await.expect("nats-server");
        let launcher = Launcher {
            bin: binary("tidings-gateway"),
            secret: SECRET.into(),
        };
        let mut gws = Vec::new();
        for i in 0..gateways {
            let extra = [
                ("TIDINGS_NODE_ID", format!("smoke-gw-{i}")),
                // The notify scenario's webhook receiver is on loopback.
                ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
            ];
            gws.push(launcher.start(&nats.url(), &extra).await);
        }
        let worker = if worker {
            let port = free_port();
            let p = Process::spawn(
                binary("tidings-worker"),
                &[
                    ("TIDINGS_NATS_URL", nats.url()),
                    ("TIDINGS_METRICS_LISTEN", format!("127.0.0.1:{port}")),
                    ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
                ],
            )
            .expect("spawn worker");
            ready(format!("http://127.0.0.1:{port}/readyz")).await;
            Some(p)
        } else {
            None
        };
        Stack {
            nats,
            gateways: gws,
            worker,
        }
    }

    /// `--url/--nats-url/--secret` plus the nats-ws baseline's flags.
    fn target(&self, baseline: bool) -> Vec<String> {
        let mut a = vec![
            "--url".into(),
            self.gateways[0].base.clone(),
            "--nats-url".into(),
            self.nats.url(),
            "--secret".into(),
            SECRET.into(),
        ];
        if baseline {
            a.extend([
                "--baseline".into(),
                "nats-ws".into(),
                "--nats-ws-url".into(),
                self.nats.ws_url().expect("websocket listener"),
                "--nats-pid".into(),
                self.nats.pid().to_string(),
                "--gateway-pid".into(),
                self.gateways[0].process.pid().to_string(),
            ]);
        }
        a
    }
}

/// Runs `tidings-loadtest <args>` (2 minutes at most): its JSON result.
async fn loadtest(args: &[String]) -> Value {
    common::loadtest(args, Duration::from_secs(120)).await
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Every step of every run (Tidings and baseline): all expected deliveries, none twice.
fn assert_steps_clean(r: &Value, systems: usize) {
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), systems, "{r:#}");
    for run in runs {
        let steps = run["steps"].as_array().expect("steps");
        assert!(!steps.is_empty(), "{r:#}");
        for s in steps {
            assert_eq!(s["lost"], 0, "{}: {s:#}", run["system"]);
            assert_eq!(s["duplicates"], 0, "{}: {s:#}", run["system"]);
            assert!(s["received"].as_u64() > Some(0), "{s:#}");
            assert_eq!(s["received"], s["expected_deliveries"], "{s:#}");
        }
    }
    assert_eq!(r["clean"], true);
    // Every report with a baseline compares the two at each rate both ran.
    let ratios = r["step_ratios"].as_array().expect("step_ratios");
    assert_eq!(
        ratios.len(),
        runs[0]["steps"]
            .as_array()
            .map_or(0, Vec::len)
            .min(runs[1]["steps"].as_array().map_or(0, Vec::len))
    );
    assert!(
        ratios
            .iter()
            .all(|x| x["latency_p99"].as_f64().is_some_and(|v| v > 0.0)),
        "{r:#}"
    );
}

#[tokio::test]
async fn idle_with_baseline() {
    let stack = Stack::start(1, false).await;
    let mut args = strings(&["idle", "--connections", "200", "--channels", "10", "--settle", "200ms"]);
    args.extend(stack.target(true));
    let r = loadtest(&args).await;
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{r:#}");
    assert_eq!(runs[0]["system"], "tidings");
    assert_eq!(runs[1]["system"], "nats-ws");
    for run in runs {
        assert_eq!(run["connections"], 200, "{run:#}");
        assert_eq!(run["failed"], 0, "{run:#}");
        assert!(run["server_rss_after_bytes"].as_u64() > Some(0));
    }
    assert!(r["rss_ratio_to_baseline"].is_number());
}

#[tokio::test]
async fn fanout_with_baseline() {
    let stack = Stack::start(1, false).await;
    let mut args = strings(&[
        "fanout",
        "--connections",
        "200",
        "--channels",
        "10",
        "--rates",
        "50,100",
        "--step",
        "1s",
        "--warmup",
        "0s",
        "--all-steps",
    ]);
    args.extend(stack.target(true));
    let r = loadtest(&args).await;
    assert_steps_clean(&r, 2);
    // 200 clients over 10 channels: each message reaches 20 of them.
    assert_eq!(r["runs"][0]["steps"][0]["expected_deliveries"], 50 * 20);
}

#[tokio::test]
async fn broadcast_with_baseline() {
    let stack = Stack::start(1, false).await;
    let mut args = strings(&[
        "broadcast",
        "--connections",
        "200",
        "--rates",
        "5,10",
        "--step",
        "1s",
        "--warmup",
        "0s",
        "--all-steps",
    ]);
    args.extend(stack.target(true));
    let r = loadtest(&args).await;
    assert_steps_clean(&r, 2);
    assert_eq!(r["channels"], 1);
    assert_eq!(r["runs"][1]["steps"][0]["expected_deliveries"], 5 * 200);
}

#[tokio::test]
async fn reconnect_storm_loses_nothing() {
    let stack = Stack::start(2, false).await;
    let mut args = strings(&[
        "reconnect-storm",
        "--connections",
        "300",
        "--channels",
        "10",
        "--rate",
        "100",
        "--before",
        "500ms",
        "--timeout",
        "60s",
        "--url-b",
    ]);
    args.push(stack.gateways[1].base.clone());
    args.extend(stack.target(false));
    let r = loadtest(&args).await;
    assert_eq!(r["on_killed_gateway"], 300, "{r:#}");
    assert_eq!(r["resumed"], 300, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["duplicates"], 0, "{r:#}");
    assert_eq!(r["clean"], true, "{r:#}");
    assert!(r["all_resumed_ms"].is_number(), "{r:#}");
    assert!(r["messages_delivered"].as_u64() > Some(0));
    // Gateway A really died.
    assert!(
        http_get(&format!("{}/readyz", stack.gateways[0].base), None)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn recovery_is_complete() {
    let stack = Stack::start(1, false).await;
    let mut args = strings(&["recovery", "--missed", "500"]);
    args.extend(stack.target(false));
    let r = loadtest(&args).await;
    assert_eq!(r["recovered"], true, "{r:#}");
    assert_eq!(r["received"], 500, "{r:#}");
    assert_eq!(r["clean"], true, "{r:#}");
}

#[tokio::test]
async fn notify_reaches_in_app_and_webhook() {
    let stack = Stack::start(1, true).await;
    let mut args = strings(&["notify", "--count", "100", "--timeout", "60s"]);
    args.extend(stack.target(false));
    let worker = stack.worker.as_ref().map(Process::pid).expect("a worker");
    args.extend([
        "--worker-pid".into(),
        worker.to_string(),
        "--nats-pid".into(),
        stack.nats.pid().to_string(),
    ]);
    let r = loadtest(&args).await;
    assert_eq!(r["webhooks_received"], 100, "{r:#}");
    assert_eq!(r["in_app_stored"], 100, "{r:#}");
    assert_eq!(r["clean"], true, "{r:#}");
    // Every process's share of the work is reported: the pipeline's (which did work), the
    // gateway's (no client was connected: next to nothing) and the generator's.
    for cpu in ["worker_cpu_seconds", "nats_cpu_seconds"] {
        assert!(r[cpu].as_f64().is_some_and(|s| s > 0.0), "{cpu}: {r:#}");
    }
    for cpu in ["gateway_cpu_seconds", "generator_cpu_seconds"] {
        assert!(r[cpu].as_f64().is_some_and(|s| s >= 0.0), "{cpu}: {r:#}");
    }
}
