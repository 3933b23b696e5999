//! Rendering a notification's template for one channel (contract §7), in the environment
//! the gateway validated it in: strict undefined variables, HTML escaped only in HTML parts.
//!
//! A template is code a service wrote, run over data a service sent: each part runs on a
//! [`Budget`] (MiniJinja fuel and an output cap), and rendering happens on the blocking
//! pool, a bounded number at a time ([`Renderer`]), so that a template gone wrong fails its
//! own notification while the runtime's threads go on with everyone else's.

use std::collections::HashMap;
use std::sync::Arc;

use tidings_shared::Error;
use tidings_shared::notify::{DeliveryChannel, Rendered};
use tidings_shared::template::{Budget, Template, environment, render_within};
use tokio::sync::Semaphore;

type Result<T> = std::result::Result<T, Error>;

fn render_one(name: &str, source: &str, data: &serde_json::Value, budget: &Budget) -> Result<String> {
    let env = environment(budget);
    let tmpl = env
        .template_from_named_str(name, source)
        .map_err(|e| Error::Template(format!("{name}: {e}")))?;
    render_within(&tmpl, name, minijinja::Value::from_serialize(data), budget)
}

/// Renders the part for `channel` over `data` (the request's `data`, plus `items` and
/// `count` for digests), within `budget`. A channel without a part is an error naming it.
/// Runs on the calling thread: from async code, use [`Renderer`].
pub fn render(
    template: &Template,
    channel: DeliveryChannel,
    data: &serde_json::Value,
    budget: &Budget,
) -> Result<Rendered> {
    let missing = || Error::Template(format!("no {} part", channel.as_str()));
    let one = |name: &str, source: &str| render_one(name, source, data, budget);
    Ok(match channel {
        DeliveryChannel::InApp => {
            let p = template.in_app.as_ref().ok_or_else(missing)?;
            Rendered {
                title: Some(one("in_app.title", &p.title)?),
                body: one("in_app.body", &p.body)?,
                html: None,
                url: None,
                fields: None,
            }
        }
        DeliveryChannel::Email => {
            let p = template.email.as_ref().ok_or_else(missing)?;
            Rendered {
                title: Some(one("email.subject", &p.subject)?),
                body: one("email.text", &p.text)?,
                html: p.html.as_deref().map(|h| one("email.html", h)).transpose()?,
                url: None,
                fields: None,
            }
        }
        DeliveryChannel::Sms => {
            let p = template.sms.as_ref().ok_or_else(missing)?;
            Rendered {
                title: None,
                body: one("sms.text", &p.text)?,
                html: None,
                url: None,
                fields: None,
            }
        }
        DeliveryChannel::Push => {
            let p = template.push.as_ref().ok_or_else(missing)?;
            Rendered {
                title: Some(one("push.title", &p.title)?),
                body: one("push.body", &p.body)?,
                html: None,
                url: p.url.as_deref().map(|u| one("push.url", u)).transpose()?,
                fields: None,
            }
        }
        DeliveryChannel::Webhook => match &template.webhook {
            Some(w) => {
                let mut fields = serde_json::Map::new();
                for (k, v) in w {
                    let value = match v.as_str() {
                        Some(s) => serde_json::Value::String(one(&format!("webhook.{k}"), s)?),
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
                let mut r = render(template, DeliveryChannel::InApp, data, budget).map_err(|_| missing())?;
                r.fields = None;
                r
            }
        },
    })
}

/// Renders off the async runtime, a bounded number at a time, within the configured
/// [`Budget`]; cheap to clone.
#[derive(Clone)]
pub struct Renderer {
    budget: Budget,
    permits: Arc<Semaphore>,
}

impl Renderer {
    /// A renderer running at most `concurrency` renders at once.
    pub fn new(budget: Budget, concurrency: usize) -> Self {
        Renderer {
            budget,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// The budget each part runs on.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Renders `template` for each of `channels` over `data`, on the blocking pool: each
    /// channel's content, or the error that fails it.
    pub async fn render_all(
        &self,
        template: Arc<Template>,
        channels: Vec<DeliveryChannel>,
        data: serde_json::Value,
    ) -> HashMap<DeliveryChannel, std::result::Result<Rendered, String>> {
        let failed_all = |why: String| channels.iter().map(|c| (*c, Err(why.clone()))).collect();
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return failed_all("the renderer is shut down".to_owned());
        };
        let budget = self.budget;
        let wanted = channels.clone();
        let job = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|c| (c, render(&template, c, &data, &budget).map_err(|e| e.to_string())))
                .collect()
        });
        match job.await {
            Ok(out) => out,
            // A panic inside MiniJinja: this notification fails, the worker goes on.
            Err(e) => failed_all(format!("template rendering failed: {e}")),
        }
    }

    /// Renders one channel (see [`Self::render_all`]).
    pub async fn render(
        &self,
        template: Arc<Template>,
        channel: DeliveryChannel,
        data: serde_json::Value,
    ) -> std::result::Result<Rendered, String> {
        self.render_all(template, vec![channel], data)
            .await
            .remove(&channel)
            .unwrap_or_else(|| Err(format!("no {} part", channel.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const B: Budget = Budget {
        fuel: tidings_shared::template::DEFAULT_FUEL,
        max_bytes: tidings_shared::template::DEFAULT_MAX_BYTES,
    };

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
        let in_app = render(&t, DeliveryChannel::InApp, &data, &B).unwrap();
        assert_eq!(in_app.title.as_deref(), Some("PR #42 merged"));
        assert_eq!(in_app.body, "<script>x</script> & co by ana");
        let email = render(&t, DeliveryChannel::Email, &data, &B).unwrap();
        assert_eq!(email.body, "<script>x</script> & co");
        assert_eq!(
            email.html.as_deref(),
            Some("<p>&lt;script&gt;x&lt;&#x2f;script&gt; &amp; co</p>")
        );
    }

    #[test]
    fn a_missing_variable_or_part_is_a_clear_error() {
        let t = pr_template();
        let err = render(&t, DeliveryChannel::InApp, &json!({"pr": 1}), &B)
            .unwrap_err()
            .to_string();
        assert!(err.contains("in_app.body") && err.contains("undefined"), "{err}");
        let err = render(&t, DeliveryChannel::Sms, &json!({}), &B)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no sms part"), "{err}");
    }

    #[test]
    fn webhook_part_renders_string_values() {
        let t: Template = serde_json::from_value(json!({
            "in_app": {"title": "t", "body": "b"},
            "webhook": {"text": "PR {{ pr }}", "fixed": 3}
        }))
        .unwrap();
        let r = render(&t, DeliveryChannel::Webhook, &json!({"pr": 7}), &B).unwrap();
        assert_eq!(
            r.fields,
            Some(json!({"text": "PR 7", "fixed": 3}).as_object().unwrap().clone())
        );
    }

    #[test]
    fn data_driven_loops_fail_on_the_budget() {
        let t: Template = serde_json::from_value(json!({
            "in_app": {"title": "t", "body": "{% for a in xs %}{% for b in xs %}{% for c in xs %}.{% endfor %}{% endfor %}{% endfor %}"}
        }))
        .unwrap();
        t.validate().unwrap();
        let xs: Vec<u32> = (0..1000).collect();
        let err = render(&t, DeliveryChannel::InApp, &json!({ "xs": xs }), &B)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("over its budget") && err.contains("TIDINGS_TEMPLATE_FUEL"),
            "{err}"
        );
        let small = Budget {
            fuel: 100_000_000,
            max_bytes: 1000,
        };
        let err = render(&t, DeliveryChannel::InApp, &json!({ "xs": xs }), &small)
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIDINGS_TEMPLATE_MAX_BYTES"), "{err}");
    }
}
