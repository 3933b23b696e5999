//! Resuming without loss against a real NATS: SSE from `Last-Event-ID` across channels, and
//! a WebSocket client that missed nothing resuming without reading anything back.

mod common;

use std::time::Duration;

use common::{channel, connect, gateways, publish, user_token};
use serde_json::{Value, json};
use tidings_tests::{NatsServer, SseEvents};

#[tokio::test]
async fn sse_resumes_from_last_event_id_across_channels() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let token = user_token("u1", &["*"], &[]);
    let http = reqwest::Client::new();
    let url = format!("{}/sse?channels=project:p5,project:p6", gw.base);

    let sse = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = SseEvents::new(sse);
    gw.wait_metric("tidings_gateway_subscriptions", 2.0, Duration::from_secs(5))
        .await;
    let first = publish(&js, &channel(5), 1).await;
    let text = sse.next(Duration::from_secs(10)).await;
    let last_id = text.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_owned();
    assert!(last_id.contains(&format!("project:p5={first}")), "{last_id}");
    drop(sse);

    // Missed while away: messages on both channels, including one that had none before.
    let missed = [publish(&js, &channel(6), 2).await, publish(&js, &channel(5), 3).await];
    let mut sse = SseEvents::new(
        http.get(&url)
            .bearer_auth(&token)
            .header("Last-Event-ID", &last_id)
            .send()
            .await
            .unwrap(),
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = sse.next(Duration::from_secs(10)).await;
        if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
            let v: Value = serde_json::from_str(data).unwrap();
            seen.push(v["seq"].as_u64().unwrap());
        }
    }
    let mut want = missed.to_vec();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
}

/// JetStream API calls on the events stream that the server audited
/// (`$JS.EVENT.ADVISORY.API`) until our own marker call shows up: what the gateway asked of
/// `TIDINGS_EVENTS` before the marker. Calls on other streams (the presence board creates its
/// bucket whenever its first debounced write happens) are not what these tests are about.
async fn events_calls_until_marker(
    audit: &mut async_nats::Subscriber,
    js: &async_nats::jetstream::Context,
) -> Vec<String> {
    use futures::StreamExt as _;
    js.get_stream("TIDINGS_NOTIFY").await.unwrap();
    let mut calls = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), audit.next())
            .await
            .expect("audit advisory in time")
            .expect("audit subscription open");
        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        let subject = v["subject"].as_str().unwrap_or_default().to_owned();
        if subject.contains("STREAM.INFO.TIDINGS_NOTIFY") {
            return calls;
        }
        if subject.contains(".TIDINGS_EVENTS") {
            calls.push(subject);
        }
    }
}

#[tokio::test]
async fn a_client_that_missed_nothing_resumes_without_reading_messages_back() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let token = user_token("u1", &["p1"], &[]);
    let ch = channel(1);

    // Another connection keeps the channel live on this gateway.
    let mut keeper = connect(&gw, &token).await;
    let epoch = keeper.subscribe("project:p1").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let s1 = publish(&js, &ch, 1).await;
    let s2 = publish(&js, &ch, 2).await;
    assert_eq!(keeper.frame_of("message").await["seq"], s1);
    assert_eq!(keeper.frame_of("message").await["seq"], s2);

    let mut audit = client.subscribe("$JS.EVENT.ADVISORY.API").await.unwrap();
    client.flush().await.unwrap();

    // Behind by one: read back from the stream.
    let mut behind = connect(&gw, &token).await;
    let r = behind
        .request(
            json!({"type":"subscribe","channel":"project:p1","since":s1,"epoch":epoch}),
            1,
        )
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(true), Some(1)),
        "{r}"
    );
    assert_eq!(behind.frame_of("message").await["seq"], s2);
    let calls = events_calls_until_marker(&mut audit, &js).await;
    assert!(
        calls.iter().any(|c| c.contains("CONSUMER.CREATE.TIDINGS_EVENTS")),
        "a replay reads the stream: {calls:?}"
    );

    // Up to date: answered from what the gateway already knows, once the epoch is confirmed
    // (by the stream's info, or by a read of it within the last second, as here); no
    // consumer is created to read messages back.
    // (Another channel's message makes the stream longer than this channel, so reading it
    // back would take a consumer.)
    publish(&js, &channel(2), 0).await;
    let mut current = connect(&gw, &token).await;
    let r = current
        .request(
            json!({"type":"subscribe","channel":"project:p1","since":s2,"epoch":epoch}),
            1,
        )
        .await;
    assert_eq!(
        (
            r["ok"].as_bool(),
            r["recovered"].as_bool(),
            r["missed"].as_u64(),
            r["epoch"].as_str()
        ),
        (Some(true), Some(true), Some(0), Some(epoch.as_str())),
        "{r}"
    );
    let calls = events_calls_until_marker(&mut audit, &js).await;
    assert!(
        calls.iter().all(|c| c.ends_with("STREAM.INFO.TIDINGS_EVENTS")),
        "at most the stream's info for an up-to-date client: {calls:?}"
    );

    // And it misses nothing after: the next message arrives once, chained to s2.
    let s3 = publish(&js, &ch, 3).await;
    let m = current.frame_of("message").await;
    assert_eq!((m["seq"].as_u64(), m["prev"].as_u64()), (Some(s3), Some(s2)), "{m}");
    assert_eq!(behind.frame_of("message").await["seq"], s3);
}
