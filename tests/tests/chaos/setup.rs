//! What every scenario starts: the project's binaries inside a lab's hosts, tokens, and the
//! lock that runs the scenarios one at a time.

use std::path::PathBuf;
use std::time::Duration;

use tidings_tests::Process;
use tidings_tests::gateway::Gateway;
use tidings_tests::netns::Host;
use tidings_tests::tokens;

pub const SECRET: &str = "chaos-test-secret-at-least-32-bytes-long";
pub const WEBHOOK_SECRET: &str = "chaos-webhook-secret";
/// The port services listen on inside their namespace (each has its own).
pub const PORT: u16 = 8080;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole scenario: one at a time (an async lock, not poisoned by a failed one).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A project binary: in `$TIDINGS_BIN_DIR`, else beside this test's directory
/// (`target/debug/deps/..`), where `cargo build --bins` puts them.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TIDINGS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test's path");
            exe.parent()
                .and_then(|d| d.parent())
                .map(PathBuf::from)
                .unwrap_or_default()
        });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A user token reading every project.
pub fn user_token(sub: &str) -> String {
    tokens::sign(&tokens::claims(sub, &["*"], &[], 3600), SECRET)
}

/// A service token.
pub fn service_token() -> String {
    tokens::sign(&tokens::service(tokens::claims("ops", &[], &[], 3600)), SECRET)
}

/// Starts a gateway in `host` against `nats_urls` and waits until it is ready.
pub async fn start_gateway(host: &Host, nats_urls: &str, extra: &[(&str, String)]) -> Gateway {
    let mut env = vec![
        ("TIDINGS_NATS_URL", nats_urls.to_owned()),
        ("TIDINGS_LISTEN", format!("{}:{PORT}", host.ip)),
        ("TIDINGS_JWT_SECRET", SECRET.to_owned()),
        ("TIDINGS_NODE_ID", format!("gw-{}", host.ip)),
        ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let gw = Gateway {
        process: host.spawn(&bin("tidings-gateway"), &env),
        base: format!("http://{}:{PORT}", host.ip),
    };
    gw.wait_status("/readyz", 200, Duration::from_secs(30)).await;
    gw
}

/// A worker in `host` and its base URL (`/metrics`, `/readyz`), once ready.
pub async fn start_worker(host: &Host, nats_url: &str) -> (Process, String) {
    let env = vec![
        ("TIDINGS_NATS_URL", nats_url.to_owned()),
        ("TIDINGS_METRICS_LISTEN", format!("{}:{PORT}", host.ip)),
        ("TIDINGS_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("TIDINGS_RETRY_BASE_MS", "100".to_owned()),
        ("TIDINGS_DELIVERY_ACK_WAIT_MS", "5000".to_owned()),
        (
            "TIDINGS_SMTP_URL",
            format!("file://{}", std::env::temp_dir().join("tidings-chaos-mail").display()),
        ),
    ];
    let process = host.spawn(&bin("tidings-worker"), &env);
    let base = format!("http://{}:{PORT}", host.ip);
    tidings_tests::eventually(Duration::from_secs(30), "worker ready", || async {
        let s = tidings_tests::http_get(&format!("{base}/readyz"), None).await;
        (s.map(|(c, _)| c) == Some(200)).then_some(())
    })
    .await;
    (process, base)
}

/// The status `GET url` answers, if it answers.
pub async fn status_of(url: &str) -> Option<u16> {
    tidings_tests::http_get(url, None).await.map(|(c, _)| c)
}

/// Prints a scenario's figures on one line: `CHAOS <scenario> key=value …`.
pub fn report(scenario: &str, figures: &[(&str, String)]) {
    let line: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("CHAOS {scenario} {}", line.join(" "));
}
