//! One node of a three-node NATS cluster — the one leading `TIDINGS_EVENTS` — cut off from
//! its peers while publishing and consuming go on: the leader moves to another node, and
//! once the link heals every client has every message once.

use std::time::{Duration, Instant};

use tidings_tests::netns::Lab;
use tidings_tests::{NatsCluster, eventually};

use crate::ledger::{Tracker, count, settle, start_publisher};
use crate::setup::{report, serial, start_gateway, user_token};

const CLIENTS: usize = 40;
const CHANNELS: usize = 10;
const PARTITION: Duration = Duration::from_secs(15);

/// The server leading `TIDINGS_EVENTS`, as the node at `url` sees it.
async fn leader(url: &str) -> Option<String> {
    let ask = async {
        let client = async_nats::connect(url).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("TIDINGS_EVENTS").await.ok()?;
        stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
    };
    tokio::time::timeout(Duration::from_secs(3), ask).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_cut_off_from_its_peers_loses_nothing() {
    let _serial = serial().await;
    let started = Instant::now();
    // Hosts: 0-2 NATS nodes n1-n3, 3 and 4 gateways.
    let lab = Lab::new("ncp", 5);
    let nodes: Vec<(String, String)> = lab.hosts[..3].iter().map(|h| (h.netns.clone(), h.ip.clone())).collect();
    let cluster = NatsCluster::start_in(&nodes).await.unwrap();
    let urls = cluster.urls();
    let replicas = [("TIDINGS_STREAM_REPLICAS", "3".to_owned())];
    let a = start_gateway(lab.host(3), &urls, &replicas).await;
    let b = start_gateway(lab.host(4), &urls, &replicas).await;

    let first = cluster.nodes[0].url();
    let old = eventually(Duration::from_secs(20), "a stream leader", || leader(&first)).await;
    let isolated: usize = old.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    let majority: Vec<usize> = (0..3).filter(|i| *i != isolated).collect();
    let majority_urls = majority
        .iter()
        .map(|i| cluster.nodes[*i].url())
        .collect::<Vec<_>>()
        .join(",");

    let token = user_token("u1");
    let trackers = Tracker::spread(CLIENTS, CHANNELS, [&a.base, &b.base], &token).await;

    // The publisher is a service of the majority's side (one on the cut-off node could not
    // store anything until the link heals).
    let (published, publisher) = start_publisher(majority_urls, CHANNELS, 200, Duration::from_secs(30));
    eventually(Duration::from_secs(10), "publishing under way", || async {
        (count(&published) >= 600).then_some(())
    })
    .await;

    let cut = Instant::now();
    let peers: Vec<&str> = majority.iter().map(|i| lab.hosts[*i].ip.as_str()).collect();
    lab.host(isolated).partition_from(&peers);
    let survivor = cluster.nodes[majority[0]].url();
    let (new, moved_after) = eventually(Duration::from_secs(30), "the stream leader moved", || async {
        leader(&survivor)
            .await
            .filter(|l| *l != old)
            .map(|l| (l, cut.elapsed()))
    })
    .await;
    let before = count(&published);
    tokio::time::sleep_until((cut + PARTITION).into()).await;
    let during = count(&published) - before;
    lab.host(isolated).heal();
    publisher.await.unwrap();
    let verdict = settle(&trackers, &published, Duration::from_secs(90)).await;

    let mut figures = vec![
        ("duration_s", format!("{:.1}", started.elapsed().as_secs_f64())),
        ("clients", CLIENTS.to_string()),
        ("published", count(&published).to_string()),
        ("published_during_partition", during.to_string()),
        ("old_leader", old.clone()),
        ("new_leader", new.clone()),
        ("leader_moved_after_ms", moved_after.as_millis().to_string()),
    ];
    figures.extend(verdict.figures());
    report("nats_node_partition", &figures);
    assert_ne!(new, old);
    assert!(during > 500, "publishing went on during the partition: {during}");
    verdict.assert_clean();
}
