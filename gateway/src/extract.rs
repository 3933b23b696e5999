//! Axum extractors for authenticated HTTP callers.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tidings_shared::auth::Claims;
use tidings_shared::{AuthReason, ErrorCode};

use crate::AppState;
use crate::error::Error;

/// The verified claims of the `Authorization: Bearer <JWT>` header.
pub struct Caller(pub Claims);

/// A caller with `role: "service"`.
pub struct Service(pub Claims);

/// The token of a request: `Authorization: Bearer …`, else `?token=` (for browsers' EventSource
/// and WebSocket, which cannot set headers).
pub fn bearer_token(parts: &Parts) -> Option<String> {
    bearer(&parts.headers, &parts.uri)
}

/// [`bearer_token`] of a request's headers and URI.
pub fn bearer(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned());
    header.or_else(|| {
        uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "token")
                .map(|(_, v)| v.to_owned())
        })
    })
}

impl AppState {
    /// Verifies a token and checks it was not revoked, counting failures by reason.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Claims, AuthReason> {
        let claims = self.verify(token)?;
        if let Err(reason) = crate::control::check_revocation(self, &claims).await {
            self.metrics.auth_failures.with_label_values(&[reason.as_str()]).inc();
            return Err(reason);
        }
        Ok(claims)
    }

    /// Verifies a token's signature and times (not revocation: see
    /// [`AppState::authenticate`]), counting failures by reason.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthReason> {
        let result = match token {
            None => Err(AuthReason::Missing),
            Some(t) => self.verifier.verify(t),
        };
        if let Err(reason) = result {
            self.metrics.auth_failures.with_label_values(&[reason.as_str()]).inc();
        }
        result
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(claims) = parts.extensions.get::<Claims>() {
            // Verified (and checked against revocations) already, by the HTTP rate limit.
            return Ok(Caller(claims.clone()));
        }
        let token = bearer_token(parts);
        let claims = state
            .authenticate(token.as_deref())
            .await
            .map_err(|reason| Error::api(ErrorCode::Unauthorized, format!("unauthorized: {reason}")))?;
        Ok(Caller(claims))
    }
}

impl FromRequestParts<AppState> for Service {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Caller(claims) = Caller::from_request_parts(parts, state).await?;
        if claims.is_service() {
            Ok(Service(claims))
        } else {
            Err(Error::api(ErrorCode::Forbidden, "this route is for service tokens"))
        }
    }
}
