//! Web Push: encrypted, VAPID-signed, and gone subscriptions removed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_shared::prefs::{Preferences, PushKeys, PushSubscription};
use tidings_shared::store::Store;
use tidings_tests::fakes::push::{Browser, start_push_service};

use common::*;

/// The VAPID public key the gateway serves.
async fn vapid_public(env: &Env) -> String {
    let key: Value = env
        .http
        .get(format!("{}/api/v1/push/vapid-public-key", env.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    key["key"].as_str().unwrap().to_owned()
}

fn push_env(ack_wait_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("TIDINGS_VAPID_PRIVATE_KEY_FILE", vapid_key_file()),
        ("TIDINGS_VAPID_SUBJECT", "mailto:ops@example.com".into()),
        ("TIDINGS_DELIVERY_ACK_WAIT_MS", ack_wait_ms.to_string()),
    ]
}

#[tokio::test]
async fn web_push_is_encrypted_signed_and_gone_subscriptions_are_removed() {
    let env = start_with(1, &push_env(5000)).await;
    let vapid_public = vapid_public(&env).await;
    let browser = Arc::new(Browser::new());
    let (service, log) = start_push_service(browser.clone(), vapid_public).await;
    env.put(
        "/api/v1/templates/push_t",
        json!({"in_app":{"title":"t","body":"b"},"push":{"title":"PR #{{ pr }}","body":"{{ title }}","url":"https://app.example/pr/{{ pr }}"}}),
    )
    .await;
    let sub = |mode: &str| json!({"endpoint": format!("{service}/push/{mode}"), "keys": {"p256dh": Browser::b64(&browser.public), "auth": Browser::b64(&browser.auth)}});
    let (code, body) = env
        .put(
            "/api/v1/users/ivy/preferences",
            json!({"push_subscriptions":[sub("ok")]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    env.put(
        "/api/v1/users/jon/preferences",
        json!({"push_subscriptions":[sub("gone")]}),
    )
    .await;

    env.notify(json!({"id":"push-1","user":"ivy","template":"push_t","data":{"pr":4,"title":"Ship it"},"channels":["push"],"priority":"high"})).await;
    env.wait_channel("push-1", "push", "sent", Duration::from_secs(20))
        .await;
    {
        let log = log.lock().unwrap();
        assert_eq!(
            log.payloads,
            vec![json!({"id":"push-1","title":"PR #4","body":"Ship it","url":"https://app.example/pr/4"})]
        );
        assert!(
            log.headers.contains(&("urgency".into(), "high".into())),
            "{:?}",
            log.headers
        );
        assert!(log.headers.contains(&("content-encoding".into(), "aes128gcm".into())));
        assert!(log.headers.contains(&("ttl".into(), "86400".into())));
    }

    env.notify(json!({"id":"push-2","user":"jon","template":"push_t","data":{"pr":5,"title":"x"},"channels":["push"]}))
        .await;
    let s = env
        .wait_channel("push-2", "push", "failed", Duration::from_secs(20))
        .await;
    assert!(s["channels"]["push"]["error"].as_str().unwrap().contains("gone"), "{s}");
    let prefs = env
        .get_json(&format!("{}/api/v1/users/jon/preferences", env.gateway), &env.svc)
        .await;
    assert_eq!(
        prefs["push_subscriptions"],
        json!([]),
        "the gone subscription was removed: {prefs}"
    );
}

/// A user with many slow subscriptions: the worker sends to them several at once and keeps
/// the job in hand with progress acks, so a job longer than its ack wait is not handed out
/// again (no device gets a push twice); subscriptions past the cap are not sent to, and
/// preferences with more than the cap are refused.
#[tokio::test]
async fn many_slow_subscriptions_get_one_push_each_within_the_cap() {
    // Twenty 1-second pushes one by one would take 20 s; the ack wait is 1.5 s.
    let env = start_with(1, &push_env(1500)).await;
    let vapid_public = vapid_public(&env).await;
    let browser = Arc::new(Browser::new());
    let (service, log) = start_push_service(browser.clone(), vapid_public).await;
    env.put(
        "/api/v1/templates/push_t",
        json!({"in_app":{"title":"t","body":"b"},"push":{"title":"t","body":"b"}}),
    )
    .await;
    let subs: Vec<PushSubscription> = (0..25)
        .map(|i| PushSubscription {
            endpoint: format!("{service}/push/slow?n={i}"),
            keys: PushKeys {
                p256dh: Browser::b64(&browser.public),
                auth: Browser::b64(&browser.auth),
            },
        })
        .collect();
    // Through the API: at most 20.
    let (code, body) = env
        .put("/api/v1/users/many/preferences", json!({ "push_subscriptions": subs }))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("push_subscriptions"), "{body}");
    // Written around the API: the worker sends to the newest 20 only.
    let store = Store::open(async_nats::jetstream::new(env.nats.client().await.unwrap()), 1)
        .await
        .unwrap();
    let prefs = Preferences {
        push_subscriptions: subs,
        ..Default::default()
    };
    store.put_preferences("many", &prefs).await.unwrap();
    let started = std::time::Instant::now();
    env.notify(json!({"id":"many-1","user":"many","template":"push_t","data":{},"channels":["push"]}))
        .await;
    env.wait_channel("many-1", "push", "sent", Duration::from_secs(30))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // A copy of the job handed out again would push again: give it the time to show.
    let settled = tidings_tests::wait_for(Duration::from_secs(4), || async {
        (log.lock().unwrap().endpoints.len() > 20).then_some(())
    })
    .await;
    assert!(settled.is_none(), "more pushes than subscriptions sent to");
    let mut endpoints = log.lock().unwrap().endpoints.clone();
    endpoints.sort();
    let mut want: Vec<String> = (5..25).map(|i| format!("/push/slow?n={i}")).collect();
    want.sort();
    assert_eq!(endpoints, want);
}
