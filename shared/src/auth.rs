//! JWT verification and the access rule of contract §2.
//!
//! Tokens are verified with an explicit algorithm allow-list derived from the configured
//! keys, so `alg: none` and algorithm-confusion tokens (an RS256 public key used as an HS256
//! secret) are refused before any signature check. Each refusal has its own
//! [`AuthReason`], which tests, logs and the auth-failure metric rely on.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::channel::{Channel, is_valid_id};
use crate::error::{AuthReason, Error, Result};

/// Default clock leeway on `exp` and `nbf`, in seconds (the contract allows no more than 30).
pub const LEEWAY_SECS: u64 = 30;

/// The `role` value of back-end callers.
pub const SERVICE_ROLE: &str = "service";

/// Claims of a Tidings token (contract §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; names the `user:<sub>` channel.
    pub sub: String,
    /// Project ids the user may read; `["*"]` means all.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Channels the user may publish to from a client; `"*"` means any.
    #[serde(default)]
    pub publish: Vec<String>,
    /// `"service"` for back-end callers, which may do everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Expiry, unix seconds (required).
    pub exp: u64,
    /// Not-before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued-at, unix seconds: what a revocation (`POST /api/v1/users/{user}/revoke`) is
    /// compared with; a token without it counts as issued before any revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// Whether this is a back-end caller with every right.
    pub fn is_service(&self) -> bool {
        self.role.as_deref() == Some(SERVICE_ROLE)
    }

    /// May this token receive messages of `channel`?
    pub fn can_read(&self, channel: &Channel) -> bool {
        if self.is_service() {
            return true;
        }
        match channel {
            Channel::Broadcast => true,
            Channel::User(id) => *id == self.sub,
            Channel::Project(id) => self.projects.iter().any(|p| p == "*" || p == id),
        }
    }

    /// May this token publish to `channel` from a client?
    pub fn can_publish(&self, channel: &Channel) -> bool {
        if self.is_service() {
            return true;
        }
        let name = channel.to_string();
        self.publish.iter().any(|p| p == "*" || *p == name)
    }

    /// May this token act for `user` on the per-user HTTP routes (preferences, inbox)?
    pub fn can_act_for(&self, user: &str) -> bool {
        self.is_service() || self.sub == user
    }
}

/// Verifies tokens against the configured keys.
#[derive(Clone)]
pub struct Verifier {
    hmac: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    leeway: u64,
    max_lifetime: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hmac.is_some())
            .field("public", &self.public.as_ref().map(|(a, _)| a))
            .finish()
    }
}

/// Claims as they arrive: `exp` and `sub` optional, so their absence gets its own reason.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    #[serde(default)]
    projects: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    role: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
}

impl Verifier {
    /// Builds a verifier from an HS256 secret and/or a PEM public key (RSA → RS256,
    /// P-256 → ES256). At least one must be given.
    pub fn new(hs256_secret: Option<&[u8]>, public_key_pem: Option<&[u8]>) -> Result<Self> {
        let hmac = match hs256_secret {
            Some([]) => return Err(Error::Config("the JWT secret is empty".into())),
            Some(s) => Some(DecodingKey::from_secret(s)),
            None => None,
        };
        let public = match public_key_pem {
            None => None,
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem)
                    .map(|k| (Algorithm::RS256, k))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (Algorithm::ES256, k)))
                    .map_err(|e| {
                        Error::Config(format!(
                            "JWT public key is neither an RSA nor a P-256 PEM public key: {e}"
                        ))
                    })?,
            ),
        };
        if hmac.is_none() && public.is_none() {
            return Err(Error::Config(
                "no JWT key: set TIDINGS_JWT_SECRET and/or TIDINGS_JWT_PUBLIC_KEY_FILE".into(),
            ));
        }
        Ok(Verifier {
            hmac,
            public,
            leeway: LEEWAY_SECS,
            max_lifetime: u64::MAX,
        })
    }

    /// Sets the clock leeway on `exp` and `nbf` (capped at the contract's 30 s).
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs.min(LEEWAY_SECS);
        self
    }

    /// Refuses tokens whose `exp` is more than `secs` ahead (`TIDINGS_TOKEN_MAX_LIFETIME`).
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime = secs;
        self
    }

    /// The clock leeway in seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Algorithms this verifier accepts.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs = Vec::new();
        if self.hmac.is_some() {
            algs.push(Algorithm::HS256);
        }
        if let Some((alg, _)) = &self.public {
            algs.push(*alg);
        }
        algs
    }

    /// Verifies `token` and returns its claims, or the reason it is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthReason> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthReason::Missing);
        }
        let alg = header_alg(token)?;
        let key = match alg.as_str() {
            "HS256" => self.hmac.as_ref().map(|k| (Algorithm::HS256, k)),
            "RS256" | "ES256" => self
                .public
                .as_ref()
                .filter(|(a, _)| format!("{a:?}") == alg)
                .map(|(a, k)| (*a, k)),
            a if a.eq_ignore_ascii_case("none") => return Err(AuthReason::AlgNone),
            _ => None,
        };
        let (alg, key) = key.ok_or(AuthReason::AlgorithmNotAllowed)?;
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<RawClaims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthReason::Expired,
            ErrorKind::ImmatureSignature => AuthReason::NotYetValid,
            ErrorKind::InvalidSignature => AuthReason::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthReason::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthReason::MissingExp,
            ErrorKind::MissingRequiredClaim(c) if c == "sub" => AuthReason::MissingSub,
            _ => AuthReason::Malformed,
        })?;
        let raw = data.claims;
        let exp = raw.exp.ok_or(AuthReason::MissingExp)?;
        let now = now_unix();
        // Issued in the future, a token would escape every revocation (compared by `iat`).
        if raw.iat.is_some_and(|iat| iat > now.saturating_add(self.leeway)) {
            return Err(AuthReason::NotYetValid);
        }
        // A revocation is kept for the longest lifetime, from when it is stored: a token living
        // longer than that from its issue could outlive it.
        let issued = raw.iat.unwrap_or(now);
        if exp > issued.saturating_add(self.max_lifetime).saturating_add(self.leeway) {
            return Err(AuthReason::LifetimeTooLong);
        }
        let sub = raw.sub.filter(|s| !s.is_empty()).ok_or(AuthReason::MissingSub)?;
        if !is_valid_id(&sub) {
            return Err(AuthReason::BadSub);
        }
        Ok(Claims {
            sub,
            projects: raw.projects,
            publish: raw.publish,
            role: raw.role,
            exp,
            nbf: raw.nbf,
            iat: raw.iat,
        })
    }
}

/// Reads `alg` from the token's header without trusting anything else in it.
fn header_alg(token: &str) -> Result<String, AuthReason> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthReason::Malformed);
    };
    let raw = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthReason::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&raw).map_err(|_| AuthReason::Malformed)?;
    header.alg.ok_or(AuthReason::Malformed)
}

/// Signs claims with HS256: for tests, the load generator and local tooling (production
/// tokens come from the product's own identity service).
pub fn sign_hs256(claims: &Claims, secret: &[u8]) -> Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Encode(e.to_string()))
}

/// Current unix time in seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa-public.pem");
    const OTHER_RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/other-rsa-private.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ec-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ec-public.pem");

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            projects: vec!["p1".into()],
            publish: vec!["project:p1".into()],
            role: None,
            exp: (now_unix() as i64 + exp_in) as u64,
            nbf: None,
            iat: None,
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, c: &impl Serialize) -> String {
        jsonwebtoken::encode(&Header::new(alg), c, key).unwrap()
    }

    fn hs() -> Verifier {
        Verifier::new(Some(SECRET), None).unwrap()
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn hs256_round_trip() {
        let token = sign_hs256(&claims(60), SECRET).unwrap();
        assert_eq!(hs().verify(&token).unwrap(), claims(60));
    }

    #[test]
    fn rs256_and_es256_with_pem_public_keys() {
        let rsa = Verifier::new(None, Some(RSA_PUBLIC)).unwrap();
        assert_eq!(rsa.algorithms(), vec![Algorithm::RS256]);
        let t = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            &claims(60),
        );
        assert_eq!(rsa.verify(&t).unwrap().sub, "u1");

        let ec = Verifier::new(None, Some(EC_PUBLIC)).unwrap();
        assert_eq!(ec.algorithms(), vec![Algorithm::ES256]);
        let t = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            &claims(60),
        );
        assert_eq!(ec.verify(&t).unwrap().sub, "u1");

        // Both configured: each algorithm goes to its own key.
        let both = Verifier::new(Some(SECRET), Some(RSA_PUBLIC)).unwrap();
        assert!(both.verify(&sign_hs256(&claims(60), SECRET).unwrap()).is_ok());
        let t = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            &claims(60),
        );
        assert!(both.verify(&t).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let body = serde_json::to_string(&claims(60)).unwrap();
        for alg in ["none", "None", "NONE"] {
            let t = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)), b64(&body));
            assert_eq!(hs().verify(&t), Err(AuthReason::AlgNone));
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        // HS384 with the right secret: a real algorithm, but not the configured one.
        let t = sign(Algorithm::HS384, &EncodingKey::from_secret(SECRET), &claims(60));
        assert_eq!(hs().verify(&t), Err(AuthReason::AlgorithmNotAllowed));
        // RS256 on a node with only an HS256 secret.
        let t = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            &claims(60),
        );
        assert_eq!(hs().verify(&t), Err(AuthReason::AlgorithmNotAllowed));
        // Algorithm confusion: the RSA public key used as an HS256 secret on an RS256 node.
        let rsa = Verifier::new(None, Some(RSA_PUBLIC)).unwrap();
        let t = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC), &claims(60));
        assert_eq!(rsa.verify(&t), Err(AuthReason::AlgorithmNotAllowed));
        // ES256 token on an RS256 node.
        let t = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            &claims(60),
        );
        assert_eq!(rsa.verify(&t), Err(AuthReason::AlgorithmNotAllowed));
    }

    #[test]
    fn bad_signatures_are_refused() {
        let t = sign_hs256(&claims(60), b"another-secret").unwrap();
        assert_eq!(hs().verify(&t), Err(AuthReason::BadSignature));
        let rsa = Verifier::new(None, Some(RSA_PUBLIC)).unwrap();
        let t = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE).unwrap(),
            &claims(60),
        );
        assert_eq!(rsa.verify(&t), Err(AuthReason::BadSignature));
        // A tampered payload keeps the old signature.
        let good = sign_hs256(&claims(60), SECRET).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut forged = claims(60);
        forged.role = Some("service".into());
        let forged_body = b64(&serde_json::to_string(&forged).unwrap());
        parts[1] = &forged_body;
        assert_eq!(hs().verify(&parts.join(".")), Err(AuthReason::BadSignature));
    }

    #[test]
    fn expiry_and_not_before() {
        let t = sign_hs256(&claims(-31 - 5), SECRET).unwrap();
        assert_eq!(hs().verify(&t), Err(AuthReason::Expired));
        // Within the 30 s leeway: still accepted.
        let t = sign_hs256(&claims(-10), SECRET).unwrap();
        assert!(hs().verify(&t).is_ok());

        let mut c = claims(3600);
        c.nbf = Some(now_unix() + 600);
        assert_eq!(
            hs().verify(&sign_hs256(&c, SECRET).unwrap()),
            Err(AuthReason::NotYetValid)
        );
        c.nbf = Some(now_unix() - 1);
        assert!(hs().verify(&sign_hs256(&c, SECRET).unwrap()).is_ok());
    }

    #[test]
    fn required_claims() {
        let key = EncodingKey::from_secret(SECRET);
        let no_exp = serde_json::json!({"sub": "u1"});
        assert_eq!(
            hs().verify(&sign(Algorithm::HS256, &key, &no_exp)),
            Err(AuthReason::MissingExp)
        );
        let no_sub = serde_json::json!({"exp": now_unix() + 60});
        assert_eq!(
            hs().verify(&sign(Algorithm::HS256, &key, &no_sub)),
            Err(AuthReason::MissingSub)
        );
        let empty_sub = serde_json::json!({"sub": "", "exp": now_unix() + 60});
        assert_eq!(
            hs().verify(&sign(Algorithm::HS256, &key, &empty_sub)),
            Err(AuthReason::MissingSub)
        );
        let bad_sub = serde_json::json!({"sub": "a.b", "exp": now_unix() + 60});
        assert_eq!(
            hs().verify(&sign(Algorithm::HS256, &key, &bad_sub)),
            Err(AuthReason::BadSub)
        );
    }

    #[test]
    fn malformed_tokens() {
        for t in [
            "x",
            "a.b",
            "a.b.c.d",
            "!!!.b.c",
            &format!("{}.e30.sig", b64("not json")),
            &format!("{}.e30.sig", b64("{}")),
        ] {
            assert_eq!(hs().verify(t), Err(AuthReason::Malformed), "{t}");
        }
        assert_eq!(hs().verify("  "), Err(AuthReason::Missing));
        let key = EncodingKey::from_secret(SECRET);
        let bad_types = serde_json::json!({"sub": "u1", "exp": now_unix() + 60, "projects": "p1"});
        assert_eq!(
            hs().verify(&sign(Algorithm::HS256, &key, &bad_types)),
            Err(AuthReason::Malformed)
        );
    }

    #[test]
    fn bad_key_configuration_is_a_clear_error() {
        assert!(matches!(Verifier::new(None, None), Err(Error::Config(_))));
        assert!(matches!(Verifier::new(Some(b""), None), Err(Error::Config(_))));
        assert!(matches!(Verifier::new(None, Some(b"not a pem")), Err(Error::Config(_))));
    }

    #[test]
    fn access_rule() {
        let mut c = claims(60);
        assert!(c.can_read(&Channel::parse("user:u1").unwrap()));
        assert!(!c.can_read(&Channel::parse("user:u2").unwrap()));
        assert!(c.can_read(&Channel::Broadcast));
        assert!(c.can_read(&Channel::parse("project:p1").unwrap()));
        assert!(!c.can_read(&Channel::parse("project:p2").unwrap()));
        assert!(c.can_publish(&Channel::parse("project:p1").unwrap()));
        assert!(!c.can_publish(&Channel::parse("user:u1").unwrap()));
        assert!(c.can_act_for("u1") && !c.can_act_for("u2"));

        c.projects = vec!["*".into()];
        assert!(c.can_read(&Channel::parse("project:anything").unwrap()));
        assert!(!c.can_read(&Channel::parse("user:u2").unwrap()));

        c.publish = vec![];
        assert!(!c.can_publish(&Channel::parse("project:p1").unwrap()));

        c.role = Some("service".into());
        assert!(c.can_read(&Channel::parse("user:u2").unwrap()));
        assert!(c.can_publish(&Channel::Broadcast));
        assert!(c.can_act_for("u2"));
    }
}
