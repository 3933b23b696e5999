//! Notification templates (contract §7): one MiniJinja part per channel, validated when
//! written and rendered by the worker with strict undefined variables and HTML escaping.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::notify::{DeliveryChannel, Rendered};

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

fn env() -> Environment<'static> {
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

fn render_one(name: &str, source: &str, data: &serde_json::Value) -> Result<String> {
    let env = env();
    let tmpl = env
        .template_from_named_str(name, source)
        .map_err(|e| Error::Template(format!("{name}: {e}")))?;
    tmpl.render(minijinja::Value::from_serialize(data))
        .map_err(|e| Error::Template(format!("rendering {name}: {e}")))
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
        let env = env();
        for (name, source) in parts {
            env.template_from_named_str(&name, source).map_err(|e| {
                let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                Error::Template(format!("part {name}{line}: {e}"))
            })?;
        }
        Ok(())
    }

    /// Renders the part for `channel` over `data` (the request's `data`, plus `items` and
    /// `count` for digests). A channel without a part is an error naming it.
    pub fn render(&self, channel: DeliveryChannel, data: &serde_json::Value) -> Result<Rendered> {
        let missing = || Error::Template(format!("no {} part", channel.as_str()));
        Ok(match channel {
            DeliveryChannel::InApp => {
                let p = self.in_app.as_ref().ok_or_else(missing)?;
                Rendered {
                    title: Some(render_one("in_app.title", &p.title, data)?),
                    body: render_one("in_app.body", &p.body, data)?,
                    html: None,
                    url: None,
                    fields: None,
                }
            }
            DeliveryChannel::Email => {
                let p = self.email.as_ref().ok_or_else(missing)?;
                Rendered {
                    title: Some(render_one("email.subject", &p.subject, data)?),
                    body: render_one("email.text", &p.text, data)?,
                    html: p
                        .html
                        .as_deref()
                        .map(|h| render_one("email.html", h, data))
                        .transpose()?,
                    url: None,
                    fields: None,
                }
            }
            DeliveryChannel::Sms => {
                let p = self.sms.as_ref().ok_or_else(missing)?;
                Rendered {
                    title: None,
                    body: render_one("sms.text", &p.text, data)?,
                    html: None,
                    url: None,
                    fields: None,
                }
            }
            DeliveryChannel::Push => {
                let p = self.push.as_ref().ok_or_else(missing)?;
                Rendered {
                    title: Some(render_one("push.title", &p.title, data)?),
                    body: render_one("push.body", &p.body, data)?,
                    html: None,
                    url: p.url.as_deref().map(|u| render_one("push.url", u, data)).transpose()?,
                    fields: None,
                }
            }
            DeliveryChannel::Webhook => match &self.webhook {
                Some(w) => {
                    let mut fields = serde_json::Map::new();
                    for (k, v) in w {
                        let value = match v.as_str() {
                            Some(s) => serde_json::Value::String(render_one(&format!("webhook.{k}"), s, data)?),
                            None => v.clone(),
                        };
                        fields.insert(k.clone(), value);
                    }
                    Rendered {
                        title: None,
                        body: String::new(),
                        html: None,
                        url: None,
                        fields: Some(fields),
                    }
                }
                None => {
                    let mut r = self.render(DeliveryChannel::InApp, data).map_err(|_| missing())?;
                    r.fields = None;
                    r
                }
            },
        })
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

    fn pr_template() -> Template {
        serde_json::from_value(json!({
            "in_app": {"title": "PR #{{ pr }} merged", "body": "{{ title }} by {{ author }}"},
            "email": {"subject": "PR #{{ pr }}", "text": "{{ title }}", "html": "<p>{{ title }}</p>"}
        }))
        .unwrap()
    }

    #[test]
    fn renders_with_html_escaping_only_in_html() {
        let t = pr_template();
        t.validate().unwrap();
        let data = json!({"pr": 42, "title": "<script>x</script> & co", "author": "ana"});
        let in_app = t.render(DeliveryChannel::InApp, &data).unwrap();
        assert_eq!(in_app.title.as_deref(), Some("PR #42 merged"));
        assert_eq!(in_app.body, "<script>x</script> & co by ana");
        let email = t.render(DeliveryChannel::Email, &data).unwrap();
        assert_eq!(email.body, "<script>x</script> & co");
        assert_eq!(
            email.html.as_deref(),
            Some("<p>&lt;script&gt;x&lt;&#x2f;script&gt; &amp; co</p>")
        );
    }

    #[test]
    fn a_missing_variable_or_part_is_a_clear_error() {
        let t = pr_template();
        let err = t
            .render(DeliveryChannel::InApp, &json!({"pr": 1}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("in_app.body") && err.contains("undefined"), "{err}");
        let err = t.render(DeliveryChannel::Sms, &json!({})).unwrap_err().to_string();
        assert!(err.contains("no sms part"), "{err}");
    }

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

    #[test]
    fn webhook_part_renders_string_values() {
        let t: Template = serde_json::from_value(json!({
            "in_app": {"title": "t", "body": "b"},
            "webhook": {"text": "PR {{ pr }}", "fixed": 3}
        }))
        .unwrap();
        let r = t.render(DeliveryChannel::Webhook, &json!({"pr": 7})).unwrap();
        assert_eq!(
            r.fields,
            Some(json!({"text": "PR 7", "fixed": 3}).as_object().unwrap().clone())
        );
    }
}
