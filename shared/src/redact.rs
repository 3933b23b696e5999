//! Redacting URLs before they reach a log line, an error or a stored status.
//!
//! Many URLs Tidings handles carry secrets: `TIDINGS_NATS_URL` and `TIDINGS_SMTP_URL` may
//! hold `user:password@`, and webhook and push URLs are often capability URLs whose path or
//! query is the secret. Logs and statuses are read by more people than preferences, so
//! wherever such a URL is shown it goes through [`url`] first and only its scheme and host
//! (and port) remain.

/// `scheme://host[:port]` of `raw`: no user info, path, query or fragment. Something that
/// does not parse as a URL (NATS accepts `host:port`) keeps only what follows the last `@`,
/// up to the first `/`, `?` or `#`.
pub fn url(raw: &str) -> String {
    let raw = raw.trim();
    if let Ok(parsed) = url::Url::parse(raw)
        && let Some(host) = parsed.host_str()
    {
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        return format!("{}://{host}{port}", parsed.scheme());
    }
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), raw),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}{host}")
}

/// [`url`] of each entry of a comma-separated list (`TIDINGS_NATS_URL`, `TIDINGS_SMTP_URL`).
pub fn urls(list: &str) -> String {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(url)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_and_host_remain() {
        for (raw, shown) in [
            (
                "https://user:pw@hooks.example.com/T0/B1/s3cret?token=abc#x",
                "https://hooks.example.com",
            ),
            (
                "https://hooks.example.com:8443/capability/xyz",
                "https://hooks.example.com:8443",
            ),
            ("nats://tidings:hunter2@nats-0:4222", "nats://nats-0:4222"),
            (
                "smtp+starttls://u:p%40ss@mail.example.com:587",
                "smtp+starttls://mail.example.com:587",
            ),
            ("tidings:hunter2@127.0.0.1:4222", "127.0.0.1:4222"),
            ("127.0.0.1:4222", "127.0.0.1:4222"),
            ("file:///var/mail/x", "file://"),
            ("https://[2001:db8::1]:9/x?y", "https://[2001:db8::1]:9"),
            ("not a url/with/path?q=secret", "not a url"),
        ] {
            assert_eq!(url(raw), shown, "{raw}");
        }
        assert_eq!(
            urls("nats://a:b@n1:4222, nats://a:b@n2:4222"),
            "nats://n1:4222,nats://n2:4222"
        );
    }
}
