//! The SMS channel: the Twilio Messages API shape, which many providers copy —
//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` with the form fields `To`, `From`,
//! `Body` and basic auth `sid:token`.

use std::time::Duration;

use crate::webhook::Outcome;

/// Sends SMS through a Twilio-compatible API.
pub struct SmsSender {
    client: reqwest::Client,
    url: String,
    sid: String,
    token: String,
    from: String,
}

impl SmsSender {
    /// A sender, if `TIDINGS_SMS_API_URL`, the SID, the token and the sender are all set.
    pub fn new(base: Option<&str>, sid: Option<&str>, token: Option<&str>, from: Option<&str>) -> Option<Self> {
        let (base, sid, token, from) = (base?, sid?, token?, from?);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .ok()?;
        Some(SmsSender {
            client,
            url: format!("{}/2010-04-01/Accounts/{sid}/Messages.json", base.trim_end_matches('/')),
            sid: sid.to_owned(),
            token: token.to_owned(),
            from: from.to_owned(),
        })
    }

    /// One attempt. The provider's error (its JSON `message`, else the body) is kept.
    pub async fn send(&self, to: &str, body: &str) -> Outcome {
        let form = [("To", to), ("From", self.from.as_str()), ("Body", body)];
        let resp = self
            .client
            .post(&self.url)
            .basic_auth(&self.sid, Some(&self.token))
            .form(&form)
            .send()
            .await;
        match resp {
            Err(e) => Outcome::Retry {
                error: format!("connection: {e}"),
                retry_after: None,
            },
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::retry::retry_after(v, jiff::Timestamp::now()));
                let text = r.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| text.chars().take(500).collect());
                let error = format!("HTTP {status}: {message}");
                if status >= 500 || status == 429 {
                    Outcome::Retry { error, retry_after }
                } else {
                    Outcome::Fail(error)
                }
            }
        }
    }
}
