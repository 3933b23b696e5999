//! The push channel: Web Push (RFC 8030) to every browser subscription in the user's
//! preferences, the payload encrypted for the browser (RFC 8291, `aes128gcm`) and the request
//! signed for the push service (VAPID, RFC 8292). A subscription the push service reports
//! gone (404/410) is removed from the preferences.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tidings_shared::notify::{DeliveryJob, Priority};
use tidings_shared::prefs::{PushSubscription, validate_target_url};
use tidings_shared::vapid::Vapid;

use crate::provider::Outcome;

/// Record size announced in the header (one record carries the whole payload).
const RECORD_SIZE: u32 = 4096;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(len))
        .map_err(|_| "HKDF expand failed".to_string())?;
    let mut out = vec![0u8; len];
    okm.fill(&mut out).map_err(|_| "HKDF fill failed".to_string())?;
    Ok(out)
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("subscription {field} is not base64url: {e}"))
}

/// Encrypts `payload` for a subscription (RFC 8291): an ephemeral ECDH key agreed with the
/// browser's `p256dh`, mixed with its `auth` secret, then AES-128-GCM in one `aes128gcm`
/// record (RFC 8188) whose header carries the salt and the ephemeral public key.
pub fn encrypt(payload: &[u8], p256dh: &str, auth: &str) -> Result<Vec<u8>, String> {
    let ua_public = b64("p256dh", p256dh)?;
    let auth_secret = b64("auth", auth)?;
    if ua_public.len() != 65 || auth_secret.len() < 16 {
        return Err("subscription keys have the wrong length".into());
    }
    let rng = SystemRandom::new();
    let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| "key generation failed")?;
    let as_public = ephemeral
        .compute_public_key()
        .map_err(|_| "public key failed")?
        .as_ref()
        .to_vec();
    let shared = agree_ephemeral(
        ephemeral,
        UnparsedPublicKey::new(&ECDH_P256, &ua_public),
        "the subscription's p256dh is not a P-256 point".to_string(),
        |k| Ok(k.to_vec()),
    )?;
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(&ua_public);
    key_info.extend_from_slice(&as_public);
    let ikm = hkdf(&auth_secret, &shared, &key_info, 32)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| "random failed")?;
    let cek = hkdf(&salt, &ikm, b"Content-Encoding: aes128gcm\0", 16)?;
    let nonce = hkdf(&salt, &ikm, b"Content-Encoding: nonce\0", 12)?;
    let mut record = payload.to_vec();
    record.push(0x02); // last record, no padding
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| "bad key")?);
    let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| "bad nonce")?;
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut record)
        .map_err(|_| "encryption failed")?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// What one subscription answered.
#[derive(Debug, PartialEq, Eq)]
pub enum PushResult {
    /// Delivered, gone, or the usual retry/fail outcome.
    Outcome(Outcome),
    /// 404 or 410: the subscription no longer exists.
    Gone,
}

/// Sends pushes.
pub struct PushSender {
    client: reqwest::Client,
    vapid: Option<Arc<Vapid>>,
    subject: String,
    allow_private: bool,
}

/// `TTL` and `Urgency` for a priority: urgent ones are worth waking a device for.
fn ttl_urgency(priority: Priority) -> (u32, &'static str) {
    match priority {
        Priority::Critical => (86_400, "high"),
        Priority::High => (86_400, "high"),
        Priority::Normal => (86_400, "normal"),
        Priority::Low => (3_600, "low"),
    }
}

impl PushSender {
    /// A sender; without a VAPID key every push fails with that reason.
    pub fn new(client: reqwest::Client, vapid: Option<Arc<Vapid>>, subject: String, allow_private: bool) -> Self {
        PushSender {
            client,
            vapid,
            subject,
            allow_private,
        }
    }

    /// The payload the browser's service worker decrypts.
    pub fn payload(job: &DeliveryJob) -> serde_json::Value {
        let mut p = serde_json::json!({
            "id": job.id,
            "title": job.content.title.clone().unwrap_or_default(),
            "body": job.content.body,
        });
        if let Some(url) = &job.content.url {
            p["url"] = serde_json::Value::String(url.clone());
        }
        p
    }

    /// One attempt to one subscription.
    pub async fn send(&self, sub: &PushSubscription, job: &DeliveryJob) -> PushResult {
        let Some(vapid) = &self.vapid else {
            return PushResult::Outcome(Outcome::Fail(
                "push is not configured (TIDINGS_VAPID_PRIVATE_KEY_FILE)".into(),
            ));
        };
        if let Err(e) = validate_target_url("push endpoint", &sub.endpoint, self.allow_private) {
            return PushResult::Outcome(Outcome::Fail(e.to_string()));
        }
        let body = match serde_json::to_vec(&Self::payload(job))
            .map_err(|e| e.to_string())
            .and_then(|p| encrypt(&p, &sub.keys.p256dh, &sub.keys.auth))
        {
            Ok(b) => b,
            Err(e) => return PushResult::Outcome(Outcome::Fail(e)),
        };
        let auth = match vapid.authorization(
            &sub.endpoint,
            &self.subject,
            jiff::Timestamp::now().as_second().max(0) as u64,
        ) {
            Ok(a) => a,
            Err(e) => return PushResult::Outcome(Outcome::Fail(e.to_string())),
        };
        let (ttl, urgency) = ttl_urgency(job.priority);
        let resp = self
            .client
            .post(&sub.endpoint)
            .header("authorization", auth)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", ttl.to_string())
            .header("urgency", urgency)
            .body(body)
            .send()
            .await;
        match resp {
            Err(e) => PushResult::Outcome(crate::provider::connection_error(e)),
            Ok(r) if matches!(r.status().as_u16(), 404 | 410) => PushResult::Gone,
            Ok(r) => PushResult::Outcome(crate::provider::classify(r).await),
        }
    }
}
