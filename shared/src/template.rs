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

/// The MiniJinja environment every part is parsed and rendered in: undefined variables are
/// errors, and only the HTML parts (names ending in `.html`) are escaped.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
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

    /// Checks that every part parses; the error names the part and the line at fault.
    pub fn validate(&self) -> Result<()> {
        let parts = self.sources();
        if parts.is_empty() {
            return Err(Error::Template("no part for any channel".into()));
        }
        let env = environment();
        for (name, source) in parts {
            env.template_from_named_str(&name, source).map_err(|e| {
                let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                Error::Template(format!("part {name}{line}: {e}"))
            })?;
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
}
