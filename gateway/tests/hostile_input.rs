//! Hostile input, performed against a real gateway and a real NATS: frames and bodies that
//! blow up when encoded or parsed, ids that collide across channels, oversized cursors,
//! presence of everyone, bad settings, and a NATS connection that goes away and comes back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tidings_shared::Channel;
use tidings_tests::nats::NatsServer;
use tidings_tests::{SseEvents, TokenIn, WsClient, eventually};

async fn publish_raw(nats: &async_nats::Client, ch: &str, body: Vec<u8>, msgpack: bool) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    let mut headers = async_nats::HeaderMap::new();
    if msgpack {
        headers.insert("Content-Type", "application/msgpack");
    }
    let subject = Channel::parse(ch).unwrap().durable_subject();
    js.publish_with_headers(subject, headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn a_body_that_explodes_as_json_is_rejected_once_and_breaks_no_connection() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let token = user_token("u1", &["p1"], &[]);
    let mut json_client = connect(&gw, &token).await;
    json_client.subscribe("project:p1").await;
    let mut packed = WsClient::connect(&gw.base, TokenIn::Query(token.clone()), Some("tidings.v1.msgpack"))
        .await
        .unwrap();
    assert_eq!(packed.frame().await["type"], "welcome");
    packed.subscribe("project:p1").await;
    let client = nats.client().await.unwrap();
    // 60,000 nils: 60 KB as MessagePack (under the payload limit), 300 KB as JSON.
    let nils = rmp_serde::to_vec_named(&json!({"event":"e","data": vec![Value::Null; 60_000]})).unwrap();
    assert!(nils.len() < 65_536);
    publish_raw(&client, "project:p1", nils, true).await;
    let next = publish_raw(
        &client,
        "project:p1",
        json!({"event":"after"}).to_string().into_bytes(),
        false,
    )
    .await;
    for c in [&mut json_client, &mut packed] {
        let m = expect_message(c, "project:p1").await;
        assert_eq!(
            (m["event"].as_str(), m["seq"].as_u64()),
            (Some("after"), Some(next)),
            "{m}"
        );
    }
    assert!(
        gw.metric("tidings_gateway_rejected_messages_total{reason=\"frame_too_large\"}")
            .await
            >= 1.0
    );
    // A client resuming from before it gets the same, and stays connected.
    let mut resumed = connect(&gw, &token).await;
    let reply = resumed
        .request(json!({"type":"subscribe","channel":"project:p1","since":0}), 1)
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(expect_message(&mut resumed, "project:p1").await["seq"], next);
    assert_eq!(resumed.request(json!({"type":"ping"}), 2).await["type"], "pong");
}

#[tokio::test]
async fn a_frame_within_a_raised_outbound_limit_reaches_json_clients() {
    let nats = NatsServer::start().await.unwrap();
    let limits = [
        ("TIDINGS_MAX_PAYLOAD_BYTES", "200000".to_owned()),
        ("TIDINGS_MAX_OUTBOUND_FRAME_BYTES", "1048576".to_owned()),
        ("TIDINGS_REPLAY_BUDGET_BYTES", "2097152".to_owned()),
    ];
    let gw = gateways().start(&nats.url(), &limits).await;
    let mut c = connect(&gw, &user_token("u1", &["p1"], &[])).await;
    c.subscribe("project:p1").await;
    // 150 KB as MessagePack, 750 KB as JSON: within the raised limit, so delivered.
    let nils = rmp_serde::to_vec_named(&json!({"event":"e","data": vec![Value::Null; 150_000]})).unwrap();
    let client = nats.client().await.unwrap();
    let seq = publish_raw(&client, "project:p1", nils, true).await;
    let m = expect_message(&mut c, "project:p1").await;
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_array().map(Vec::len)),
        (Some(seq), Some(150_000))
    );
}

fn deep_json(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn deep_msgpack(depth: usize) -> Vec<u8> {
    let mut v = vec![0x91u8; depth];
    v.push(0xc0);
    v
}

#[tokio::test]
async fn sixty_thousand_deep_input_is_refused_everywhere() {
    let nats = NatsServer::start().await.unwrap();
    let big = [
        ("TIDINGS_MAX_FRAME_BYTES", "262144".to_owned()),
        ("TIDINGS_MAX_PAYLOAD_BYTES", "200000".to_owned()),
    ];
    let gw = gateways().start(&nats.url(), &big).await;
    // Before auth: as the first frame, in both formats (JSON as text, MessagePack binary).
    let mut c = WsClient::connect(&gw.base, TokenIn::None, None).await.unwrap();
    c.send_text(&deep_json(60_000)).await.unwrap();
    assert_eq!(c.close_code().await, 4001);
    let mut c = WsClient::connect(&gw.base, TokenIn::None, None).await.unwrap();
    c.send_binary(deep_msgpack(60_000)).await.unwrap();
    assert_eq!(c.close_code().await, 4001);
    assert_eq!(gw.status("/healthz").await, Some(200));
    // After auth: an error, and the connection goes on.
    let token = user_token("u1", &["p1"], &["project:p1"]);
    let mut c = connect(&gw, &token).await;
    c.send_text(&deep_json(60_000)).await.unwrap();
    let err = c.frame().await;
    assert_eq!(err["error"]["code"], "bad_request", "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("nested deeper"),
        "{err}"
    );
    c.send_binary(deep_msgpack(60_000)).await.unwrap();
    assert_eq!(c.frame().await["error"]["code"], "bad_request");
    // 70 deep: within serde_json's and rmp-serde's own limits (128, 1024), over Tidings' 64.
    let nested: Value = serde_json::from_str(&deep_json(70)).unwrap();
    let packed =
        rmp_serde::to_vec_named(&json!({"type":"publish","channel":"project:p1","event":"e","data":nested,"id":3}))
            .unwrap();
    for frame in [deep_json(70).into_bytes(), packed] {
        if frame[0] == b'[' {
            c.send_text(std::str::from_utf8(&frame).unwrap()).await.unwrap();
        } else {
            c.send_binary(frame).await.unwrap();
        }
        let err = c.frame().await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("nested deeper than 64"),
            "{err}"
        );
    }
    c.subscribe("project:p1").await;
    // A publisher body, over NATS: dropped and counted; the next message arrives.
    let client = nats.client().await.unwrap();
    let body = format!(r#"{{"event":"e","data":{}}}"#, deep_json(60_000));
    publish_raw(&client, "project:p1", body.into_bytes(), false).await;
    publish_raw(&client, "project:p1", deep_msgpack(60_000), true).await;
    let next = publish_raw(&client, "project:p1", br#"{"event":"after"}"#.to_vec(), false).await;
    assert_eq!(expect_message(&mut c, "project:p1").await["seq"], next);
    assert!(
        gw.metric("tidings_gateway_rejected_messages_total{reason=\"invalid\"}")
            .await
            >= 2.0
    );
    // Over HTTP: 400.
    let body = format!(r#"{{"channel":"project:p1","event":"e","data":{}}}"#, deep_json(60_000));
    let status = reqwest::Client::new()
        .post(format!("{}/api/v1/publish", gw.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
    // A client `publish` nesting its data 65 deep (within the frame limit): refused.
    let r = c
        .request(json!({"type":"publish","channel":"project:p1","event":"e","data": serde_json::from_str::<Value>(&deep_json(63)).unwrap()}), 9)
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
}

#[tokio::test]
async fn the_same_message_id_on_two_channels_is_two_messages() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let mut reader = connect(&gw, &user_token("ur", &["pa", "pb"], &[])).await;
    reader.subscribe("project:pa").await;
    reader.subscribe("project:pb").await;
    let mut a = connect(&gw, &user_token("ua", &["pa"], &["project:pa"])).await;
    let mut b = connect(&gw, &user_token("ub", &["pb"], &["project:pb"])).await;
    let publish =
        |ch: &str| json!({"type":"publish","channel":ch,"event":"e","data":{},"durable":true,"msg_id":"same-id"});
    let ra = a.request(publish("project:pa"), 1).await;
    let rb = b.request(publish("project:pb"), 1).await;
    assert_eq!((ra["ok"].as_bool(), rb["ok"].as_bool()), (Some(true), Some(true)));
    assert_ne!(ra["seq"], rb["seq"], "{ra} {rb}");
    let mut seen = vec![
        reader.frame_of("message").await["channel"].as_str().unwrap().to_owned(),
        reader.frame_of("message").await["channel"].as_str().unwrap().to_owned(),
    ];
    seen.sort();
    assert_eq!(seen, ["project:pa", "project:pb"]);
    // The same id again from the same caller on the same channel is still one message.
    let again = a.request(publish("project:pa"), 2).await;
    assert_eq!(again["seq"], ra["seq"]);
}

#[tokio::test]
async fn users_see_counts_of_broadcast_and_services_the_list() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = connect(&gw, &user_token(&format!("u{i}"), &[], &[])).await;
        c.subscribe("broadcast").await;
        clients.push(c);
    }
    let http = reqwest::Client::new();
    let get = |token: String| {
        let (http, url) = (http.clone(), format!("{}/api/v1/channels/broadcast/presence", gw.base));
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let as_user = get(user_token("u0", &[], &[])).await;
    assert_eq!(as_user["users"], json!([]), "{as_user}");
    assert_eq!(
        (as_user["connections"].as_u64(), as_user["user_count"].as_u64()),
        (Some(3), Some(3))
    );
    let as_service = get(service_token()).await;
    assert_eq!(as_service["users"], json!(["u0", "u1", "u2"]), "{as_service}");
    let over_ws = clients[0]
        .request(json!({"type":"presence","channel":"broadcast"}), 5)
        .await;
    assert_eq!(over_ws["users"], json!([]), "{over_ws}");
}

#[tokio::test]
async fn settings_out_of_range_or_inconsistent_stop_the_gateway_with_code_2() {
    let nats = NatsServer::start().await.unwrap();
    for (extra, says) in [
        (vec![("TIDINGS_JWT_SECRET", "too-short".to_owned())], "at least 32"),
        (
            vec![("TIDINGS_HEARTBEAT_MS", "99999999999999".to_owned())],
            "--heartbeat-ms",
        ),
        (
            vec![
                ("TIDINGS_MAX_PAYLOAD_BYTES", "1000000".to_owned()),
                ("TIDINGS_MAX_OUTBOUND_FRAME_BYTES", "262144".to_owned()),
            ],
            "TIDINGS_MAX_OUTBOUND_FRAME_BYTES",
        ),
        (
            vec![("TIDINGS_WRITE_DEADLINE_MS", "0".to_owned())],
            "--write-deadline-ms",
        ),
        (
            vec![("TIDINGS_DRAIN_MS", "18446744073709551615".to_owned())],
            "--drain-ms",
        ),
    ] {
        let mut gw = gateways().spawn(&nats.url(), &extra);
        let exit = gw.process.wait_exit(Duration::from_secs(10)).await.expect("exits");
        assert_eq!(exit.code(), Some(2), "{extra:?}: {}", gw.process.log());
        assert!(gw.process.log().contains(says), "{extra:?}: {}", gw.process.log());
    }
}

#[tokio::test]
async fn sse_cursors_are_bounded_and_keep_only_the_listed_channels() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let token = user_token("u1", &["*"], &[]);
    let http = reqwest::Client::new();
    let url = format!("{}/sse?channels=project:p1", gw.base);
    let huge = format!("e1;w1;{}", "project:x=1;".repeat(8_000));
    let status = http
        .get(&url)
        .bearer_auth(&token)
        .header("last-event-id", &huge)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status == 400 || status == 431, "{status}");
    // A cursor naming 2,000 channels, for a stream of one: ids carry that one only.
    let client = nats.client().await.unwrap();
    let seq = publish_raw(&client, "project:p1", br#"{"event":"e"}"#.to_vec(), false).await;
    let epoch = {
        let js = async_nats::jetstream::new(client.clone());
        let mut s = js.get_stream("TIDINGS_EVENTS").await.unwrap();
        s.info().await.unwrap().created.unix_timestamp_nanos().to_string()
    };
    let many: String = (0..2_000).map(|i| format!(";project:c{i}=1")).collect();
    let cursor = format!("e{epoch};w0{many}");
    let resp = http
        .get(&url)
        .bearer_auth(&token)
        .header("last-event-id", cursor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = SseEvents::new(resp);
    let event = events.next(Duration::from_secs(10)).await;
    let id = event
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(id, format!("e{epoch};w0;project:p1={seq}"));
}

/// A TCP proxy in front of NATS whose links can be cut and healed.
struct Proxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    continue; // dropped: refused while cut
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test]
async fn after_a_nats_reconnect_quiet_channels_get_what_they_missed() {
    let nats = NatsServer::start().await.unwrap();
    let proxy = Proxy::start(nats.url().trim_start_matches("nats://").to_owned()).await;
    let gw = gateways().start(&proxy.url(), &[]).await;
    let mut c = connect(&gw, &user_token("u1", &["quiet"], &[])).await;
    c.subscribe("project:quiet").await;
    proxy.set(false);
    gw.wait_status("/readyz", 503, Duration::from_secs(15)).await;
    let client = nats.client().await.unwrap();
    let mut sent = Vec::new();
    for n in 0..5 {
        let body = json!({"event":"e","data":{"n":n}}).to_string().into_bytes();
        sent.push(publish_raw(&client, "project:quiet", body, false).await);
    }
    proxy.set(true);
    // Nothing else is published: the missed messages must come by themselves.
    for want in &sent {
        let m = c.frame_of("message").await;
        assert_eq!(m["seq"].as_u64(), Some(*want), "{m}");
    }
    eventually(Duration::from_secs(5), "readiness back", || async {
        (gw.status("/readyz").await == Some(200)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn presence_lists_are_bounded_however_many_are_online() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let mut clients = Vec::new();
    for i in 0..1_001 {
        let mut c = connect(&gw, &user_token(&format!("u{i}"), &[], &[])).await;
        c.subscribe("broadcast").await;
        clients.push(c);
    }
    let p = reqwest::Client::new()
        .get(format!("{}/api/v1/channels/broadcast/presence", gw.base))
        .bearer_auth(service_token())
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(p["users"].as_array().map(Vec::len), Some(1_000), "{}", p["user_count"]);
    assert_eq!(
        (p["user_count"].as_u64(), p["connections"].as_u64()),
        (Some(1_001), Some(1_001))
    );
    assert_eq!(p["truncated"], true);
    // The entry this node wrote is bounded too: another node reads at most 1,000 names.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let kv = js.get_key_value("TIDINGS_PRESENCE").await.unwrap();
    let key = format!("broadcast.gw-{}", gw.port());
    let entry = eventually(
        Duration::from_secs(15),
        "the node's broadcast entry with everyone",
        || async {
            let bytes = kv.get(&key).await.ok().flatten()?;
            let entry: Value = serde_json::from_slice(&bytes).ok()?;
            (entry["user_count"] == 1_001).then_some(entry)
        },
    )
    .await;
    assert_eq!(entry["users"].as_array().map(Vec::len), Some(1_000));
}
