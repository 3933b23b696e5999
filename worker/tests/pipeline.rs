//! The notification pipeline end to end, against real NATS, real worker processes, a real
//! gateway and a real HTTP receiver that checks signatures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use clap::Parser as _;
use serde_json::{Value, json};
use tidings_shared::auth::{Claims, now_unix, sign_hs256};
use tidings_tests::{NatsServer, Process, TokenIn, WsClient, eventually, free_port};

const SECRET: &str = "pipeline-test-secret";
const WEBHOOK_SECRET: &str = "webhook-secret";
const WORKER: &str = env!("CARGO_BIN_EXE_tidings-worker");

fn token(sub: &str, service: bool) -> String {
    let claims = Claims {
        sub: sub.into(),
        projects: vec!["*".into()],
        publish: vec![],
        role: service.then(|| "service".into()),
        exp: now_unix() + 3600,
        nbf: None,
    };
    sign_hs256(&claims, SECRET.as_bytes()).unwrap()
}

/// Everything a webhook receiver saw.
#[derive(Default)]
struct Received {
    /// Requests per notification id (including failed answers).
    attempts: HashMap<String, u32>,
    /// Bodies accepted (2xx), per id.
    accepted: HashMap<String, u32>,
    bad_signatures: u32,
}

type Receiver = Arc<Mutex<Received>>;

fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers.get("tidings-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((t, v1)) = sig.split_once(",v1=") else {
        return false;
    };
    let t = t.trim_start_matches("t=");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let mut msg = t.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    let tag = aws_lc_rs::hmac::sign(&key, &msg);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex == v1 && t.parse::<i64>().is_ok_and(|t| (t - now_unix() as i64).abs() < 300)
}

/// A webhook receiver: `/ok`, `/flaky` (500, 500, then 200 per id), `/bad` (400), `/down`
/// (503 always).
async fn start_receiver() -> (String, Receiver) {
    let received: Receiver = Arc::default();
    async fn hook(
        State(r): State<Receiver>,
        Path(mode): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let id = headers
            .get("tidings-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut r = r.lock().unwrap();
        if !verify(&headers, &body) {
            r.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED;
        }
        let n = {
            let a = r.attempts.entry(id.clone()).or_default();
            *a += 1;
            *a
        };
        let status = match mode.as_str() {
            "ok" => StatusCode::OK,
            "flaky" if n <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
            "flaky" => StatusCode::OK,
            "bad" => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_success() {
            *r.accepted.entry(id).or_default() += 1;
        }
        status
    }
    let app = axum::Router::new()
        .route("/{mode}", axum::routing::post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

struct Env {
    nats: NatsServer,
    gateway: String,
    workers: Vec<(Process, String)>,
    http: reqwest::Client,
    svc: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A worker process and its metrics URL.
fn spawn_worker(nats_url: &str, extra: &[(&str, String)]) -> (Process, String) {
    let port = free_port();
    let mut env = vec![
        ("TIDINGS_NATS_URL", nats_url.to_owned()),
        ("TIDINGS_METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ("TIDINGS_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("TIDINGS_RETRY_BASE_MS", "50".to_owned()),
        ("TIDINGS_RETRY_MAX_ATTEMPTS", "3".to_owned()),
        ("TIDINGS_DELIVERY_ACK_WAIT_MS", "5000".to_owned()),
        (
            "TIDINGS_SMTP_URL",
            format!("file://{}", std::env::temp_dir().join("tidings-test-mail").display()),
        ),
    ];
    env.extend(extra.iter().cloned());
    let process = Process::spawn(WORKER, &env).unwrap();
    (process, format!("http://127.0.0.1:{port}/metrics"))
}

/// A worker's count of webhooks sent.
async fn webhooks_sent(metrics_url: &str) -> f64 {
    let (_, text) = tidings_tests::http_get(metrics_url, None).await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("tidings_worker_notifications_total{channel=\"webhook\",status=\"sent\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn start(workers: usize) -> Env {
    start_with(workers, &[]).await
}

/// The test VAPID key (a throw-away P-256 key).
fn vapid_key_file() -> String {
    format!("{}/../shared/tests/fixtures/ec-private.pem", env!("CARGO_MANIFEST_DIR"))
}

async fn start_with(workers: usize, worker_env: &[(&str, String)]) -> Env {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port();
    let config = tidings_shared::config::GatewayConfig::try_parse_from([
        "tidings-gateway",
        "--nats-url",
        &nats.url(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--jwt-secret",
        SECRET,
        "--webhook-allow-private",
        "true",
        "--vapid-private-key-file",
        &vapid_key_file(),
    ])
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tidings_gateway::run(config, async move {
        let _ = stopped.await;
    }));
    let gateway = format!("http://127.0.0.1:{port}");
    let ready = format!("{gateway}/readyz");
    eventually(Duration::from_secs(30), "gateway ready", || async {
        (tidings_tests::http_get(&ready, None).await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    let workers = (0..workers).map(|_| spawn_worker(&nats.url(), worker_env)).collect();
    let env = Env {
        nats,
        gateway,
        workers,
        http: reqwest::Client::new(),
        svc: token("ops", true),
        _stop: stop,
    };
    env.put(
        "/api/v1/templates/pr_merged",
        json!({
            "in_app": {"title": "PR #{{ pr }} merged", "body": "{{ title }}"},
            "email": {"subject": "PR #{{ pr }}", "text": "{{ title }}", "html": "<b>{{ title }}</b>"},
            "webhook": {"text": "PR {{ pr }}: {{ title }}"}
        }),
    )
    .await;
    env
}

impl Env {
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}{path}", self.gateway))
            .bearer_auth(&self.svc)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn notify(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/notifications", self.gateway))
            .bearer_auth(&self.svc)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// `GET url` with `token`, as JSON.
    async fn get_json(&self, url: &str, token: &str) -> Value {
        let r = self.http.get(url).bearer_auth(token).send().await.unwrap();
        r.json().await.unwrap_or(Value::Null)
    }

    async fn status(&self, id: &str) -> Value {
        self.get_json(&format!("{}/api/v1/notifications/{id}", self.gateway), &self.svc)
            .await
    }

    /// Waits until channel `channel` of `id` has status `want`.
    async fn wait_channel(&self, id: &str, channel: &str, want: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.status(id).await;
            if s["channels"][channel]["status"] == want {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {id}.{channel} == {want}; status: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn preferences_suppress_by_channel_and_category_and_quiet_hours_defer() {
    let env = start(1).await;
    let (code, _) = env
        .put(
            "/api/v1/users/alice/preferences",
            json!({"email":"alice@example.com","webhook_url":"http://127.0.0.1:9/ok","channels":{"webhook":false},
                   "categories":{"marketing":{"email":false}}}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = env
        .notify(
            json!({"id":"s1","user":"alice","template":"pr_merged","data":{"pr":1,"title":"t"},
        "category":"marketing","channels":["in_app","email","webhook"]}),
        )
        .await;
    assert_eq!((code, body["id"].as_str()), (202, Some("s1")));
    // In-app is recorded `sent` before its message goes out, the other channels' outcomes
    // when the plan is complete: wait for the plan.
    let s = env
        .wait_channel("s1", "webhook", "suppressed", Duration::from_secs(10))
        .await;
    assert_eq!(s["planned"], true, "{s}");
    assert_eq!(s["channels"]["in_app"]["status"], "sent", "{s}");
    assert_eq!(s["channels"]["email"]["status"], "suppressed", "{s}");

    // Quiet hours around now in New York: email deferred to their end, critical not.
    let ny = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("America/New_York").unwrap());
    // Wrapping: within an hour of midnight in New York the window spans it.
    let start = ny.time().wrapping_sub(jiff::SignedDuration::from_hours(1));
    let end = ny.time().wrapping_add(jiff::SignedDuration::from_hours(1));
    let hhmm = |t: jiff::civil::Time| format!("{:02}:{:02}", t.hour(), t.minute());
    env.put(
        "/api/v1/users/bob/preferences",
        json!({"email":"bob@example.com","timezone":"America/New_York","quiet_hours":{"start":hhmm(start),"end":hhmm(end)}}),
    )
    .await;
    env.notify(json!({"id":"q1","user":"bob","template":"pr_merged","data":{"pr":2,"title":"t"},"channels":["in_app","email"]})).await;
    env.notify(json!({"id":"q2","user":"bob","template":"pr_merged","data":{"pr":3,"title":"t"},"channels":["email"],"priority":"critical"})).await;
    let s = env
        .wait_channel("q1", "email", "deferred", Duration::from_secs(10))
        .await;
    assert_eq!(
        s["channels"]["in_app"]["status"], "sent",
        "in-app is never deferred: {s}"
    );
    let until: jiff::Timestamp = s["channels"]["email"]["until"].as_str().unwrap().parse().unwrap();
    let expected_end = ny
        .with()
        .time(jiff::civil::Time::new(end.hour(), end.minute(), 0, 0).unwrap())
        .build()
        .unwrap();
    let expected_end = if expected_end < ny {
        expected_end.checked_add(jiff::Span::new().days(1)).unwrap()
    } else {
        expected_end
    };
    assert_eq!(until, expected_end.timestamp(), "{s}");
    let s = env.wait_channel("q2", "email", "sent", Duration::from_secs(10)).await;
    // Critical went out at once (the test worker writes emails to files)...
    assert!(
        s["channels"]["email"].get("until").is_none(),
        "critical is not deferred: {s}"
    );
    // ...while the other one still waits for the end of the quiet hours.
    assert_eq!(env.status("q1").await["channels"]["email"]["status"], "deferred");
}

#[tokio::test]
async fn templates_and_requests_are_validated() {
    let env = start(1).await;
    let (code, body) = env
        .put(
            "/api/v1/templates/broken",
            json!({"in_app":{"title":"x","body":"a\n{{ oops"}}),
        )
        .await;
    assert_eq!(code, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("line 2"), "{body}");
    let (code, body) = env.notify(json!({"user":"u1","template":"nope","data":{}})).await;
    assert_eq!(code, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"), "{body}");
    let (code, body) = env.notify(json!({"user":"u 1","template":"pr_merged"})).await;
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("invalid: user")
            || body["error"]["message"].as_str().unwrap().contains("user"),
        "{body}"
    );
    let (code, _) = env
        .notify(json!({"user":"u1","template":"pr_merged","priority":"urgent"}))
        .await;
    assert_eq!(code, 400);

    // A missing variable fails that channel with a clear error, not the worker.
    env.notify(json!({"id":"m1","user":"u1","template":"pr_merged","data":{"pr":1},"channels":["in_app"]}))
        .await;
    let s = env
        .wait_channel("m1", "in_app", "failed", Duration::from_secs(10))
        .await;
    assert!(
        s["channels"]["in_app"]["error"].as_str().unwrap().contains("undefined"),
        "{s}"
    );
    assert_eq!(s["status"], "failed");

    // Straight on NATS: an invalid request gets a failed status with the reason.
    let client = env.nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("tidings.notify", json!({"id":"bad1","user":"u1"}).to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(
        "tidings.notify",
        json!({"id":"bad2","user":"u1","template":"ghost"}).to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for (id, needle) in [("bad1", "template"), ("bad2", "unknown template")] {
        let s = eventually(Duration::from_secs(10), id, || async {
            let s = env.status(id).await;
            (s["status"] == "failed").then_some(s)
        })
        .await;
        assert!(s["error"].as_str().unwrap().contains(needle), "{s}");
    }

    // Preferences are validated, with the field named.
    for (prefs, field) in [
        (json!({"timezone":"Mars/Base"}), "timezone"),
        (
            json!({"quiet_hours":{"start":"24:00","end":"07:00"}}),
            "quiet_hours.start",
        ),
        (json!({"phone":"12345"}), "phone"),
        (json!({"email":"x"}), "email"),
        (json!({"webhook_url":"ftp://x"}), "webhook_url"),
    ] {
        let (code, body) = env.put("/api/v1/users/u1/preferences", prefs).await;
        assert_eq!(code, 400);
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {body}"
        );
    }
}

#[tokio::test]
async fn webhooks_retry_fail_and_dead_letter_with_signatures() {
    let env = start(1).await;
    let (hooks, received) = start_receiver().await;
    for (user, mode) in [("flaky", "flaky"), ("bad", "bad"), ("down", "down"), ("ok", "ok")] {
        let (code, body) = env
            .put(
                &format!("/api/v1/users/{user}/preferences"),
                json!({"webhook_url": format!("{hooks}/{mode}")}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    for user in ["flaky", "bad", "down", "ok"] {
        env.notify(json!({"id":format!("w-{user}"),"user":user,"template":"pr_merged","data":{"pr":9,"title":"<x>"},"channels":["webhook"]})).await;
    }
    let s = env
        .wait_channel("w-flaky", "webhook", "sent", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 3, "{s}");
    let s = env
        .wait_channel("w-bad", "webhook", "failed", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 1, "{s}");
    assert!(
        s["channels"]["webhook"]["error"].as_str().unwrap().contains("400"),
        "{s}"
    );
    let s = env
        .wait_channel("w-down", "webhook", "failed", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["webhook"]["attempts"], 3, "{s}");
    assert!(
        s["channels"]["webhook"]["error"]
            .as_str()
            .unwrap()
            .contains("dead-lettered"),
        "{s}"
    );
    env.wait_channel("w-ok", "webhook", "sent", Duration::from_secs(20))
        .await;

    {
        let r = received.lock().unwrap();
        assert_eq!(r.bad_signatures, 0);
        assert_eq!(r.attempts.get("w-flaky"), Some(&3));
        assert_eq!(r.attempts.get("w-bad"), Some(&1));
        assert_eq!(r.attempts.get("w-down"), Some(&3));
        assert_eq!(r.accepted.get("w-ok"), Some(&1));
    }

    // The dead letter is in its stream, with the job and the error.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let stream = js.get_stream("TIDINGS_DEAD_LETTERS").await.unwrap();
    let letter = stream
        .direct_get_last_for_subject("tidings.dead.webhook")
        .await
        .unwrap();
    let letter: Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(letter["job"]["id"], "w-down");
    assert!(letter["error"].as_str().unwrap().contains("503"), "{letter}");
    drop(env.workers);
}

/// Sends 500 notifications (in-app + webhook) plus one repeated id; with `kill`, kills one
/// of the two workers mid-run. Returns how many times the receiver accepted each id.
async fn run_500(kill: bool) -> (HashMap<String, u32>, Env) {
    let env = start(2).await;
    let (hooks, received) = start_receiver().await;
    env.put(
        "/api/v1/users/many/preferences",
        json!({"webhook_url": format!("{hooks}/ok")}),
    )
    .await;
    // Idempotency: the same id twice is one notification.
    for _ in 0..2 {
        env.notify(
            json!({"id":"dup","user":"many","template":"pr_merged","data":{"pr":0,"title":"t"},"channels":["webhook"]}),
        )
        .await;
    }
    for i in 0..100 {
        let (code, _) = env
            .notify(json!({"id":format!("n{i}"),"user":"many","template":"pr_merged","data":{"pr":i,"title":"t"},"channels":["in_app","webhook"]}))
            .await;
        assert_eq!(code, 202);
    }
    // Both workers are at work (each has sent webhooks).
    for (_, metrics) in &env.workers {
        eventually(Duration::from_secs(30), "worker took a share", || async {
            (webhooks_sent(metrics).await > 0.0).then_some(())
        })
        .await;
    }
    // The other 400 in a burst straight on NATS, so the workers have a backlog in hand;
    // one of them dies in the middle of it.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let mut acks = Vec::new();
    for i in 100..500 {
        let req = json!({"id":format!("n{i}"),"user":"many","template":"pr_merged","data":{"pr":i,"title":"t"},"channels":["in_app","webhook"]});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("n{i}").as_str());
        acks.push(
            js.publish_with_headers("tidings.notify", headers, req.to_string().into())
                .await
                .unwrap(),
        );
        if kill && i == 250 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
            env.workers[0].0.signal("KILL").unwrap();
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let ids: Vec<String> = std::iter::once("dup".to_owned())
        .chain((0..500).map(|i| format!("n{i}")))
        .collect();
    // Every notification reaches its final status (a killed worker's jobs come back after
    // the ack wait).
    for id in &ids {
        let s = env.wait_channel(id, "webhook", "sent", Duration::from_secs(90)).await;
        assert_eq!(s["status"], "sent", "{s}");
        if id != "dup" {
            assert_eq!(s["channels"]["in_app"]["status"], "sent", "{s}");
        }
    }
    let accepted = received.lock().unwrap().accepted.clone();
    for id in &ids {
        assert!(accepted.get(id).copied().unwrap_or(0) >= 1, "{id} never delivered");
    }
    assert_eq!(accepted.len(), 501);
    // Exactly one in-app message per notification in the user's channel.
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let info = events.info_with_subjects("tidings.events.user.many").await.unwrap();
    use futures::TryStreamExt as _;
    let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
    assert_eq!(subjects.get("tidings.events.user.many"), Some(&500));
    (accepted, env)
}

#[tokio::test]
async fn two_workers_deliver_500_notifications_each_exactly_once() {
    let (accepted, _env) = run_500(false).await;
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_nothing() {
    let (accepted, _env) = run_500(true).await;
    // A webhook the killed worker had sent but not yet recorded is sent again by the other
    // worker (at least once; receivers deduplicate on Tidings-Id). That window is one
    // status write per in-flight delivery, so repeats are bounded by its concurrency.
    let twice = accepted.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 64,
        "{twice} repeats: more than the killed worker had in flight"
    );
}

#[tokio::test]
async fn end_to_end_in_app_delivered_then_read() {
    let env = start(1).await;
    let mut ws = WsClient::connect(&env.gateway, TokenIn::Query(token("carol", false)), None)
        .await
        .unwrap();
    assert_eq!(ws.frame().await["type"], "welcome");
    ws.subscribe("user:carol").await;
    let (code, body) = env
        .notify(json!({"user":"carol","project":"p1","template":"pr_merged","data":{"pr":42,"title":"Fix <b>"},"priority":"high"}))
        .await;
    assert_eq!(code, 202);
    let id = body["id"].as_str().unwrap().to_owned();
    let m = ws.frame_of("message").await;
    assert_eq!(
        (m["channel"].as_str(), m["event"].as_str(), m["id"].as_str()),
        (Some("user:carol"), Some("notification"), Some(id.as_str()))
    );
    assert_eq!(m["data"]["title"], "PR #42 merged");
    assert_eq!(m["data"]["body"], "Fix <b>");
    ws.send(json!({"type":"ack","channel":"user:carol","seq":m["seq"]}))
        .await
        .unwrap();
    env.wait_channel(&id, "in_app", "delivered", Duration::from_secs(10))
        .await;

    let inbox_url = format!("{}/api/v1/users/carol/inbox?unread=true", env.gateway);
    let inbox = env.get_json(&inbox_url, &token("carol", false)).await;
    assert_eq!(inbox["unread"], 1, "{inbox}");
    assert_eq!(inbox["items"][0]["id"], id.as_str());
    assert_eq!(inbox["items"][0]["read"], false);
    let other = env
        .http
        .get(inbox_url.replace("carol", "dave"))
        .bearer_auth(token("carol", false))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let read = env
        .http
        .post(format!("{}/api/v1/users/carol/inbox/{id}/read", env.gateway))
        .bearer_auth(token("carol", false))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let s = env.wait_channel(&id, "in_app", "read", Duration::from_secs(10)).await;
    assert_eq!(s["status"], "read");
    let inbox = env.get_json(&inbox_url, &token("carol", false)).await;
    assert_eq!(inbox["unread"], 0, "{inbox}");
}

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

/// A Twilio-compatible SMS API: checks basic auth and the form; `+15550000001` gets 500
/// then 201, `+15550000002` gets 400 with a provider error.
type Forms = Arc<Mutex<Vec<HashMap<String, String>>>>;

async fn start_sms_api() -> (String, Forms) {
    let seen: Forms = Arc::default();
    async fn messages(
        State(seen): State<Forms>,
        Path(sid): Path<String>,
        headers: HeaderMap,
        axum::Form(form): axum::Form<HashMap<String, String>>,
    ) -> (StatusCode, String) {
        use base64::Engine as _;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AC123:tok")
        );
        if sid != "AC123" || auth != expected {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"code":20003,"message":"Authenticate"}"#.into(),
            );
        }
        let to = form.get("To").cloned().unwrap_or_default();
        let n = {
            let mut s = seen.lock().unwrap();
            s.push(form);
            s.iter().filter(|f| f.get("To") == Some(&to)).count()
        };
        match to.as_str() {
            "+15550000001" if n == 1 => (StatusCode::INTERNAL_SERVER_ERROR, "{}".into()),
            "+15550000002" => (
                StatusCode::BAD_REQUEST,
                r#"{"code":21211,"message":"The 'To' number +15550000002 is not a valid phone number."}"#.into(),
            ),
            _ => (StatusCode::CREATED, r#"{"sid":"SM1","status":"queued"}"#.into()),
        }
    }
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            axum::routing::post(messages),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn sms_through_a_twilio_compatible_api_retries_and_keeps_the_provider_error() {
    let (api, seen) = start_sms_api().await;
    let env = start_with(
        1,
        &[
            ("TIDINGS_SMS_API_URL", api),
            ("TIDINGS_SMS_ACCOUNT_SID", "AC123".into()),
            ("TIDINGS_SMS_AUTH_TOKEN", "tok".into()),
            ("TIDINGS_SMS_FROM", "+15559999999".into()),
        ],
    )
    .await;
    env.put(
        "/api/v1/templates/sms_only",
        json!({"in_app":{"title":"t","body":"b"},"sms":{"text":"PR {{ pr }} merged"}}),
    )
    .await;
    env.put("/api/v1/users/gus/preferences", json!({"phone":"+15550000001"}))
        .await;
    env.put("/api/v1/users/hal/preferences", json!({"phone":"+15550000002"}))
        .await;
    env.notify(json!({"id":"sms-1","user":"gus","template":"sms_only","data":{"pr":5},"channels":["sms"]}))
        .await;
    env.notify(json!({"id":"sms-2","user":"hal","template":"sms_only","data":{"pr":6},"channels":["sms"]}))
        .await;
    let s = env.wait_channel("sms-1", "sms", "sent", Duration::from_secs(20)).await;
    assert_eq!(s["channels"]["sms"]["attempts"], 2, "{s}");
    let s = env
        .wait_channel("sms-2", "sms", "failed", Duration::from_secs(20))
        .await;
    assert_eq!(s["channels"]["sms"]["attempts"], 1, "{s}");
    assert!(
        s["channels"]["sms"]["error"]
            .as_str()
            .unwrap()
            .contains("not a valid phone number"),
        "{s}"
    );
    let forms = seen.lock().unwrap().clone();
    let sent = forms
        .iter()
        .find(|f| f.get("To").map(String::as_str) == Some("+15550000001"))
        .unwrap();
    assert_eq!(sent.get("From").map(String::as_str), Some("+15559999999"));
    assert_eq!(sent.get("Body").map(String::as_str), Some("PR 5 merged"));
}

/// A browser's push subscription: its ECDH key pair and auth secret.
struct Browser {
    private: aws_lc_rs::agreement::PrivateKey,
    public: Vec<u8>,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        use aws_lc_rs::rand::SecureRandom as _;
        let private = aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let public = private.compute_public_key().unwrap().as_ref().to_vec();
        let mut auth = [0u8; 16];
        aws_lc_rs::rand::SystemRandom::new().fill(&mut auth).unwrap();
        Browser { private, public, auth }
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        struct L(usize);
        impl aws_lc_rs::hkdf::KeyType for L {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, salt).extract(ikm);
        let info = [info];
        let okm = prk.expand(&info, L(len)).unwrap();
        let mut out = vec![0u8; len];
        okm.fill(&mut out).unwrap();
        out
    }

    /// Decrypts an aes128gcm body as a browser does (RFC 8291 / RFC 8188).
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        let idlen = body[20] as usize;
        let as_public = &body[21..21 + idlen];
        let ciphertext = &body[21 + idlen..];
        let shared = aws_lc_rs::agreement::agree(
            &self.private,
            aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::ECDH_P256, as_public),
            (),
            |k| Ok(k.to_vec()),
        )
        .unwrap();
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&self.public);
        info.extend_from_slice(as_public);
        let ikm = Self::hkdf(&self.auth, &shared, &info, 32);
        let cek = Self::hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0", 16);
        let nonce = Self::hkdf(salt, &ikm, b"Content-Encoding: nonce\0", 12);
        let key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &cek).unwrap(),
        );
        let mut buf = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                aws_lc_rs::aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                aws_lc_rs::aead::Aad::empty(),
                &mut buf,
            )
            .unwrap();
        let end = plain.iter().rposition(|b| *b == 2).unwrap();
        plain[..end].to_vec()
    }
}

/// What the push service saw.
#[derive(Default)]
struct PushLog {
    payloads: Vec<Value>,
    headers: Vec<(String, String)>,
}

async fn start_push_service(browser: Arc<Browser>, vapid_public: String) -> (String, Arc<Mutex<PushLog>>) {
    type S = (Arc<Browser>, String, Arc<Mutex<PushLog>>);
    async fn push(
        State((browser, vapid, log)): State<S>,
        Path(mode): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if mode == "gone" {
            return StatusCode::GONE;
        }
        // VAPID: an ES256 JWT for this origin, signed by the key the gateway publishes.
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some((jwt, k)) = auth.strip_prefix("vapid t=").and_then(|r| r.split_once(", k=")) else {
            return StatusCode::UNAUTHORIZED;
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            b64.decode(&vapid).unwrap(),
        );
        let signed = public.verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap_or_default(),
        );
        let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap_or_default()).unwrap_or_default();
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if k != vapid
            || signed.is_err()
            || claims["aud"] != format!("http://{host}")
            || claims["exp"].as_u64().unwrap_or(0) <= now_unix()
        {
            return StatusCode::FORBIDDEN;
        }
        let payload: Value = serde_json::from_slice(&browser.decrypt(&body)).unwrap();
        let mut log = log.lock().unwrap();
        log.payloads.push(payload);
        for h in ["ttl", "urgency", "content-encoding"] {
            log.headers.push((
                h.to_owned(),
                headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        StatusCode::CREATED
    }
    let log: Arc<Mutex<PushLog>> = Arc::default();
    let app = axum::Router::new()
        .route("/push/{mode}", axum::routing::post(push))
        .with_state((browser, vapid_public, log.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), log)
}

#[tokio::test]
async fn web_push_is_encrypted_signed_and_gone_subscriptions_are_removed() {
    let env = start_with(
        1,
        &[
            ("TIDINGS_VAPID_PRIVATE_KEY_FILE", vapid_key_file()),
            ("TIDINGS_VAPID_SUBJECT", "mailto:ops@example.com".into()),
        ],
    )
    .await;
    let key: Value = env
        .http
        .get(format!("{}/api/v1/push/vapid-public-key", env.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vapid_public = key["key"].as_str().unwrap().to_owned();
    let browser = Arc::new(Browser::new());
    let (service, log) = start_push_service(browser.clone(), vapid_public).await;
    env.put(
        "/api/v1/templates/push_t",
        json!({"in_app":{"title":"t","body":"b"},"push":{"title":"PR #{{ pr }}","body":"{{ title }}","url":"https://app.example/pr/{{ pr }}"}}),
    )
    .await;
    let sub = |mode: &str| json!({"endpoint": format!("{service}/push/{mode}"), "keys": {"p256dh": Browser::b64(&browser.public), "auth": Browser::b64(&browser.auth)}});
    let (code, body) = env
        .put(
            "/api/v1/users/ivy/preferences",
            json!({"push_subscriptions":[sub("ok")]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    env.put(
        "/api/v1/users/jon/preferences",
        json!({"push_subscriptions":[sub("gone")]}),
    )
    .await;

    env.notify(json!({"id":"push-1","user":"ivy","template":"push_t","data":{"pr":4,"title":"Ship it"},"channels":["push"],"priority":"high"})).await;
    env.wait_channel("push-1", "push", "sent", Duration::from_secs(20))
        .await;
    {
        let log = log.lock().unwrap();
        assert_eq!(
            log.payloads,
            vec![json!({"id":"push-1","title":"PR #4","body":"Ship it","url":"https://app.example/pr/4"})]
        );
        assert!(
            log.headers.contains(&("urgency".into(), "high".into())),
            "{:?}",
            log.headers
        );
        assert!(log.headers.contains(&("content-encoding".into(), "aes128gcm".into())));
        assert!(log.headers.contains(&("ttl".into(), "86400".into())));
    }

    env.notify(json!({"id":"push-2","user":"jon","template":"push_t","data":{"pr":5,"title":"x"},"channels":["push"]}))
        .await;
    let s = env
        .wait_channel("push-2", "push", "failed", Duration::from_secs(20))
        .await;
    assert!(s["channels"]["push"]["error"].as_str().unwrap().contains("gone"), "{s}");
    let prefs = env
        .get_json(&format!("{}/api/v1/users/jon/preferences", env.gateway), &env.svc)
        .await;
    assert_eq!(
        prefs["push_subscriptions"],
        json!([]),
        "the gone subscription was removed: {prefs}"
    );
}

#[tokio::test]
async fn a_batch_becomes_one_digest_even_across_a_worker_restart() {
    let smtp = tidings_tests::smtp::SmtpServer::start().await.unwrap();
    let worker_env = [
        ("TIDINGS_SMTP_URL", smtp.url()),
        ("TIDINGS_BATCH_WINDOW_MS", "3000".to_owned()),
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

/// Publishes `body` on `subject` with `Nats-Msg-Id: msg_id` and waits for JetStream's answer.
async fn publish_with_id(
    js: &async_nats::jetstream::Context,
    subject: &'static str,
    msg_id: &str,
    body: Vec<u8>,
) -> Result<async_nats::jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject, headers, body.into()).await?.await
}

/// A worker that recorded a request's plan and died before carrying it out: the request,
/// handed out again, gets its in-app message, inbox entry and webhook, each once, as the
/// recorded plan says; a new request reusing the id meanwhile is not planned or carried out.
#[tokio::test]
async fn a_recorded_plan_is_carried_out_when_its_request_comes_back() {
    use async_nats::jetstream::AckKind;
    use async_nats::jetstream::consumer::PullConsumer;
    use futures::StreamExt as _;
    use tidings_shared::notify::{ChannelState, DeliveryChannel, DeliveryStatus, NotificationStatus};

    let mut env = start(1).await;
    let (hooks, received) = start_receiver().await;
    env.put(
        "/api/v1/users/ivy/preferences",
        json!({"webhook_url": format!("{hooks}/ok")}),
    )
    .await;
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let consumer: PullConsumer = eventually(Duration::from_secs(30), "the intake consumer", || async {
        js.get_stream("TIDINGS_NOTIFY")
            .await
            .ok()?
            .get_consumer("tidings-intake")
            .await
            .ok()
    })
    .await;
    // The worker stops; the requests below wait for us.
    env.workers[0].0.signal("TERM").unwrap();
    env.workers[0].0.wait_exit(Duration::from_secs(30)).await.unwrap();

    // The request asks for in-app only; the plan recorded below also has the webhook, as if
    // the preferences or quiet hours had changed since it was decided: what is carried out
    // is the recorded plan, not a new decision.
    let request =
        json!({"id":"redo","user":"ivy","template":"pr_merged","data":{"pr":7,"title":"t"},"channels":["in_app"]});
    let publish = |msg_id: &'static str| {
        let (js, body) = (js.clone(), request.to_string().into_bytes());
        async move { publish_with_id(&js, "tidings.notify", msg_id, body).await.unwrap() }
    };
    publish("first").await;
    // Play the worker that dies: take the request and record its plan, as a worker does.
    let mut fetched = consumer.fetch().max_messages(1).messages().await.unwrap();
    let first = fetched.next().await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().delivered, 1);
    let recorded = |status| ChannelState {
        status,
        attempts: 0,
        error: None,
        until: None,
        updated_at: "2026-01-01T00:00:00.000Z".into(),
        via: None,
        digest: None,
    };
    let mut plan = NotificationStatus {
        id: "redo".into(),
        user: "ivy".into(),
        status: String::new(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        channels: [
            (DeliveryChannel::InApp, recorded(DeliveryStatus::Sent)),
            (DeliveryChannel::Webhook, recorded(DeliveryStatus::Pending)),
        ]
        .into(),
        error: None,
        planned: true,
        request_seq: Some(first.info().unwrap().stream_sequence),
    };
    plan.summarize();
    let store = tidings_shared::store::Store::open(js.clone(), 1).await.unwrap();
    store.create_status(&plan).await.unwrap();

    // A new request with the same id, while the first is still in hand: a repeat, not
    // carried out (the plan it finds is somebody else's to finish).
    publish("second").await;
    env.workers[0] = spawn_worker(&env.nats.url(), &[]);
    eventually(Duration::from_secs(30), "the repeat handled", || async {
        // Still in hand: the first request must not come back before we hand it back.
        first.ack_with(AckKind::Progress).await.ok()?;
        let info = consumer.get_info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 1 && info.delivered.stream_sequence == 2).then_some(())
    })
    .await;
    let events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let in_app_messages = || {
        let events = events.clone();
        async move {
            use futures::TryStreamExt as _;
            let info = events.info_with_subjects("tidings.events.user.ivy").await.unwrap();
            let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
            subjects.get("tidings.events.user.ivy").copied().unwrap_or(0)
        }
    };
    assert_eq!(in_app_messages().await, 0, "the repeat sent nothing");
    assert!(received.lock().unwrap().attempts.is_empty(), "the repeat sent nothing");
    assert_eq!(env.status("redo").await["channels"]["webhook"]["status"], "pending");

    // The dying worker had queued the webhook job, due in 6 s, long enough ago that its
    // `Nats-Msg-Id` no longer protects it: a copy of a queued job is still refused.
    let job = tidings_shared::notify::DeliveryJob {
        id: "redo".into(),
        user: "ivy".into(),
        channel: DeliveryChannel::Webhook,
        project: None,
        priority: tidings_shared::notify::Priority::Normal,
        category: None,
        content: tidings_shared::notify::Rendered {
            title: Some("PR #7 merged".into()),
            body: "t".into(),
            html: None,
            url: None,
            fields: None,
        },
        data: json!({"pr":7,"title":"t"}),
        not_before_ms: Some(now_unix() as i64 * 1000 + 6000),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        digest: None,
    };
    let queue_copy = |msg_id: &'static str| {
        let (js, body) = (js.clone(), serde_json::to_vec(&job).unwrap());
        async move { publish_with_id(&js, "tidings.delivery.webhook.redo", msg_id, body).await }
    };
    queue_copy("queued-long-ago").await.unwrap();
    let refused = queue_copy("another-copy").await.unwrap_err();
    assert!(
        refused.to_string().contains("maximum messages per subject"),
        "{refused}"
    );

    // The first request comes back (its worker "died"): the recorded plan is carried out,
    // the job it finds queued counting as queued (the request is acknowledged).
    first.ack_with(AckKind::Nak(None)).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the request carried out and acknowledged",
        || async {
            let info = consumer.get_info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    // Acknowledged before the queued job was even due: not held up retrying the refused copy.
    assert_eq!(env.status("redo").await["channels"]["webhook"]["status"], "pending");
    let s = env
        .wait_channel("redo", "webhook", "sent", Duration::from_secs(30))
        .await;
    assert_eq!(s["channels"]["in_app"]["status"], "sent", "{s}");
    assert_eq!(s["created_at"], "2026-01-01T00:00:00.000Z", "{s}");
    assert_eq!(received.lock().unwrap().accepted.get("redo"), Some(&1));
    assert_eq!(in_app_messages().await, 1);
    let inbox = env
        .get_json(&format!("{}/api/v1/users/ivy/inbox", env.gateway), &token("ivy", false))
        .await;
    assert_eq!(inbox["items"][0]["id"], "redo", "{inbox}");
    assert_eq!(
        inbox["items"][0]["created_at"], "2026-01-01T00:00:00.000Z",
        "from the recorded plan: {inbox}"
    );
}
