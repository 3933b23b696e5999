//! Poison messages: a request whose stored preferences no longer parse, and a delivery job
//! whose body cannot be decoded, are retried a few times with backoff and then
//! dead-lettered with the reason (counted, and the notification failed with it), instead of
//! coming back every second for ever; later notifications go on.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use tidings_shared::notify::names::PREFERENCES_BUCKET;
use tidings_shared::store::Store;
use tidings_tests::eventually;

use common::*;

/// The worker's `tidings_worker_dead_letters_total` for `channel`.
async fn dead_letters(metrics_url: &str, channel: &str) -> f64 {
    let (_, text) = tidings_tests::http_get(metrics_url, None).await.unwrap_or_default();
    let series = format!("tidings_worker_dead_letters_total{{channel=\"{channel}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The newest dead letter on `subject`.
async fn letter(js: &async_nats::jetstream::Context, subject: &str) -> Value {
    let stream = js.get_stream("TIDINGS_DEAD_LETTERS").await.unwrap();
    let m = eventually(Duration::from_secs(20), subject, || async {
        stream.direct_get_last_for_subject(subject).await.ok()
    })
    .await;
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_after_a_few_deliveries_and_later_ones_go_on() {
    // Three deliveries at most (TIDINGS_RETRY_MAX_ATTEMPTS=3 in the tests' workers).
    let env = start(1).await;
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    Store::open(js.clone(), 1).await.unwrap();
    eventually(Duration::from_secs(20), "the worker's streams", || async {
        js.get_stream("TIDINGS_DELIVERIES").await.ok()
    })
    .await;
    // Preferences written around the API, which no longer parse.
    let prefs = js.get_key_value(PREFERENCES_BUCKET).await.unwrap();
    prefs.put("broken", r#"{"email": 42}"#.into()).await.unwrap();
    let request = json!({"id": "poison-prefs", "user": "broken", "template": "pr_merged",
        "data": {"pr": 1, "title": "t"}, "channels": ["in_app"]});
    js.publish("tidings.notify", request.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A delivery job that is not one.
    js.publish("tidings.delivery.webhook.junk-1", "not a job".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let s = eventually(Duration::from_secs(20), "the request failed", || async {
        let s = env.status("poison-prefs").await;
        (s["status"] == "failed").then_some(s)
    })
    .await;
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("given up after 3 deliveries") && error.contains("preferences"),
        "{s}"
    );
    let l = letter(&js, "tidings.dead.intake").await;
    assert_eq!(l["deliveries"], 3, "{l}");
    assert_eq!(l["body"]["id"], "poison-prefs", "{l}");
    assert!(l["error"].as_str().unwrap_or_default().contains("preferences"), "{l}");
    let l = letter(&js, "tidings.dead.webhook").await;
    assert_eq!(l["subject"], "tidings.delivery.webhook.junk-1", "{l}");
    assert!(
        l["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unreadable delivery job"),
        "{l}"
    );
    let (_, metrics) = &env.workers[0];
    eventually(Duration::from_secs(10), "both dead letters counted", || async {
        let counted = (
            dead_letters(metrics, "intake").await,
            dead_letters(metrics, "webhook").await,
        );
        (counted == (1.0, 1.0)).then_some(())
    })
    .await;

    // Nothing comes back: the request and the job are gone from their work queues.
    for stream in ["TIDINGS_NOTIFY", "TIDINGS_DELIVERIES"] {
        eventually(Duration::from_secs(10), stream, || async {
            let mut s = js.get_stream(stream).await.ok()?;
            (s.info().await.ok()?.state.messages == 0).then_some(())
        })
        .await;
    }
    // Later notifications go on, and the user can fix their preferences.
    let (code, body) = env
        .put("/api/v1/users/broken/preferences", json!({"email": "b@example.com"}))
        .await;
    assert_eq!(code, 200, "{body}");
    env.notify(json!({"id": "after-poison", "user": "broken", "template": "pr_merged",
        "data": {"pr": 2, "title": "t"}, "channels": ["in_app"]}))
        .await;
    env.wait_channel("after-poison", "in_app", "sent", Duration::from_secs(20))
        .await;
}
