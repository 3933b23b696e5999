//! The notification routes of contract §6: intake, status, preferences, templates and the
//! in-app inbox. The gateway validates and records; workers do the delivering.

use async_nats::HeaderMap;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tidings_shared::nats::publish_acked;
use tidings_shared::notify::names::NOTIFICATION_EVENT;
use tidings_shared::notify::{DeliveryChannel, DeliveryStatus, InboxItem, NotificationRequest, NotificationStatus};
use tidings_shared::prefs::Preferences;
use tidings_shared::store::Store;
use tidings_shared::subject::NOTIFY_SUBJECT;
use tidings_shared::template::{Template, is_valid_name};
use tidings_shared::{Error as SharedError, ErrorCode};

use crate::AppState;
use crate::error::{Error, Result};
use crate::extract::{Caller, Service};

/// The notification routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/notifications", post(create))
        .route("/api/v1/notifications/{id}", get(status))
        .route(
            "/api/v1/users/{user}/preferences",
            get(get_preferences).put(put_preferences),
        )
        .route("/api/v1/templates/{name}", get(get_template).put(put_template))
        .route("/api/v1/users/{user}/inbox", get(inbox))
        .route("/api/v1/users/{user}/inbox/{id}/read", post(read))
        .route("/api/v1/push/vapid-public-key", get(vapid_public_key))
}

/// Answer of `GET /api/v1/push/vapid-public-key`.
#[derive(Debug, Serialize)]
pub struct VapidKey {
    /// Base64url of the uncompressed P-256 point, for `PushManager.subscribe`.
    pub key: String,
}

async fn vapid_public_key(State(state): State<AppState>) -> Result<Json<VapidKey>> {
    match &state.vapid_public_key {
        Some(key) => Ok(Json(VapidKey { key: key.clone() })),
        None => Err(Error::api(
            ErrorCode::NotFound,
            "push is not configured on this deployment",
        )),
    }
}

/// Answer of `POST /api/v1/notifications`.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The notification id (the request's, or generated).
    pub id: String,
}

async fn create(
    State(state): State<AppState>,
    _service: Service,
    http_headers: axum::http::HeaderMap,
    body: std::result::Result<Json<NotificationRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>)> {
    let Json(mut req) = body?;
    req.validate()?;
    let store = state.store().await?;
    if store.template(&req.template).await?.is_none() {
        return Err(Error::api(
            ErrorCode::BadRequest,
            format!("template: {:?} does not exist", req.template),
        ));
    }
    let id = req.id.clone().unwrap_or_else(|| nuid::next().to_string());
    req.id = Some(id.clone());
    // Queued first (the same id within the queue's duplicate window is stored once), then the
    // status: a failure between the two leaves a request a retry completes, never a status
    // with nothing queued behind it. A worker that gets there first creates the status.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    let span = tidings_shared::telemetry::request_span(
        &http_headers,
        || tracing::info_span!("POST /api/v1/notifications", %id),
    );
    // The worker's intake, its delivery jobs and the provider calls join this trace.
    span.in_scope(|| tidings_shared::telemetry::inject_nats(&mut headers));
    let bytes = serde_json::to_vec(&req).map_err(|e| SharedError::Encode(e.to_string()))?;
    tracing::Instrument::instrument(publish_acked(&state.js, NOTIFY_SUBJECT, headers, bytes.into()), span)
        .await
        .map_err(SharedError::nats)?;
    let mut doc = NotificationStatus {
        id: id.clone(),
        user: req.user.clone(),
        status: String::new(),
        created_at: Store::now(),
        channels: Default::default(),
        error: None,
        planned: false,
        request_seq: None,
    };
    doc.summarize();
    store.create_status(&doc).await?;
    tracing::info!(%id, user = %req.user, template = %req.template, "notification accepted");
    Ok((StatusCode::ACCEPTED, Json(Accepted { id })))
}

async fn status(
    State(state): State<AppState>,
    _service: Service,
    Path(id): Path<String>,
) -> Result<Json<NotificationStatus>> {
    if !tidings_shared::channel::is_valid_id(&id) {
        return Err(Error::api(ErrorCode::BadRequest, "id: must match [A-Za-z0-9_-]{1,128}"));
    }
    match state.store().await?.status(&id).await? {
        Some((doc, _)) => Ok(Json(doc)),
        None => Err(Error::api(ErrorCode::NotFound, format!("no notification {id}"))),
    }
}

/// Checks that the caller may act for `user` on the per-user routes.
fn for_user(claims: &tidings_shared::auth::Claims, user: &str) -> Result<()> {
    if !tidings_shared::channel::is_valid_id(user) {
        return Err(Error::api(
            ErrorCode::BadRequest,
            "user: must match [A-Za-z0-9_-]{1,128}",
        ));
    }
    if !claims.can_act_for(user) {
        return Err(Error::api(
            ErrorCode::Forbidden,
            "only that user or a service may do this",
        ));
    }
    Ok(())
}

async fn get_preferences(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(user): Path<String>,
) -> Result<Json<Preferences>> {
    for_user(&claims, &user)?;
    Ok(Json(state.store().await?.preferences(&user).await?))
}

async fn put_preferences(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(user): Path<String>,
    body: std::result::Result<Json<Preferences>, JsonRejection>,
) -> Result<Json<Preferences>> {
    for_user(&claims, &user)?;
    let Json(prefs) = body?;
    prefs.validate(state.config.common.webhook_allow_private)?;
    state.store().await?.put_preferences(&user, &prefs).await?;
    Ok(Json(prefs))
}

async fn get_template(
    State(state): State<AppState>,
    _service: Service,
    Path(name): Path<String>,
) -> Result<Json<Template>> {
    if !is_valid_name(&name) {
        return Err(Error::api(
            ErrorCode::BadRequest,
            "name: must match [A-Za-z0-9_-]{1,128}",
        ));
    }
    match state.store().await?.template(&name).await? {
        Some(t) => Ok(Json(Template::clone(&t))),
        None => Err(Error::api(ErrorCode::NotFound, format!("no template {name}"))),
    }
}

async fn put_template(
    State(state): State<AppState>,
    _service: Service,
    Path(name): Path<String>,
    body: std::result::Result<Json<Template>, JsonRejection>,
) -> Result<Json<Template>> {
    if !is_valid_name(&name) {
        return Err(Error::api(
            ErrorCode::BadRequest,
            "name: must match [A-Za-z0-9_-]{1,128}",
        ));
    }
    let Json(template) = body?;
    template.validate()?;
    state.store().await?.put_template(&name, &template).await?;
    Ok(Json(template))
}

/// Query of the inbox route.
#[derive(Debug, Deserialize)]
pub struct InboxQuery {
    /// Only unread entries.
    #[serde(default)]
    pub unread: bool,
    /// At most this many (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only entries older than this one: the `next` of the previous page (or a time).
    #[serde(default)]
    pub before: Option<String>,
}

/// Answer of the inbox route.
#[derive(Debug, Serialize)]
pub struct Inbox {
    /// Entries, newest first.
    pub items: Vec<InboxItem>,
    /// Unread entries in all.
    pub unread: usize,
    /// Cursor of the next page (pass it as `before`), `null` on the last page.
    pub next: Option<String>,
}

async fn inbox(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(user): Path<String>,
    query: std::result::Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Inbox>> {
    for_user(&claims, &user)?;
    let Query(q) = query.map_err(|e| Error::api(ErrorCode::BadRequest, e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let query = tidings_shared::store::InboxQuery {
        unread_only: q.unread,
        limit,
        before: q.before,
    };
    let page = state.store().await?.inbox_page(&user, &query).await?;
    Ok(Json(Inbox {
        items: page.items,
        unread: page.unread,
        next: page.next,
    }))
}

async fn read(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path((user, id)): Path<(String, String)>,
) -> Result<Json<InboxItem>> {
    for_user(&claims, &user)?;
    if !tidings_shared::channel::is_valid_id(&id) {
        return Err(Error::api(ErrorCode::BadRequest, "id: must match [A-Za-z0-9_-]{1,128}"));
    }
    let store = state.store().await?;
    let Some(mut item) = store.inbox_item(&user, &id).await? else {
        return Err(Error::api(ErrorCode::NotFound, format!("no inbox entry {id}")));
    };
    if !item.read {
        item.read = true;
        store.put_inbox(&user, &item).await?;
        store
            .update_status(&id, |doc| match doc.channels.get_mut(&DeliveryChannel::InApp) {
                Some(c) if c.status != DeliveryStatus::Read => {
                    c.status = DeliveryStatus::Read;
                    c.updated_at = Store::now();
                    true
                }
                _ => false,
            })
            .await?;
        tracing::debug!(%id, event = NOTIFICATION_EVENT, "inbox entry read");
    }
    Ok(Json(item))
}
