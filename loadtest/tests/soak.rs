//! The 2-minute soak (`tidings-loadtest soak`) against a real nats-server and a real gateway:
//! 2,000 clients, 10 % of them replaced per minute, a steady delivery rate. Fails on any
//! loss or duplicate, on a connection that could not be set up, when the gateway's open
//! fds or tasks are not back to their pre-run values once every client has closed (a leak
//! of one per churned connection leaves ~400 behind), or when its RSS grows faster than
//! the bound after the warm-up (docs/TESTING.md: what that bound catches). The 30-minute
//! run with 10,000 clients is `scripts/bench soak`.

use std::time::Duration;

use tidings_tests::NatsServer;
use tidings_tests::gateway::Launcher;

mod common;

const SECRET: &str = "soak-secret-of-at-least-thirty-two-bytes";

/// Connections held throughout (the generator and the gateway each hold one fd per
/// connection, far under the 20,000 open-files cap).
const CONNECTIONS: u64 = 2_000;

/// RSS slope bound for this run, bytes per minute: see docs/TESTING.md.
const MAX_RSS_SLOPE: &str = "4194304";

#[tokio::test]
async fn soak_two_minutes_no_loss_no_leak() {
    let gateway_bin = common::binary("tidings-gateway");
    let nats = NatsServer::start().await.expect("nats-server");
    let launcher = Launcher {
        bin: gateway_bin,
        secret: SECRET.into(),
    };
    let gw = launcher
        .start(&nats.url(), &[("TIDINGS_NODE_ID", "soak-gw".to_owned())])
        .await;
    let connections = CONNECTIONS.to_string();
    let pid = gw.process.pid().to_string();
    let args = [
        "soak",
        "--url",
        &gw.base,
        "--nats-url",
        &nats.url(),
        "--secret",
        SECRET,
        "--gateway-pid",
        &pid,
        "--duration",
        "2m",
        "--connections",
        &connections,
        "--channels",
        "20",
        "--deliveries-per-second",
        "4000",
        "--churn",
        "10",
        "--sample",
        "5s",
        "--warmup",
        "30s",
        "--max-rss-slope",
        MAX_RSS_SLOPE,
    ];
    let r = common::loadtest(&args, Duration::from_secs(300)).await;
    let brief = serde_json::json!({
        "checks": r["checks"], "slopes": r["slopes"], "before": r["before"], "after": r["after"],
        "owed": r["owed"], "deliveries": r["deliveries"], "churned": r["clients_churned"],
        "dropped": r["dropped"], "drain_timeouts": r["drain_timeouts"],
    });
    eprintln!("soak: {brief:#}");

    assert_eq!(r["pass"], true, "{brief:#}");
    assert_eq!(r["lost"], 0, "{brief:#}");
    assert_eq!(r["duplicates"], 0, "{brief:#}");
    // The churn really happened: ~10 % of 2,000 per minute for 2 minutes, each replaced.
    let churned = r["clients_churned"].as_u64().expect("clients_churned");
    assert!((350..=450).contains(&churned), "{brief:#}");
    assert_eq!(r["clients_opened"].as_u64(), Some(CONNECTIONS + churned), "{brief:#}");
    // Clients were owed deliveries and got them; the gateway was sampled throughout.
    assert!(r["owed"].as_u64() > Some(100_000), "{brief:#}");
    assert!(r["slopes"]["samples"].as_u64() >= Some(15), "{brief:#}");
    let samples = r["samples"].as_array().expect("samples");
    assert!(samples.iter().all(|s| s["tasks"].as_u64() > Some(0)), "{brief:#}");
    // The gateway held every client at every sample (replacements overlap closings).
    assert!(
        samples
            .iter()
            .all(|s| s["connections"].as_u64() >= Some(CONNECTIONS * 95 / 100)),
        "{brief:#}"
    );
}
