//! Attacks on the gateway's connections, performed against a real gateway and a real NATS:
//! half-sent requests (slowloris), peers that stop reading, replays to peers that stop
//! reading, connection and request floods. Each shows the node survives, others are served
//! and nothing is lost.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tidings_tests::nats::NatsServer;
use tidings_tests::{TokenIn, WsClient, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// Opens `n` connections that send half a request head and then nothing.
async fn half_sent(gw: &Gateway, n: usize) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr(gw)).await.unwrap();
        s.write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        socks.push(s);
    }
    socks
}

/// Whether the server closed `s` (EOF or reset, after an optional 408 answer).
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // an error answer before the close
        }
    }
}

#[tokio::test]
async fn half_sent_requests_are_closed_while_new_clients_are_served() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_HEADER_READ_TIMEOUT_MS", "3000".into())])
        .await;
    let started = Instant::now();
    let mut slow = half_sent(&gw, 200).await;
    // A new client is served at once, the 200 notwithstanding.
    let mut c = connect(&gw, &user_token("u1", &["p1"], &[])).await;
    c.subscribe("project:p1").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served late: {:?}",
        started.elapsed()
    );
    for s in &mut slow {
        assert!(
            closed_by_server(s, Duration::from_secs(30)).await,
            "a half-sent request was left open"
        );
    }
    // The client is still served.
    assert_eq!(c.request(json!({"type":"ping"}), 7).await["type"], "pong");
}

#[tokio::test]
async fn sigterm_exits_within_drain_and_grace_whatever_is_open() {
    let nats = NatsServer::start().await.unwrap();
    let mut gw = gateways()
        .start(&nats.url(), &[("TIDINGS_DRAIN_MS", "2000".into())])
        .await;
    let _slow = half_sent(&gw, 200).await;
    // Keep-alive connections idle between requests, and a WebSocket client.
    let mut idle = TcpStream::connect(addr(&gw)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut c = connect(&gw, &user_token("u1", &["p1"], &[])).await;
    c.subscribe("project:p1").await;
    let started = Instant::now();
    gw.process.signal("TERM").unwrap();
    let exit = gw.process.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2 + 8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.close_code().await, 1012);
}

#[tokio::test]
async fn beyond_the_pending_cap_the_oldest_unauthenticated_connections_make_room() {
    let nats = NatsServer::start().await.unwrap();
    let limits = [
        ("TIDINGS_MAX_PENDING_CONNECTIONS", "50".to_owned()),
        // Long enough that only eviction can close the half-sent requests here.
        ("TIDINGS_HEADER_READ_TIMEOUT_MS", "60000".to_owned()),
    ];
    let gw = gateways().start(&nats.url(), &limits).await;
    let mut oldest = half_sent(&gw, 10).await;
    let mut newer = half_sent(&gw, 40).await;
    // The pool is full: a new client still gets in, health probes still answer, and the
    // connections that waited longest are the ones closed.
    let mut c = connect(&gw, &user_token("u1", &["p1"], &[])).await;
    c.subscribe("project:p1").await;
    // The client left the pool once authenticated: fill it again, then probe.
    newer.extend(half_sent(&gw, 1).await);
    assert_eq!(gw.status("/healthz").await, Some(200));
    for (i, s) in oldest[..2].iter_mut().enumerate() {
        let evicted = gw
            .metric("tidings_gateway_refused_connections_total{reason=\"pending_limit\"}")
            .await;
        assert!(
            closed_by_server(s, Duration::from_secs(10)).await,
            "oldest #{i} still open ({evicted} evicted)"
        );
    }
    // The newest are still open: they were not the ones to go.
    let last = newer.last_mut().unwrap();
    assert!(!closed_by_server(last, Duration::from_millis(500)).await);
    gw.wait_metric(
        "tidings_gateway_refused_connections_total{reason=\"pending_limit\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
}

/// Publishes `n` durable messages of `size` bytes of data on `ch`.
async fn fill(nats: &NatsServer, ch: &str, n: usize, size: usize) {
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = tidings_shared::Channel::parse(ch).unwrap().durable_subject();
    let body = json!({"event":"big","data":{"pad":"x".repeat(size)}}).to_string();
    let mut acks = Vec::new();
    for _ in 0..n {
        acks.push(js.publish(subject.clone(), body.clone().into()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// `field` of `/proc/<pid>/status` in KiB (`VmHWM:` is the peak resident size).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn replays_to_clients_that_stop_reading_are_bounded_and_cut_at_the_write_deadline() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_WRITE_DEADLINE_MS", "2000".into())])
        .await;
    // 40 MB of history on one channel.
    fill(&nats, "project:big", 800, 50_000).await;
    let token = user_token("u1", &["big"], &[]);
    let before = status_kib(gw.process.pid(), "VmHWM:");
    // Eight clients ask for all of it and never read (tiny receive buffers).
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut c = WsClient::connect_with(&gw.base, TokenIn::Query(token.clone()), None, Some(4096))
            .await
            .unwrap();
        c.send(json!({"type":"subscribe","id":1,"channel":"project:big","since":0}))
            .await
            .unwrap();
        stalled.push(c);
    }
    gw.wait_metric("tidings_gateway_write_timeouts_total", 8.0, Duration::from_secs(30))
        .await;
    // The peak, not what is left after the release.
    let grown_mib = status_kib(gw.process.pid(), "VmHWM:").saturating_sub(before) / 1024;
    // Buffered whole, that would be 8 × 40 MB; each replay holds about its budget (1 MiB).
    assert!(grown_mib < 64, "gateway grew by {grown_mib} MiB");
    eventually(Duration::from_secs(10), "stalled clients released", || async {
        (gw.metric("tidings_gateway_connections").await == 0.0).then_some(())
    })
    .await;
    // A reader gets the whole history, in order.
    let mut reader = connect(&gw, &token).await;
    reader
        .send(json!({"type":"subscribe","id":1,"channel":"project:big","since":0}))
        .await
        .unwrap();
    let mut last = 0;
    for _ in 0..800 {
        let m = reader.frame_of("message").await;
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last, "out of order: {seq} after {last}");
        last = seq;
    }
}

#[tokio::test]
async fn a_live_client_that_stops_reading_is_closed_and_readers_get_everything() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(
            &nats.url(),
            &[
                ("TIDINGS_WRITE_DEADLINE_MS", "2000".into()),
                // A queue deep enough that the write deadline, not the queue, trips first.
                ("TIDINGS_OUTBOUND_QUEUE", "100000".into()),
            ],
        )
        .await;
    let token = user_token("u1", &["live"], &[]);
    let mut stalled = WsClient::connect_with(&gw.base, TokenIn::Query(token.clone()), None, Some(4096))
        .await
        .unwrap();
    stalled.subscribe("project:live").await;
    let mut reader = connect(&gw, &token).await;
    reader.subscribe("project:live").await;
    fill(&nats, "project:live", 300, 20_000).await;
    let mut last = 0;
    for _ in 0..300 {
        let seq = reader.frame_of("message").await["seq"].as_u64().unwrap();
        assert!(seq > last);
        last = seq;
    }
    gw.wait_metric("tidings_gateway_write_timeouts_total", 1.0, Duration::from_secs(15))
        .await;
    eventually(Duration::from_secs(10), "the stalled client is gone", || async {
        (gw.metric("tidings_gateway_connections").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_released() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_WRITE_DEADLINE_MS", "2000".into())])
        .await;
    let token = user_token("u1", &["sse"], &[]);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr(&gw).parse().unwrap()).await.unwrap();
    let head = format!("GET /sse?channels=project:sse&token={token} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    gw.wait_metric("tidings_gateway_connections", 1.0, Duration::from_secs(10))
        .await;
    fill(&nats, "project:sse", 300, 20_000).await;
    gw.wait_metric("tidings_gateway_write_timeouts_total", 1.0, Duration::from_secs(20))
        .await;
    eventually(Duration::from_secs(10), "the SSE client is released", || async {
        (gw.metric("tidings_gateway_connections").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connections_per_user_are_capped_but_not_for_services() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_MAX_CONNECTIONS_PER_USER", "2".into())])
        .await;
    let token = user_token("u1", &["p1"], &[]);
    let _a = connect(&gw, &token).await;
    let _b = connect(&gw, &token).await;
    let mut third = WsClient::connect(&gw.base, TokenIn::Query(token.clone()), None)
        .await
        .unwrap();
    assert_eq!(third.close_code().await, 4008);
    // Another user is not affected; nor are service tokens.
    let _other = connect(&gw, &user_token("u2", &["p1"], &[])).await;
    let mut services = Vec::new();
    for _ in 0..3 {
        services.push(connect(&gw, &service_token()).await);
    }
    for (i, s) in services.iter_mut().enumerate() {
        assert_eq!(s.request(json!({"type":"ping"}), i as u64).await["type"], "pong");
    }
    gw.wait_metric(
        "tidings_gateway_refused_connections_total{reason=\"user_limit\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn command_costs_and_control_frames_count_against_the_limit() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(
            &nats.url(),
            &[
                ("TIDINGS_COMMAND_RATE", "1".into()),
                ("TIDINGS_COMMAND_BURST", "20".into()),
            ],
        )
        .await;
    // Presence reads a KV stream: 4 tokens each, so the sixth of a burst of 20 is refused.
    let mut c = connect(&gw, &user_token("u1", &["p1"], &[])).await;
    let mut refused_at = None;
    for i in 1..=8u64 {
        let r = c.request(json!({"type":"presence","channel":"project:p1"}), i).await;
        if r["ok"] == false {
            assert_eq!(r["error"]["code"], "rate_limited", "{r}");
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(refused_at, Some(6));
    // A flood of WebSocket pings (answered by the protocol layer) is counted too: 4008.
    let mut flooder = connect(&gw, &user_token("u2", &["p1"], &[])).await;
    for _ in 0..200 {
        if flooder.send_ping().await.is_err() {
            break;
        }
    }
    assert_eq!(flooder.close_code().await, 4008);
}

#[tokio::test]
async fn the_http_api_is_rate_limited_per_token_and_per_address_but_not_for_services() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(
            &nats.url(),
            &[
                ("TIDINGS_HTTP_RATE", "1".into()),
                ("TIDINGS_HTTP_BURST", "5".into()),
                ("TIDINGS_HTTP_ADDRESS_RATE", "1".into()),
                ("TIDINGS_HTTP_ADDRESS_BURST", "30".into()),
            ],
        )
        .await;
    let http = reqwest::Client::new();
    let get = |token: String| {
        let http = http.clone();
        let url = format!("{}/api/v1/channels/project:p1/history", gw.base);
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let user = user_token("u1", &["p1"], &[]);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get(user.clone()).await);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");
    // Another user from the same address still has the address's allowance.
    assert_eq!(get(user_token("u2", &["p1"], &[])).await, 200);
    // Service tokens are never limited.
    for _ in 0..40 {
        assert_eq!(get(service_token()).await, 200);
    }
    // Requests without a valid token exhaust the address's bucket.
    let mut last = 0;
    for _ in 0..40 {
        last = get("not-a-token".into()).await;
    }
    assert_eq!(last, 429);
    assert!(
        gw.metric("tidings_gateway_rate_limited_total{scope=\"http_address\"}")
            .await
            >= 1.0
    );
    assert!(
        gw.metric("tidings_gateway_rate_limited_total{scope=\"http_token\"}")
            .await
            >= 1.0
    );
}
