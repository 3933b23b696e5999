//! Secrets in URLs: credentials in `TIDINGS_NATS_URL` and `TIDINGS_SMTP_URL`, and webhook
//! URLs whose path, query or user info is the secret, never reach the worker's log, a
//! notification's status or its error: only scheme and host do.

mod common;

use std::time::Duration;

use serde_json::json;
use tidings_shared::prefs::Preferences;
use tidings_shared::store::Store;

use common::*;

const SECRETS: [&str; 6] = [
    "natsSECRET",
    "smtpSECRET",
    "hookPATH",
    "hookQUERY",
    "hookPASS",
    "closedPATH",
];

/// Asserts that `text` holds none of [`SECRETS`].
fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[tokio::test]
async fn credentials_and_capability_urls_are_redacted_in_logs_and_statuses() {
    let env = start(0).await;
    let (hooks, _received) = start_receiver().await;
    let closed = format!("127.0.0.1:{}", tidings_tests::free_port());
    // nats-server without authentication accepts (and ignores) the credentials.
    let nats_url = env.nats.url().replacen("nats://", "nats://tidings:natsSECRET@", 1);
    let mail_dir = std::env::temp_dir().join(format!("tidings-secrets-{}", std::process::id()));
    let smtp = format!(
        "smtp://mailer:smtpSECRET@{closed}/?x=smtpSECRET,file://{}",
        mail_dir.display()
    );
    let (worker, _) = spawn_worker(&nats_url, &[("TIDINGS_SMTP_URL", smtp)]);

    let hook = hooks.replacen("http://", "http://user:hookPASS@", 1);
    let prefs = [
        // Written around the API (which refuses user info in URLs).
        ("creds", format!("{hook}/ok")),
        ("query", format!("{hooks}/bad?token=hookQUERY")),
        ("path", format!("{hooks}/down/hookPATH")),
        ("closed", format!("http://{closed}/closedPATH?hookQUERY")),
    ];
    let store = Store::open(async_nats::jetstream::new(env.nats.client().await.unwrap()), 1)
        .await
        .unwrap();
    for (user, url) in &prefs {
        let p = Preferences {
            webhook_url: Some(url.clone()),
            email: Some(format!("{user}@example.com")),
            ..Default::default()
        };
        store.put_preferences(user, &p).await.unwrap();
        env.notify(
            json!({"id": format!("sec-{user}"), "user": user, "template": "pr_merged",
            "data": {"pr": 1, "title": "t"}, "channels": ["webhook", "email"]}),
        )
        .await;
    }
    for (user, _) in &prefs {
        let id = format!("sec-{user}");
        let s = env
            .wait_channel(&id, "webhook", "failed", Duration::from_secs(30))
            .await;
        assert_clean(&format!("status of {id}"), &s.to_string());
        // The email went through the second relay, named without its path.
        let s = env.wait_channel(&id, "email", "sent", Duration::from_secs(30)).await;
        assert_eq!(s["channels"]["email"]["via"], "file://", "{s}");
    }
    let log = worker.log();
    assert!(log.contains("NATS connected"), "{log}");
    assert!(log.contains("relay refused the email"), "{log}");
    assert_clean("the worker's log", &log);
    // What is shown instead: scheme and host.
    assert!(log.contains(&format!("smtp://{closed}")), "{log}");
}
