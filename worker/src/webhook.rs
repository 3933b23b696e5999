//! The webhook channel: an HMAC-signed POST of the notification JSON to the user's URL,
//! through the guarded HTTP client of [`crate::provider`] (internal addresses refused after
//! DNS unless `TIDINGS_WEBHOOK_ALLOW_PRIVATE` is set, no redirects).

use std::sync::Arc;

use aws_lc_rs::hmac;
use tidings_shared::notify::DeliveryJob;
use tidings_shared::prefs::validate_target_url;

use crate::provider::{Outcome, classify, connection_error, guarded_client};

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
        let span = tidings_shared::telemetry::span_if_exporting(|| tracing::info_span!("webhook POST"));
        // The receiver can continue the trace.
        if let Some(p) = tidings_shared::telemetry::TraceParent::of_span(&span) {
            req = req.header(tidings_shared::telemetry::TRACEPARENT, p.encode());
        }
        let call = async move {
            match req.body(body).send().await {
                Err(e) => connection_error(e),
                Ok(resp) => classify(resp).await,
            }
        };
        tracing::Instrument::instrument(call, span).await
    }
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
