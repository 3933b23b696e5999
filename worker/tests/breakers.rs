//! Circuit breakers per delivery target, against real NATS, the gateway and worker
//! processes: a webhook origin answering 503 opens its breaker after the threshold; later
//! notifications to it are deferred without attempts, also by a second worker that never
//! saw a failure (the state is shared in `TIDINGS_BREAKERS`); another user's healthy target
//! is unaffected; once the target recovers, each deferred notification arrives once.

mod common;

use std::time::Duration;

use serde_json::json;
use tidings_tests::eventually;
use tidings_tests::fakes::webhook::Receiver;

use common::*;

/// Consecutive failures that open a breaker in these tests.
const THRESHOLD: u32 = 3;

/// Breakers that open after [`THRESHOLD`] failures for 1 s, then 2 s at most; attempts well
/// above the failures a job can see here (its own three, and a few probes), so nothing is
/// dead-lettered.
fn breaker_env() -> Vec<(&'static str, String)> {
    vec![
        ("TIDINGS_BREAKER_FAILURES", THRESHOLD.to_string()),
        ("TIDINGS_BREAKER_MIN_REQUESTS", "1000000".to_owned()),
        ("TIDINGS_BREAKER_OPEN_MS", "1000".to_owned()),
        ("TIDINGS_BREAKER_MAX_OPEN_MS", "2000".to_owned()),
        ("TIDINGS_RETRY_MAX_ATTEMPTS", "12".to_owned()),
    ]
}

/// The value of the sample `line_prefix` (metric name and labels) on a worker, 0 if absent.
async fn sample(metrics_url: &str, line_prefix: &str) -> f64 {
    let (_, text) = tidings_tests::http_get(metrics_url, None).await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Probes a worker sent to webhook targets.
async fn probes(metrics_url: &str) -> u32 {
    sample(metrics_url, "tidings_worker_breaker_probes_total{channel=\"webhook\"}").await as u32
}

/// The only webhook breaker's record in `TIDINGS_BREAKERS`, as every worker sees it.
async fn record(js: &async_nats::jetstream::Context) -> Option<serde_json::Value> {
    use futures::StreamExt as _;
    let kv = js.get_key_value("TIDINGS_BREAKERS").await.ok()?;
    let keys: Vec<String> = kv.keys().await.ok()?.filter_map(|k| async { k.ok() }).collect().await;
    let key = keys.iter().find(|k| k.starts_with("webhook."))?;
    serde_json::from_slice(&kv.get(key).await.ok()??).ok()
}

fn total(r: &Receiver) -> u32 {
    r.lock().unwrap().total_requests()
}

#[tokio::test]
async fn an_open_breaker_defers_without_attempts_on_every_worker_and_recovered_targets_get_each_once() {
    let mut env = start_with(1, &breaker_env()).await;
    let (dead_base, dead) = start_receiver().await;
    let (ok_base, ok) = start_receiver().await;
    dead.lock().unwrap().switch_down = true;
    for (user, url) in [
        ("dora", format!("{dead_base}/switch")),
        ("hale", format!("{ok_base}/ok")),
    ] {
        let (code, body) = env
            .put(
                &format!("/api/v1/users/{user}/preferences"),
                json!({"webhook_url": url}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let notify = |id: String, user: &str| json!({"id": id, "user": user, "template": "pr_merged", "data": {"pr": 1, "title": "t"}, "channels": ["webhook"]});

    // The first notification's attempts open the breaker: then it is deferred, not retried.
    env.notify(notify("b-0".into(), "dora")).await;
    let s = env
        .wait_channel("b-0", "webhook", "deferred", Duration::from_secs(20))
        .await;
    let c = &s["channels"]["webhook"];
    assert_eq!(c["error"], "target unavailable", "{s}");
    assert_eq!(c["attempts"], THRESHOLD, "{s}");
    assert!(c["until"].as_str().is_some_and(|u| u.ends_with('Z')), "{s}");
    let first_url = env.workers[0].1.clone();
    let gauge = format!("tidings_worker_breaker_open{{channel=\"webhook\",target=\"{dead_base}\"}}");
    eventually(Duration::from_secs(5), "the gauge shows the open breaker", || async {
        (sample(&first_url, &gauge).await == 1.0).then_some(())
    })
    .await;

    // A second worker, which never saw a failure, takes over: it must not hammer the target.
    let second = spawn_worker(&env.nats.url(), &breaker_env());
    let second_url = second.1.clone();
    eventually(
        Duration::from_secs(20),
        "the second worker reads the open breaker",
        || async { (sample(&second_url, &gauge).await == 1.0).then_some(()) },
    )
    .await;
    env.workers.clear();
    env.workers.push(second);

    let deferred: Vec<String> = (1..=5).map(|i| format!("b-{i}")).collect();
    for id in &deferred {
        env.notify(notify(id.clone(), "dora")).await;
    }
    // Another user's healthy target is not held up.
    env.notify(notify("h-1".into(), "hale")).await;
    env.wait_channel("h-1", "webhook", "sent", Duration::from_secs(10))
        .await;
    assert_eq!(ok.lock().unwrap().accepted.get("h-1"), Some(&1));
    for id in &deferred {
        let s = env
            .wait_channel(id, "webhook", "deferred", Duration::from_secs(10))
            .await;
        assert_eq!(s["channels"]["webhook"]["error"], "target unavailable", "{s}");
    }
    // Over several open periods, only the threshold's failures and one probe per period
    // reach the target: no retry storm, from either worker.
    eventually(Duration::from_secs(15), "probes while the target is down", || async {
        (probes(&second_url).await >= 2).then_some(())
    })
    .await;
    // Every failed probe re-opened the breaker once more (`trips` - 1 of them); read while
    // it is open, no probe is in flight.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let settled = || async {
        let before = record(&js).await?;
        let requests = total(&dead);
        let after = record(&js).await?;
        let failed_probes = after["trips"].as_u64()? as u32 - 1;
        (before == after && after["state"] == "open" && requests == THRESHOLD + failed_probes).then_some(())
    };
    if tidings_tests::wait_for(Duration::from_secs(5), settled).await.is_none() {
        let rec = record(&js).await;
        panic!(
            "{} requests reached the dead target; expected {THRESHOLD} + the failed probes: {rec:?}",
            total(&dead)
        );
    }
    let rec = record(&js).await.unwrap();
    assert_eq!(
        rec["target"],
        dead_base.as_str(),
        "the value shows the redacted origin: {rec}"
    );
    assert_eq!(rec["channel"], "webhook");
    let deferrals = sample(
        &second_url,
        "tidings_worker_breaker_deferrals_total{channel=\"webhook\"}",
    )
    .await;
    assert!(
        deferrals >= deferred.len() as f64,
        "the second worker deferred: {deferrals}"
    );

    // The target recovers: a probe closes the breaker and each notification arrives once.
    dead.lock().unwrap().switch_down = false;
    for id in std::iter::once("b-0".to_owned()).chain(deferred.iter().cloned()) {
        let s = env.wait_channel(&id, "webhook", "sent", Duration::from_secs(20)).await;
        assert!(s["channels"]["webhook"].get("until").is_none(), "{s}");
        assert_eq!(dead.lock().unwrap().accepted.get(&id), Some(&1), "{id} accepted once");
    }
    eventually(Duration::from_secs(5), "the gauge drops the closed breaker", || async {
        (sample(&second_url, &gauge).await == 0.0).then_some(())
    })
    .await;
    let r = dead.lock().unwrap();
    assert_eq!(r.bad_signatures, 0);
    assert_eq!(r.accepted.len(), 1 + deferred.len());
}

/// The breaker's key and record for the only webhook target.
async fn keyed_record(js: &async_nats::jetstream::Context) -> Option<(String, serde_json::Value)> {
    use futures::StreamExt as _;
    let kv = js.get_key_value("TIDINGS_BREAKERS").await.ok()?;
    let keys: Vec<String> = kv.keys().await.ok()?.filter_map(|k| async { k.ok() }).collect().await;
    let key = keys.into_iter().find(|k| k.starts_with("webhook."))?;
    let value = serde_json::from_slice(&kv.get(&key).await.ok()??).ok()?;
    Some((key, value))
}

#[tokio::test]
async fn hand_outs_that_were_deferrals_do_not_bring_a_job_closer_to_a_dead_letter() {
    // Three attempts or deliveries at most (as in every worker test); a probe in flight
    // holds the others for the open time, 200 ms, so a job is deferred several times a second.
    let env = start_with(
        1,
        &[
            ("TIDINGS_BREAKER_FAILURES", "3".to_owned()),
            ("TIDINGS_BREAKER_MIN_REQUESTS", "1000000".to_owned()),
            ("TIDINGS_BREAKER_OPEN_MS", "200".to_owned()),
            ("TIDINGS_BREAKER_MAX_OPEN_MS", "200".to_owned()),
        ],
    )
    .await;
    let (base, dead) = start_receiver().await;
    dead.lock().unwrap().switch_down = true;
    let (code, body) = env
        .put(
            "/api/v1/users/dora/preferences",
            json!({"webhook_url": format!("{base}/switch")}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let notify = |id: &str| json!({"id": id, "user": "dora", "template": "pr_merged", "data": {"pr": 1, "title": "t"}, "channels": ["webhook"]});
    // The first job's three failures open the breaker (and dead-letter that job).
    env.notify(notify("p-0")).await;
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let (key, mut rec) = eventually(Duration::from_secs(20), "the breaker opens", || async {
        keyed_record(&js).await.filter(|(_, r)| r["state"] == "open")
    })
    .await;
    // Another worker's probe is in flight, for a minute.
    rec["state"] = json!("half_open");
    rec["until_ms"] = json!(jiff::Timestamp::now().as_millisecond() + 60_000);
    let kv = js.get_key_value("TIDINGS_BREAKERS").await.unwrap();
    kv.put(&key, rec.to_string().into()).await.unwrap();

    env.notify(notify("p-1")).await;
    let s = eventually(Duration::from_secs(20), "p-1 deferred again and again", || async {
        let s = env.status("p-1").await;
        (s["channels"]["webhook"]["deferrals"].as_u64()? >= 5).then_some(s)
    })
    .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 0, "{s}");
    assert_eq!(s["channels"]["webhook"]["status"], "deferred", "{s}");
    // Now the job fails the same way at each hand-out (preferences that no longer parse):
    // it gets its three deliveries before the dead letter, however often it was deferred.
    let prefs = js.get_key_value("TIDINGS_PREFERENCES").await.unwrap();
    prefs.put("dora", r#"{"webhook_url": 42}"#.into()).await.unwrap();
    let s = env
        .wait_channel("p-1", "webhook", "failed", Duration::from_secs(20))
        .await;
    let error = s["channels"]["webhook"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("dead-lettered after 3 deliveries"), "{s}");
    assert!(error.contains("preferences"), "{s}");
    assert!(s["channels"]["webhook"]["deferrals"].as_u64().unwrap_or(0) >= 5, "{s}");
    assert_eq!(
        dead.lock().unwrap().attempts.get("p-1"),
        None,
        "p-1 never reached the target"
    );
}

#[tokio::test]
async fn a_digest_for_an_open_target_is_deferred_on_its_items_then_sent_once() {
    let mut worker_env = breaker_env();
    worker_env.push(("TIDINGS_BATCH_WINDOW_MS", "300".to_owned()));
    let env = start_with(1, &worker_env).await;
    // No webhook part: a digest goes out with the default body (`data` = items and count).
    let plain = json!({"in_app": {"title": "PR #{{ pr }}", "body": "{{ title }}"}});
    assert_eq!(env.put("/api/v1/templates/plain", plain).await.0, 200);
    let (base, dead) = start_receiver().await;
    dead.lock().unwrap().switch_down = true;
    let (code, body) = env
        .put(
            "/api/v1/users/dig/preferences",
            json!({"webhook_url": format!("{base}/switch")}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    env.notify(json!({"id": "o-0", "user": "dig", "template": "plain",
        "data": {"pr": 1, "title": "t"}, "channels": ["webhook"]}))
        .await;
    env.wait_channel("o-0", "webhook", "deferred", Duration::from_secs(20))
        .await;
    let items: Vec<String> = (0..3).map(|i| format!("d-{i}")).collect();
    for (i, id) in items.iter().enumerate() {
        env.notify(json!({"id": id, "user": "dig", "template": "plain", "priority": "low",
            "batch_key": "prs", "data": {"pr": i, "title": "t"}, "channels": ["webhook"]}))
            .await;
    }
    for id in &items {
        let s = env
            .wait_channel(id, "webhook", "deferred", Duration::from_secs(20))
            .await;
        assert_eq!(s["channels"]["webhook"]["error"], "target unavailable", "{s}");
    }
    dead.lock().unwrap().switch_down = false;
    let mut digests = Vec::new();
    for id in &items {
        let s = env.wait_channel(id, "webhook", "sent", Duration::from_secs(20)).await;
        digests.push(
            s["channels"]["webhook"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(digests.iter().all(|d| !d.is_empty() && *d == digests[0]), "{digests:?}");
    env.wait_channel("o-0", "webhook", "sent", Duration::from_secs(20))
        .await;
    let r = dead.lock().unwrap();
    assert_eq!(r.accepted.get(&digests[0]), Some(&1), "the digest went out once");
    assert_eq!(r.bodies[&digests[0]]["data"]["count"], 3);
    assert_eq!(r.accepted.get("o-0"), Some(&1));
    assert!(
        items.iter().all(|id| !r.attempts.contains_key(id)),
        "items go out only in the digest"
    );
}
