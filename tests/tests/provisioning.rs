//! Stream provisioning against a real NATS: idempotent, safe when many processes start at
//! once, owners update settings and non-owners never overwrite them.

use std::time::Duration;

use async_nats::jetstream;
use tidings_shared::nats::{Ownership, ensure_stream, epoch_of, events_stream_config, notify_stream_config};
use tidings_tests::NatsServer;

#[tokio::test]
async fn many_instances_starting_at_once_all_succeed() {
    let nats = NatsServer::start().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = nats.client().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let js = jetstream::new(client);
            // Half act as gateways (own EVENTS), half as workers (own NOTIFY).
            let (events, notify) = if i % 2 == 0 {
                (Ownership::Owner, Ownership::User)
            } else {
                (Ownership::User, Ownership::Owner)
            };
            let e = ensure_stream(&js, &events_stream_config(Duration::from_secs(3600), 100, 1), events).await;
            let n = ensure_stream(&js, &notify_stream_config(1), notify).await;
            (e.map(|i| epoch_of(&i)), n.map(|i| i.config.name))
        }));
    }
    let mut epochs = Vec::new();
    for t in tasks {
        let (e, n) = t.await.unwrap();
        epochs.push(e.expect("events stream"));
        assert_eq!(n.expect("notify stream"), "TIDINGS_NOTIFY");
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "every instance must see the same stream: {epochs:?}");
}

#[tokio::test]
async fn owners_update_settings_users_leave_them_alone() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    let first = ensure_stream(
        &js,
        &events_stream_config(Duration::from_secs(3600), 100, 1),
        Ownership::Owner,
    )
    .await
    .unwrap();

    // A worker with default settings does not shrink the gateway's retention.
    let seen = ensure_stream(
        &js,
        &events_stream_config(Duration::from_secs(60), 5, 1),
        Ownership::User,
    )
    .await
    .unwrap();
    assert_eq!(seen.config.max_age, Duration::from_secs(3600));
    assert_eq!(seen.config.max_messages_per_subject, 100);

    // A gateway redeployed with new settings updates the stream in place (same epoch).
    let updated = ensure_stream(
        &js,
        &events_stream_config(Duration::from_secs(7200), 500, 1),
        Ownership::Owner,
    )
    .await
    .unwrap();
    assert_eq!(updated.config.max_age, Duration::from_secs(7200));
    assert_eq!(updated.config.max_messages_per_subject, 500);
    assert_eq!(epoch_of(&updated), epoch_of(&first));

    // Recreating the stream changes the epoch, so old sequences are never trusted.
    js.delete_stream("TIDINGS_EVENTS").await.unwrap();
    let recreated = ensure_stream(
        &js,
        &events_stream_config(Duration::from_secs(7200), 500, 1),
        Ownership::Owner,
    )
    .await
    .unwrap();
    assert_ne!(epoch_of(&recreated), epoch_of(&first));
}

#[tokio::test]
async fn stored_messages_are_republished_with_sequence_headers() {
    use futures::StreamExt as _;
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_stream(
        &js,
        &events_stream_config(Duration::from_secs(3600), 100, 1),
        Ownership::Owner,
    )
    .await
    .unwrap();
    let mut sub = client.subscribe("tidings.stored.project.p1").await.unwrap();
    client.flush().await.unwrap();
    let a = js
        .publish("tidings.events.project.p1", r#"{"event":"a"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("tidings.events.project.p2", r#"{"event":"x"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let b = js
        .publish("tidings.events.project.p1", r#"{"event":"b"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let m1 = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let m2 = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let h = |m: &async_nats::Message, k: &str| m.headers.as_ref().and_then(|h| h.get(k)).map(|v| v.as_str().to_owned());
    assert_eq!(h(&m1, "Nats-Sequence"), Some(a.sequence.to_string()));
    assert_eq!(h(&m1, "Nats-Last-Sequence"), Some("0".to_string()));
    assert_eq!(h(&m2, "Nats-Sequence"), Some(b.sequence.to_string()));
    // The previous message *of this channel*, skipping p2's in between.
    assert_eq!(h(&m2, "Nats-Last-Sequence"), Some(a.sequence.to_string()));
}
