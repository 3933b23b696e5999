//! Email: SMTP with failover and escaped HTML, the file transport, STARTTLS to a relay with
//! its own CA, and digests of a batch.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tidings_shared::auth::now_unix;

use common::*;

#[tokio::test]
async fn email_goes_out_over_smtp_with_failover_and_escaped_html() {
    let refusing = tidings_tests::smtp::SmtpServer::start_with(Some(554)).await.unwrap();
    let good = tidings_tests::smtp::SmtpServer::start().await.unwrap();
    let smtp = format!("{},{}", refusing.url(), good.url());
    let env = start_with(
        1,
        &[
            ("TIDINGS_SMTP_URL", smtp),
            ("TIDINGS_EMAIL_FROM", "Tidings <noreply@example.com>".into()),
        ],
    )
    .await;
    env.put("/api/v1/users/erin/preferences", json!({"email":"erin@example.com"}))
        .await;
    let (code, _) = env
        .notify(json!({"id":"mail-1","user":"erin","template":"pr_merged","data":{"pr":7,"title":"<script>x</script> & co"},"channels":["email"]}))
        .await;
    assert_eq!(code, 202);
    let s = env
        .wait_channel("mail-1", "email", "sent", Duration::from_secs(20))
        .await;
    assert_eq!(
        s["channels"]["email"]["via"],
        good.url().as_str(),
        "the relay that took it: {s}"
    );
    let mail = good.received.lock().unwrap()[0].clone();
    assert_eq!(mail.to, vec!["<erin@example.com>".to_string()]);
    let data = mail.data.replace("\r\n", "\n");
    assert!(data.contains("From: Tidings <noreply@example.com>"), "{data}");
    assert!(data.contains("To: erin@example.com"), "{data}");
    assert!(data.contains("Subject: PR #7"), "{data}");
    assert!(data.contains("Message-ID: <mail-1.email@tidings>"), "{data}");
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("<script>x</script> & co"), "text part verbatim: {data}");
    assert!(
        data.contains("<b>&lt;script&gt;x&lt;&#x2f;script&gt; &amp; co</b>"),
        "HTML part escaped: {data}"
    );
    assert!(refusing.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_file_transport_writes_one_eml_per_email() {
    let dir = tempfile_dir();
    let env = start_with(1, &[("TIDINGS_SMTP_URL", format!("file://{}", dir.display()))]).await;
    env.put("/api/v1/users/fay/preferences", json!({"email":"fay@example.com"}))
        .await;
    env.notify(
        json!({"id":"file-1","user":"fay","template":"pr_merged","data":{"pr":8,"title":"t"},"channels":["email"]}),
    )
    .await;
    let s = env
        .wait_channel("file-1", "email", "sent", Duration::from_secs(20))
        .await;
    assert!(
        s["channels"]["email"]["via"].as_str().unwrap().starts_with("file://"),
        "{s}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
    let eml = std::fs::read_to_string(&files[0]).unwrap();
    assert!(eml.contains("Message-ID: <file-1.email@tidings>"), "{eml}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidings-eml-{}-{}", std::process::id(), now_unix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_batch_becomes_one_digest_even_across_a_worker_restart() {
    let smtp = tidings_tests::smtp::SmtpServer::start().await.unwrap();
    let worker_env = [
        ("TIDINGS_SMTP_URL", smtp.url()),
        ("TIDINGS_BATCH_WINDOW_MS", "3000".to_owned()),
        // A job the killed worker held when it died comes back after the ack wait: short
        // here, so that the race (killed between fetching the flush job and putting it back
        // with its delay) cannot outlast the test's wait.
        ("TIDINGS_DELIVERY_ACK_WAIT_MS", "5000".to_owned()),
    ];
    let mut env = start_with(1, &worker_env).await;
    env.put(
        "/api/v1/templates/review",
        json!({"in_app":{"title":"Review {{ n }}","body":"b"},
               "email":{"subject":"{{ count }} reviews","text":"{% for i in items %}- review {{ i.n }}\n{% endfor %}"}}),
    )
    .await;
    env.put("/api/v1/users/kim/preferences", json!({"email":"kim@example.com"}))
        .await;
    for n in 0..20 {
        let (code, _) = env
            .notify(
                json!({"id":format!("b{n}"),"user":"kim","template":"review","data":{"n":n},
                "priority":"low","batch_key":"p1-reviews","channels":["in_app","email"]}),
            )
            .await;
        assert_eq!(code, 202);
    }
    for n in 0..20 {
        let s = env
            .wait_channel(&format!("b{n}"), "email", "batched", Duration::from_secs(10))
            .await;
        assert_eq!(
            s["channels"]["in_app"]["status"], "sent",
            "in-app items still arrive one by one: {s}"
        );
    }
    // The worker dies inside the window; a new one takes over and still sends the digest.
    env.workers[0].0.signal("KILL").unwrap();
    env.workers[0] = spawn_worker(&env.nats.url(), &worker_env);
    let mut digests = std::collections::HashSet::new();
    for n in 0..20 {
        let s = env
            .wait_channel(&format!("b{n}"), "email", "sent", Duration::from_secs(30))
            .await;
        digests.insert(s["channels"]["email"]["digest"].as_str().unwrap().to_owned());
    }
    assert_eq!(digests.len(), 1, "one digest for the whole batch: {digests:?}");
    let mails = smtp.received.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "the digest went out once");
    let data = mails[0].data.replace("\r\n", "\n");
    assert!(data.contains("Subject: 20 reviews"), "{data}");
    for n in 0..20 {
        assert!(data.contains(&format!("- review {n}\n")), "item {n} missing: {data}");
    }
    // 20 in-app messages, one per request.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let info = events.info_with_subjects("tidings.events.user.kim").await.unwrap();
    use futures::TryStreamExt as _;
    let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
    assert_eq!(subjects.get("tidings.events.user.kim"), Some(&20));
}

#[tokio::test]
async fn email_over_starttls_to_a_relay_with_its_own_ca() {
    let relay = tidings_tests::smtp::SmtpServer::start_tls().await.unwrap();
    let ca = std::env::temp_dir().join(format!("tidings-smtp-ca-{}-{}.pem", std::process::id(), now_unix()));
    std::fs::write(&ca, relay.cert_pem.as_deref().unwrap()).unwrap();
    let port = relay.addr.rsplit(':').next().unwrap().to_owned();
    let env = start_with(
        1,
        &[
            ("TIDINGS_SMTP_URL", format!("smtp+starttls://localhost:{port}")),
            ("TIDINGS_SMTP_CA_FILE", ca.display().to_string()),
        ],
    )
    .await;
    env.put("/api/v1/users/lea/preferences", json!({"email":"lea@example.com"}))
        .await;
    env.notify(
        json!({"id":"tls-1","user":"lea","template":"pr_merged","data":{"pr":1,"title":"t"},"channels":["email"]}),
    )
    .await;
    env.wait_channel("tls-1", "email", "sent", Duration::from_secs(20))
        .await;
    assert_eq!(*relay.tls_used.lock().unwrap(), vec![true], "the email went over TLS");
    assert!(
        relay.received.lock().unwrap()[0]
            .data
            .contains("Message-ID: <tls-1.email@tidings>")
    );
    let _ = std::fs::remove_file(&ca);
}
