//! The SMS channel: the Twilio Messages API shape, which many providers copy —
//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` with the form fields `To`, `From`,
//! `Body` and basic auth `sid:token`.

use std::time::Duration;

use crate::provider::Outcome;

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

    /// The provider's endpoint (its origin names the SMS circuit breaker).
    pub fn url(&self) -> &str {
        &self.url
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
            Err(e) => crate::provider::connection_error(e),
            Ok(r) => crate::provider::classify(r).await,
        }
    }
}
