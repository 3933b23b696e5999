//! A Twilio-compatible SMS API for the worker's SMS tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

/// The forms the API received, oldest first.
pub type Forms = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A Twilio-compatible SMS API for account `AC123` with token `tok`: checks basic auth and
/// the form; `+15550000001` gets 500 then 201, `+15550000002` gets 400 with a provider error.
pub async fn start_sms_api() -> (String, Forms) {
    let seen: Forms = Arc::default();
    async fn messages(
        State(seen): State<Forms>,
        Path(sid): Path<String>,
        headers: HeaderMap,
        axum::Form(form): axum::Form<HashMap<String, String>>,
    ) -> (StatusCode, String) {
        use base64::Engine as _;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AC123:tok")
        );
        if sid != "AC123" || auth != expected {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"code":20003,"message":"Authenticate"}"#.into(),
            );
        }
        let to = form.get("To").cloned().unwrap_or_default();
        let n = {
            let mut s = seen.lock().unwrap();
            s.push(form);
            s.iter().filter(|f| f.get("To") == Some(&to)).count()
        };
        match to.as_str() {
            "+15550000001" if n == 1 => (StatusCode::INTERNAL_SERVER_ERROR, "{}".into()),
            "+15550000002" => (
                StatusCode::BAD_REQUEST,
                r#"{"code":21211,"message":"The 'To' number +15550000002 is not a valid phone number."}"#.into(),
            ),
            _ => (StatusCode::CREATED, r#"{"sid":"SM1","status":"queued"}"#.into()),
        }
    }
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            axum::routing::post(messages),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}
