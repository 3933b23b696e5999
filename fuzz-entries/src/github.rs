//! GitHub webhook payloads: [`parse_payload`] (JSON or form-encoded) and [`Kind::map`] to
//! the channel and `data` of contract §6.

use serde_json::Value;
use tidings_gateway::github::{Kind, parse_payload};
use tidings_shared::Channel;
use tidings_shared::body::is_valid_event;

/// Parses `data` as each content type GitHub sends and maps it as each event Tidings
/// publishes: mapping succeeds exactly when `repository.id` is an unsigned integer, goes to
/// `project:<repository.id>`, and yields exactly the contract's fields.
pub fn github_payload(data: &[u8]) {
    for content_type in [
        None,
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let Ok(payload) = parse_payload(content_type, data) else {
            continue;
        };
        let repo_id = payload.pointer("/repository/id").and_then(Value::as_u64);
        for kind in [Kind::PullRequest, Kind::CheckRun, Kind::CheckSuite] {
            assert!(is_valid_event(kind.tidings_event()));
            let mapped = kind.map(&payload);
            let Some(id) = repo_id else {
                assert!(mapped.is_err(), "{kind:?} mapped without repository.id");
                continue;
            };
            let (channel, data) = mapped.unwrap_or_else(|e| panic!("{kind:?} with repository.id {id}: {e}"));
            assert_eq!(channel, Channel::Project(id.to_string()));
            check_fields(kind, &payload, &data);
        }
    }
}

fn check_fields(kind: Kind, p: &Value, data: &Value) {
    let object = data.as_object().expect("data is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let want: &[&str] = match kind {
        Kind::PullRequest => &[
            "action",
            "author",
            "head_sha",
            "merged",
            "number",
            "repository",
            "state",
            "title",
            "url",
        ],
        Kind::CheckRun | Kind::CheckSuite => &[
            "action",
            "app",
            "conclusion",
            "head_sha",
            "name",
            "repository",
            "status",
            "url",
        ],
    };
    assert_eq!(keys, want, "{kind:?}");
    let at = |ptr: &str| p.pointer(ptr).cloned().unwrap_or(Value::Null);
    assert_eq!(data["action"], at("/action"));
    assert_eq!(data["repository"], at("/repository/full_name"));
    match kind {
        Kind::PullRequest => {
            assert!(data["merged"].is_boolean());
            assert_eq!(data["title"], at("/pull_request/title"));
        }
        Kind::CheckRun => assert_eq!(data["head_sha"], at("/check_run/head_sha")),
        Kind::CheckSuite => {
            assert!(data["url"].is_null() || data["url"].is_string());
            assert_eq!(data["name"], data["app"]);
        }
    }
}
