//! SMS through a Twilio-compatible API: retries and the provider's error kept.

mod common;

use std::time::Duration;

use serde_json::json;
use tidings_tests::fakes::sms::start_sms_api;

use common::*;

#[tokio::test]
async fn sms_through_a_twilio_compatible_api_retries_and_keeps_the_provider_error() {
    let (api, seen) = start_sms_api().await;
    let env = start_with(
        1,
        &[
            ("TIDINGS_SMS_API_URL", api),
            ("TIDINGS_SMS_ACCOUNT_SID", "AC123".into()),
            ("TIDINGS_SMS_AUTH_TOKEN", "tok".into()),
            ("TIDINGS_SMS_FROM", "+15559999999".into()),
        ],
    )
    .await;
    env.put(
        "/api/v1/templates/sms_only",
        json!({"in_app":{"title":"t","body":"b"},"sms":{"text":"PR {{ pr }} merged"}}),
    )
    .await;
    env.put("/api/v1/users/gus/preferences", json!({"phone":"+15550000001"}))
        .await;
    env.put("/api/v1/users/hal/preferences", json!({"phone":"+15550000002"}))
        .await;
    env.notify(json!({"id":"sms-1","user":"gus","template":"sms_only","data":{"pr":5},"channels":["sms"]}))
        .await;
    env.notify(json!({"id":"sms-2","user":"hal","template":"sms_only","data":{"pr":6},"channels":["sms"]}))
        .await;
    let s = env.wait_channel("sms-1", "sms", "sent", Duration::from_secs(20)).await;
    assert_eq!(s["channels"]["sms"]["attempts"], 2, "{s}");
    let s = env
        .wait_channel("sms-2", "sms", "failed", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["sms"]["attempts"], 1, "{s}");
    assert!(
        s["channels"]["sms"]["error"]
            .as_str()
            .unwrap()
            .contains("not a valid phone number"),
        "{s}"
    );
    let forms = seen.lock().unwrap().clone();
    let sent = forms
        .iter()
        .find(|f| f.get("To").map(String::as_str) == Some("+15550000001"))
        .unwrap();
    assert_eq!(sent.get("From").map(String::as_str), Some("+15559999999"));
    assert_eq!(sent.get("Body").map(String::as_str), Some("PR 5 merged"));
}
