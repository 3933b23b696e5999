//! User preferences (contract §7), validated when they are written (`PUT`) so that the
//! worker can rely on them (the worker's `quiet` module computes quiet hours from them).

use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::notify::DeliveryChannel;

/// A browser push subscription (the W3C `PushSubscription` JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscription {
    /// The push service URL.
    pub endpoint: String,
    /// The subscription's keys.
    pub keys: PushKeys,
}

/// Keys of a push subscription (base64url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushKeys {
    /// The browser's P-256 public key.
    pub p256dh: String,
    /// The authentication secret.
    pub auth: String,
}

/// Quiet hours, local to the user's time zone; `start > end` spans midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM`.
    pub end: String,
}

/// A user's preferences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number, E.164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// IANA time zone (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Channel switches; a channel absent here is on.
    #[serde(default)]
    pub channels: BTreeMap<DeliveryChannel, bool>,
    /// Per-category channel switches.
    #[serde(default)]
    pub categories: BTreeMap<String, BTreeMap<DeliveryChannel, bool>>,
    /// Quiet hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Browser push subscriptions.
    #[serde(default)]
    pub push_subscriptions: Vec<PushSubscription>,
    /// Webhook receiving this user's notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// Most push subscriptions one user may store (a browser or device each): every
/// notification is encrypted and sent to each, so the list must stay short.
pub const MAX_PUSH_SUBSCRIPTIONS: usize = 20;

fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{field}: {why}"))
}

/// Parses `HH:MM` (24-hour).
pub fn parse_hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    Time::new(h, m, 0, 0).ok()
}

/// A plausible email address: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        && !local.contains('@')
        && domain.split('.').count() >= 2
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// E.164: `+` and 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

pub use crate::netguard::{is_internal_ip, special_purpose};

/// Checks a webhook or push URL: `https` (or `http` when private targets are allowed), a
/// host, no credentials; and, when the host is an address (in any of the forms URL parsers
/// accept, such as `2130706433` or `127.1`), that it is not internal. Host names are checked
/// again at delivery time, after DNS.
pub fn validate_target_url(field: &str, url: &str, allow_private: bool) -> Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| invalid(field, format!("not an absolute URL ({e})")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(invalid(field, "must be https")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(field, "must not carry credentials"));
    }
    let host = parsed.host().ok_or_else(|| invalid(field, "needs a host"))?;
    if allow_private {
        return Ok(());
    }
    let why = match host {
        url::Host::Ipv4(ip) => special_purpose(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => special_purpose(IpAddr::V6(ip)),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal") || d.ends_with(".local"))
                .then(|| "an internal host name".to_owned())
        }
    };
    match why {
        Some(why) => Err(invalid(
            field,
            format!("must not point at a loopback, private, link-local or internal address ({why})"),
        )),
        None => Ok(()),
    }
}

impl Preferences {
    /// Validates every field; the error names the field at fault.
    pub fn validate(&self, allow_private: bool) -> Result<()> {
        if let Some(e) = &self.email
            && !is_email(e)
        {
            return Err(invalid("email", "not an email address"));
        }
        if let Some(p) = &self.phone
            && !is_e164(p)
        {
            return Err(invalid("phone", "must be E.164, like +14155550123"));
        }
        if let Some(tz) = &self.timezone {
            TimeZone::get(tz).map_err(|_| invalid("timezone", format!("{tz:?} is not an IANA time zone")))?;
        }
        if let Some(q) = &self.quiet_hours {
            parse_hhmm(&q.start).ok_or_else(|| invalid("quiet_hours.start", "must be HH:MM"))?;
            parse_hhmm(&q.end).ok_or_else(|| invalid("quiet_hours.end", "must be HH:MM"))?;
        }
        for name in self.categories.keys() {
            if name.is_empty() || name.len() > 64 {
                return Err(invalid("categories", "names are 1 to 64 characters"));
            }
        }
        if self.push_subscriptions.len() > MAX_PUSH_SUBSCRIPTIONS {
            return Err(invalid(
                "push_subscriptions",
                format!("at most {MAX_PUSH_SUBSCRIPTIONS} subscriptions"),
            ));
        }
        for (i, s) in self.push_subscriptions.iter().enumerate() {
            validate_target_url(&format!("push_subscriptions[{i}].endpoint"), &s.endpoint, allow_private)?;
            if s.keys.p256dh.is_empty() || s.keys.auth.is_empty() {
                return Err(invalid(
                    &format!("push_subscriptions[{i}].keys"),
                    "p256dh and auth are required",
                ));
            }
        }
        if let Some(u) = &self.webhook_url {
            validate_target_url("webhook_url", u, allow_private)?;
        }
        Ok(())
    }

    /// Whether `channel` is on for this user and (if given) this category.
    pub fn allows(&self, channel: DeliveryChannel, category: Option<&str>) -> bool {
        let on = self.channels.get(&channel).copied().unwrap_or(true);
        let category_on = category
            .and_then(|c| self.categories.get(c))
            .and_then(|m| m.get(&channel))
            .copied()
            .unwrap_or(true);
        on && category_on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(tz: &str, start: &str, end: &str) -> Preferences {
        Preferences {
            timezone: Some(tz.into()),
            quiet_hours: Some(QuietHours {
                start: start.into(),
                end: end.into(),
            }),
            ..Default::default()
        }
    }

    /// Preferences with only `webhook_url` set.
    fn webhook(url: &str) -> Preferences {
        Preferences {
            webhook_url: Some(url.into()),
            ..Default::default()
        }
    }

    /// Asserts that each of `cases` is refused with an error naming its field.
    fn assert_refused(cases: Vec<(Preferences, &str)>) {
        for (p, field) in cases {
            let err = p.validate(false).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = Preferences {
            email: Some("a.b@example.com".into()),
            phone: Some("+14155550123".into()),
            timezone: Some("Europe/Paris".into()),
            webhook_url: Some("https://hooks.example.com/x".into()),
            ..Default::default()
        };
        ok.validate(false).unwrap();
        assert_refused(vec![
            (
                Preferences {
                    email: Some("nope".into()),
                    ..Default::default()
                },
                "email",
            ),
            (
                Preferences {
                    phone: Some("4155550123".into()),
                    ..Default::default()
                },
                "phone",
            ),
            (
                Preferences {
                    timezone: Some("Mars/Olympus".into()),
                    ..Default::default()
                },
                "timezone",
            ),
            (prefs("UTC", "25:00", "07:00"), "quiet_hours.start"),
            (prefs("UTC", "22:00", "7"), "quiet_hours.end"),
        ]);
    }

    #[test]
    fn webhook_urls_must_be_https_to_a_public_host() {
        assert_refused(
            [
                "http://hooks.example.com",
                "https://127.0.0.1/x",
                "https://[::1]:8443/x",
                "https://169.254.169.254/latest",
                "https://10.1.2.3/",
                "https://localhost/",
                "https://user:pw@example.com/",
            ]
            .into_iter()
            .map(|url| (webhook(url), "webhook_url"))
            .collect(),
        );
        // Local use: http and loopback allowed.
        webhook("http://127.0.0.1:9000/hook").validate(true).unwrap();
    }

    #[test]
    fn channel_and_category_switches() {
        let mut p = Preferences::default();
        assert!(p.allows(DeliveryChannel::Email, None));
        p.channels.insert(DeliveryChannel::Sms, false);
        p.categories
            .insert("marketing".into(), BTreeMap::from([(DeliveryChannel::Email, false)]));
        assert!(!p.allows(DeliveryChannel::Sms, None));
        assert!(!p.allows(DeliveryChannel::Email, Some("marketing")));
        assert!(p.allows(DeliveryChannel::Email, Some("security")));
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal_ip(ip.parse().unwrap()), "{ip}");
        }
    }
}
