//! Cross-origin access for apps that embed the SDK on their own origin (contract §9): the
//! gateway answers preflights and sets `Access-Control-Allow-Origin` for the origins of
//! `TIDINGS_CORS_ORIGINS` only. Tokens travel in `Authorization`, never in cookies, so no
//! credentials mode is needed and none is allowed.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tidings_shared::Error as SharedError;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::Result;

/// The CORS layer for `origins`, or `None` when the list is empty (same origin only).
///
/// Each origin must be `scheme://host[:port]` exactly as a browser sends it in `Origin`:
/// no path, no trailing slash, no wildcard; a typo fails at startup instead of silently
/// locking an app out.
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>> {
    let mut allowed = Vec::new();
    for origin in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        allowed.push(parse_origin(origin)?);
    }
    if allowed.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(3600)),
    ))
}

fn parse_origin(origin: &str) -> Result<HeaderValue> {
    let bad = |why: &str| SharedError::Config(format!("TIDINGS_CORS_ORIGINS: {origin:?} {why}"));
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '*', '?', '#', ' ']) {
        return Err(bad("must be scheme://host[:port] with no path, wildcard or trailing slash").into());
    }
    Ok(HeaderValue::from_str(origin).map_err(|_| bad("is not a valid header value"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_at_startup() {
        assert!(layer(&[]).unwrap().is_none());
        assert!(layer(&["".into()]).unwrap().is_none());
        assert!(
            layer(&["https://app.example.com".into(), "http://127.0.0.1:3000".into()])
                .unwrap()
                .is_some()
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "*",
            "https://*.example.com",
            "ftp://x",
        ] {
            assert!(layer(&[bad.into()]).is_err(), "{bad} accepted");
        }
    }
}
