//! Planning a notification: preferences, quiet hours, validation, and a recorded plan carried
//! out when its request comes back.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tidings_shared::auth::now_unix;
use tidings_tests::eventually;

use common::*;

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
    for request in [
        json!({"id":"bad1","user":"u1"}),
        json!({"id":"bad2","user":"u1","template":"ghost"}),
    ] {
        js.publish("tidings.notify", request.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
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

/// Ivy's in-app messages in `TIDINGS_EVENTS`.
async fn in_app_messages(js: &async_nats::jetstream::Context) -> usize {
    use futures::TryStreamExt as _;
    let events = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let info = events.info_with_subjects("tidings.events.user.ivy").await.unwrap();
    let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
    subjects.get("tidings.events.user.ivy").copied().unwrap_or(0)
}

/// Queues [`queued_webhook_job`] under one `Nats-Msg-Id`, then asserts that a copy under
/// another is refused (one job per subject).
async fn assert_second_job_copy_refused(js: &async_nats::jetstream::Context) {
    let job = queued_webhook_job();
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
}

/// Takes the next request from the intake consumer (its first delivery) and records
/// [`recorded_plan`] for it, as a worker does before it carries anything out.
async fn take_and_record_plan(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    js: &async_nats::jetstream::Context,
) -> async_nats::jetstream::Message {
    use futures::StreamExt as _;
    // A waiting pull (not `fetch`, which answers at once and may come before the request).
    let mut fetched = consumer
        .batch()
        .max_messages(1)
        .expires(std::time::Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let first = fetched.next().await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().delivered, 1);
    let plan = recorded_plan(first.info().unwrap().stream_sequence);
    let store = tidings_shared::store::Store::open(js.clone(), 1).await.unwrap();
    store.create_status(&plan).await.unwrap();
    first
}

/// The worker's intake consumer, once the worker has created it.
async fn intake_consumer(js: &async_nats::jetstream::Context) -> async_nats::jetstream::consumer::PullConsumer {
    eventually(Duration::from_secs(30), "the intake consumer", || async {
        js.get_stream("TIDINGS_NOTIFY")
            .await
            .ok()?
            .get_consumer("tidings-intake")
            .await
            .ok()
    })
    .await
}

/// The plan a worker records for request `redo` (stream sequence `seq`): in-app sent and
/// the webhook pending, as of 2026-01-01.
fn recorded_plan(seq: u64) -> tidings_shared::notify::NotificationStatus {
    use tidings_shared::notify::{ChannelState, DeliveryChannel, DeliveryStatus, NotificationStatus};
    let recorded = |status| ChannelState {
        status,
        attempts: 0,
        error: None,
        until: None,
        updated_at: "2026-01-01T00:00:00.000Z".into(),
        via: None,
        digest: None,
        deferrals: 0,
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
        request_seq: Some(seq),
    };
    plan.summarize();
    plan
}

/// The webhook job the worker that recorded [`recorded_plan`] queued, due in 6 s.
fn queued_webhook_job() -> tidings_shared::notify::DeliveryJob {
    tidings_shared::notify::DeliveryJob {
        id: "redo".into(),
        user: "ivy".into(),
        channel: tidings_shared::notify::DeliveryChannel::Webhook,
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
    }
}

/// A worker that recorded a request's plan and died before carrying it out: the request,
/// handed out again, gets its in-app message, inbox entry and webhook, each once, as the
/// recorded plan says; a new request reusing the id meanwhile is not planned or carried out.
#[tokio::test]
async fn a_recorded_plan_is_carried_out_when_its_request_comes_back() {
    use async_nats::jetstream::AckKind;

    let mut env = start(1).await;
    let (hooks, received) = start_receiver().await;
    env.put(
        "/api/v1/users/ivy/preferences",
        json!({"webhook_url": format!("{hooks}/ok")}),
    )
    .await;
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    let consumer = intake_consumer(&js).await;
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
    let first = take_and_record_plan(&consumer, &js).await;

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
    assert_eq!(in_app_messages(&js).await, 0, "the repeat sent nothing");
    assert!(received.lock().unwrap().attempts.is_empty(), "the repeat sent nothing");
    assert_eq!(env.status("redo").await["channels"]["webhook"]["status"], "pending");

    // The dying worker had queued the webhook job, due in 6 s, long enough ago that its
    // `Nats-Msg-Id` no longer protects it: a copy of a queued job is still refused.
    assert_second_job_copy_refused(&js).await;

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
    assert_eq!(in_app_messages(&js).await, 1);
    let inbox = env
        .get_json(&format!("{}/api/v1/users/ivy/inbox", env.gateway), &token("ivy", false))
        .await;
    assert_eq!(inbox["items"][0]["id"], "redo", "{inbox}");
    assert_eq!(
        inbox["items"][0]["created_at"], "2026-01-01T00:00:00.000Z",
        "from the recorded plan: {inbox}"
    );
}
