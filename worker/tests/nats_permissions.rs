//! The NATS account permissions shipped for operators (`k8s/nats/accounts.conf`), on a real
//! nats-server: gateways and workers as user `tidings` do everything Tidings does (streams,
//! KV, publish, fan-out, notifications, webhooks); a `publisher` reaches its channels through
//! `tidings.events.>` and `tidings.notify` but is refused `tidings.stored.>` (forged
//! sequence numbers) and Tidings' internal subjects.

mod common;

use std::time::Duration;

use serde_json::json;
use tidings_tests::fakes::webhook;
use tidings_tests::{NatsServer, TokenIn, WsClient, eventually, http_get};
use tokio::sync::mpsc;

use common::*;

const TIDINGS_PASSWORD: &str = "tidings-password";
const PUBLISHER_PASSWORD: &str = "publisher-password";

/// The shipped accounts, with literal passwords for the `$VAR`s the chart fills in.
fn accounts() -> String {
    let path = format!("{}/../k8s/nats/accounts.conf", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .replace("$TIDINGS_NATS_PASSWORD", &format!("{TIDINGS_PASSWORD:?}"))
        .replace("$PUBLISHER_NATS_PASSWORD", &format!("{PUBLISHER_PASSWORD:?}"))
}

/// A publisher connection, and the server errors it is sent (permission violations).
async fn publisher(nats: &NatsServer) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password("publisher".into(), PUBLISHER_PASSWORD.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    (client, rx)
}

/// The next permission violation naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let wait = async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return;
            }
        }
        panic!("error channel closed");
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no permissions violation for {subject}"));
}

#[tokio::test]
async fn tidings_works_as_user_tidings_and_publishers_cannot_forge_stored_messages() {
    let nats = NatsServer::start_with_config(&accounts()).await.unwrap();
    let url = format!("nats://tidings:{TIDINGS_PASSWORD}@127.0.0.1:{}", nats.port);

    // Gateway and worker as `tidings`: ready means streams and buckets were created.
    let gw = gateways()
        .start(&url, &[("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned())])
        .await;
    let (_worker, metrics) = spawn_worker(&url, &[]);
    let ready = metrics.replace("/metrics", "/readyz");
    eventually(Duration::from_secs(30), "the worker ready", || async {
        (http_get(&ready, None).await?.0 == 200).then_some(())
    })
    .await;
    let http = reqwest::Client::new();
    let svc = token("ops", true);
    let api = |path: &str| format!("{}{path}", gw.base);

    // A client on a project channel and on its user channel.
    let mut ws = WsClient::connect(&gw.base, TokenIn::Query(token("perm-user", false)), None)
        .await
        .unwrap();
    ws.frame_of("welcome").await;
    ws.subscribe("project:perm").await;
    ws.subscribe("user:perm-user").await;

    // HTTP publish through the gateway → JetStream → re-publish → fan-out.
    let r = http
        .post(api("/api/v1/publish"))
        .bearer_auth(&svc)
        .json(&json!({"channel":"project:perm","event":"from_http","data":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(ws.frame_of("message").await["event"], "from_http");

    // A notification through the worker: in-app (inbox, user channel) and a webhook.
    let (hooks, received) = webhook::start(WEBHOOK_SECRET).await;
    for (path, body) in [
        (
            "/api/v1/templates/perm",
            json!({"in_app":{"title":"t {{ n }}","body":"b"},"webhook":{"text":"w"}}),
        ),
        (
            "/api/v1/users/perm-user/preferences",
            json!({"webhook_url": format!("{hooks}/ok")}),
        ),
    ] {
        let r = http.put(api(path)).bearer_auth(&svc).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http
        .post(api("/api/v1/notifications"))
        .bearer_auth(&svc)
        .json(
            &json!({"id":"perm-1","user":"perm-user","template":"perm","data":{"n":1},"channels":["in_app","webhook"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let note = ws.frame_of("message").await;
    assert_eq!(note["channel"], "user:perm-user", "{note}");
    eventually(Duration::from_secs(20), "the webhook delivered", || async {
        (received.lock().unwrap().accepted.get("perm-1") == Some(&1)).then_some(())
    })
    .await;

    // A publisher: its channels, and notification requests, are open to it...
    let (publisher, mut errors) = publisher(&nats).await;
    publisher
        .publish(
            "tidings.events.project.perm",
            r#"{"event":"from_service","data":2}"#.into(),
        )
        .await
        .unwrap();
    assert_eq!(ws.frame_of("message").await["event"], "from_service");
    let js = async_nats::jetstream::new(publisher.clone());
    let ack = js
        .publish(
            "tidings.notify",
            json!({"id":"perm-2","user":"perm-user","template":"perm","data":{"n":2},"channels":["in_app"]})
                .to_string()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.sequence > 0);
    assert_eq!(ws.frame_of("message").await["channel"], "user:perm-user");

    // ...but a forged stored message and Tidings' internal subjects are refused, and the
    // forgery reaches no client: the next frame is the legitimate message sent after it.
    let forged = r#"{"event":"forged","data":3}"#;
    publisher
        .publish("tidings.stored.project.perm", forged.into())
        .await
        .unwrap();
    refused(&mut errors, "tidings.stored.project.perm").await;
    publisher.publish("tidings.internal.acks", "{}".into()).await.unwrap();
    refused(&mut errors, "tidings.internal.acks").await;
    // Nor may a publisher read Tidings' replies (preferences, statuses from the KV).
    let _snoop = publisher.subscribe("_INBOX_tidings.>").await.unwrap();
    refused(&mut errors, "_INBOX_tidings.>").await;
    let disconnect = r#"{"action":"disconnect","user":"perm-user"}"#;
    publisher.publish("tidings.control", disconnect.into()).await.unwrap();
    refused(&mut errors, "tidings.control").await;
    publisher
        .publish("tidings.events.project.perm", r#"{"event":"after","data":4}"#.into())
        .await
        .unwrap();
    assert_eq!(ws.frame_of("message").await["event"], "after");

    // Operator controls work as user tidings: the gateway publishes on tidings.control.
    let disconnected = http
        .post(api("/api/v1/users/perm-user/disconnect"))
        .bearer_auth(token("ops", true))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(disconnected["connections"], 1, "{disconnected}");
    assert_eq!(ws.close_code().await, 4001);
}
