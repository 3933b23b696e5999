//! In-app notifications end to end: delivered over WebSocket, then read.

mod common;

use std::time::Duration;

use serde_json::json;
use tidings_tests::{TokenIn, WsClient};

use common::*;

#[tokio::test]
async fn end_to_end_in_app_delivered_then_read() {
    let env = start(1).await;
    let mut ws = WsClient::connect(&env.gateway, TokenIn::Query(token("carol", false)), None)
        .await
        .unwrap();
    assert_eq!(ws.frame().await["type"], "welcome");
    ws.subscribe("user:carol").await;
    let (code, body) = env
        .notify(json!({"user":"carol","project":"p1","template":"pr_merged","data":{"pr":42,"title":"Fix <b>"},"priority":"high"}))
        .await;
    assert_eq!(code, 202);
    let id = body["id"].as_str().unwrap().to_owned();
    let m = ws.frame_of("message").await;
    assert_eq!(
        (m["channel"].as_str(), m["event"].as_str(), m["id"].as_str()),
        (Some("user:carol"), Some("notification"), Some(id.as_str()))
    );
    assert_eq!(m["data"]["title"], "PR #42 merged");
    assert_eq!(m["data"]["body"], "Fix <b>");
    ws.send(json!({"type":"ack","channel":"user:carol","seq":m["seq"]}))
        .await
        .unwrap();
    env.wait_channel(&id, "in_app", "delivered", Duration::from_secs(10))
        .await;

    let inbox_url = format!("{}/api/v1/users/carol/inbox?unread=true", env.gateway);
    let inbox = env.get_json(&inbox_url, &token("carol", false)).await;
    assert_eq!(inbox["unread"], 1, "{inbox}");
    assert_eq!(inbox["items"][0]["id"], id.as_str());
    assert_eq!(inbox["items"][0]["read"], false);
    let other = env
        .http
        .get(inbox_url.replace("carol", "dave"))
        .bearer_auth(token("carol", false))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let read = env
        .http
        .post(format!("{}/api/v1/users/carol/inbox/{id}/read", env.gateway))
        .bearer_auth(token("carol", false))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let s = env.wait_channel(&id, "in_app", "read", Duration::from_secs(10)).await;
    assert_eq!(s["status"], "read");
    let inbox = env.get_json(&inbox_url, &token("carol", false)).await;
    assert_eq!(inbox["unread"], 0, "{inbox}");
}

/// A user who may publish on their own channel stores look-alike `notification` messages,
/// naming another user's notification id and one of their own, and acks them: neither is
/// marked delivered (the first would be refused for the user alone; the second only because
/// the message is not one the worker stored). A real notification acked after them is
/// delivered, which shows the forged acks were handled (acks are handled in order by the
/// one worker).
#[tokio::test]
async fn forged_acks_do_not_mark_notifications_delivered() {
    let env = start(1).await;
    let in_app = |user: &str, pr: u32| json!({"user":user,"template":"pr_merged","data":{"pr":pr,"title":"t"},"priority":"high","channels":["in_app"]});
    let (code, body) = env.notify(in_app("carol", 1)).await;
    assert_eq!(code, 202);
    let victim = body["id"].as_str().unwrap().to_owned();
    let (_, body) = env.notify(in_app("mallory", 2)).await;
    let own = body["id"].as_str().unwrap().to_owned();
    env.wait_channel(&victim, "in_app", "sent", Duration::from_secs(10))
        .await;
    env.wait_channel(&own, "in_app", "sent", Duration::from_secs(10)).await;

    let mallory = tidings_tests::tokens::sign(
        &tidings_tests::tokens::claims("mallory", &["*"], &["user:mallory"], 3600),
        SECRET,
    );
    let mut ws = WsClient::connect(&env.gateway, TokenIn::Query(mallory), None)
        .await
        .unwrap();
    assert_eq!(ws.frame().await["type"], "welcome");
    ws.subscribe("user:mallory").await;
    for (i, id) in [&victim, &own].into_iter().enumerate() {
        let forged = ws
            .request(
                json!({"type":"publish","channel":"user:mallory","event":"notification","data":{"id":id},"durable":true,"msg_id":id}),
                i as u64 + 1,
            )
            .await;
        assert_eq!(forged["ok"], true, "{forged}");
        ws.send(json!({"type":"ack","channel":"user:mallory","seq":forged["seq"]}))
            .await
            .unwrap();
    }

    let (_, probe) = env.notify(in_app("mallory", 3)).await;
    let probe = probe["id"].as_str().unwrap().to_owned();
    let m = loop {
        let m = ws.frame_of("message").await;
        if m["id"] == probe.as_str() {
            break m;
        }
    };
    ws.send(json!({"type":"ack","channel":"user:mallory","seq":m["seq"]}))
        .await
        .unwrap();
    env.wait_channel(&probe, "in_app", "delivered", Duration::from_secs(10))
        .await;
    for id in [&victim, &own] {
        let status = env.status(id).await;
        assert_eq!(status["channels"]["in_app"]["status"], "sent", "{status}");
    }
}
