//! Web Push: encrypted, VAPID-signed, and gone subscriptions removed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_tests::fakes::push::{Browser, start_push_service};

use common::*;

#[tokio::test]
async fn web_push_is_encrypted_signed_and_gone_subscriptions_are_removed() {
    let env = start_with(
        1,
        &[
            ("TIDINGS_VAPID_PRIVATE_KEY_FILE", vapid_key_file()),
            ("TIDINGS_VAPID_SUBJECT", "mailto:ops@example.com".into()),
        ],
    )
    .await;
    let key: Value = env
        .http
        .get(format!("{}/api/v1/push/vapid-public-key", env.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vapid_public = key["key"].as_str().unwrap().to_owned();
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
