//! Rate limits of the HTTP API: per client address (an IPv4 address, an IPv6 /64) for every
//! request without a valid token, and per user for user tokens. Service tokens belong to
//! the operator's own backends and are not limited. WebSocket and SSE upgrades are limited
//! elsewhere (pending connections, connections per user, commands per connection).
//!
//! Each limit is a token bucket per key in a map bounded in size: when it is full, buckets
//! that have refilled (keys not seen for a while) are forgotten, which changes nothing for
//! them; if every bucket is in use, the map starts over rather than grow.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tidings_shared::ErrorCode;

use crate::AppState;
use crate::error::Error;
use crate::limit::Bucket;
use crate::server::{Peer, PendingSlot};

/// Most keys one limit tracks.
const MAX_KEYS: usize = 100_000;

/// Token buckets by key, bounded in number.
#[derive(Debug)]
pub struct Keyed<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
    rate: f32,
    burst: f32,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// `rate` requests per second per key, `burst` above it.
    pub fn new(rate: u32, burst: u32) -> Self {
        Keyed {
            buckets: Mutex::default(),
            rate: rate as f32,
            burst: burst as f32,
        }
    }

    /// Takes one token for `key` at `now`; false when its bucket is empty.
    pub fn allow(&self, key: &K, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            self.forget_refilled(&mut buckets, now);
        }
        buckets
            .entry(key.clone())
            .or_insert(Bucket::full(self.burst, now))
            .take(now, 1.0, self.rate, self.burst)
    }

    fn forget_refilled(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        buckets.retain(|_, b| !b.is_full(now, self.rate, self.burst));
        if buckets.len() >= MAX_KEYS {
            tracing::warn!(keys = buckets.len(), "HTTP rate limit table full: starting over");
            buckets.clear();
        }
    }

    /// Seconds until a key whose bucket is empty has a token again.
    fn retry_after(&self) -> u64 {
        (1.0 / self.rate).ceil().max(1.0) as u64
    }
}

/// The HTTP API's limits.
#[derive(Debug)]
pub struct HttpLimits {
    per_user: Keyed<Arc<str>>,
    per_address: Keyed<IpAddr>,
}

impl HttpLimits {
    /// The limits of the settings `TIDINGS_HTTP_*`.
    pub fn new(config: &tidings_shared::config::GatewayConfig) -> Self {
        HttpLimits {
            per_user: Keyed::new(config.http_rate, config.http_burst),
            per_address: Keyed::new(config.http_address_rate, config.http_address_burst),
        }
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one host usually has a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn limited(scope: &str, retry_after: u64, state: &AppState) -> Response {
    state.metrics.rate_limited.with_label_values(&[scope]).inc();
    let mut response = Error::api(ErrorCode::RateLimited, "too many requests; slow down").into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// Longest an HTTP API request may take, body included (then 408): a body trickled in
/// slowly cannot hold the connection and its handler forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The middleware: verifies the token once (handlers reuse the claims), applies the limit
/// that concerns the caller (none for services, per user for user tokens, per address for
/// requests without a valid token), keeps the connection out of the pending pool while an
/// authenticated request runs, and bounds the request's time.
pub async fn limit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let now = Instant::now();
    let limits = &state.http_limits;
    let mut claims = crate::extract::bearer(req.headers(), req.uri()).and_then(|t| state.verifier.verify(&t).ok());
    if let Some(c) = &claims
        && crate::control::check_revocation(&state, c).await.is_err()
    {
        // Treated as no valid token; the handler's extractor refuses it and counts why.
        claims = None;
    }
    match &claims {
        Some(c) if c.is_service() => {}
        Some(c) => {
            if !limits.per_user.allow(&Arc::from(c.sub.as_str()), now) {
                return limited("http_token", limits.per_user.retry_after(), &state);
            }
        }
        None => {
            if let Some(Peer(addr)) = req.extensions().get::<Peer>().copied()
                && !limits.per_address.allow(&address_key(addr.ip()), now)
            {
                return limited("http_address", limits.per_address.retry_after(), &state);
            }
        }
    }
    let _exchange = match (&claims, req.extensions().get::<Arc<PendingSlot>>()) {
        (Some(_), Some(slot)) => Some(slot.authenticated()),
        _ => None,
    };
    if let Some(c) = claims {
        req.extensions_mut().insert(c);
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!("request not completed within {REQUEST_TIMEOUT:?}");
            let mut response = Error::api(ErrorCode::BadRequest, message).into_response();
            *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let k: Keyed<u32> = Keyed::new(10, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| k.allow(&1, t0)));
        assert!(!k.allow(&1, t0));
        // Another key is not affected.
        assert!(k.allow(&2, t0));
        assert!(k.allow(&1, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn the_table_stays_bounded() {
        let k: Keyed<usize> = Keyed::new(1, 1);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            k.allow(&i, t0);
        }
        assert!(k.buckets.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn ipv6_hosts_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
