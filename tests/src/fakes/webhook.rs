//! A webhook receiver that checks Tidings' signatures and answers per path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use futures::StreamExt as _;
use tidings_shared::auth::now_unix;

/// Everything a webhook receiver saw.
#[derive(Default)]
pub struct Received {
    /// Requests per notification id (including failed answers).
    pub attempts: HashMap<String, u32>,
    /// Bodies accepted (2xx), per id.
    pub accepted: HashMap<String, u32>,
    /// The last body accepted, per id.
    pub bodies: HashMap<String, serde_json::Value>,
    pub bad_signatures: u32,
    /// `/switch` answers 503 while this is set, 200 otherwise (a target that goes down and
    /// recovers).
    pub switch_down: bool,
}

impl Received {
    /// Requests received, all ids together (a retry storm shows here).
    pub fn total_requests(&self) -> u32 {
        self.attempts.values().sum()
    }
}

/// What the receiver saw, shared with the test.
pub type Receiver = Arc<Mutex<Received>>;

fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers.get("tidings-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((t, v1)) = sig.split_once(",v1=") else {
        return false;
    };
    let t = t.trim_start_matches("t=");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = t.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    let tag = aws_lc_rs::hmac::sign(&key, &msg);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex == v1 && t.parse::<i64>().is_ok_and(|t| (t - now_unix() as i64).abs() < 300)
}

/// An error body that never ends: `prefix`, then `x`s for ever (a hostile or broken peer).
fn endless(status: StatusCode, prefix: &'static str) -> Response {
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let tail = futures::stream::repeat_with(move || Ok::<_, std::convert::Infallible>(chunk.clone()));
    let body = futures::stream::once(async move { Ok(bytes::Bytes::from_static(prefix.as_bytes())) }).chain(tail);
    (status, axum::body::Body::from_stream(body)).into_response()
}

/// How long `/slow` takes to answer 200.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(250);

/// A webhook receiver checking signatures made with `secret`: `/ok`, `/slow` (200 after
/// [`SLOW`], so that deliveries are in flight when a fault strikes), `/flaky` (500, 500, then 200 per id), `/bad` (400), `/down`
/// (503 always), `/switch` (503 while [`Received::switch_down`] is set, else 200), `/endless` (500 with a body that never ends), `/endless-bad` (400 with a
/// body that never ends).
pub async fn start(secret: &str) -> (String, Receiver) {
    start_at(secret, "127.0.0.1:0").await
}

/// [`start`], listening on `bind` (an address of a test network, for workers running in a
/// network namespace).
pub async fn start_at(secret: &str, bind: &str) -> (String, Receiver) {
    let received: Receiver = Arc::default();
    async fn hook(
        State((r, secret)): State<(Receiver, Arc<str>)>,
        Path(mode): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Response {
        let id = headers
            .get("tidings-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if mode == "slow" {
            tokio::time::sleep(SLOW).await;
        }
        let mut r = r.lock().unwrap();
        if !verify(&secret, &headers, &body) {
            r.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let n = {
            let a = r.attempts.entry(id.clone()).or_default();
            *a += 1;
            *a
        };
        match mode.as_str() {
            "endless" => return endless(StatusCode::INTERNAL_SERVER_ERROR, "overloaded: "),
            "endless-bad" => return endless(StatusCode::BAD_REQUEST, "bad request: "),
            _ => {}
        }
        let status = match mode.as_str() {
            "ok" | "slow" => StatusCode::OK,
            "flaky" if n <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
            "flaky" => StatusCode::OK,
            "bad" => StatusCode::BAD_REQUEST,
            "switch" if r.switch_down => StatusCode::SERVICE_UNAVAILABLE,
            "switch" => StatusCode::OK,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_success() {
            *r.accepted.entry(id.clone()).or_default() += 1;
            r.bodies.insert(id, serde_json::from_slice(&body).unwrap_or_default());
        }
        status.into_response()
    }
    let app = axum::Router::new()
        .route("/{mode}", axum::routing::post(hook))
        .with_state((received.clone(), Arc::<str>::from(secret)));
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}
