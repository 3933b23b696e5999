//! The real `tidings-worker` binary against a real `nats-server`: readiness, streams, every
//! contract metric initialised at startup, clean exit on SIGTERM.

use std::time::Duration;

use tidings_tests::{NatsServer, Process, eventually, free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_tidings-worker");

#[tokio::test]
async fn ready_with_streams_and_metrics_then_clean_sigterm() {
    let mut nats = NatsServer::start().await.unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = Process::spawn(
        BIN,
        &[
            ("TIDINGS_NATS_URL", nats.url()),
            ("TIDINGS_METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ],
    )
    .unwrap();
    let readyz = format!("{base}/readyz");
    eventually(Duration::from_secs(30), "worker ready", || async {
        (http_get(&readyz, None).await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;

    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    assert!(js.get_stream("TIDINGS_NOTIFY").await.is_ok());
    assert!(js.get_stream("TIDINGS_EVENTS").await.is_ok());

    let (code, metrics) = http_get(&format!("{base}/metrics"), None).await.unwrap();
    assert_eq!(code, 200);
    for channel in ["in_app", "email", "sms", "push", "webhook"] {
        for status in [
            "suppressed",
            "deferred",
            "batched",
            "sent",
            "delivered",
            "read",
            "failed",
        ] {
            let series = format!("tidings_worker_notifications_total{{channel=\"{channel}\",status=\"{status}\"}} 0");
            assert!(metrics.contains(&series), "missing {series}");
        }
        assert!(metrics.contains(&format!("tidings_worker_retries_total{{channel=\"{channel}\"}} 0")));
        assert!(metrics.contains(&format!("tidings_worker_dead_letters_total{{channel=\"{channel}\"}} 0")));
        assert!(metrics.contains(&format!(
            "tidings_worker_delivery_duration_seconds_count{{channel=\"{channel}\"}} 0"
        )));
    }

    nats.kill();
    eventually(Duration::from_secs(5), "worker not ready", || async {
        (http_get(&readyz, None).await.map(|r| r.0) == Some(503)).then_some(())
    })
    .await;
    nats.restart().await.unwrap();
    eventually(Duration::from_secs(5), "worker ready again", || async {
        (http_get(&readyz, None).await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;

    worker.signal("TERM").unwrap();
    let exit = worker
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("worker did not exit after SIGTERM");
    assert!(exit.success(), "{}", worker.log());
}
