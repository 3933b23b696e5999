//! A Web Push service and the browser whose subscription it serves: checks VAPID and
//! decrypts payloads as a browser would.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tidings_shared::auth::now_unix;

/// A browser's push subscription: its ECDH key pair and auth secret.
pub struct Browser {
    private: aws_lc_rs::agreement::PrivateKey,
    /// The subscription's public key (`p256dh`).
    pub public: Vec<u8>,
    /// The subscription's auth secret.
    pub auth: [u8; 16],
}

impl Browser {
    /// A new subscription with fresh keys.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        use aws_lc_rs::rand::SecureRandom as _;
        let private = aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let public = private.compute_public_key().unwrap().as_ref().to_vec();
        let mut auth = [0u8; 16];
        aws_lc_rs::rand::SystemRandom::new().fill(&mut auth).unwrap();
        Browser { private, public, auth }
    }

    /// Base64url without padding, as subscriptions carry keys.
    pub fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        struct L(usize);
        impl aws_lc_rs::hkdf::KeyType for L {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, salt).extract(ikm);
        let info = [info];
        let okm = prk.expand(&info, L(len)).unwrap();
        let mut out = vec![0u8; len];
        okm.fill(&mut out).unwrap();
        out
    }

    /// Decrypts an aes128gcm body as a browser does (RFC 8291 / RFC 8188).
    pub fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        let idlen = body[20] as usize;
        let as_public = &body[21..21 + idlen];
        let ciphertext = &body[21 + idlen..];
        let shared = aws_lc_rs::agreement::agree(
            &self.private,
            aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::ECDH_P256, as_public),
            (),
            |k| Ok(k.to_vec()),
        )
        .unwrap();
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&self.public);
        info.extend_from_slice(as_public);
        let ikm = Self::hkdf(&self.auth, &shared, &info, 32);
        let cek = Self::hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0", 16);
        let nonce = Self::hkdf(salt, &ikm, b"Content-Encoding: nonce\0", 12);
        let key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &cek).unwrap(),
        );
        let mut buf = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                aws_lc_rs::aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                aws_lc_rs::aead::Aad::empty(),
                &mut buf,
            )
            .unwrap();
        let end = plain.iter().rposition(|b| *b == 2).unwrap();
        plain[..end].to_vec()
    }
}

/// What the push service saw.
#[derive(Default)]
pub struct PushLog {
    /// Decrypted payloads.
    pub payloads: Vec<Value>,
    /// `ttl`, `urgency` and `content-encoding` of every push.
    pub headers: Vec<(String, String)>,
    /// The path and query of every push accepted, in the order they were accepted.
    pub endpoints: Vec<String>,
}

/// A push service for `browser`'s subscriptions: `/push/ok` checks the VAPID signature
/// against `vapid_public` and decrypts; `/push/slow` does the same after a second;
/// `/push/gone` answers 410.
pub async fn start_push_service(browser: Arc<Browser>, vapid_public: String) -> (String, Arc<Mutex<PushLog>>) {
    type S = (Arc<Browser>, String, Arc<Mutex<PushLog>>);
    async fn push(
        State((browser, vapid, log)): State<S>,
        Path(mode): Path<String>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if mode == "gone" {
            return StatusCode::GONE;
        }
        if mode == "slow" {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        // VAPID: an ES256 JWT for this origin, signed by the key the gateway publishes.
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some((jwt, k)) = auth.strip_prefix("vapid t=").and_then(|r| r.split_once(", k=")) else {
            return StatusCode::UNAUTHORIZED;
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            b64.decode(&vapid).unwrap(),
        );
        let signed = public.verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap_or_default(),
        );
        let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap_or_default()).unwrap_or_default();
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if k != vapid
            || signed.is_err()
            || claims["aud"] != format!("http://{host}")
            || claims["exp"].as_u64().unwrap_or(0) <= now_unix()
        {
            return StatusCode::FORBIDDEN;
        }
        let payload: Value = serde_json::from_slice(&browser.decrypt(&body)).unwrap();
        let mut log = log.lock().unwrap();
        log.payloads.push(payload);
        log.endpoints.push(uri.to_string());
        for h in ["ttl", "urgency", "content-encoding"] {
            log.headers.push((
                h.to_owned(),
                headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        StatusCode::CREATED
    }
    let log: Arc<Mutex<PushLog>> = Arc::default();
    let app = axum::Router::new()
        .route("/push/{mode}", axum::routing::post(push))
        .with_state((browser, vapid_public, log.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), log)
}
