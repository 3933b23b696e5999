//! Durable delivery against real NATS (and a real 3-node NATS cluster): replay after
//! reconnect, no gap and no duplicate across gateway crashes, rolling restarts, NATS node
//! loss and slow-consumer kicks; retention and epochs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gateway, channel, connect, gateways, publish, user_token};
use serde_json::{Value, json};
use tidings_shared::Channel;
use tidings_shared::client::{Client, ClientOptions, Event};
use tidings_shared::frame::MessageFrame;
use tidings_tests::{NatsCluster, NatsServer, eventually, http_get, wait_for};

const CHANNELS: usize = 10;

/// Published sequences per channel, in publish order.
type Published = Arc<Mutex<BTreeMap<Channel, Vec<u64>>>>;

/// Publishes `rate` messages per second over `CHANNELS` channels for `duration`, through
/// JetStream with a `Nats-Msg-Id` per message, retrying each until it is stored (so a NATS
/// node loss loses and duplicates nothing on the publishing side either).
fn start_publisher(nats_urls: String, rate: u64, duration: Duration) -> (Published, tokio::task::JoinHandle<()>) {
    let published: Published = Arc::default();
    let out = published.clone();
    let task = tokio::spawn(async move {
        let addrs = tidings_shared::nats::server_addrs(&nats_urls).unwrap();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let per_tick = CHANNELS as u64;
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 * per_tick / rate));
        let total = rate * duration.as_millis() as u64 / 1000;
        let mut n = 0u64;
        while n < total {
            ticker.tick().await;
            for c in 0..CHANNELS {
                let ch = channel(c);
                let body = json!({"event":"tick","data":{"n":n}}).to_string();
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("pub-{n}").as_str());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let seq = loop {
                    let attempt = async {
                        js.publish_with_headers(ch.durable_subject(), headers.clone(), body.clone().into())
                            .await?
                            .await
                            .map_err(async_nats::Error::from)
                    };
                    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                        Ok(Ok(ack)) => break ack.sequence,
                        _ if tokio::time::Instant::now() > deadline => panic!("publish {n} never stored"),
                        _ => tokio::task::yield_now().await,
                    }
                };
                let mut p = out.lock().unwrap();
                let v = p.entry(ch).or_default();
                if v.last() != Some(&seq) {
                    v.push(seq);
                }
                n += 1;
            }
        }
    });
    (published, task)
}

/// What one client received: its messages, and any resets (a reset here is a failure,
/// recorded rather than panicked on, since the task's handle is dropped and a panic in it
/// would go unseen).
#[derive(Default)]
struct Inbox {
    messages: Vec<MessageFrame>,
    resets: Vec<Channel>,
}

impl Inbox {
    fn seqs(&self) -> Vec<u64> {
        self.messages.iter().filter_map(|m| m.seq).collect()
    }
}

/// What each client received, per client.
type Received = Arc<Mutex<Inbox>>;

fn start_client(urls: Vec<String>, token: &str, ch: Channel) -> (Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let out = received.clone();
    let mut client = Client::connect(ClientOptions::new(urls, token, vec![ch]));
    let task = tokio::spawn(async move {
        while let Some(ev) = client.next().await {
            match ev {
                Event::Message(m) => out.lock().unwrap().messages.push(m),
                Event::Reset { channel } => out.lock().unwrap().resets.push(channel),
            }
        }
    });
    (received, task)
}

/// Starts `n` clients over the channels, half preferring gateway `a` and half `b`, and
/// waits until all are subscribed.
async fn spread_clients(n: usize, a: &Gateway, b: &Gateway, token: &str) -> Vec<(Channel, Received)> {
    let clients: Vec<(Channel, Received)> = (0..n)
        .map(|i| {
            let ch = channel(i % CHANNELS);
            let urls = if i % 2 == 0 {
                vec![a.base.clone(), b.base.clone()]
            } else {
                vec![b.base.clone(), a.base.clone()]
            };
            let (r, _task) = start_client(urls, token, ch.clone());
            (ch, r)
        })
        .collect();
    eventually(Duration::from_secs(20), "all subscribed", || async {
        let subs = a.metric("tidings_gateway_subscriptions").await + b.metric("tidings_gateway_subscriptions").await;
        (subs == n as f64).then_some(())
    })
    .await;
    clients
}

/// Waits until every client holds exactly the published sequences of its channel, in order.
async fn assert_everyone_has_everything(clients: &[(Channel, Received)], published: &Published, timeout: Duration) {
    let summary = || {
        let p = published.lock().unwrap();
        clients
            .iter()
            .enumerate()
            .filter_map(|(i, (ch, r))| {
                let inbox = r.lock().unwrap();
                let got = inbox.seqs();
                let want = p.get(ch).cloned().unwrap_or_default();
                (got != want || !inbox.resets.is_empty()).then(|| {
                    let missing: Vec<u64> = want.iter().filter(|s| !got.contains(s)).copied().take(5).collect();
                    format!(
                        "client {i} {ch}: got {} want {} missing {missing:?} resets {}",
                        got.len(),
                        want.len(),
                        inbox.resets.len()
                    )
                })
            })
            .take(5)
            .collect::<Vec<_>>()
    };
    let done = wait_for(timeout, || async {
        let p = published.lock().unwrap();
        clients
            .iter()
            .all(|(ch, r)| r.lock().unwrap().messages.len() >= p.get(ch).map_or(0, Vec::len))
            .then_some(())
    })
    .await;
    if done.is_none() {
        panic!("not everyone has everything: {:?}", summary());
    }
    let p = published.lock().unwrap();
    for (i, (ch, r)) in clients.iter().enumerate() {
        let inbox = r.lock().unwrap();
        assert_eq!(inbox.resets, Vec::<Channel>::new(), "client {i} on {ch}: no reset");
        let want = p.get(ch).cloned().unwrap_or_default();
        assert_eq!(inbox.seqs(), want, "client {i} on {ch}: every message, in order, once");
    }
}

/// Publishes the same message twice with one `Nats-Msg-Id`; asserts it was stored once and
/// returns its sequence.
async fn publish_twice_with_one_id(js: &async_nats::jetstream::Context, ch: &Channel) -> u64 {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "dup-1");
    let a = js
        .publish_with_headers(ch.durable_subject(), h.clone(), json!({"event":"d"}).to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let b = js
        .publish_with_headers(ch.durable_subject(), h, json!({"event":"d"}).to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(a.sequence, b.sequence);
    assert!(b.duplicate);
    a.sequence
}

#[tokio::test]
async fn offline_client_gets_exactly_the_1000_it_missed_then_live_ones() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways().start(&nats.url(), &[]).await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let token = user_token("u1", &["p1", "p2"], &[]);
    let ch = channel(1);

    let mut c = connect(&gw, &token).await;
    let reply = c.subscribe("project:p1").await;
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    let first = publish(&js, &ch, 0).await;
    assert_eq!(c.frame_of("message").await["seq"], first);
    drop(c);

    let mut missed = Vec::new();
    for n in 1..=1000 {
        missed.push(publish(&js, &ch, n).await);
        if n % 10 == 0 {
            publish(&js, &channel(2), n).await; // other channels interleave in the stream
        }
    }
    missed.push(publish_twice_with_one_id(&js, &ch).await);

    let mut c = connect(&gw, &token).await;
    let r = c
        .request(
            json!({"type":"subscribe","channel":"project:p1","since":first,"epoch":epoch}),
            1,
        )
        .await;
    assert_eq!(
        (r["ok"].as_bool(), r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(true), Some(true), Some(1001)),
        "{r}"
    );
    let mut prev = first;
    for want in &missed {
        let m = c.frame_of("message").await;
        assert_eq!(
            (m["seq"].as_u64(), m["prev"].as_u64()),
            (Some(*want), Some(prev)),
            "{m}"
        );
        prev = *want;
    }
    let live = publish(&js, &ch, 5000).await;
    let m = c.frame_of("message").await;
    assert_eq!((m["seq"].as_u64(), m["prev"].as_u64()), (Some(live), Some(prev)));
    gw.wait_metric(
        "tidings_gateway_recovered_messages_total",
        1001.0,
        Duration::from_secs(5),
    )
    .await;

    // The history route pages through the same messages.
    let url = format!("{}/api/v1/channels/project:p1/history?since={first}&limit=600", gw.base);
    let (code, body) = http_get(&url, Some(&token)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (page["recovered"].as_bool(), page["more"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(600));
    assert_eq!(page["messages"][0]["seq"], missed[0]);
}

#[tokio::test]
async fn a_sigkilled_gateway_loses_its_clients_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let a = gateways().start(&nats.url(), &[]).await;
    let b = gateways().start(&nats.url(), &[]).await;
    let token = user_token("u1", &["*"], &[]);
    let clients: Vec<(Channel, Received)> = (0..100)
        .map(|i| {
            let ch = channel(i % CHANNELS);
            let (r, _task) = start_client(vec![a.base.clone(), b.base.clone()], &token, ch.clone());
            (ch, r)
        })
        .collect();
    a.wait_metric("tidings_gateway_subscriptions", 100.0, Duration::from_secs(20))
        .await;

    let (published, publisher) = start_publisher(nats.url(), 1000, Duration::from_secs(3));
    eventually(Duration::from_secs(10), "publishing under way", || async {
        (published.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 1000).then_some(())
    })
    .await;
    a.process.signal("KILL").unwrap();
    publisher.await.unwrap();
    b.wait_metric("tidings_gateway_subscriptions", 100.0, Duration::from_secs(20))
        .await;
    assert_everyone_has_everything(&clients, &published, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_rolling_restart_of_both_gateways_loses_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let drain = [("TIDINGS_DRAIN_MS", "300".to_owned())];
    let mut a = gateways().start(&nats.url(), &drain).await;
    let mut b = gateways().start(&nats.url(), &drain).await;
    let token = user_token("u1", &["*"], &[]);
    let clients = spread_clients(100, &a, &b, &token).await;
    let (published, publisher) = start_publisher(nats.url(), 1000, Duration::from_secs(4));

    for gw in [&mut a, &mut b] {
        gw.process.signal("TERM").unwrap();
        let exit = gw.process.wait_exit(Duration::from_secs(15)).await.expect("drained");
        assert!(exit.success());
        let port = gw.port();
        *gw = gateways().spawn_on(port, &nats.url(), &drain);
        gw.wait_status("/readyz", 200, Duration::from_secs(30)).await;
    }
    publisher.await.unwrap();
    assert_everyone_has_everything(&clients, &published, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn losing_a_nats_node_of_three_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let urls = cluster.urls();
    let replicas = [("TIDINGS_STREAM_REPLICAS", "3".to_owned())];
    let a = gateways().start(&urls, &replicas).await;
    let b = gateways().start(&urls, &replicas).await;
    let token = user_token("u1", &["*"], &[]);
    let clients = spread_clients(40, &a, &b, &token).await;
    let (published, publisher) = start_publisher(urls.clone(), 500, Duration::from_secs(6));
    eventually(Duration::from_secs(10), "publishing under way", || async {
        (published.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 500).then_some(())
    })
    .await;
    cluster.nodes[0].kill();
    eventually(Duration::from_secs(20), "publishing goes on without node 1", || async {
        (published.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 1500).then_some(())
    })
    .await;
    cluster.nodes[0].restart().await.unwrap();
    publisher.await.unwrap();
    assert_everyone_has_everything(&clients, &published, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_client_kicked_as_slow_consumer_recovers_everything() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_OUTBOUND_QUEUE", "16".into())])
        .await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let ch = channel(3);
    let mut options = ClientOptions::new(vec![gw.base.clone()], user_token("u1", &["*"], &[]), vec![ch.clone()]);
    options.buffer = 8;
    options.recv_buffer = Some(4096);
    let mut client = Client::connect(options);
    let mut state = client.state();
    state
        .wait_for(|s| matches!(s, tidings_shared::client::ConnectionState::Connected { .. }))
        .await
        .unwrap();
    gw.wait_metric("tidings_gateway_subscriptions", 1.0, Duration::from_secs(10))
        .await;

    // The application does not read while 400 large messages are published.
    let pad = "x".repeat(16 * 1024);
    let mut want = Vec::new();
    for n in 0..400 {
        let body = json!({"event":"big","data":{"n":n,"pad":pad}}).to_string();
        want.push(
            js.publish(ch.durable_subject(), body.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence,
        );
    }
    gw.wait_metric(
        "tidings_gateway_slow_consumer_disconnects_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < want.len() {
        match tokio::time::timeout(Duration::from_secs(30), client.next()).await {
            Ok(Some(Event::Message(m))) => got.extend(m.seq),
            other => panic!(
                "after {} messages: {other:?}; missing {:?}; last got {:?}\ngateway log:\n{}",
                got.len(),
                want.iter().filter(|s| !got.contains(s)).collect::<Vec<_>>(),
                got.iter().rev().take(3).collect::<Vec<_>>(),
                gw.process.log()
            ),
        }
    }
    assert_eq!(got, want, "every message, in order, once, across the 4009 kick");
}

#[tokio::test]
async fn past_retention_or_epoch_recovered_is_false_and_what_is_held_comes() {
    let nats = NatsServer::start().await.unwrap();
    let gw = gateways()
        .start(&nats.url(), &[("TIDINGS_EVENTS_MAX_PER_CHANNEL", "5".into())])
        .await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let token = user_token("u1", &["*"], &[]);
    let ch = channel(4);
    let mut seqs = Vec::new();
    for n in 0..10 {
        seqs.push(publish(&js, &ch, n).await);
    }
    let mut c = connect(&gw, &token).await;
    // Holding seq 2 of 10 with 5 kept per channel: 3..5 are gone.
    let r = c
        .request(json!({"type":"subscribe","channel":"project:p4","since":seqs[1]}), 1)
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(false), Some(5)),
        "{r}"
    );
    let old_epoch = r["epoch"].as_str().unwrap().to_owned();
    for want in &seqs[5..] {
        assert_eq!(c.frame_of("message").await["seq"].as_u64(), Some(*want));
    }
    // Within retention: recovered.
    let r = c
        .request(json!({"type":"subscribe","channel":"project:p4","since":seqs[7]}), 2)
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(true), Some(2)),
        "{r}"
    );
    drop(c);

    // The stream is deleted and recreated: old sequences must not be trusted.
    js.delete_stream("TIDINGS_EVENTS").await.unwrap();
    let cfg = tidings_shared::nats::events_stream_config(Duration::from_secs(3600), 5, 1);
    tidings_shared::nats::ensure_stream(&js, &cfg, tidings_shared::nats::Ownership::Owner)
        .await
        .unwrap();
    let fresh = [publish(&js, &ch, 100).await, publish(&js, &ch, 101).await];
    let mut c = connect(&gw, &token).await;
    let r = c
        .request(
            json!({"type":"subscribe","channel":"project:p4","since":seqs[9],"epoch":old_epoch}),
            3,
        )
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(false), Some(2)),
        "{r}"
    );
    assert_ne!(r["epoch"].as_str(), Some(old_epoch.as_str()));
    for want in fresh {
        assert_eq!(c.frame_of("message").await["seq"].as_u64(), Some(want));
    }
}
