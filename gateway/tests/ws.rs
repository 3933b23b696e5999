//! The WebSocket edge against a real NATS: fan-out across two gateways, backpressure, limits,
//! heartbeats, drain and both wire formats.

mod common;

use std::time::Duration;

use common::{Gateway, connect, expect_message, expect_silence, gateways, publish_durable, service_token, user_token};
use serde_json::{Value, json};
use tidings_tests::{NatsServer, SseEvents, TokenIn, WsClient, eventually, http_get};

#[tokio::test]
async fn fan_out_reaches_every_subscriber_on_two_gateways_and_no_one_else() {
    let nats = NatsServer::start().await.unwrap();
    let gw1 = gateways().start(&nats.url(), &[]).await;
    let gw2 = gateways().start(&nats.url(), &[]).await;
    let client = nats.client().await.unwrap();
    let token = user_token("u1", &["p1", "p2"], &[]);
    let mut a = connect(&gw1, &token).await;
    let mut b = connect(&gw1, &token).await;
    let mut c = connect(&gw2, &token).await;
    let mut other = connect(&gw2, &token).await;
    for x in [&mut a, &mut b, &mut c] {
        x.subscribe("project:p1").await;
    }
    other.subscribe("project:p2").await;

    let s1 = publish_durable(
        &client,
        "tidings.events.project.p1",
        json!({"event":"run_progress","data":{"pct":10},"id":"m1"}),
    )
    .await;
    let s2 = publish_durable(
        &client,
        "tidings.events.project.p1",
        json!({"event":"run_progress","data":{"pct":20}}),
    )
    .await;
    for x in [&mut a, &mut b, &mut c] {
        let m1 = expect_message(x, "project:p1").await;
        assert_eq!(
            (m1["id"].as_str(), m1["seq"].as_u64(), m1["prev"].as_u64()),
            (Some("m1"), Some(s1), Some(0))
        );
        assert_eq!(m1["data"]["pct"], 10);
        assert!(m1["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{m1}");
        let m2 = expect_message(x, "project:p1").await;
        assert_eq!((m2["seq"].as_u64(), m2["prev"].as_u64()), (Some(s2), Some(s1)));
        assert!(m2["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    // Ephemeral messages: no seq, no prev.
    client
        .publish(
            "tidings.live.project.p1",
            json!({"event":"typing","data":"u9"}).to_string().into(),
        )
        .await
        .unwrap();
    for x in [&mut a, &mut b, &mut c] {
        let m = expect_message(x, "project:p1").await;
        assert_eq!(m["event"], "typing");
        assert!(m.get("seq").is_none() && m.get("prev").is_none(), "{m}");
    }
    expect_silence(&mut other, Duration::from_millis(300)).await;

    bad_bodies_are_dropped_and_counted(&client, [&mut a, &mut b, &mut c], [&gw1, &gw2]).await;

    // Unsubscribing the last local subscriber drops gw2's NATS subscription; gw1 keeps its own.
    let r = c
        .request(json!({"type":"unsubscribe","channel":"project:p1"}), 40)
        .await;
    assert_eq!(r["ok"], true);
    let monitor = format!("{}/subsz?subs=1", nats.monitor_url());
    let count = |text: &str| text.matches("tidings.stored.project.p1").count();
    eventually(Duration::from_secs(5), "one stored subscription left (gw1)", || async {
        let (_, body) = http_get(&monitor, None).await?;
        (count(&body) == 1).then_some(())
    })
    .await;
    publish_durable(&client, "tidings.events.project.p1", json!({"event":"after_unsub"})).await;
    assert_eq!(expect_message(&mut a, "project:p1").await["event"], "after_unsub");
    expect_silence(&mut c, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4009_while_100_others_get_everything() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_OUTBOUND_QUEUE", "32".into())])
        .await;
    let client = nats.client().await.unwrap();
    let token = user_token("u1", &["p1"], &[]);
    let mut fast = Vec::new();
    for _ in 0..100 {
        let mut c = connect(&gw, &token).await;
        c.subscribe("project:p1").await;
        fast.push(c);
    }
    // The slow client never reads; a tiny receive buffer makes that visible quickly.
    let mut slow = WsClient::connect_with(&gw.base, TokenIn::Query(token.clone()), None, Some(4096))
        .await
        .unwrap();
    assert_eq!(slow.frame().await["type"], "welcome");
    slow.subscribe("project:p1").await;

    // The publisher goes in batches of 16 and waits for the 100 readers to take each one, so
    // that they stay within their queue of 32 however slowly this test process schedules
    // them; the slow client falls further behind with every batch.
    const N: usize = 480;
    const BATCH: usize = 16;
    let pad = "x".repeat(16 * 1024);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut c| {
            let received = received.clone();
            tokio::spawn(async move {
                for i in 0..N {
                    let m = c.frame_of("message").await;
                    assert_eq!(m["data"]["i"], i, "gap or reorder");
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let js = async_nats::jetstream::new(client.clone());
    for batch in 0..N / BATCH {
        for i in batch * BATCH..(batch + 1) * BATCH {
            let body = json!({"event":"bulk","data":{"i":i,"pad":pad}}).to_string();
            js.publish("tidings.events.project.p1", body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let want = 100 * (batch + 1) * BATCH;
        eventually(Duration::from_secs(20), "readers caught up", || async {
            (received.load(std::sync::atomic::Ordering::Relaxed) >= want).then_some(())
        })
        .await;
    }
    for r in readers {
        r.await.unwrap();
    }
    gw.wait_metric(
        "tidings_gateway_slow_consumer_disconnects_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(slow.close_code().await, 4009);
}

#[tokio::test]
async fn limits_rate_subscriptions_and_connections() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(
            &nats.url(),
            &[
                ("TIDINGS_COMMAND_RATE", "1".into()),
                // Three subscribes cost 2 tokens each; pings 1.
                ("TIDINGS_COMMAND_BURST", "6".into()),
                ("TIDINGS_MAX_SUBSCRIPTIONS", "2".into()),
                ("TIDINGS_MAX_CONNECTIONS", "3".into()),
            ],
        )
        .await;
    let token = user_token("u1", &["*"], &[]);

    let mut subs = connect(&gw, &token).await;
    subs.subscribe("project:a").await;
    subs.subscribe("project:b").await;
    let r = subs.request(json!({"type":"subscribe","channel":"project:c"}), 1).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");

    let mut spammer = connect(&gw, &token).await;
    let mut codes = Vec::new();
    for i in 0..7 {
        let r = spammer.request(json!({"type":"ping"}), 100 + i).await;
        codes.push(
            r["error"]["code"]
                .as_str()
                .unwrap_or(r["type"].as_str().unwrap_or_default())
                .to_owned(),
        );
    }
    assert_eq!(codes[..6], ["pong"; 6]);
    assert_eq!(codes[6], "rate_limited");
    for i in 0..10 {
        if spammer.send(json!({"type":"ping","id":200 + i})).await.is_err() {
            break;
        }
    }
    assert_eq!(spammer.close_code().await, 4008);

    // Connection limit: 3 per node (subs + two more), then 503 at upgrade.
    let _c2 = connect(&gw, &token).await;
    let _c3 = connect(&gw, &token).await;
    eventually(Duration::from_secs(5), "503 at the connection limit", || async {
        (WsClient::refused_status(&gw.base, &token).await == Some(503)).then_some(())
    })
    .await;

    drop(subs);
}

#[tokio::test]
async fn silent_peers_are_closed_after_two_heartbeats_and_live_ones_stay() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_HEARTBEAT_MS", "300".into())])
        .await;
    let token = user_token("u1", &["p1"], &[]);
    // This one never reads again, so it never answers the server's pings.
    let mut silent = connect(&gw, &token).await;
    silent.subscribe("project:p1").await;
    // This one keeps reading (tungstenite answers pings while reading).
    let mut live = connect(&gw, &token).await;
    live.subscribe("project:p1").await;
    let reader = tokio::spawn(async move {
        let end = live.close_code().await;
        panic!("the live client was closed ({end})");
    });
    eventually(
        Duration::from_secs(5),
        "the silent peer closed, its resources freed",
        || async {
            let conns = gw.metric("tidings_gateway_connections").await;
            let subs = gw.metric("tidings_gateway_subscriptions").await;
            (conns == 1.0 && subs == 1.0).then_some(())
        },
    )
    .await;
    // Both connected together, so the live one has also outlived two intervals.
    assert!(!reader.is_finished(), "the live client must stay connected");
    assert_eq!(silent.close_code().await, 1001);
    reader.abort();
}

#[tokio::test]
async fn sigterm_drains_with_reconnect_frames_and_1012() {
    let nats = NatsServer::start().await.unwrap();
    let mut gw = gateways()
        .start(&nats.url(), &[("TIDINGS_DRAIN_MS", "500".into())])
        .await;
    let token = user_token("u1", &["p1"], &[]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = connect(&gw, &token).await;
        c.subscribe("project:p1").await;
        clients.push(c);
    }
    gw.process.signal("TERM").unwrap();
    gw.wait_status("/readyz", 503, Duration::from_secs(2)).await;
    for c in &mut clients {
        let f = c.frame_of("reconnect").await;
        assert_eq!(f["reason"], "shutdown");
        assert!(f["retry_ms"].as_u64().is_some());
        assert_eq!(c.close_code().await, 1012);
    }
    let exit = gw
        .process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exit after drain");
    assert!(exit.success(), "{}", gw.process.log());
}

#[tokio::test]
async fn msgpack_clients_receive_the_same_content_as_json_clients() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let token = user_token("u1", &["p1"], &["project:p1"]);
    let mut json_client = WsClient::connect(&gw.base, TokenIn::Query(token.clone()), Some("tidings.v1.json"))
        .await
        .unwrap();
    let mut mp_client = WsClient::connect(&gw.base, TokenIn::Query(token.clone()), Some("tidings.v1.msgpack"))
        .await
        .unwrap();
    assert_eq!(json_client.frame().await["type"], "welcome");
    assert_eq!(mp_client.frame().await["type"], "welcome");
    json_client.subscribe("project:p1").await;
    mp_client.subscribe("project:p1").await;

    // A MessagePack publisher body, and a client publish (durable, idempotent).
    let body =
        rmp_serde::to_vec_named(&json!({"event":"pr_merged","data":{"pr":42,"title":"<b>x</b>"},"id":"mp-1"})).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    js.publish_with_headers("tidings.events.project.p1", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let a = json_client.frame_of("message").await;
    let b = mp_client.frame_of("message").await;
    assert_eq!(a, b);
    assert_eq!(a["data"]["title"], "<b>x</b>");

    let r1 = mp_client.request(json!({"type":"publish","channel":"project:p1","event":"chat","data":{"t":"hi"},"durable":true,"msg_id":"c-1"}), 5).await;
    assert_eq!(r1["ok"], true, "{r1}");
    let r2 = mp_client.request(json!({"type":"publish","channel":"project:p1","event":"chat","data":{"t":"hi"},"durable":true,"msg_id":"c-1"}), 6).await;
    assert_eq!(r1["seq"], r2["seq"], "a repeated msg_id is stored once");
    let a = json_client.frame_of("message").await;
    assert_eq!(
        (a["event"].as_str(), a["id"].as_str(), a["seq"].clone()),
        (Some("chat"), Some("c-1"), r1["seq"].clone())
    );
    expect_silence(&mut json_client, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn http_publish_presence_across_gateways_and_sse() {
    let nats = NatsServer::start().await.unwrap();
    let gw1 = gateways().start(&nats.url(), &[]).await;
    let gw2 = gateways().start(&nats.url(), &[]).await;
    let mut alice = connect(&gw1, &user_token("alice", &["p1"], &[])).await;
    let mut bob = connect(&gw2, &user_token("bob", &["p1"], &[])).await;
    alice.subscribe("project:p1").await;
    bob.subscribe("project:p1").await;

    let http = reqwest::Client::new();
    let svc = service_token();
    // SSE client on gw2.
    let sse = http
        .get(format!("{}/sse?channels=project:p1", gw2.base))
        .bearer_auth(user_token("carol", &["p1"], &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = SseEvents::new(sse);
    let forbidden = http
        .get(format!("{}/sse?channels=project:p9", gw2.base))
        .bearer_auth(user_token("carol", &["p1"], &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let publish = |id: &str| {
        http.post(format!("{}/api/v1/publish", gw1.base))
            .bearer_auth(&svc)
            .json(&json!({"channel":"project:p1","event":"validation_update","data":{"ok":true},"id":id}))
            .send()
    };
    let r = publish("h-1").await.unwrap();
    assert_eq!(r.status(), 202);
    let seq = r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    let again = publish("h-1").await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(again["seq"], seq, "same id, same seq");
    assert_eq!(expect_message(&mut alice, "project:p1").await["seq"], seq);
    assert_eq!(expect_message(&mut bob, "project:p1").await["seq"], seq);

    let text = sse.next(Duration::from_secs(10)).await;
    assert!(text.contains("event: message"), "{text}");
    assert!(text.contains(&format!(";project:p1={seq}\n")), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let frame: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["seq"].as_u64()),
        (Some("message"), Some(seq))
    );

    publish_errors_are_json(&http, &gw1, &svc).await;

    // Presence: alice on gw1, bob and carol on gw2, seen from both nodes.
    for gw in [&gw1, &gw2] {
        let url = format!("{}/api/v1/channels/project:p1/presence", gw.base);
        eventually(Duration::from_secs(10), "presence across gateways", || async {
            let (code, body) = http_get(&url, Some(&svc)).await?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["users"] == json!(["alice", "bob", "carol"]) && v["connections"] == 3).then_some(())
        })
        .await;
    }
    let r = alice
        .request(json!({"type":"presence","channel":"project:p1"}), 9)
        .await;
    assert_eq!(r["users"], json!(["alice", "bob", "carol"]));
    let r = alice
        .request(json!({"type":"presence","channel":"project:p2"}), 10)
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
}

/// Bad publisher bodies are dropped and counted (once per gateway), never delivered: the
/// `subscribers` of `project:p1` get the next good message instead.
async fn bad_bodies_are_dropped_and_counted(
    client: &async_nats::Client,
    subscribers: [&mut WsClient; 3],
    gateways: [&Gateway; 2],
) {
    for body in [
        "not json".to_owned(),
        json!({"event":"has space"}).to_string(),
        json!({"event":"huge","data":"z".repeat(70_000)}).to_string(),
    ] {
        client.publish("tidings.live.project.p1", body.into()).await.unwrap();
    }
    publish_durable(client, "tidings.events.project.p1", json!({"event":"after_bad_bodies"})).await;
    for x in subscribers {
        assert_eq!(expect_message(x, "project:p1").await["event"], "after_bad_bodies");
    }
    for gw in gateways {
        gw.wait_metric(
            "tidings_gateway_rejected_messages_total{reason=\"invalid\"}",
            2.0,
            Duration::from_secs(5),
        )
        .await;
        gw.wait_metric(
            "tidings_gateway_rejected_messages_total{reason=\"too_large\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    }
}

/// `POST /api/v1/publish` errors are JSON: a bad channel (400), a user token (403), too
/// large (413).
async fn publish_errors_are_json(http: &reqwest::Client, gw1: &Gateway, svc: &str) {
    let bad = http
        .post(format!("{}/api/v1/publish", gw1.base))
        .bearer_auth(svc)
        .json(&json!({"channel":"project:a.b","event":"x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"]["code"], "bad_channel");
    let denied = http
        .post(format!("{}/api/v1/publish", gw1.base))
        .bearer_auth(user_token("alice", &["p1"], &[]))
        .json(&json!({"channel":"project:p1","event":"x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let big = http
        .post(format!("{}/api/v1/publish", gw1.base))
        .bearer_auth(svc)
        .json(&json!({"channel":"project:p1","event":"x","data":"y".repeat(70_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
}
