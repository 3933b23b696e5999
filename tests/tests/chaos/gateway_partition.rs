//! A gateway cut off from NATS for 20 s while publishing goes on: it reports not ready
//! within 5 s, and once the link heals its clients have every message once.

use std::time::{Duration, Instant};

use tidings_tests::netns::Lab;
use tidings_tests::{NatsServer, eventually};

use crate::ledger::{Tracker, count, settle, start_publisher};
use crate::setup::{report, serial, start_gateway, user_token};

const CLIENTS: usize = 40;
const CHANNELS: usize = 10;
const PARTITION: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_from_nats_for_20s_loses_nothing() {
    let _serial = serial().await;
    let started = Instant::now();
    // Hosts: 0 NATS, 1 gateway A (the one cut off), 2 gateway B.
    let lab = Lab::new("gwp", 3);
    let (nats_host, a_host) = (lab.host(0), lab.host(1));
    let nats = NatsServer::start_in(&nats_host.netns, &nats_host.ip).await.unwrap();
    let a = start_gateway(a_host, &nats.url(), &[]).await;
    let b = start_gateway(lab.host(2), &nats.url(), &[]).await;
    let token = user_token("u1");
    let trackers = Tracker::spread(CLIENTS, CHANNELS, [&a.base, &b.base], &token).await;

    let (published, publisher) = start_publisher(nats.url(), CHANNELS, 200, Duration::from_secs(32));
    eventually(Duration::from_secs(10), "publishing under way", || async {
        (count(&published) >= 600).then_some(())
    })
    .await;

    let cut = Instant::now();
    a_host.partition_from(&[&nats_host.ip]);
    let to_503 = eventually(Duration::from_secs(15), "gateway A /readyz 503", || async {
        (a.status("/readyz").await == Some(503)).then(|| cut.elapsed())
    })
    .await;
    let before = count(&published);
    assert_eq!(b.status("/readyz").await, Some(200), "gateway B still has NATS");
    // The partition lasts a fixed time: that is the fault under test, not a wait for an event.
    tokio::time::sleep_until((cut + PARTITION).into()).await;
    let during = count(&published) - before;
    assert!(during > 1000, "publishing went on during the partition: {during}");
    a_host.heal();
    let healed = Instant::now();
    let to_ready = eventually(Duration::from_secs(30), "gateway A /readyz 200 again", || async {
        (a.status("/readyz").await == Some(200)).then(|| healed.elapsed())
    })
    .await;
    publisher.await.unwrap();
    let verdict = settle(&trackers, &published, Duration::from_secs(60)).await;

    let mut figures = vec![
        ("duration_s", format!("{:.1}", started.elapsed().as_secs_f64())),
        ("clients", CLIENTS.to_string()),
        ("published", count(&published).to_string()),
        ("published_during_partition", during.to_string()),
        ("readyz_503_after_ms", to_503.as_millis().to_string()),
        ("readyz_200_after_heal_ms", to_ready.as_millis().to_string()),
    ];
    figures.extend(verdict.figures());
    report("gateway_partition", &figures);
    assert!(
        to_503 <= Duration::from_secs(5),
        "/readyz 503 after {to_503:?}, want within 5 s"
    );
    verdict.assert_clean();
}
