//! Webhooks: signatures, retries, dead letters, and exactly-once delivery across two workers
//! (one killed mid-run).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_tests::eventually;

use common::*;

#[tokio::test]
async fn webhooks_retry_fail_and_dead_letter_with_signatures() {
    let env = start(1).await;
    let (hooks, received) = start_receiver().await;
    for (user, mode) in [("flaky", "flaky"), ("bad", "bad"), ("down", "down"), ("ok", "ok")] {
        let (code, body) = env
            .put(
                &format!("/api/v1/users/{user}/preferences"),
                json!({"webhook_url": format!("{hooks}/{mode}")}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    for user in ["flaky", "bad", "down", "ok"] {
        env.notify(json!({"id":format!("w-{user}"),"user":user,"template":"pr_merged","data":{"pr":9,"title":"<x>"},"channels":["webhook"]})).await;
    }
    let s = env
        .wait_channel("w-flaky", "webhook", "sent", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 3, "{s}");
    let s = env
        .wait_channel("w-bad", "webhook", "failed", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 1, "{s}");
    assert!(
        s["channels"]["webhook"]["error"].as_str().unwrap().contains("400"),
        "{s}"
    );
    let s = env
        .wait_channel("w-down", "webhook", "failed", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 3, "{s}");
    assert!(
        s["channels"]["webhook"]["error"]
            .as_str()
            .unwrap()
            .contains("dead-lettered"),
        "{s}"
    );
    env.wait_channel("w-ok", "webhook", "sent", Duration::from_secs(20))
        .await;

    {
        let r = received.lock().unwrap();
        assert_eq!(r.bad_signatures, 0);
        assert_eq!(r.attempts.get("w-flaky"), Some(&3));
        assert_eq!(r.attempts.get("w-bad"), Some(&1));
        assert_eq!(r.attempts.get("w-down"), Some(&3));
        assert_eq!(r.accepted.get("w-ok"), Some(&1));
    }

    // The dead letter is in its stream, with the job and the error.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let stream = js.get_stream("TIDINGS_DEAD_LETTERS").await.unwrap();
    let letter = stream
        .direct_get_last_for_subject("tidings.dead.webhook")
        .await
        .unwrap();
    let letter: Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(letter["job"]["id"], "w-down");
    assert!(letter["error"].as_str().unwrap().contains("503"), "{letter}");
    drop(env.workers);
}

/// Sends 500 notifications (in-app + webhook) plus one repeated id; with `kill`, kills one
/// of the two workers mid-run. Returns how many times the receiver accepted each id.
async fn run_500(kill: bool) -> (HashMap<String, u32>, Env) {
    let env = start(2).await;
    let (hooks, received) = start_receiver().await;
    env.put(
        "/api/v1/users/many/preferences",
        json!({"webhook_url": format!("{hooks}/ok")}),
    )
    .await;
    // Idempotency: the same id twice is one notification.
    for _ in 0..2 {
        env.notify(
            json!({"id":"dup","user":"many","template":"pr_merged","data":{"pr":0,"title":"t"},"channels":["webhook"]}),
        )
        .await;
    }
    for i in 0..100 {
        let (code, _) = env
            .notify(json!({"id":format!("n{i}"),"user":"many","template":"pr_merged","data":{"pr":i,"title":"t"},"channels":["in_app","webhook"]}))
            .await;
        assert_eq!(code, 202);
    }
    // Both workers are at work (each has sent webhooks).
    for (_, metrics) in &env.workers {
        eventually(Duration::from_secs(30), "worker took a share", || async {
            (webhooks_sent(metrics).await > 0.0).then_some(())
        })
        .await;
    }
    // The other 400 in a burst straight on NATS, so the workers have a backlog in hand;
    // one of them dies in the middle of it.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let mut acks = Vec::new();
    for i in 100..500 {
        let req = json!({"id":format!("n{i}"),"user":"many","template":"pr_merged","data":{"pr":i,"title":"t"},"channels":["in_app","webhook"]});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("n{i}").as_str());
        acks.push(
            js.publish_with_headers("tidings.notify", headers, req.to_string().into())
                .await
                .unwrap(),
        );
        if kill && i == 250 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
            env.workers[0].0.signal("KILL").unwrap();
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let ids: Vec<String> = std::iter::once("dup".to_owned())
        .chain((0..500).map(|i| format!("n{i}")))
        .collect();
    // Every notification reaches its final status (a killed worker's jobs come back after
    // the ack wait).
    for id in &ids {
        let s = env.wait_channel(id, "webhook", "sent", Duration::from_secs(90)).await;
        assert_eq!(s["status"], "sent", "{s}");
        if id != "dup" {
            assert_eq!(s["channels"]["in_app"]["status"], "sent", "{s}");
        }
    }
    let accepted = received.lock().unwrap().accepted.clone();
    for id in &ids {
        assert!(accepted.get(id).copied().unwrap_or(0) >= 1, "{id} never delivered");
    }
    assert_eq!(accepted.len(), 501);
    // Exactly one in-app message per notification in the user's channel.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let info = events.info_with_subjects("tidings.events.user.many").await.unwrap();
    use futures::TryStreamExt as _;
    let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
    assert_eq!(subjects.get("tidings.events.user.many"), Some(&500));
    (accepted, env)
}

#[tokio::test]
async fn two_workers_deliver_500_notifications_each_exactly_once() {
    let (accepted, _env) = run_500(false).await;
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_nothing() {
    let (accepted, _env) = run_500(true).await;
    // A webhook the killed worker had sent but not yet recorded is sent again by the other
    // worker (at least once; receivers deduplicate on Tidings-Id). That window is one
    // status write per in-flight delivery, so repeats are bounded by its concurrency.
    let twice = accepted.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 64,
        "{twice} repeats: more than the killed worker had in flight"
    );
}

/// A receiver whose error bodies never end: each attempt reads only the start of the body
/// (the status error keeps it), so retries and failures take no longer than a plain error,
/// and later notifications go on.
#[tokio::test]
async fn endless_error_bodies_are_read_only_up_to_a_bound() {
    let env = start(1).await;
    let (hooks, _received) = start_receiver().await;
    for (user, mode) in [("stream", "endless"), ("streambad", "endless-bad"), ("fine", "ok")] {
        let (code, body) = env
            .put(
                &format!("/api/v1/users/{user}/preferences"),
                json!({"webhook_url": format!("{hooks}/{mode}")}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let started = std::time::Instant::now();
    for user in ["stream", "streambad"] {
        env.notify(json!({"id": format!("e-{user}"), "user": user, "template": "pr_merged",
            "data": {"pr": 1, "title": "t"}, "channels": ["webhook"]}))
            .await;
    }
    // Reading a whole body would last until the client's 15 s timeout, on every attempt.
    let s = env
        .wait_channel("e-streambad", "webhook", "failed", Duration::from_secs(10))
        .await;
    let error = s["channels"]["webhook"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("HTTP 400: bad request: xxx"), "{s}");
    assert!(error.len() <= 1024, "error of {} bytes", error.len());
    let s = env
        .wait_channel("e-stream", "webhook", "failed", Duration::from_secs(10))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 3, "{s}");
    let error = s["channels"]["webhook"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("HTTP 500: overloaded: xxx") && error.len() <= 1024,
        "{s}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    env.notify(json!({"id": "e-fine", "user": "fine", "template": "pr_merged",
        "data": {"pr": 2, "title": "t"}, "channels": ["webhook"]}))
        .await;
    env.wait_channel("e-fine", "webhook", "sent", Duration::from_secs(10))
        .await;
}

/// A template without a `webhook` part: a single notification goes out with the default
/// JSON body, and so does a digest of several (with the batch's items in `data`).
#[tokio::test]
async fn a_digest_to_a_webhook_uses_the_default_body_without_a_webhook_part() {
    let env = start_with(1, &[("TIDINGS_BATCH_WINDOW_MS", "500".to_owned())]).await;
    let (hooks, received) = start_receiver().await;
    let (code, body) = env
        .put(
            "/api/v1/templates/plain",
            json!({"in_app": {"title": "PR #{{ pr }}", "body": "{{ title }}"}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    env.put(
        "/api/v1/users/dig/preferences",
        json!({"webhook_url": format!("{hooks}/ok")}),
    )
    .await;
    env.notify(json!({"id": "single", "user": "dig", "template": "plain",
        "data": {"pr": 1, "title": "one"}, "channels": ["webhook"]}))
        .await;
    env.wait_channel("single", "webhook", "sent", Duration::from_secs(20))
        .await;
    for i in 0..3 {
        env.notify(
            json!({"id": format!("d{i}"), "user": "dig", "template": "plain", "priority": "low",
            "batch_key": "prs", "data": {"pr": i, "title": "t"}, "channels": ["webhook"]}),
        )
        .await;
    }
    let mut digests = Vec::new();
    for i in 0..3 {
        let s = env
            .wait_channel(&format!("d{i}"), "webhook", "sent", Duration::from_secs(20))
            .await;
        digests.push(
            s["channels"]["webhook"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(digests.iter().all(|d| !d.is_empty() && *d == digests[0]), "{digests:?}");
    let r = received.lock().unwrap();
    assert_eq!(r.bodies["single"]["title"], "PR #1");
    let digest = &r.bodies[&digests[0]];
    assert_eq!(digest["data"]["count"], 3, "{digest}");
    assert_eq!(digest["data"]["items"][2]["pr"], 2, "{digest}");
    assert_eq!(digest["event"], r.bodies["single"]["event"]);
}
