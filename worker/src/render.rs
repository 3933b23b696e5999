//! Rendering a notification's template for one channel (contract §7), in the environment
//! the gateway validated it in: strict undefined variables, HTML escaped only in HTML parts.

use tidings_shared::Error;
use tidings_shared::notify::{DeliveryChannel, Rendered};
use tidings_shared::template::{Template, environment};

type Result<T> = std::result::Result<T, Error>;

fn render_one(name: &str, source: &str, data: &serde_json::Value) -> Result<String> {
    let env = environment();
    let tmpl = env
        .template_from_named_str(name, source)
        .map_err(|e| Error::Template(format!("{name}: {e}")))?;
    tmpl.render(minijinja::Value::from_serialize(data))
        .map_err(|e| Error::Template(format!("rendering {name}: {e}")))
}

/// Renders the part for `channel` over `data` (the request's `data`, plus `items` and
/// `count` for digests). A channel without a part is an error naming it.
pub fn render(template: &Template, channel: DeliveryChannel, data: &serde_json::Value) -> Result<Rendered> {
    let missing = || Error::Template(format!("no {} part", channel.as_str()));
    Ok(match channel {
        DeliveryChannel::InApp => {
            let p = template.in_app.as_ref().ok_or_else(missing)?;
            Rendered {
                title: Some(render_one("in_app.title", &p.title, data)?),
                body: render_one("in_app.body", &p.body, data)?,
                html: None,
                url: None,
                fields: None,
            }
        }
        DeliveryChannel::Email => {
            let p = template.email.as_ref().ok_or_else(missing)?;
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
            let p = template.sms.as_ref().ok_or_else(missing)?;
            Rendered {
                title: None,
                body: render_one("sms.text", &p.text, data)?,
                html: None,
                url: None,
                fields: None,
            }
        }
        DeliveryChannel::Push => {
            let p = template.push.as_ref().ok_or_else(missing)?;
            Rendered {
                title: Some(render_one("push.title", &p.title, data)?),
                body: render_one("push.body", &p.body, data)?,
                html: None,
                url: p.url.as_deref().map(|u| render_one("push.url", u, data)).transpose()?,
                fields: None,
            }
        }
        DeliveryChannel::Webhook => match &template.webhook {
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
                let mut r = render(template, DeliveryChannel::InApp, data).map_err(|_| missing())?;
                r.fields = None;
                r
            }
        },
    })
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
        let in_app = render(&t, DeliveryChannel::InApp, &data).unwrap();
        assert_eq!(in_app.title.as_deref(), Some("PR #42 merged"));
        assert_eq!(in_app.body, "<script>x</script> & co by ana");
        let email = render(&t, DeliveryChannel::Email, &data).unwrap();
        assert_eq!(email.body, "<script>x</script> & co");
        assert_eq!(
            email.html.as_deref(),
            Some("<p>&lt;script&gt;x&lt;&#x2f;script&gt; &amp; co</p>")
        );
    }

    #[test]
    fn a_missing_variable_or_part_is_a_clear_error() {
        let t = pr_template();
        let err = render(&t, DeliveryChannel::InApp, &json!({"pr": 1}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("in_app.body") && err.contains("undefined"), "{err}");
        let err = render(&t, DeliveryChannel::Sms, &json!({})).unwrap_err().to_string();
        assert!(err.contains("no sms part"), "{err}");
    }

    #[test]
    fn webhook_part_renders_string_values() {
        let t: Template = serde_json::from_value(json!({
            "in_app": {"title": "t", "body": "b"},
            "webhook": {"text": "PR {{ pr }}", "fixed": 3}
        }))
        .unwrap();
        let r = render(&t, DeliveryChannel::Webhook, &json!({"pr": 7})).unwrap();
        assert_eq!(
            r.fields,
            Some(json!({"text": "PR 7", "fixed": 3}).as_object().unwrap().clone())
        );
    }
}
