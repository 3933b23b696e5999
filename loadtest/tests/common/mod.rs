//! What the load test's integration tests share: the workspace's binaries, and running
//! `tidings-loadtest` itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The `tidings-loadtest` binary under test.
pub const LOADTEST: &str = env!("CARGO_BIN_EXE_tidings-loadtest");

/// A sibling binary of the workspace (built by `cargo test --workspace`, which builds every
/// package's binaries for their own integration tests).
pub fn binary(name: &str) -> PathBuf {
    let path = Path::new(LOADTEST).with_file_name(name);
    assert!(
        path.is_file(),
        "{} not built: run the workspace's tests (scripts/test) or `cargo build --bins`",
        path.display()
    );
    path
}

/// Runs `tidings-loadtest <args>` (at most `limit`), checks it succeeded and wrote its
/// chart, and returns its JSON result.
pub async fn loadtest<S: AsRef<std::ffi::OsStr>>(args: &[S], limit: Duration) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = dir.path().join("chart.svg");
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new(LOADTEST)
            .args(args)
            .arg("--chart")
            .arg(&chart)
            .env_remove("TIDINGS_JWT_SECRET")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("scenario finished in time")
    .expect("run tidings-loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(out.status.success(), "{shown:?} failed: {stderr}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "chart: {svg}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON result: {e}; stderr: {stderr}"))
}
