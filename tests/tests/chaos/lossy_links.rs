//! A minute of 1% packet loss and 200 ms latency (each way) on every client link: clients
//! stay consistent — every message once, in order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tidings_tests::delay::DelayProxy;
use tidings_tests::netns::Lab;
use tidings_tests::{NatsServer, eventually};

use crate::ledger::{Tracker, channel, count, settle, start_publisher, wait_subscribed};
use crate::setup::{PORT, report, serial, start_gateway, user_token};

const CLIENTS: usize = 20;
const CHANNELS: usize = 10;
const LATENCY: Duration = Duration::from_millis(200);
const LOSS_PERCENT: u8 = 1;
const FAULT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_loss_and_latency_on_client_links_keeps_clients_consistent() {
    let _serial = serial().await;
    let started = Instant::now();
    // Hosts: 0 NATS, 1 and 2 gateways; clients reach them through delay proxies.
    let lab = Lab::new("lsy", 3);
    let nats = NatsServer::start_in(&lab.host(0).netns, &lab.host(0).ip).await.unwrap();
    let mut proxies = Vec::new();
    let mut gateways = Vec::new();
    for host in &lab.hosts[1..] {
        gateways.push(start_gateway(host, &nats.url(), &[]).await);
        host.lossy_port(&lab.root_ip, PORT, LOSS_PERCENT);
        let upstream: SocketAddr = format!("{}:{PORT}", host.ip).parse().unwrap();
        proxies.push(DelayProxy::start(upstream, LATENCY).await);
    }
    let token = user_token("u1");
    let trackers: Vec<Tracker> = (0..CLIENTS)
        .map(|i| {
            let mut urls: Vec<String> = proxies.iter().map(DelayProxy::base).collect();
            let first = i % urls.len();
            urls.rotate_left(first);
            Tracker::start(urls, token.clone(), channel(i % CHANNELS))
        })
        .collect();
    wait_subscribed(&trackers, Duration::from_secs(60)).await;

    let faulty = Instant::now();
    let (published, publisher) = start_publisher(nats.url(), CHANNELS, 100, FAULT);
    eventually(Duration::from_secs(10), "publishing under way", || async {
        (count(&published) > 0).then_some(())
    })
    .await;
    publisher.await.unwrap();
    let verdict = settle(&trackers, &published, Duration::from_secs(60)).await;
    let dropped: u64 = lab.hosts[1..].iter().map(|h| h.lost_packets()).sum();

    let mut figures = vec![
        ("duration_s", format!("{:.1}", started.elapsed().as_secs_f64())),
        ("fault_s", format!("{:.1}", faulty.elapsed().as_secs_f64())),
        ("clients", CLIENTS.to_string()),
        ("published", count(&published).to_string()),
        ("packets_dropped", dropped.to_string()),
    ];
    figures.extend(verdict.figures());
    report("lossy_client_links", &figures);
    assert!(dropped > 0, "the loss rules dropped nothing: the fault was not applied");
    verdict.assert_clean();
}
