//! The email channel: lettre over SMTP (plain, STARTTLS, implicit TLS, with credentials) or
//! the file transport (one `.eml` per email, the local default), with failover across the
//! relays listed in `TIDINGS_SMTP_URL`.

use std::path::PathBuf;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tidings_shared::Error as SharedError;
use tidings_shared::notify::DeliveryJob;

use crate::breaker::Health;
use crate::provider::Outcome;

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// One relay of the failover list.
struct Relay {
    /// How it is shown in statuses: the URL without credentials.
    name: String,
    transport: Transport,
}

/// Sends emails through the first relay that takes them.
pub struct Mailer {
    relays: Vec<Relay>,
    from: Mailbox,
}

/// The URL as logs and statuses show it: scheme and host only.
fn redact(url: &str) -> String {
    tidings_shared::redact::url(url)
}

/// A TLS relay (`smtp+starttls://` or `smtps://`) trusting `ca` in addition to the system's
/// roots.
fn tls_relay(url: &str, ca: &Certificate, implicit: bool) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("no host")?.to_owned();
    let port = parsed.port().unwrap_or(if implicit { 465 } else { 587 });
    let params = TlsParameters::builder(host.clone())
        .add_root_certificate(ca.clone())
        .build_rustls()
        .map_err(|e| e.to_string())?;
    let tls = if implicit {
        Tls::Wrapper(params)
    } else {
        Tls::Required(params)
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(std::time::Duration::from_secs(15)));
    if !parsed.username().is_empty() {
        builder = builder.credentials(Credentials::new(
            percent_decode(parsed.username()),
            percent_decode(parsed.password().unwrap_or_default()),
        ));
    }
    Ok(builder.build())
}

/// `%XX` decoding of URL user info.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn relay(url: &str, ca: Option<&Certificate>) -> Result<Relay, SharedError> {
    let bad = |e: &dyn std::fmt::Display| SharedError::Config(format!("TIDINGS_SMTP_URL entry {}: {e}", redact(url)));
    let name = redact(url);
    if let Some(dir) = url.strip_prefix("file://") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).map_err(|e| bad(&e))?;
        return Ok(Relay {
            name,
            transport: Transport::File(AsyncFileTransport::new(dir)),
        });
    }
    if let Some(ca) = ca {
        let implicit = url.starts_with("smtps://");
        if implicit || url.starts_with("smtp+starttls://") {
            let transport = tls_relay(url, ca, implicit).map_err(|e| bad(&e))?;
            return Ok(Relay {
                name,
                transport: Transport::Smtp(transport),
            });
        }
    }
    // lettre reads smtp:// (no TLS), smtps:// (implicit TLS) and smtp://…?tls=required
    // (STARTTLS); the contract's smtp+starttls:// is the last.
    let lettre_url = match url.strip_prefix("smtp+starttls://") {
        Some(rest) if rest.contains('?') => format!("smtp://{rest}&tls=required"),
        Some(rest) => format!("smtp://{rest}?tls=required"),
        None if url.starts_with("smtp://") || url.starts_with("smtps://") => url.to_owned(),
        None => return Err(bad(&"use smtp://, smtp+starttls://, smtps:// or file://")),
    };
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url)
        .map_err(|e| bad(&e))?
        .timeout(Some(std::time::Duration::from_secs(15)))
        .build();
    Ok(Relay {
        name,
        transport: Transport::Smtp(transport),
    })
}

impl Mailer {
    /// Parses `TIDINGS_SMTP_URL` (comma-separated, tried in order), `TIDINGS_EMAIL_FROM` and
    /// the optional extra CA (`TIDINGS_SMTP_CA_FILE`).
    pub fn new(urls: &str, from: &str, ca_file: Option<&std::path::Path>) -> Result<Self, SharedError> {
        let ca = match ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| SharedError::Config(format!("TIDINGS_SMTP_CA_FILE {}: {e}", path.display())))?;
                Some(
                    Certificate::from_pem(&pem)
                        .map_err(|e| SharedError::Config(format!("TIDINGS_SMTP_CA_FILE {}: {e}", path.display())))?,
                )
            }
        };
        let relays = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| relay(u, ca.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if relays.is_empty() {
            return Err(SharedError::Config("TIDINGS_SMTP_URL is empty".into()));
        }
        let from = from
            .parse()
            .map_err(|e| SharedError::Config(format!("TIDINGS_EMAIL_FROM {from:?}: {e}")))?;
        Ok(Mailer { relays, from })
    }

    /// Builds the email: text, or text + HTML as multipart/alternative; the Message-ID is
    /// derived from the notification id so a retried send is recognisable.
    pub fn message(&self, to: &str, job: &DeliveryJob) -> Result<Message, String> {
        let to: Mailbox = to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(job.content.title.clone().unwrap_or_default())
            .message_id(Some(format!("<{}.email@tidings>", job.id)));
        let text = job.content.body.clone();
        let built = match &job.content.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html.clone())),
            None => builder.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text)),
        };
        built.map_err(|e| format!("building the email: {e}"))
    }

    /// The relays as statuses show them (`scheme://host:port`), in failover order.
    pub fn relay_names(&self) -> impl Iterator<Item = &str> {
        self.relays.iter().map(|r| r.name.as_str())
    }

    /// One attempt: each relay `admit` lets through (by its index, in order) until one
    /// accepts. Returns the outcome, the relay that took it, and what each relay tried said
    /// about itself (for its circuit breaker: a permanent refusal is an answer, a connection
    /// error or a transient reply is not).
    pub async fn send(&self, to: &str, job: &DeliveryJob, admit: impl Fn(usize) -> bool) -> Mailed {
        let message = match self.message(to, job) {
            Ok(m) => m,
            Err(e) => return (Outcome::Fail(e), None, Vec::new()),
        };
        let mut errors = Vec::new();
        let mut all_permanent = true;
        let mut health = Vec::new();
        for (i, relay) in self.relays.iter().enumerate().filter(|(i, _)| admit(*i)) {
            let result = match &relay.transport {
                Transport::Smtp(t) => t
                    .send(message.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.is_permanent(), e.to_string())),
                Transport::File(t) => t
                    .send(message.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| (false, e.to_string())),
            };
            match result {
                Ok(()) => {
                    health.push((i, Health::Up));
                    return (Outcome::Delivered, Some(relay.name.clone()), health);
                }
                Err((permanent, e)) => {
                    tracing::info!(relay = %relay.name, error = %e, "relay refused the email; trying the next");
                    all_permanent &= permanent;
                    health.push((i, if permanent { Health::Up } else { Health::Down(e.clone()) }));
                    errors.push(format!("{}: {e}", relay.name));
                }
            }
        }
        let error = errors.join("; ");
        if all_permanent {
            (Outcome::Fail(error), None, health)
        } else {
            let retry = Outcome::Retry {
                error,
                retry_after: None,
                throttled: false,
            };
            (retry, None, health)
        }
    }
}

/// What [`Mailer::send`] returns: the outcome, the relay that took the email, and each
/// tried relay's health by its index.
pub type Mailed = (Outcome, Option<String>, Vec<(usize, Health)>);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_and_redaction() {
        assert_eq!(redact("smtp+starttls://u:p@mail:587"), "smtp+starttls://mail:587");
        assert_eq!(redact("smtp://mail:25/?x=y"), "smtp://mail:25");
        let dir = std::env::temp_dir().join(format!("tidings-mail-{}", std::process::id()));
        let m = Mailer::new(
            &format!(
                "smtp://127.0.0.1:2525, smtp+starttls://u:p@127.0.0.1:587,smtps://a:b@127.0.0.1:465, file://{}",
                dir.display()
            ),
            "Tidings <t@example.com>",
            None,
        );
        assert_eq!(m.map(|m| m.relays.len()).ok(), Some(4));
        assert!(Mailer::new("ftp://x", "a@b.c", None).is_err());
        assert!(Mailer::new("", "a@b.c", None).is_err());
        assert!(Mailer::new("smtp://x:25", "not an address", None).is_err());
        assert_eq!(percent_decode("p%40ss%3Aw"), "p@ss:w");
    }
}
