//! Who may connect and what they may do, against a real NATS: every kind of bad token,
//! every way of passing a good one, access rules and bad input answered per the contract.

mod common;

use std::time::Duration;

use common::{claims, connect, expect_message, gateways, publish_durable, sign, user_token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tidings_tests::{NatsServer, TokenIn, WsClient};

#[tokio::test]
async fn every_kind_of_bad_token_is_closed_with_4001_and_counted() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_AUTH_DEADLINE_MS", "300".into())])
        .await;
    let expired = sign(&claims("u1", &[], &[], -120));
    let mut future = claims("u1", &[], &[], 600);
    future.nbf = Some(tidings_shared::auth::now_unix() + 600);
    let not_yet = sign(&future);
    let forged = tidings_tests::tokens::sign(&claims("u1", &[], &[], 600), "someone-else");
    let rsa_key = EncodingKey::from_rsa_pem(include_bytes!("../../shared/tests/fixtures/rsa-private.pem")).unwrap();
    let wrong_key =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims("u1", &[], &[], 600), &rsa_key).unwrap();
    let b64 = |s: &str| base64_url(s.as_bytes());
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none"}"#),
        b64(&serde_json::to_string(&claims("u1", &[], &[], 600)).unwrap())
    );

    for (token, reason) in [
        (expired, "expired"),
        (not_yet, "not_yet_valid"),
        (forged, "bad_signature"),
        (wrong_key, "algorithm_not_allowed"),
        (alg_none, "alg_none"),
        ("garbage".to_owned(), "malformed"),
    ] {
        let before = gw
            .metric(&format!("tidings_gateway_auth_failures_total{{reason=\"{reason}\"}}"))
            .await;
        let mut c = WsClient::connect(&gw.base, TokenIn::Query(token), None).await.unwrap();
        assert_eq!(c.close_code().await, 4001, "{reason}");
        let after = gw
            .metric(&format!("tidings_gateway_auth_failures_total{{reason=\"{reason}\"}}"))
            .await;
        assert_eq!(after, before + 1.0, "{reason}");
    }

    // No token at all and a first frame that is not auth.
    let mut c = WsClient::connect(&gw.base, TokenIn::None, None).await.unwrap();
    c.send(json!({"type":"ping","id":1})).await.unwrap();
    assert_eq!(c.close_code().await, 4001);

    // No token and silence: closed when the auth deadline (300 ms here) passes.
    let before = gw
        .metric("tidings_gateway_auth_failures_total{reason=\"missing\"}")
        .await;
    let started = std::time::Instant::now();
    let mut c = WsClient::connect(&gw.base, TokenIn::None, None).await.unwrap();
    assert_eq!(c.close_code().await, 4001);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the deadline"
    );
    let after = gw
        .metric("tidings_gateway_auth_failures_total{reason=\"missing\"}")
        .await;
    assert_eq!(after, before + 1.0);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn every_way_of_passing_a_token_works_and_refresh_extends_the_session() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_JWT_LEEWAY_SECS", "0".into())])
        .await;
    let token = user_token("u1", &["p1"], &[]);

    let mut by_query = connect(&gw, &token).await;
    assert_eq!(by_query.request(json!({"type":"ping"}), 1).await["type"], "pong");

    let mut by_header = WsClient::connect(&gw.base, TokenIn::Header(token.clone()), None)
        .await
        .unwrap();
    let w = by_header.frame().await;
    assert_eq!((w["type"].as_str(), w["user"].as_str()), (Some("welcome"), Some("u1")));
    assert_eq!(w["heartbeat_ms"], 25000);

    let mut by_frame = WsClient::connect(&gw.base, TokenIn::None, None).await.unwrap();
    by_frame
        .send(json!({"type":"auth","id":7,"token":token}))
        .await
        .unwrap();
    let reply = by_frame.frame().await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_u64(), reply["ok"].as_bool()),
        (Some("reply"), Some(7), Some(true))
    );
    assert_eq!(by_frame.frame().await["type"], "welcome");

    // A token that expires in 2 s, refreshed before: the session outlives the first token.
    let short = sign(&claims("u1", &["p1"], &[], 2));
    let mut refreshed = connect(&gw, &short).await;
    let longer = claims("u1", &["p1"], &[], 600);
    let reply = refreshed.request(json!({"type":"auth","token":sign(&longer)}), 2).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["exp"], longer.exp);
    // A bad refresh is refused and the session stays.
    let reply = refreshed.request(json!({"type":"auth","token":"nope"}), 3).await;
    assert_eq!(reply["error"]["code"], "unauthorized");
    // Another user's token is no refresh.
    let reply = refreshed
        .request(json!({"type":"auth","token":user_token("u2", &[], &[])}), 4)
        .await;
    assert_eq!(reply["error"]["code"], "forbidden");

    // Not refreshed: closed with 4001 when it expires.
    let mut unrefreshed = connect(&gw, &short).await;
    let code = tokio::time::timeout(Duration::from_secs(6), unrefreshed.close_code())
        .await
        .expect("closed at expiry");
    assert_eq!(code, 4001);
    // The refreshed one is still up.
    assert_eq!(refreshed.request(json!({"type":"ping"}), 5).await["type"], "pong");
}

#[tokio::test]
async fn access_rules_and_bad_input_get_the_contract_answers_and_the_connection_stays() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_MAX_FRAME_BYTES", "4096".into())])
        .await;
    let mut c = connect(&gw, &user_token("u1", &["p1"], &[])).await;
    let client = nats.client().await.unwrap();

    for (i, channel) in ["user:u2", "project:p2"].into_iter().enumerate() {
        let r = c
            .request(json!({"type":"subscribe","channel":channel}), 10 + i as u64)
            .await;
        assert_eq!(r["error"]["code"], "forbidden", "{channel}: {r}");
    }
    let long = format!("project:{}", "a".repeat(200));
    for (i, channel) in [
        "project:a.b",
        "project:*",
        "project:>",
        "user: x",
        long.as_str(),
        "",
        "team:x",
    ]
    .into_iter()
    .enumerate()
    {
        let r = c
            .request(json!({"type":"subscribe","channel":channel}), 20 + i as u64)
            .await;
        assert_eq!(
            (r["ok"].as_bool(), r["error"]["code"].as_str()),
            (Some(false), Some("bad_channel")),
            "{channel}: {r}"
        );
    }
    let r = c
        .request(
            json!({"type":"publish","channel":"project:p1","event":"x","data":1}),
            30,
        )
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "no publish claim: {r}");

    c.send_text("{not json").await.unwrap();
    let e = c.frame().await;
    assert_eq!(
        (e["type"].as_str(), e["error"]["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );
    c.send_text(r#"{"type":"launch","id":31}"#).await.unwrap();
    let e = c.frame().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_u64(), e["error"]["code"].as_str()),
        (Some("reply"), Some(31), Some("bad_request"))
    );
    c.send_text(r#"{"type":"subscribe","id":32}"#).await.unwrap();
    assert_eq!(c.frame().await["error"]["code"], "bad_request");

    // Still delivering after all that.
    c.subscribe("project:p1").await;
    let seq = publish_durable(
        &client,
        "tidings.events.project.p1",
        json!({"event":"after_bad_input","data":{"ok":true}}),
    )
    .await;
    let m = expect_message(&mut c, "project:p1").await;
    assert_eq!(
        (m["event"].as_str(), m["seq"].as_u64()),
        (Some("after_bad_input"), Some(seq))
    );

    // An oversized frame closes with 1009.
    c.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(8000)))
        .await
        .unwrap();
    assert_eq!(c.close_code().await, 1009);
}
