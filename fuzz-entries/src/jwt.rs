//! JWT parsing and verification, [`Verifier::verify`].
//!
//! Two shapes of input. A token as a client sends it (anything not starting with `{`) is
//! verified by an HS256, an RS256 and an ES256 verifier: none may accept a token that is not
//! signed with its key. Or `<header JSON>\n<claims JSON>` (starting with `{`): both parts are
//! base64url-encoded and signed with the HS256 test secret, so that the claim checks behind
//! the signature are reached; every `%T` in the claims is first replaced by the current unix
//! time, so that `"exp":%T` stays unexpired in a corpus replayed years later. A token that
//! verifies carries exactly the claims its JSON says, and they satisfy the contract's rules.

use std::sync::OnceLock;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tidings_shared::auth::{Claims, LEEWAY_SECS, Verifier, now_unix};
use tidings_shared::channel::is_valid_id;

/// The HS256 secret signed inputs use.
pub const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";
/// `TIDINGS_TOKEN_MAX_LIFETIME`'s default (30 days).
pub const MAX_LIFETIME: u64 = 30 * 24 * 3600;

struct Verifiers {
    hs256: Verifier,
    other_hs256: Verifier,
    rs256: Verifier,
    es256: Verifier,
}

fn verifiers() -> &'static Verifiers {
    static V: OnceLock<Verifiers> = OnceLock::new();
    V.get_or_init(|| {
        let rsa = include_bytes!("../../shared/tests/fixtures/rsa-public.pem");
        let ec = include_bytes!("../../shared/tests/fixtures/ec-public.pem");
        let build = |secret: Option<&[u8]>, pem: Option<&[u8]>| {
            Verifier::new(secret, pem)
                .expect("fixture keys load")
                .with_max_lifetime(MAX_LIFETIME)
        };
        Verifiers {
            hs256: build(Some(SECRET), None),
            other_hs256: build(Some(b"another-secret"), None),
            rs256: build(None, Some(rsa)),
            es256: build(None, Some(ec)),
        }
    })
}

/// The entry point.
pub fn jwt(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.strip_prefix('{') {
        Some(_) => signed(s),
        None => presented(s),
    }
}

fn hs256(signing_input: &str, secret: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, signing_input.as_bytes()))
}

/// A token as presented: only a correctly signed one may verify.
fn presented(token: &str) {
    let v = verifiers();
    if let Ok(claims) = v.hs256.verify(token) {
        let t = token.trim();
        let (input, sig) = t.rsplit_once('.').expect("a verified token has three parts");
        assert_eq!(sig, hs256(input, SECRET), "HS256 accepted a signature it did not make");
        check_claims(&claims, input.split_once('.').map(|(_, c)| c));
    }
    assert!(
        v.rs256.verify(token).is_err(),
        "RS256 accepted a token no test key signed"
    );
    assert!(
        v.es256.verify(token).is_err(),
        "ES256 accepted a token no test key signed"
    );
}

/// Header and claims JSON, signed here.
fn signed(s: &str) {
    let Some((header, claims)) = s.split_once('\n') else {
        return;
    };
    let claims = claims.replace("%T", &now_unix().to_string());
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(&claims));
    let sig = hs256(&input, SECRET);
    let token = format!("{input}.{sig}");
    let v = verifiers();
    let verified = v.hs256.verify(&token);
    assert!(v.other_hs256.verify(&token).is_err(), "verified with the wrong secret");
    assert!(
        v.rs256.verify(&token).is_err(),
        "an HS256 token passed an RS256 verifier"
    );
    // Any other signature fails.
    let first = if sig.starts_with('A') { "B" } else { "A" };
    let forged = format!("{input}.{first}{}", &sig[1..]);
    assert!(v.hs256.verify(&forged).is_err(), "a changed signature verified");
    let Ok(verified) = verified else {
        return;
    };
    // (A header field the verifier does not read may hold a number `Value` refuses, as below.)
    if let Ok(header) = serde_json::from_str::<Value>(header) {
        assert_eq!(header["alg"], "HS256");
    }
    check_claims(&verified, Some(&URL_SAFE_NO_PAD.encode(&claims)));
}

/// What a verified token's claims must be: those of its payload, within the rules.
fn check_claims(c: &Claims, payload_b64: Option<&str>) {
    let now = now_unix();
    assert!(!c.sub.is_empty() && is_valid_id(&c.sub), "sub {:?}", c.sub);
    assert!(c.exp.saturating_add(LEEWAY_SECS) >= now, "expired token verified");
    if let Some(nbf) = c.nbf {
        assert!(nbf <= now + LEEWAY_SECS, "token verified before nbf");
    }
    if let Some(iat) = c.iat {
        assert!(iat <= now + LEEWAY_SECS, "token issued in the future verified");
    }
    let issued = c.iat.unwrap_or(now);
    assert!(
        c.exp <= issued.saturating_add(MAX_LIFETIME + LEEWAY_SECS),
        "lifetime over the maximum"
    );
    let payload = payload_b64.expect("a verified token has a payload");
    let raw = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("a verified payload is base64url");
    // A claim the gateway does not read may hold a number beyond f64's range: serde skips
    // unknown fields without converting them (the token is valid, its signature checked),
    // while `Value` refuses the whole payload. Then only the claims above can be checked.
    let Ok(json) = serde_json::from_slice::<Value>(&raw) else {
        return;
    };
    assert_eq!(json["sub"], c.sub.as_str());
    assert_eq!(json["exp"].as_u64(), Some(c.exp));
    assert_eq!(json.get("iat").and_then(Value::as_u64), c.iat);
    assert_eq!(json.get("nbf").and_then(Value::as_u64), c.nbf);
    let list = |name: &str| -> Vec<String> {
        json.get(name)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    assert_eq!(list("projects"), c.projects);
    assert_eq!(list("publish"), c.publish);
}
