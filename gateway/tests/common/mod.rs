//! Helpers shared by the gateway's integration tests: the real binary on a free port, tokens,
//! metrics.
#![allow(dead_code)]

use std::time::Duration;

use tidings_shared::auth::{Claims, now_unix, sign_hs256};
use tidings_tests::{Process, eventually, free_port, http_get};

pub const SECRET: &str = "gateway-test-secret";
pub const BIN: &str = env!("CARGO_BIN_EXE_tidings-gateway");

pub struct Gateway {
    pub process: Process,
    pub base: String,
}

impl Gateway {
    /// Starts the gateway binary against `nats_url` with `extra` settings and waits until ready.
    pub async fn start(nats_url: &str, extra: &[(&str, String)]) -> Gateway {
        let gw = Gateway::spawn(nats_url, extra);
        gw.wait_status("/readyz", 200, Duration::from_secs(30)).await;
        gw
    }

    /// Starts the gateway binary without waiting.
    pub fn spawn(nats_url: &str, extra: &[(&str, String)]) -> Gateway {
        Gateway::spawn_on(free_port(), nats_url, extra)
    }

    /// Starts the gateway binary on `port` without waiting (restarts reuse the port).
    pub fn spawn_on(port: u16, nats_url: &str, extra: &[(&str, String)]) -> Gateway {
        let mut env = vec![
            ("TIDINGS_NATS_URL", nats_url.to_owned()),
            ("TIDINGS_LISTEN", format!("127.0.0.1:{port}")),
            ("TIDINGS_JWT_SECRET", SECRET.to_owned()),
            ("TIDINGS_NODE_ID", format!("gw-{port}")),
        ];
        env.extend(extra.iter().cloned());
        let process = Process::spawn(BIN, &env).expect("spawn tidings-gateway");
        Gateway {
            process,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    pub async fn status(&self, path: &str) -> Option<u16> {
        http_get(&format!("{}{path}", self.base), None).await.map(|(s, _)| s)
    }

    pub async fn wait_status(&self, path: &str, want: u16, timeout: Duration) {
        eventually(timeout, &format!("{path} == {want}"), || async {
            (self.status(path).await == Some(want)).then_some(())
        })
        .await;
    }

    /// The value of a metric series (name with labels, as rendered), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = http_get(&format!("{}/metrics", self.base), None)
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `series` reaches at least `want`.
    pub async fn wait_metric(&self, series: &str, want: f64, timeout: Duration) {
        eventually(timeout, &format!("{series} >= {want}"), || async {
            (self.metric(series).await >= want).then_some(())
        })
        .await;
    }
}

pub fn claims(sub: &str, projects: &[&str], publish: &[&str], ttl_secs: i64) -> Claims {
    Claims {
        sub: sub.into(),
        projects: projects.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        role: None,
        exp: (now_unix() as i64 + ttl_secs) as u64,
        nbf: None,
    }
}

pub fn sign(c: &Claims) -> String {
    sign_hs256(c, SECRET.as_bytes()).expect("sign")
}

/// A user token: reads `projects`, publishes to `publish`.
pub fn user_token(sub: &str, projects: &[&str], publish: &[&str]) -> String {
    sign(&claims(sub, projects, publish, 600))
}

pub fn service_token() -> String {
    let mut c = claims("ops", &[], &[], 600);
    c.role = Some("service".into());
    sign(&c)
}
