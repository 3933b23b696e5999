//! Signed test tokens: the one minter every test crate uses (each with its own secret).

use tidings_shared::auth::{Claims, now_unix, sign_hs256};

/// Claims for `sub`, reading `projects` and publishing to `publish`, expiring `ttl_secs`
/// from now (negative: already expired).
pub fn claims(sub: &str, projects: &[&str], publish: &[&str], ttl_secs: i64) -> Claims {
    Claims {
        sub: sub.into(),
        projects: projects.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        role: None,
        exp: (now_unix() as i64 + ttl_secs) as u64,
        nbf: None,
        iat: Some(now_unix()),
    }
}

/// `claims` with the service role.
pub fn service(mut claims: Claims) -> Claims {
    claims.role = Some("service".into());
    claims
}

/// `claims` signed with HS256 and `secret`.
pub fn sign(claims: &Claims, secret: &str) -> String {
    sign_hs256(claims, secret.as_bytes()).expect("sign a test token")
}
