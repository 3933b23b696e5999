//! Templates over their budget: a template whose loops explode over the data it is sent
//! (nested loops, a huge output) fails its own notification with an error naming the budget,
//! and the notifications after it are planned at once; one whose constant loops could never
//! fit is refused when it is written.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::*;

#[tokio::test]
async fn a_template_over_its_budget_fails_its_notification_and_later_ones_go_on() {
    let env = start(1).await;
    // Accepted when written: the loops run over the data, which the gateway does not know.
    let cube =
        "{% for a in xs %}{% for b in xs %}{% for c in xs %}{{ a }}{{ b }}{{ c }}{% endfor %}{% endfor %}{% endfor %}";
    let (code, body) = env
        .put(
            "/api/v1/templates/cube",
            json!({"in_app": {"title": "t", "body": cube}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = env
        .put(
            "/api/v1/templates/wide",
            json!({"in_app": {"title": "t", "body": "{{ s * n }}"}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let xs: Vec<u32> = (0..2000).collect();
    // More bombs than the worker renders at once, so that a hung render would be seen.
    for i in 0..12 {
        let (code, body) = env
            .notify(json!({"id": format!("bomb-{i}"), "user": "u1", "template": "cube", "data": {"xs": xs}, "channels": ["in_app"]}))
            .await;
        assert_eq!(code, 202, "{body}");
    }
    env.notify(json!({"id": "wide", "user": "u1", "template": "wide", "data": {"s": "x", "n": 50_000_000}, "channels": ["in_app"]}))
        .await;
    let started = Instant::now();
    env.notify(json!({"id": "after", "user": "u1", "template": "pr_merged", "data": {"pr": 1, "title": "t"}, "channels": ["in_app"]}))
        .await;
    env.wait_channel("after", "in_app", "sent", Duration::from_secs(20))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "later notification held up"
    );
    for i in 0..12 {
        let s = env
            .wait_channel(&format!("bomb-{i}"), "in_app", "failed", Duration::from_secs(20))
            .await;
        assert_eq!(s["status"], "failed", "{s}");
        let error = s["channels"]["in_app"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("over its budget") && error.contains("TIDINGS_TEMPLATE_FUEL"),
            "{s}"
        );
    }
    let s = env
        .wait_channel("wide", "in_app", "failed", Duration::from_secs(20))
        .await;
    let error = s["channels"]["in_app"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("TIDINGS_TEMPLATE_MAX_BYTES"), "{s}");
    // The worker is alive and serving its health endpoint.
    let (_, metrics) = &env.workers[0];
    assert!(
        tidings_tests::http_get(metrics, None)
            .await
            .is_some_and(|(c, _)| c == 200)
    );
}

#[tokio::test]
async fn a_template_that_can_never_fit_is_refused_when_written() {
    let env = start(0).await;
    let nested = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let (code, body) = env
        .put(
            "/api/v1/templates/hang",
            json!({"in_app": {"title": "t", "body": nested}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("in_app.body") && message.contains("TIDINGS_TEMPLATE_FUEL"),
        "{body}"
    );
}
