//! Unbounded state: a user's inbox keeps at most `TIDINGS_INBOX_MAX_PER_USER` entries (the
//! oldest dropped) and is read a page at a time with a cursor; `TIDINGS_EVENTS` holds at
//! most `TIDINGS_EVENTS_MAX_BYTES`, and publishing goes on past it.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use tidings_tests::eventually;

use common::*;

/// `GET /api/v1/users/flood/inbox?<query>` as the user.
async fn inbox(env: &Env, query: &str) -> (u16, Value) {
    let url = format!("{}/api/v1/users/flood/inbox?{query}", env.gateway);
    let r = env
        .http
        .get(url)
        .bearer_auth(token("flood", false))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_inbox_is_bounded_per_user_and_read_a_page_at_a_time() {
    let env = start_with(1, &[("TIDINGS_INBOX_MAX_PER_USER", "5".to_owned())]).await;
    // One at a time, so that creation times follow the ids.
    for i in 0..12 {
        let id = format!("f{i:02}");
        env.notify(json!({"id": id, "user": "flood", "template": "pr_merged",
            "data": {"pr": i, "title": "t"}, "channels": ["in_app"]}))
            .await;
        eventually(Duration::from_secs(20), &id, || async {
            let (_, page) = inbox(&env, "limit=1").await;
            (page["items"][0]["id"] == id.as_str()).then_some(())
        })
        .await;
    }
    // Only the newest five are kept (the trim follows the newest entry's creation).
    let kept = ["f11", "f10", "f09", "f08", "f07"];
    let trimmed = tidings_tests::wait_for(Duration::from_secs(10), || async {
        let (_, all) = inbox(&env, "limit=500").await;
        let ids: Vec<&str> = all["items"]
            .as_array()?
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        (ids == kept).then(|| all.clone())
    })
    .await;
    let Some(all) = trimmed else {
        panic!("not trimmed to the newest five: {}", inbox(&env, "limit=500").await.1);
    };
    assert_eq!(all["unread"], 5);
    assert_eq!(all["next"], Value::Null);

    // Paging: two at a time with the cursor, every entry once, in order.
    let (mut seen, mut query) = (Vec::new(), "limit=2".to_owned());
    loop {
        let (code, page) = inbox(&env, &query).await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(page["unread"], 5, "{page}");
        assert!(page["items"].as_array().unwrap().len() <= 2, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => query = format!("limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, kept);
    // With `unread`, after marking one read.
    let url = format!("{}/api/v1/users/flood/inbox/f10/read", env.gateway);
    let r = env.http.post(url).bearer_auth(&env.svc).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, page) = inbox(&env, "unread=true&limit=2&before=f11").await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!((ids, page["unread"].clone()), (vec!["f09", "f08"], json!(4)), "{page}");
    // A cursor that names nothing is refused.
    let (code, body) = inbox(&env, "before=nothing-here").await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn the_events_stream_is_bounded_in_bytes_and_publishing_goes_on() {
    let limit = 256 * 1024;
    let env = start_full(1, &[], &[("TIDINGS_EVENTS_MAX_BYTES", limit.to_string())]).await;
    let js = async_nats::jetstream::new(env.nats.client().await.unwrap());
    eventually(
        Duration::from_secs(20),
        "the gateway's byte limit on TIDINGS_EVENTS",
        || async {
            let mut s = js.get_stream("TIDINGS_EVENTS").await.ok()?;
            (s.info().await.ok()?.config.max_bytes == limit).then_some(())
        },
    )
    .await;
    // A publisher sending 1 MiB, 4 times the limit, over many channels.
    let data = "x".repeat(1024);
    for i in 0..1024 {
        let body = json!({"event": "big", "data": data, "id": format!("b{i}")});
        js.publish(format!("tidings.events.project.p{}", i % 50), body.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut s = js.get_stream("TIDINGS_EVENTS").await.unwrap();
    let state = s.info().await.unwrap().state.clone();
    assert!(state.bytes <= limit as u64, "{} bytes stored", state.bytes);
    assert!(state.messages > 0);
    // The newest message is kept (the oldest were dropped).
    let last = s
        .direct_get_last_for_subject("tidings.events.project.p23")
        .await
        .unwrap();
    let last: Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(last["id"], "b1023");
}
