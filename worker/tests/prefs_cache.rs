//! The worker's preferences cache against a real nats-server: reads come from memory, yet a
//! preferences write acknowledged before a read is always seen by it (the read barrier), so
//! a change takes effect for the very next notification.

mod common;

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;
use tidings_shared::notify::names::PREFERENCES_BUCKET;
use tidings_shared::prefs::Preferences;
use tidings_shared::store::Store;
use tidings_tests::NatsServer;
use tidings_worker::prefs::PrefsCache;

use common::*;

fn with_email(n: usize) -> Preferences {
    Preferences {
        email: Some(format!("u{n}@example.com")),
        ..Default::default()
    }
}

/// Requests seen on `sub` until none comes for a moment (they were sent before).
async fn drain(sub: &mut async_nats::Subscriber, client: &async_nats::Client) -> usize {
    client.flush().await.unwrap();
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        n += 1;
    }
    n
}

#[tokio::test]
async fn acknowledged_preference_writes_are_read_back_at_once_from_memory() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let writer = Store::open(js.clone(), 1).await.unwrap();
    writer.put_preferences("early", &with_email(0)).await.unwrap();
    let store = Store::open(js.clone(), 1).await.unwrap();
    let cache = PrefsCache::spawn(store.clone(), store.preferences_bucket().clone());
    // Written before the watch started, and never written at all.
    assert_eq!(cache.get("early").await.unwrap(), with_email(0));
    assert_eq!(cache.get("nobody").await.unwrap(), Preferences::default());

    let mut key_reads = client
        .subscribe(format!("$JS.API.DIRECT.GET.KV_{PREFERENCES_BUCKET}.>"))
        .await
        .unwrap();
    // Each write is acknowledged, then read at once: never the value before it (no
    // staleness for acknowledged writes), with the writes of many users in between.
    for n in 1..=200 {
        writer.put_preferences("alice", &with_email(n)).await.unwrap();
        writer
            .put_preferences(&format!("other{n}"), &with_email(n))
            .await
            .unwrap();
        assert_eq!(cache.get("alice").await.unwrap(), with_email(n), "write {n} missed");
    }
    // Deleted: defaults again, at once.
    store.preferences_bucket().delete("alice").await.unwrap();
    assert_eq!(cache.get("alice").await.unwrap(), Preferences::default());
    // Stored around the API and unreadable: the same error a direct read gives.
    store
        .preferences_bucket()
        .put("broken", r#"{"email": 42}"#.into())
        .await
        .unwrap();
    let err = cache.get("broken").await.unwrap_err().to_string();
    assert_eq!(err, store.preferences("broken").await.unwrap_err().to_string());
    assert_eq!(
        drain(&mut key_reads, &client).await,
        1,
        "only the test's own direct read went to JetStream"
    );

    // Concurrent reads share the question for the stream's last sequence.
    let mut infos = client
        .subscribe(format!("$JS.API.STREAM.INFO.KV_{PREFERENCES_BUCKET}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let reads = (0..100).map(|n| {
        let cache = cache.clone();
        async move { cache.get(&format!("other{}", n + 1)).await.unwrap() }
    });
    let got = futures::future::join_all(reads).await;
    assert!(got.iter().enumerate().all(|(n, p)| *p == with_email(n + 1)));
    let asked = drain(&mut infos, &client).await;
    assert!((1..10).contains(&asked), "100 concurrent reads asked {asked} times");
}

#[tokio::test]
async fn a_preferences_change_takes_effect_for_the_very_next_notification() {
    let env = start(1).await;
    let (base, received) = start_receiver().await;
    let url = format!("{base}/ok");
    // Switched off and on again, each change followed at once by a notification.
    for n in 0..6 {
        let on = n % 2 == 1;
        let (code, _) = env
            .put(
                "/api/v1/users/flip/preferences",
                json!({"webhook_url": url, "channels": {"webhook": on}}),
            )
            .await;
        assert_eq!(code, 200);
        let id = format!("flip{n}");
        let (code, _) = env
            .notify(json!({"id": id, "user": "flip", "template": "pr_merged",
                "data": {"pr": n, "title": "t"}, "channels": ["webhook"]}))
            .await;
        assert_eq!(code, 202);
        let want = if on { "sent" } else { "suppressed" };
        env.wait_channel(&id, "webhook", want, Duration::from_secs(10)).await;
    }
    let r = received.lock().unwrap();
    assert_eq!(r.accepted.len(), 3, "one webhook per notification switched on");
}
