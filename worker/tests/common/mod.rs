//! What the worker's pipeline tests share: real NATS, the real gateway binary (started the
//! one way every test crate starts it, `tidings_tests::gateway::Launcher`), worker
//! processes, and requests to the gateway's API.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_tests::fakes::webhook::{self, Receiver};
use tidings_tests::gateway::{Gateway, Launcher};
use tidings_tests::{NatsServer, Process, free_port, tokens};

pub const SECRET: &str = "pipeline-test-secret-at-least-32-bytes";
pub const WEBHOOK_SECRET: &str = "webhook-secret";
pub const WORKER: &str = env!("CARGO_BIN_EXE_tidings-worker");

pub fn token(sub: &str, service: bool) -> String {
    let claims = tokens::claims(sub, &["*"], &[], 3600);
    let claims = if service { tokens::service(claims) } else { claims };
    tokens::sign(&claims, SECRET)
}

/// A webhook receiver checking the workers' signatures (see [`webhook::start`]).
pub async fn start_receiver() -> (String, Receiver) {
    webhook::start(WEBHOOK_SECRET).await
}

pub struct Env {
    pub nats: NatsServer,
    pub gateway: String,
    pub workers: Vec<(Process, String)>,
    pub http: reqwest::Client,
    pub svc: String,
    /// The gateway process (stopped when the environment is dropped).
    pub _gateway: Gateway,
}

/// The gateway binary beside this crate's (the workspace's tests and `scripts/test` build
/// every binary first).
pub fn gateways() -> Launcher {
    let bin = Path::new(WORKER).with_file_name("tidings-gateway");
    assert!(
        bin.is_file(),
        "{} not built: run scripts/test or `cargo build --bins` first",
        bin.display()
    );
    Launcher {
        bin,
        secret: SECRET.to_owned(),
    }
}

/// A worker process and its metrics URL.
pub fn spawn_worker(nats_url: &str, extra: &[(&str, String)]) -> (Process, String) {
    let port = free_port();
    let mut env = vec![
        ("TIDINGS_NATS_URL", nats_url.to_owned()),
        ("TIDINGS_METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ("TIDINGS_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("TIDINGS_RETRY_BASE_MS", "50".to_owned()),
        ("TIDINGS_RETRY_MAX_ATTEMPTS", "3".to_owned()),
        ("TIDINGS_DELIVERY_ACK_WAIT_MS", "5000".to_owned()),
        // Every path of a fake receiver is one origin, so one breaker: tests of other things
        // that send to `/down` and `/ok` alike keep it closed (tests/breakers.rs lowers it).
        ("TIDINGS_BREAKER_FAILURES", "10000".to_owned()),
        ("TIDINGS_BREAKER_MIN_REQUESTS", "1000000".to_owned()),
        (
            "TIDINGS_SMTP_URL",
            format!("file://{}", std::env::temp_dir().join("tidings-test-mail").display()),
        ),
    ];
    env.extend(extra.iter().cloned());
    let process = Process::spawn(WORKER, &env).unwrap();
    (process, format!("http://127.0.0.1:{port}/metrics"))
}

/// A worker's count of webhooks sent.
pub async fn webhooks_sent(metrics_url: &str) -> f64 {
    let (_, text) = tidings_tests::http_get(metrics_url, None).await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("tidings_worker_notifications_total{channel=\"webhook\",status=\"sent\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn start(workers: usize) -> Env {
    start_with(workers, &[]).await
}

/// The test VAPID key (a throw-away P-256 key).
pub fn vapid_key_file() -> String {
    format!("{}/../shared/tests/fixtures/ec-private.pem", env!("CARGO_MANIFEST_DIR"))
}

pub async fn start_with(workers: usize, worker_env: &[(&str, String)]) -> Env {
    start_full(workers, worker_env, &[]).await
}

/// [`start_with`], the gateway getting `gateway_env` as well.
pub async fn start_full(workers: usize, worker_env: &[(&str, String)], gateway_env: &[(&str, String)]) -> Env {
    let nats = NatsServer::start().await.unwrap();
    let mut env = vec![
        ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("TIDINGS_VAPID_PRIVATE_KEY_FILE", vapid_key_file()),
    ];
    env.extend(gateway_env.iter().cloned());
    let gw = gateways().start(&nats.url(), &env).await;
    let workers = (0..workers).map(|_| spawn_worker(&nats.url(), worker_env)).collect();
    let env = Env {
        nats,
        gateway: gw.base.clone(),
        workers,
        http: reqwest::Client::new(),
        svc: token("ops", true),
        _gateway: gw,
    };
    env.put(
        "/api/v1/templates/pr_merged",
        json!({
            "in_app": {"title": "PR #{{ pr }} merged", "body": "{{ title }}"},
            "email": {"subject": "PR #{{ pr }}", "text": "{{ title }}", "html": "<b>{{ title }}</b>"},
            "webhook": {"text": "PR {{ pr }}: {{ title }}"}
        }),
    )
    .await;
    env
}

impl Env {
    /// `PUT path` with `body`, as the service: the status and the JSON answer.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.put(format!("{}{path}", self.gateway)), body).await
    }

    /// `POST /api/v1/notifications` with `body`, as the service.
    pub async fn notify(&self, body: Value) -> (u16, Value) {
        let url = format!("{}/api/v1/notifications", self.gateway);
        self.send(self.http.post(url), body).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, body: Value) -> (u16, Value) {
        let r = request.bearer_auth(&self.svc).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// `GET url` with `token`, as JSON.
    pub async fn get_json(&self, url: &str, token: &str) -> Value {
        let r = self.http.get(url).bearer_auth(token).send().await.unwrap();
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn status(&self, id: &str) -> Value {
        self.get_json(&format!("{}/api/v1/notifications/{id}", self.gateway), &self.svc)
            .await
    }

    /// Waits until channel `channel` of `id` has status `want` (the status has no event to
    /// wait on: it is polled through the shared [`tidings_tests::wait_for`]).
    pub async fn wait_channel(&self, id: &str, channel: &str, want: &str, timeout: Duration) -> Value {
        let reached = tidings_tests::wait_for(timeout, || async {
            let s = self.status(id).await;
            (s["channels"][channel]["status"] == want).then_some(s)
        })
        .await;
        match reached {
            Some(s) => s,
            None => {
                let s = self.status(id).await;
                panic!("timed out after {timeout:?} waiting for {id}.{channel} == {want}; status: {s}")
            }
        }
    }
}
