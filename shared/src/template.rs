//! Notification templates (contract §7): one MiniJinja part per channel, validated when
//! written (by the gateway, on `PUT`). The worker renders them (`worker/src/render.rs`) in the
//! same [`environment`]: strict undefined variables, HTML escaping in HTML parts.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A template: the parts for each channel it supports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// In-app title and body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_app: Option<TitleBody>,
    /// Email subject, text and optional HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailPart>,
    /// SMS text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<TextPart>,
    /// Push title, body and optional URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushPart>,
    /// Webhook: a JSON object whose string values are templates (optional; without it the
    /// webhook gets the in-app title and body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `{"title","body"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitleBody {
    /// Title template.
    pub title: String,
    /// Body template.
    pub body: String,
}

/// `{"subject","text","html"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailPart {
    /// Subject template.
    pub subject: String,
    /// Plain-text body template.
    pub text: String,
    /// HTML body template (auto-escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// `{"text"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPart {
    /// Text template.
    pub text: String,
}

/// `{"title","body","url"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPart {
    /// Title template.
    pub title: String,
    /// Body template.
    pub body: String,
    /// Click-through URL template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Valid template names: `[A-Za-z0-9_-]{1,128}` (also a KV key).
pub fn is_valid_name(name: &str) -> bool {
    crate::channel::is_valid_id(name)
}

/// Instructions one part may run by default (`TIDINGS_TEMPLATE_FUEL`): far more than any
/// real template over a digest of a thousand items needs, and a few milliseconds of CPU.
pub const DEFAULT_FUEL: u64 = 250_000;
/// Bytes one rendered part may have by default (`TIDINGS_TEMPLATE_MAX_BYTES`).
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Nesting of loops, blocks and calls one render may reach.
const RECURSION_LIMIT: usize = 64;

/// How much one part's rendering may cost: a template is code written by a service, and a
/// loop nested in a loop (or one over a huge `range`) must fail its notification, not hold
/// a worker thread for ever or fill its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// MiniJinja instructions (its `fuel`) per part.
    pub fuel: u64,
    /// Bytes of output per part.
    pub max_bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            fuel: DEFAULT_FUEL,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The MiniJinja environment every part is parsed and rendered in: undefined variables are
/// errors, only the HTML parts (names ending in `.html`) are escaped, and each render runs
/// on `budget`'s fuel.
pub fn environment(budget: &Budget) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(budget.fuel));
    env.set_recursion_limit(RECURSION_LIMIT);
    // Names ending in .html are the HTML parts: escaped; everything else verbatim.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env
}

/// A writer that refuses to grow past its limit, so an oversized output stops the render
/// at the limit instead of after it has been built whole.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered output over its limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders part `name` (parsed in [`environment`] with `budget`) over `ctx`, within
/// `budget`; an error over the budget names the budget and its setting.
pub fn render_within(
    tmpl: &minijinja::Template<'_, '_>,
    name: &str,
    ctx: minijinja::Value,
    budget: &Budget,
) -> Result<String> {
    let mut out = Capped {
        out: Vec::new(),
        limit: budget.max_bytes,
        overflowed: false,
    };
    match tmpl.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.out).map_err(|e| Error::Template(format!("rendering {name}: {e}"))),
        Err(_) if out.overflowed => Err(Error::Template(format!(
            "rendering {name}: over its budget: output larger than {} bytes (TIDINGS_TEMPLATE_MAX_BYTES)",
            budget.max_bytes
        ))),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(Error::Template(format!(
            "rendering {name}: over its budget: more than {} instructions (TIDINGS_TEMPLATE_FUEL)",
            budget.fuel
        ))),
        Err(e) => Err(Error::Template(format!("rendering {name}: {e}"))),
    }
}

/// Whether a render error is the budget's (not the template's or the data's).
fn over_budget(e: &Error) -> bool {
    matches!(e, Error::Template(m) if m.contains("over its budget"))
}

impl Template {
    /// Every `(part name, source)` pair, for validation.
    fn sources(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = Vec::new();
        if let Some(p) = &self.in_app {
            out.push(("in_app.title".into(), &p.title));
            out.push(("in_app.body".into(), &p.body));
        }
        if let Some(p) = &self.email {
            out.push(("email.subject".into(), &p.subject));
            out.push(("email.text".into(), &p.text));
            if let Some(h) = &p.html {
                out.push(("email.html".into(), h));
            }
        }
        if let Some(p) = &self.sms {
            out.push(("sms.text".into(), &p.text));
        }
        if let Some(p) = &self.push {
            out.push(("push.title".into(), &p.title));
            out.push(("push.body".into(), &p.body));
            if let Some(u) = &p.url {
                out.push(("push.url".into(), u));
            }
        }
        if let Some(w) = &self.webhook {
            for (k, v) in w {
                if let Some(s) = v.as_str() {
                    out.push((format!("webhook.{k}"), s));
                }
            }
        }
        out
    }

    /// Checks that every part parses, and that with empty data it renders within the default
    /// [`Budget`] (a loop over a constant `range` that could never fit is refused when the
    /// template is written, not when a notification uses it); the error names the part and
    /// the line or the budget at fault.
    pub fn validate(&self) -> Result<()> {
        let parts = self.sources();
        if parts.is_empty() {
            return Err(Error::Template("no part for any channel".into()));
        }
        let budget = Budget::default();
        let mut env = environment(&budget);
        // The trial render: variables the data would give are empty, so what is left is the
        // template's own work (constant loops), which must fit the default budget.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        for (name, source) in parts {
            let tmpl = env.template_from_named_str(&name, source).map_err(|e| {
                let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                Error::Template(format!("part {name}{line}: {e}"))
            })?;
            match render_within(&tmpl, &name, minijinja::Value::UNDEFINED, &budget) {
                Err(e) if over_budget(&e) => return Err(e),
                // Other errors depend on the data the trial does not have.
                _ => {}
            }
        }
        Ok(())
    }
}

/// A template as the templates bucket stores it (JSON).
pub fn decode_stored(bytes: &[u8]) -> Result<Template> {
    serde_json::from_slice(bytes).map_err(|e| Error::Stored(format!("template: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn broken_templates_are_refused_with_the_line() {
        let t: Template = serde_json::from_value(json!({
            "in_app": {"title": "ok", "body": "line one\nline {{ two"}
        }))
        .unwrap();
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("in_app.body") && err.contains("line 2"), "{err}");
        assert!(Template::default().validate().is_err());
        assert!(serde_json::from_value::<Template>(json!({"fax": {"text": "x"}})).is_err());
    }

    fn body(source: &str) -> Template {
        serde_json::from_value(json!({"in_app": {"title": "t", "body": source}})).unwrap()
    }

    #[test]
    fn templates_over_the_budget_are_refused_when_written() {
        let nested = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let err = body(nested).validate().unwrap_err().to_string();
        assert!(
            err.contains("in_app.body") && err.contains("TIDINGS_TEMPLATE_FUEL"),
            "{err}"
        );
        let err = body("{{ 'x' * 10000000 }}").validate().unwrap_err().to_string();
        assert!(err.contains("TIDINGS_TEMPLATE_MAX_BYTES"), "{err}");
        // Loops over the data are not run by the trial: they depend on what is sent.
        body("{% for i in items %}{% for j in items %}{{ i }}{% endfor %}{% endfor %}")
            .validate()
            .unwrap();
        body("{{ title | upper }} {{ count + 1 }}").validate().unwrap();
    }
}
