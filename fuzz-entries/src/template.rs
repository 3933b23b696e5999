//! Templates with hostile data: the gateway's check when a template is written
//! ([`Template::validate`]) and the worker's rendering ([`tidings_worker::render::render`]).
//!
//! Input: a template source, then a NUL byte, then the request's `data` as JSON (without a
//! NUL, the data is a fixed hostile object). The source becomes every part of a template.

use serde_json::{Value, json};
use tidings_shared::depth::from_json;
use tidings_shared::notify::DeliveryChannel;
use tidings_shared::template::{Budget, EmailPart, Template, TitleBody};
use tidings_worker::render::render;

/// A render budget far below the default, so that each run stays short; budgets are
/// enforced the same way whatever their size.
pub const BUDGET: Budget = Budget {
    fuel: 20_000,
    max_bytes: 16 * 1024,
};

fn hostile() -> Value {
    json!({
        "title": "<script>alert(1)</script>",
        "body": "\"'&<>{{ 7*7 }}{% raw %}",
        "items": [{"name": "<b>x</b>"}, {"name": "&amp;"}],
        "count": 2,
    })
}

/// The entry point.
pub fn template(data: &[u8]) {
    let (source, json) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let data = match json {
        // Requests are depth-checked like every other outside JSON.
        Some(j) => match from_json::<Value>(j) {
            Ok(v) => v,
            Err(_) => return,
        },
        None => hostile(),
    };
    fuzzed_source(source, &data);
    escaped_html(&data);
}

/// A fuzzed template: validation and rendering answer (never panic or run away), and
/// every output stays within its budget.
fn fuzzed_source(source: &str, data: &Value) {
    let mut webhook = serde_json::Map::new();
    webhook.insert("text".into(), Value::String(source.to_owned()));
    webhook.insert("n".into(), json!(1));
    let t = Template {
        in_app: Some(TitleBody {
            title: source.to_owned(),
            body: source.to_owned(),
        }),
        email: Some(EmailPart {
            subject: source.to_owned(),
            text: source.to_owned(),
            html: Some(source.to_owned()),
        }),
        sms: None,
        push: None,
        webhook: Some(webhook),
    };
    // Validation runs on the default budget; its verdict does not matter here.
    let _ = t.validate();
    for channel in [DeliveryChannel::InApp, DeliveryChannel::Email, DeliveryChannel::Webhook] {
        let Ok(r) = render(&t, channel, data, &BUDGET) else {
            continue;
        };
        for part in [r.title.as_deref(), Some(r.body.as_str()), r.html.as_deref()]
            .into_iter()
            .flatten()
        {
            assert!(part.len() <= BUDGET.max_bytes, "{} bytes rendered", part.len());
        }
        if let Some(fields) = &r.fields {
            assert_eq!(fields.get("n"), Some(&json!(1)), "a non-string webhook field changed");
        }
    }
    // No SMS part: an error naming it, not a panic.
    assert!(render(&t, DeliveryChannel::Sms, data, &BUDGET).is_err());
}

/// The fuzzed data in a fixed HTML part: whatever the data holds, none of its markup comes
/// out unescaped.
fn escaped_html(data: &Value) {
    let t = Template {
        email: Some(EmailPart {
            subject: "{{ title }}".into(),
            text: "{{ body }}".into(),
            html: Some("<p>{{ title }}</p><p>{{ body }}</p><p>{% for i in items %}{{ i.name }}{% endfor %}</p>".into()),
        }),
        ..Template::default()
    };
    let Ok(r) = render(&t, DeliveryChannel::Email, data, &BUDGET) else {
        return;
    };
    let html = r.html.expect("the email part has HTML");
    let inner = html.replace("<p>", "").replace("</p>", "");
    assert!(!inner.contains(['<', '>', '"']), "unescaped markup in {html:?}");
}
