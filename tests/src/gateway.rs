//! A real `tidings-gateway` process on a free port: the one way test crates start one.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Process, eventually, free_port, http_get};

/// A running gateway process and its base URL.
pub struct Gateway {
    /// The child process.
    pub process: Process,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

/// How a test crate starts gateways: which binary (a crate's tests only know their own
/// crate's binaries' paths), with which JWT secret.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `tidings-gateway` binary.
    pub bin: PathBuf,
    /// `TIDINGS_JWT_SECRET`.
    pub secret: String,
}

impl Launcher {
    /// Starts a gateway against `nats_url` with `extra` settings and waits until ready.
    pub async fn start(&self, nats_url: &str, extra: &[(&str, String)]) -> Gateway {
        let gw = self.spawn(nats_url, extra);
        gw.wait_status("/readyz", 200, Duration::from_secs(30)).await;
        gw
    }

    /// Starts a gateway on a free port without waiting.
    pub fn spawn(&self, nats_url: &str, extra: &[(&str, String)]) -> Gateway {
        self.spawn_on(free_port(), nats_url, extra)
    }

    /// Starts a gateway on `port` without waiting (restarts reuse the port). `extra` comes
    /// last, so it may override the node id.
    pub fn spawn_on(&self, port: u16, nats_url: &str, extra: &[(&str, String)]) -> Gateway {
        let mut env = vec![
            ("TIDINGS_NATS_URL", nats_url.to_owned()),
            ("TIDINGS_LISTEN", format!("127.0.0.1:{port}")),
            ("TIDINGS_JWT_SECRET", self.secret.clone()),
            ("TIDINGS_NODE_ID", format!("gw-{port}")),
        ];
        env.extend(extra.iter().cloned());
        let process = Process::spawn(&self.bin, &env).expect("spawn tidings-gateway");
        Gateway {
            process,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Gateway {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// The status of `GET path`, if it answered.
    pub async fn status(&self, path: &str) -> Option<u16> {
        http_get(&format!("{}{path}", self.base), None).await.map(|(s, _)| s)
    }

    /// Waits until `GET path` answers `want`.
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
