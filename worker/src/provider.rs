//! What the HTTP providers (webhook, SMS, push) share: the [`Outcome`] of one attempt, the
//! classification of a provider's answer, and the guarded client for user-supplied URLs
//! (internal addresses dropped after DNS unless allowed, no redirects, no proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tidings_shared::netguard::special_purpose;

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
        /// A 429: the receiver is up and throttles this sender (a circuit breaker, shared by
        /// every tenant of the origin, does not count it against the target).
        throttled: bool,
    },
    /// The receiver answered and refused (a 4xx other than 429): give up now. The target is
    /// up.
    Refused(String),
    /// A failure on our side before reaching the receiver (a URL that may not be used, an
    /// unreadable record): give up now.
    Fail(String),
}

/// The resolver's refusal of a host that resolves only to special-purpose addresses; found
/// again in the connection error's chain, so the delivery fails at once instead of being
/// retried (DNS would answer the same).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves host names, dropping special-purpose addresses unless allowed. The HTTP client
/// connects only to the addresses this returns, so the check applies to what is actually
/// connected to, whatever the URL says and whatever DNS answers (no rebinding between a
/// check and the connection).
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match special_purpose(a.ip()) {
                    Some(why) if !allow_private => {
                        refused.get_or_insert_with(|| format!("{}: {why}", a.ip()));
                        false
                    }
                    _ => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".to_owned());
                return Err(Box::new(Refused(format!(
                    "{host} resolves only to special-purpose addresses ({why})"
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
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

/// The most of a provider's error body read: enough for its message, and the same small
/// cost on every retry however much the peer sends (a hostile or broken webhook receiver may
/// stream gigabytes, or never end).
pub const ERROR_BODY_LIMIT: usize = 4 * 1024;

/// The first [`ERROR_BODY_LIMIT`] bytes of `resp`'s body (less if it ends or fails first);
/// the rest is never read, and the connection is dropped with the response.
async fn body_start(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_LIMIT - buf.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Classifies a provider's HTTP answer the same way for every channel: 2xx delivered;
/// 5xx and 429 retried (after `Retry-After` if given); anything else failed at once. The
/// error keeps the provider's message (`message` of a JSON body, else the body's start),
/// read from at most [`ERROR_BODY_LIMIT`] bytes.
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
    let text = body_start(resp).await;
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(500).collect::<String>().trim().to_owned());
    let error = format!("HTTP {status}: {message}");
    if status >= 500 || status == 429 {
        Outcome::Retry {
            error,
            retry_after,
            throttled: status == 429,
        }
    } else {
        Outcome::Refused(error)
    }
}

/// A connection-level failure: worth another attempt, unless the guard refused the
/// target's addresses. The URL is left out of the error (it may be a capability URL).
pub fn connection_error(e: reqwest::Error) -> Outcome {
    let e = e.without_url();
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return Outcome::Fail(format!("refused: {refused}"));
        }
        source = s.source();
    }
    Outcome::Retry {
        error: format!("connection: {}", error_chain(&e)),
        retry_after: None,
        throttled: false,
    }
}

/// An error and its sources, `: `-separated.
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
