//! VAPID (RFC 8292) keys: the P-256 key pair that identifies this deployment to browsers'
//! push services. The private key comes from a PEM file (PKCS#8 or SEC1); its public half is
//! served to browsers (`GET /api/v1/push/vapid-public-key`) and each push carries a JWT
//! signed with it.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::error::{Error, Result};

/// A VAPID key pair.
pub struct Vapid {
    key: EcdsaKeyPair,
    public_b64: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid").field("public", &self.public_b64).finish()
    }
}

/// The DER inside the first PEM block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body).ok()
}

impl Vapid {
    /// Reads a PEM private key (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, P-256).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = pem_der(pem).ok_or_else(|| Error::Config("VAPID key: not a PEM file".into()))?;
        let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| Error::Config(format!("VAPID key: not a P-256 private key ({e})")))?;
        let public_b64 = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        Ok(Vapid { key, public_b64 })
    }

    /// Reads the key file named by `TIDINGS_VAPID_PRIVATE_KEY_FILE`.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("TIDINGS_VAPID_PRIVATE_KEY_FILE {}: {e}", path.display())))?;
        Self::from_pem(&pem)
    }

    /// The public key as browsers want it: base64url of the uncompressed P-256 point.
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` header value for a push to `endpoint`:
    /// `vapid t=<ES256 JWT with aud, exp, sub>, k=<public key>`.
    pub fn authorization(&self, endpoint: &str, subject: &str, now_unix: u64) -> Result<String> {
        let aud = origin(endpoint).ok_or_else(|| {
            Error::Invalid(format!(
                "push endpoint {:?} has no origin",
                crate::redact::url(endpoint)
            ))
        })?;
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({"aud": aud, "exp": now_unix + 12 * 3600, "sub": subject});
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| Error::Encode("VAPID signature failed".into()))?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(sig.as_ref()),
            self.public_b64
        ))
    }
}

/// `scheme://host[:port]` of a URL.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_PRIVATE: &str = include_str!("../tests/fixtures/ec-private.pem");

    #[test]
    fn loads_pkcs8_and_signs_a_verifiable_jwt() {
        let v = Vapid::from_pem(EC_PRIVATE).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(v.public_key()).unwrap().len(), 65);
        let auth = v
            .authorization(
                "https://push.example.com/send/abc",
                "mailto:ops@example.com",
                1_700_000_000,
            )
            .unwrap();
        let (t, k) = auth.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
        assert_eq!(k, v.public_key());
        let parts: Vec<&str> = t.split('.').collect();
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.com");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            URL_SAFE_NO_PAD.decode(k).unwrap(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .unwrap();
        assert!(Vapid::from_pem("nope").is_err());
        assert!(Vapid::from_pem(include_str!("../tests/fixtures/rsa-private.pem")).is_err());
    }
}
