//! A real Prometheus (Debian's `prometheus`, started here with a temporary config and store)
//! scrapes a running gateway and worker: both targets are up, every metric of the contract
//! (§8) is queryable, the alert rules load, and every query of the Grafana dashboard
//! (`deploy/grafana/tidings.json`) is valid, returns data and names only metrics that exist.
//! `scripts/install-ops` installs Prometheus; without it this test fails, it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tidings_tests::{Process, eventually, free_port};

use common::*;

/// Contract §8, exactly.
const CONTRACT_METRICS: [&str; 12] = [
    "tidings_gateway_connections",
    "tidings_gateway_subscriptions",
    "tidings_gateway_messages_delivered_total",
    "tidings_gateway_slow_consumer_disconnects_total",
    "tidings_gateway_auth_failures_total",
    "tidings_gateway_recovered_messages_total",
    "tidings_gateway_rejected_messages_total",
    "tidings_gateway_delivery_latency_seconds",
    "tidings_worker_notifications_total",
    "tidings_worker_retries_total",
    "tidings_worker_dead_letters_total",
    "tidings_worker_delivery_duration_seconds",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Prometheus server binary: `TIDINGS_PROMETHEUS`, else `prometheus` on PATH.
fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_PROMETHEUS") {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .expect("prometheus not found: run scripts/install-ops (Debian's `prometheus` package)")
}

struct Prometheus {
    _process: Process,
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `gateway` and `worker` (host:port) every second, with the
    /// project's alert rules loaded.
    async fn start(gateway: &str, worker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tidings-gateway\n    static_configs:\n      - targets: [\"{gateway}\"]\n  - job_name: tidings-worker\n    static_configs:\n      - targets: [\"{worker}\"]\n",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let process = spawn_prometheus(&config_file, &dir.path().join("data"), port);
        let p = Prometheus {
            _process: process,
            _dir: dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        eventually(Duration::from_secs(30), "Prometheus ready", || async {
            let r = p.http.get(format!("{}/-/ready", p.base)).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        p
    }

    /// `POST /api/v1/<path>` with `query` as a form (`GET` without): the JSON answer.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = format!("{}/api/v1/{path}", self.base);
        let request = if query.is_empty() {
            self.http.get(url)
        } else {
            self.http.post(url).form(query)
        };
        let r = request.send().await.unwrap();
        r.json().await.unwrap()
    }

    /// An instant query's result vector; panics naming the query if it is invalid.
    async fn query(&self, q: &str) -> Vec<Value> {
        let v = self.api("query", &[("query", q)]).await;
        assert_eq!(v["status"], "success", "query {q:?}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Whether Prometheus holds any series named `name`.
    async fn has_series(&self, name: &str) -> bool {
        let m = format!("{{__name__=\"{name}\"}}");
        let v = self.api("series", &[("match[]", m.as_str())]).await;
        v["data"].as_array().is_some_and(|a| !a.is_empty())
    }
}

fn spawn_prometheus(config: &Path, data: &Path, port: u16) -> Process {
    let bin = prometheus_binary();
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".to_owned(),
    ];
    Process::spawn_args(bin, &args, &[]).expect("start prometheus")
}

/// The metric names an expression uses (Tidings', process_* and `up`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("tidings_") || t.starts_with("process_") || *t == "up")
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn prometheus_scrapes_every_contract_metric_and_every_dashboard_query_works() {
    let env = start(1).await;
    let gateway = env.gateway.trim_start_matches("http://").to_owned();
    let worker = env.workers[0]
        .1
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let prom = Prometheus::start(&gateway, &worker).await;

    // Both targets up, and scraped a few times so that rate() has samples.
    eventually(Duration::from_secs(30), "both targets scraped 3 times and up", || async {
        let r = prom
            .query(r#"min by (job) (min_over_time(up{job=~"tidings-gateway|tidings-worker"}[1m])) == 1 and min by (job) (count_over_time(up{job=~"tidings-gateway|tidings-worker"}[1m])) >= 3"#)
            .await;
        (r.len() == 2).then_some(())
    })
    .await;
    for job in ["tidings-gateway", "tidings-worker"] {
        let r = prom.query(&format!("up{{job=\"{job}\"}}")).await;
        assert_eq!(r.len(), 1, "{job}: {r:?}");
        assert_eq!(r[0]["value"][1], "1", "{job} is up");
    }

    // Every contract metric is queryable (histograms through their _bucket series).
    for name in CONTRACT_METRICS {
        let q = if name.ends_with("_seconds") {
            format!("{name}_bucket")
        } else {
            name.to_owned()
        };
        let r = prom.query(&q).await;
        assert!(!r.is_empty(), "contract metric {name} has no series in Prometheus");
    }

    // The alert rules load in the real server, every one healthy.
    let rules = prom.api("rules", &[]).await;
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let alerts = std::fs::read_to_string(format!(
        "{}/../deploy/prometheus/alerts.yml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let defined = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(defined >= 15, "alerts.yml lists {defined} alerts");
    assert_eq!(loaded.len(), defined, "{rules}");
    eventually(Duration::from_secs(10), "every rule evaluated healthy", || async {
        let rules = prom.api("rules", &[]).await;
        let all: Vec<Value> = rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        all.iter().all(|r| r["health"] == "ok").then_some(())
    })
    .await;

    // Every panel query of the dashboard.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/tidings.json")).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "5m");
            let r = prom.query(&q).await;
            assert!(!r.is_empty(), "panel {:?}: {q:?} returns no data", panel["title"]);
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {:?}: no metric in {expr:?}", panel["title"]);
            for name in names {
                assert!(
                    prom.has_series(&name).await,
                    "panel {:?} names {name}, which does not exist",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} queries in the dashboard");
}
