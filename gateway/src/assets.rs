//! The dashboard and the SDK's browser build (contract §9), embedded in the binary so a
//! gateway serves them with no files beside it and `cargo build` needs no npm. The bundles
//! are built from `clients/typescript/` and committed; CI checks that they match their
//! sources (`node scripts/build.mjs --check`).

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: LazyLock<String>,
}

macro_rules! asset {
    ($file:literal, $type:literal) => {
        Asset {
            body: include_bytes!(concat!("../assets/", $file)),
            content_type: $type,
            etag: LazyLock::new(|| etag(include_bytes!(concat!("../assets/", $file)))),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static DASHBOARD_JS: Asset = asset!("dashboard.js", "text/javascript; charset=utf-8");
static DASHBOARD_CSS: Asset = asset!("dashboard.css", "text/css; charset=utf-8");
static SDK: Asset = asset!("tidings.mjs", "text/javascript; charset=utf-8");

/// The page's policy: its own scripts, styles and connections only (the socket and the API
/// are same-origin), no framing, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`, `/assets/dashboard.{js,css}`, `/client/tidings.mjs`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h, true) }))
        .route(
            "/assets/dashboard.js",
            get(|h: HeaderMap| async move { serve(&DASHBOARD_JS, &h, false) }),
        )
        .route(
            "/assets/dashboard.css",
            get(|h: HeaderMap| async move { serve(&DASHBOARD_CSS, &h, false) }),
        )
        .route(
            "/client/tidings.mjs",
            get(|h: HeaderMap| async move { serve(&SDK, &h, false) }),
        )
}

/// A strong validator from the content (FNV-1a, 64 bits): the same build gives the same tag
/// on every gateway, so a rolling upgrade does not make browsers download twice.
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}-{}\"", body.len())
}

fn serve(asset: &'static Asset, request: &HeaderMap, page: bool) -> Response {
    let tag = asset.etag.as_str();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidate every time: cheap with the tag, and a new gateway build shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, v);
    }
    if page {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        // The token is in the fragment, which browsers never send; keep the URL out of
        // referrers all the same.
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, asset.body).into_response()
}
