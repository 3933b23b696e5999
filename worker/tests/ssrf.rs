//! SSRF: webhook URLs aimed at the cluster's own network, as literals in every form the
//! old check missed (6to4, NAT64, IPv4-mapped, benchmarking, carrier-grade NAT) and as a
//! host name whose DNS answer is loopback, fail at once without a byte sent, while later
//! notifications go on.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tidings_shared::netguard::is_internal_ip;

use common::*;

/// A TCP listener on loopback counting the connections it gets (none may arrive).
async fn loopback_counter() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

#[tokio::test]
async fn webhooks_to_special_purpose_addresses_fail_at_once_and_later_notifications_go_on() {
    // The gateway accepts any URL here (tests run it with private targets allowed): the
    // worker's own guard is what is attacked.
    let env = start_with(1, &[("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "false".to_owned())]).await;
    let (port, connections) = loopback_counter().await;
    // This machine's name resolves (through /etc/hosts) to loopback: a DNS answer the URL
    // does not show.
    let host = tidings_shared::config::hostname();
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port)).await.unwrap().collect();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| is_internal_ip(a.ip())),
        "precondition: {host} resolves to internal addresses only ({addrs:?})"
    );
    let targets = [
        (
            "dns",
            format!("https://{host}:{port}/hook?key=s3cret"),
            "special-purpose",
        ),
        ("sixtofour", format!("https://[2002:7f00:1::1]:{port}/x"), "6to4"),
        ("nat64", format!("https://[64:ff9b::a9fe:a9fe]:{port}/x"), "NAT64"),
        ("mapped", format!("https://[::ffff:127.0.0.1]:{port}/x"), "IPv4-mapped"),
        (
            "teredo",
            format!("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]:{port}/x"),
            "Teredo",
        ),
        ("bench", format!("https://198.18.0.1:{port}/x"), "benchmarking"),
        ("cgnat", format!("https://100.64.0.1:{port}/x"), "carrier-grade NAT"),
    ];
    for (user, url, _) in &targets {
        let (code, body) = env
            .put(
                &format!("/api/v1/users/{user}/preferences"),
                json!({ "webhook_url": url }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        env.notify(
            json!({"id": format!("ssrf-{user}"), "user": user, "template": "pr_merged",
            "data": {"pr": 1, "title": "t"}, "channels": ["webhook"]}),
        )
        .await;
    }
    for (user, _, reason) in &targets {
        let s = env
            .wait_channel(&format!("ssrf-{user}"), "webhook", "failed", Duration::from_secs(20))
            .await;
        let c = &s["channels"]["webhook"];
        // Failed on the first attempt (not retried: DNS would answer the same), naming why.
        assert_eq!(c["attempts"], 1, "{s}");
        let error = c["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{user}: {error}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "a delivery reached loopback");
    // Later notifications go on.
    env.notify(json!({"id": "after-ssrf", "user": "dns", "template": "pr_merged",
        "data": {"pr": 2, "title": "t"}, "channels": ["in_app"]}))
        .await;
    env.wait_channel("after-ssrf", "in_app", "sent", Duration::from_secs(20))
        .await;
}
