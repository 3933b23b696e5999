//! Helpers shared by the gateway's integration tests: this crate's gateway binary and secret
//! for [`tidings_tests::gateway`], and tokens signed with that secret.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use tidings_shared::Channel;
use tidings_shared::auth::Claims;
pub use tidings_tests::gateway::{Gateway, Launcher};
pub use tidings_tests::tokens::claims;
use tidings_tests::{Incoming, TokenIn, WsClient, tokens};

pub const SECRET: &str = "gateway-test-secret-at-least-32-bytes";
pub const BIN: &str = env!("CARGO_BIN_EXE_tidings-gateway");

/// Gateways of these tests: this crate's binary, this file's secret.
pub fn gateways() -> Launcher {
    Launcher {
        bin: BIN.into(),
        secret: SECRET.into(),
    }
}

/// `c` signed with the gateways' secret.
pub fn sign(c: &Claims) -> String {
    tokens::sign(c, SECRET)
}

/// A user token: reads `projects`, publishes to `publish`.
pub fn user_token(sub: &str, projects: &[&str], publish: &[&str]) -> String {
    sign(&claims(sub, projects, publish, 600))
}

pub fn service_token() -> String {
    sign(&tokens::service(claims("ops", &[], &[], 600)))
}

/// A WebSocket client authenticated with `token` (query), past its `welcome`.
pub async fn connect(gw: &Gateway, token: &str) -> WsClient {
    let mut c = WsClient::connect(&gw.base, TokenIn::Query(token.to_owned()), None)
        .await
        .unwrap();
    let welcome = c.frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    c
}

/// Publishes `body` to JetStream on `subject`; its stream sequence.
pub async fn publish_durable(nats: &async_nats::Client, subject: &str, body: Value) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    js.publish(subject.to_owned(), body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// The next `message` frame, which must be on `channel`.
pub async fn expect_message(c: &mut WsClient, channel: &str) -> Value {
    let m = c.frame_of("message").await;
    assert_eq!(m["channel"], channel, "{m}");
    m
}

/// Nothing arrives within `d` (used after a message that must arrive has been seen elsewhere).
pub async fn expect_silence(c: &mut WsClient, d: Duration) {
    if let Some(Incoming::Frame(f)) = c.recv_timeout(d).await {
        panic!("unexpected frame {f}");
    }
}

/// The test channel `project:p<i>`.
pub fn channel(i: usize) -> Channel {
    Channel::parse(&format!("project:p{i}")).unwrap()
}

/// Publishes message `n` (`{"event":"e","data":{"n":n}}`) durably on `ch`; its stream sequence.
pub async fn publish(js: &async_nats::jetstream::Context, ch: &Channel, n: u64) -> u64 {
    let body = json!({"event":"e","data":{"n":n}}).to_string();
    js.publish(ch.durable_subject(), body.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}
