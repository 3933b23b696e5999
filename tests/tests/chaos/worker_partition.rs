//! A worker cut off from NATS in the middle of deliveries, while requests keep coming: every
//! notification still reaches its final status, with exactly one in-app message each, and
//! webhooks repeated at most for what the cut-off worker had in flight.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use serde_json::{Value, json};
use tidings_tests::fakes::webhook;
use tidings_tests::netns::Lab;
use tidings_tests::{NatsServer, eventually, http_get, wait_for};

use crate::setup::{WEBHOOK_SECRET, report, serial, service_token, start_gateway, start_worker, status_of};

const NOTIFICATIONS: usize = 600;
const RATE: u64 = 40;
const PARTITION: Duration = Duration::from_secs(15);
/// Deliveries one worker holds at once: the bound on webhooks sent twice.
const DELIVERY_CONCURRENCY: u32 = 64;
const USER: &str = "chaos";

/// The worker's count of webhooks sent.
async fn webhooks_sent(base: &str) -> f64 {
    let (_, text) = http_get(&format!("{base}/metrics"), None).await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("tidings_worker_notifications_total{channel=\"webhook\",status=\"sent\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Publishes the notification requests at `RATE` a second, straight on NATS.
fn start_requests(nats_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        for i in 0..NOTIFICATIONS {
            ticker.tick().await;
            let req = json!({"id":format!("n{i}"),"user":USER,"template":"pr_merged",
                "data":{"pr":i,"title":"t"},"channels":["in_app","webhook"]});
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("n{i}").as_str());
            js.publish_with_headers("tidings.notify", headers, req.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
}

/// In-app messages on the user's channel.
async fn in_app_messages(nats: &NatsServer) -> usize {
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let subject = format!("tidings.events.user.{USER}");
    let info = events.info_with_subjects(subject.clone()).await.unwrap();
    let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
    subjects.get(&subject).copied().unwrap_or(0)
}

/// The status of notification `id`, through the gateway's API.
async fn status(http: &reqwest::Client, base: &str, svc: &str, id: &str) -> Option<Value> {
    let r = http
        .get(format!("{base}/api/v1/notifications/{id}"))
        .bearer_auth(svc)
        .send()
        .await
        .ok()?;
    r.json::<Value>().await.ok()
}

/// The notifications among `ids` whose in-app and webhook channels are not both `sent` by
/// the end of `timeout`, with their statuses.
async fn not_final(http: &reqwest::Client, base: &str, svc: &str, ids: &[String], timeout: Duration) -> Vec<String> {
    let mut left_over = Vec::new();
    let deadline = Instant::now() + timeout;
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let done = wait_for(left, || async {
            let s = status(http, base, svc, id).await?;
            (s["channels"]["webhook"]["status"] == "sent" && s["channels"]["in_app"]["status"] == "sent").then_some(())
        })
        .await;
        if done.is_none() {
            left_over.push(format!(
                "{id}: {}",
                status(http, base, svc, id).await.unwrap_or_default()
            ));
        }
    }
    left_over
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_delivery_leaves_every_notification_final() {
    let _serial = serial().await;
    let started = Instant::now();
    // Hosts: 0 NATS, 1 gateway (the API), 2 worker W1 (cut off), 3 worker W2.
    let lab = Lab::new("wkp", 4);
    let nats = NatsServer::start_in(&lab.host(0).netns, &lab.host(0).ip).await.unwrap();
    let gw = start_gateway(lab.host(1), &nats.url(), &[]).await;
    let (hooks, received) = webhook::start_at(WEBHOOK_SECRET, &format!("{}:0", lab.root_ip)).await;
    let http = reqwest::Client::new();
    let svc = service_token();
    let put = |path: &str, body: Value| {
        http.put(format!("{}{path}", gw.base))
            .bearer_auth(&svc)
            .json(&body)
            .send()
    };
    let template = json!({"in_app": {"title": "PR #{{ pr }}", "body": "{{ title }}"},
        "webhook": {"text": "PR {{ pr }}: {{ title }}"}});
    assert_eq!(
        put("/api/v1/templates/pr_merged", template).await.unwrap().status(),
        200
    );
    let prefs = json!({"webhook_url": format!("{hooks}/slow")});
    let r = put(&format!("/api/v1/users/{USER}/preferences"), prefs).await.unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let (w1, w1_base) = start_worker(lab.host(2), &nats.url()).await;
    let (_w2, _w2_base) = start_worker(lab.host(3), &nats.url()).await;

    let requests = start_requests(nats.url());
    eventually(Duration::from_secs(30), "W1 delivering", || async {
        (webhooks_sent(&w1_base).await >= 10.0).then_some(())
    })
    .await;
    let cut = Instant::now();
    lab.host(2).partition_from(&[&lab.host(0).ip]);
    let w1_503 = eventually(Duration::from_secs(15), "W1 /readyz 503", || async {
        (status_of(&format!("{w1_base}/readyz")).await == Some(503)).then(|| cut.elapsed())
    })
    .await;
    tokio::time::sleep_until((cut + PARTITION).into()).await;
    lab.host(2).heal();
    let healed = Instant::now();
    let w1_ready = eventually(Duration::from_secs(30), "W1 /readyz 200 again", || async {
        (status_of(&format!("{w1_base}/readyz")).await == Some(200)).then(|| healed.elapsed())
    })
    .await;
    requests.await.unwrap();

    // Every notification reaches its final status (W1's held jobs come back after the ack wait).
    let ids: Vec<String> = (0..NOTIFICATIONS).map(|i| format!("n{i}")).collect();
    let not_final = not_final(&http, &gw.base, &svc, &ids, Duration::from_secs(120)).await;
    let in_app = in_app_messages(&nats).await;
    let accepted = received.lock().unwrap().accepted.clone();
    let never: Vec<&String> = ids.iter().filter(|id| !accepted.contains_key(*id)).collect();
    let repeats = accepted.values().filter(|n| **n > 1).count();

    report(
        "worker_partition",
        &[
            ("duration_s", format!("{:.1}", started.elapsed().as_secs_f64())),
            ("notifications", NOTIFICATIONS.to_string()),
            ("final", (NOTIFICATIONS - not_final.len()).to_string()),
            ("in_app_messages", in_app.to_string()),
            ("webhooks_accepted", accepted.values().sum::<u32>().to_string()),
            ("webhooks_never", never.len().to_string()),
            ("webhooks_repeated", repeats.to_string()),
            ("w1_readyz_503_after_ms", w1_503.as_millis().to_string()),
            ("w1_readyz_200_after_heal_ms", w1_ready.as_millis().to_string()),
        ],
    );
    drop(w1);
    assert!(
        not_final.is_empty(),
        "not final: {:?}",
        &not_final[..not_final.len().min(5)]
    );
    assert_eq!(in_app, NOTIFICATIONS, "exactly one in-app message per notification");
    assert!(never.is_empty(), "webhooks never delivered: {never:?}");
    assert!(
        repeats <= DELIVERY_CONCURRENCY as usize,
        "{repeats} webhooks repeated: more than the cut-off worker had in flight"
    );
}
