//! Operator controls across gateways (real NATS, real gateway processes): disconnect a user
//! everywhere, revoke their old tokens (also on a gateway started afterwards), force an
//! unsubscribe.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tidings_shared::auth::now_unix;
use tidings_tests::nats::NatsServer;
use tidings_tests::{Incoming, TokenIn, WsClient, eventually};

async fn control(gw: &Gateway, path: &str, body: Value, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", gw.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A token for `sub` issued at `iat`.
fn token_issued(sub: &str, iat: u64) -> String {
    let mut c = claims(sub, &["*"], &[], 600);
    c.iat = Some(iat);
    sign(&c)
}

/// The close code and reason that end `c`.
async fn closed(c: &mut WsClient) -> (u16, String) {
    loop {
        match c.recv().await {
            Incoming::Close(code, reason) => return (code, reason),
            Incoming::Ended => return (0, String::new()),
            Incoming::Frame(_) => {}
        }
    }
}

/// Waits until both gateways announced themselves, so a control expects both.
async fn both_known(a: &Gateway) {
    eventually(Duration::from_secs(20), "both gateways announced", || async {
        let (status, body) = control(a, "/api/v1/users/nobody/disconnect", json!({}), &service_token()).await;
        (status == 200 && body["nodes"] == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn one_call_disconnects_a_user_on_every_gateway() {
    let nats = NatsServer::start().await.unwrap();
    let a = gateways().start(&nats.url(), &[]).await;
    let b = gateways().start(&nats.url(), &[]).await;
    both_known(&a).await;
    let token = user_token("u1", &["p1"], &[]);
    let mut on_a = connect(&a, &token).await;
    let mut on_b = connect(&b, &token).await;
    let mut other = connect(&b, &user_token("u2", &["p1"], &[])).await;
    let sse = reqwest::Client::new()
        .get(format!("{}/sse?channels=project:p1", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = tidings_tests::SseEvents::new(sse);
    a.wait_metric("tidings_gateway_connections", 2.0, Duration::from_secs(10))
        .await;
    let (status, body) = control(&b, "/api/v1/users/u1/disconnect", json!({}), &service_token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["connections"].as_u64(), body["nodes"].as_u64()),
        (Some(3), Some(2)),
        "{body}"
    );
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(closed(c).await, (4001, "revoked".to_owned()));
    }
    // SSE cannot show a close code: a last `revoked` event says it.
    let last = sse.next(Duration::from_secs(10)).await;
    assert!(last.contains("event: revoked"), "{last}");
    assert_eq!(other.request(json!({"type":"ping"}), 1).await["type"], "pong");
    // Users cannot do it.
    let (status, _) = control(&a, "/api/v1/users/u2/disconnect", json!({}), &token).await;
    assert_eq!(status, 403);
    assert!(
        a.metric("tidings_gateway_control_actions_total{action=\"disconnect\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_revocation_holds_on_every_gateway_including_later_ones() {
    let nats = NatsServer::start().await.unwrap();
    let a = gateways().start(&nats.url(), &[]).await;
    let b = gateways().start(&nats.url(), &[]).await;
    both_known(&a).await;
    let now = now_unix();
    let old = token_issued("u1", now - 100);
    let mut open = connect(&a, &old).await;
    let (status, body) = control(
        &b,
        "/api/v1/users/u1/revoke",
        json!({"before": now - 10}),
        &service_token(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 1, "{body}");
    assert_eq!(closed(&mut open).await, (4001, "revoked".to_owned()));

    let c = gateways().start(&nats.url(), &[]).await;
    let fresh = token_issued("u1", now);
    for gw in [&a, &b, &c] {
        let mut refused = WsClient::connect(&gw.base, TokenIn::Query(old.clone()), None)
            .await
            .unwrap();
        assert_eq!(refused.close_code().await, 4001, "old token on {}", gw.base);
        let status = tidings_tests::process::http_get(&format!("{}/api/v1/users/u1/inbox", gw.base), Some(&old))
            .await
            .map(|(s, _)| s);
        assert_eq!(status, Some(401), "old token over HTTP on {}", gw.base);
        let mut ok = connect(gw, &fresh).await;
        assert_eq!(ok.request(json!({"type":"ping"}), 1).await["type"], "pong");
    }
    assert!(
        c.metric("tidings_gateway_auth_failures_total{reason=\"revoked\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_forced_unsubscribe_ends_that_channel_only() {
    let nats = NatsServer::start().await.unwrap();
    let a = gateways().start(&nats.url(), &[]).await;
    let b = gateways().start(&nats.url(), &[]).await;
    both_known(&a).await;
    let mut u1 = connect(&a, &user_token("u1", &["p1", "p2"], &[])).await;
    u1.subscribe("project:p1").await;
    u1.subscribe("project:p2").await;
    let mut u2 = connect(&b, &user_token("u2", &["p1"], &[])).await;
    u2.subscribe("project:p1").await;

    let path = "/api/v1/channels/project:p1/unsubscribe";
    let (status, body) = control(&b, path, json!({"user":"u1"}), &service_token()).await;
    assert_eq!((status, body["connections"].as_u64()), (200, Some(1)), "{body}");
    let frame = u1.frame_of("unsubscribed").await;
    assert_eq!(
        (frame["channel"].as_str(), frame["reason"].as_str()),
        (Some("project:p1"), Some("server"))
    );

    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client);
    let s1 = publish(&js, &channel(1), 1).await;
    let s2 = publish(&js, &channel(2), 2).await;
    // u1 gets p2 and not p1; u2 still gets p1.
    let m = expect_message(&mut u1, "project:p2").await;
    assert_eq!(m["seq"].as_u64(), Some(s2));
    assert_eq!(expect_message(&mut u2, "project:p1").await["seq"].as_u64(), Some(s1));

    // Without a user: everyone's subscription to the channel ends.
    let (_, body) = control(&a, path, json!({}), &service_token()).await;
    assert_eq!(body["connections"], 1, "{body}");
    assert_eq!(u2.frame_of("unsubscribed").await["channel"], "project:p1");
}

#[tokio::test]
async fn tokens_living_longer_than_revocations_are_refused() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_TOKEN_MAX_LIFETIME", "1h".into())])
        .await;
    let long = sign(&claims("u1", &["*"], &[], 2 * 3600));
    let mut refused = WsClient::connect(&gw.base, TokenIn::Query(long), None).await.unwrap();
    assert_eq!(refused.close_code().await, 4001);
    let _ok = connect(&gw, &sign(&claims("u1", &["*"], &[], 1800))).await;
    assert!(
        gw.metric("tidings_gateway_auth_failures_total{reason=\"lifetime_too_long\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_revocation_can_be_lifted_and_refuses_a_future_instant() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let now = now_unix();
    let old = token_issued("u1", now - 100);
    let (status, body) = control(
        &gw,
        "/api/v1/users/u1/revoke",
        json!({"before": now * 1000}),
        &service_token(),
    )
    .await;
    assert_eq!(status, 400, "milliseconds by mistake: {body}");
    let (status, _) = control(
        &gw,
        "/api/v1/users/u1/revoke",
        json!({"before": now - 10}),
        &service_token(),
    )
    .await;
    assert_eq!(status, 200);
    let mut refused = WsClient::connect(&gw.base, TokenIn::Query(old.clone()), None)
        .await
        .unwrap();
    assert_eq!(refused.close_code().await, 4001);
    // Lifted by deleting it from the bucket: the running gateway follows.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let kv = js.get_key_value("TIDINGS_REVOCATIONS").await.unwrap();
    kv.delete("u1").await.unwrap();
    eventually(Duration::from_secs(10), "the old token accepted again", || async {
        let mut c = WsClient::connect(&gw.base, TokenIn::Query(old.clone()), None)
            .await
            .ok()?;
        (c.frame().await["type"] == "welcome").then_some(())
    })
    .await;
}
