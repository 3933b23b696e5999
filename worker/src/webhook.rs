//! The webhook channel: an HMAC-signed POST of the notification JSON to the user's URL,
//! through an HTTP client that refuses to connect to internal addresses (checked after DNS,
//! at delivery time) unless `TIDINGS_WEBHOOK_ALLOW_PRIVATE` is set, and never follows
//! redirects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tidings_shared::notify::DeliveryJob;
use tidings_shared::prefs::{is_internal_ip, validate_target_url};

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Connection error, timeout, 5xx or 429: try again (after `retry_after` if given).
    Retry {
        /// What went wrong.
        error: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Any other answer, or a URL that may not be used: give up now.
    Fail(String),
}

/// Resolves host names, dropping internal addresses unless allowed.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| allow_private || !is_internal_ip(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends webhooks.
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    key: Option<Arc<hmac::Key>>,
    allow_private: bool,
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(key: &hmac::Key, t: i64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// An HTTP client for user-supplied URLs (webhooks, push endpoints): internal addresses
/// dropped after DNS unless allowed, no redirects, no proxy, bounded timeouts.
pub fn guarded_client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would do the DNS resolution the guard above must see.
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent("tidings-worker")
        .build()
}

impl WebhookSender {
    /// A sender signing with `secret` (unsigned without one).
    pub fn new(secret: Option<&str>, allow_private: bool) -> Result<Self, reqwest::Error> {
        let client = guarded_client(allow_private)?;
        Ok(WebhookSender {
            client,
            key: secret.map(|s| Arc::new(hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))),
            allow_private,
        })
    }

    /// The JSON body of a webhook delivery.
    pub fn body(job: &DeliveryJob) -> serde_json::Value {
        serde_json::json!({
            "id": job.id,
            "event": tidings_shared::notify::names::NOTIFICATION_EVENT,
            "user": job.user,
            "project": job.project,
            "priority": job.priority,
            "category": job.category,
            "title": job.content.title,
            "body": job.content.body,
            "fields": job.content.fields,
            "data": job.data,
            "created_at": job.created_at,
        })
    }

    /// One attempt to deliver `job` to `url`.
    pub async fn send(&self, url: &str, job: &DeliveryJob) -> Outcome {
        if let Err(e) = validate_target_url("webhook_url", url, self.allow_private) {
            return Outcome::Fail(e.to_string());
        }
        let body = match serde_json::to_vec(&Self::body(job)) {
            Ok(b) => b,
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("Tidings-Id", &job.id);
        if let Some(key) = &self.key {
            req = req.header(
                "Tidings-Signature",
                signature(key, jiff::Timestamp::now().as_second(), &body),
            );
        }
        match req.body(body).send().await {
            Err(e) => connection_error(&e),
            Ok(resp) => classify(resp).await,
        }
    }
}

/// Classifies a provider's HTTP answer the same way for every channel: 2xx delivered;
/// 5xx and 429 retried (after `Retry-After` if given); anything else failed at once. The
/// error keeps the provider's message (`message` of a JSON body, else the body's start).
pub async fn classify(resp: reqwest::Response) -> Outcome {
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Outcome::Delivered;
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry::retry_after(v, jiff::Timestamp::now()));
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(500).collect::<String>().trim().to_owned());
    let error = format!("HTTP {status}: {message}");
    if status >= 500 || status == 429 {
        Outcome::Retry { error, retry_after }
    } else {
        Outcome::Fail(error)
    }
}

/// A connection-level failure: always worth another attempt.
pub fn connection_error(e: &reqwest::Error) -> Outcome {
    Outcome::Retry {
        error: format!("connection: {}", error_chain(e)),
        retry_after: None,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex_over_t_dot_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let sig = signature(&key, 1_700_000_000, b"{\"a\":1}");
        // HMAC-SHA256("secret", "1700000000.{\"a\":1}"), computed independently with openssl.
        assert_eq!(
            sig,
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
