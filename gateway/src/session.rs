//! What WebSocket and SSE sessions share: admission (draining, connection limit), the
//! registration with the hub that unregisters itself when the session goes away, joining a
//! channel from a position (subscribe holding → read the missed messages back → release what
//! was held), and how long a token keeps a session open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tidings_shared::auth::{Claims, now_unix};
use tidings_shared::{Channel, ErrorCode};

use crate::AppState;
use crate::conn::{ConnHandle, ConnId};
use crate::error::{Error, Result};
use crate::history::Replay;
use crate::hub::UserLimit;
use crate::message::Encoded;
use crate::position::StreamPosition;

/// Longest a token may keep a session open without a refresh (one year).
pub const MAX_SESSION_SECS: u64 = 365 * 86_400;

/// Whether this node takes a new session: not while draining, nor at its connection limit
/// (both answered 503, so the client tries another node).
pub fn admit(state: &AppState) -> Result<()> {
    if state.health.is_draining() {
        state.metrics.refused_connections.with_label_values(&["draining"]).inc();
        return Err(Error::api(
            ErrorCode::Unavailable,
            "node is draining; reconnect to another",
        ));
    }
    if state.hub.connection_count() >= state.config.max_connections {
        state
            .metrics
            .refused_connections
            .with_label_values(&["connection_limit"])
            .inc();
        return Err(Error::api(ErrorCode::Unavailable, "node is at its connection limit"));
    }
    Ok(())
}

/// When a session with a token expiring at `exp` ends: `exp` plus the same clock leeway the
/// verification allowed, so a token accepted within the leeway is not cut off at once.
/// Capped at [`MAX_SESSION_SECS`]: an issuer may put any `exp` in a token.
pub fn token_deadline(exp: u64, leeway: u64) -> tokio::time::Instant {
    let left = exp
        .saturating_add(leeway)
        .saturating_sub(now_unix())
        .min(MAX_SESSION_SECS);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// A session's place in the hub: registered on creation, and unregistered, with every
/// subscription it still has, when dropped (the WebSocket task ends, the SSE response body
/// is dropped).
pub struct Registration {
    /// The node's state.
    pub state: AppState,
    /// The hub's id of the connection.
    pub id: ConnId,
    /// The fan-out's handle on the connection.
    pub handle: ConnHandle,
    /// Subscribed channels, with the last durable `seq` written on each (0: none yet): a
    /// durable message at or below it is never written again, whichever way it came
    /// (replay, live, gap repair, a message queued before a re-subscription).
    pub channels: HashMap<Channel, u64>,
}

impl Registration {
    /// Registers the connection `handle`, running on `claims`, with the hub, unless its user
    /// is at the per-user connection limit (`TIDINGS_MAX_CONNECTIONS_PER_USER`; service
    /// tokens, the operator's own backends, are not limited: `rate_limited`), or a revocation
    /// landed since the token was checked (the broadcast's scan of this node's connections may
    /// have missed this one: `unauthorized`).
    pub fn new(state: AppState, handle: ConnHandle, claims: &Claims) -> Result<Self> {
        handle.signal.set_issued_at(claims.iat);
        let max = if claims.is_service() {
            usize::MAX
        } else {
            state.config.max_connections_per_user
        };
        let id = state.hub.register(handle.clone(), max).map_err(|UserLimit(max)| {
            state
                .metrics
                .refused_connections
                .with_label_values(&["user_limit"])
                .inc();
            Error::api(
                ErrorCode::RateLimited,
                format!("at most {max} connections per user on one node"),
            )
        })?;
        let registration = Registration {
            state,
            id,
            handle,
            channels: HashMap::new(),
        };
        if registration.state.revocations.known_revoked(claims) {
            return Err(Error::api(ErrorCode::Unauthorized, "unauthorized: revoked"));
        }
        Ok(registration)
    }

    /// Leaves `channel`, if subscribed.
    pub fn unsubscribe(&mut self, channel: &Channel) {
        if self.channels.remove(channel).is_some() {
            self.state.hub.unsubscribe(self.id, channel);
        }
    }

    /// Subscribes to `channel`; with `hold`, its live messages are held (queued aside) until
    /// [`Registration::catch_up`] releases them. Returns the stream position from which the
    /// subscription delivers every durable message live.
    pub async fn join(&self, channel: &Channel, hold: bool) -> Result<u64> {
        self.state
            .hub
            .subscribe(self.id, channel, self.handle.clone(), hold)
            .await
            .map_err(|_| Error::api(ErrorCode::Unavailable, "NATS did not confirm the subscription; retry"))
    }

    /// The rest of a join from `since`: how far behind the client is, and a reader of the
    /// missed messages, while the live ones stay held; write what the reader hands out, then
    /// [`Registration::release`] the held ones. `live_from`: where live delivery starts (a
    /// client already past it is answered without reading anything back). On failure the
    /// channel is left, so nothing is half-done and the client can retry the whole join.
    pub async fn catch_up(
        &mut self,
        channel: &Channel,
        since: &StreamPosition,
        live_from: Option<u64>,
    ) -> Result<Replay> {
        let cap = self.state.config.replay_max as usize;
        match crate::history::replay(&self.state, channel, since, cap, live_from).await {
            Ok(replay) => Ok(replay),
            Err(e) => {
                self.unsubscribe(channel);
                Err(e)
            }
        }
    }

    /// Ends the hold of a caught-up channel: the live messages held meanwhile, in order (a
    /// session still drops what it already wrote).
    pub fn release(&self, channel: &Channel) -> Vec<Arc<Encoded>> {
        self.state.hub.release(self.id, channel)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.state
            .hub
            .unregister(self.id, self.channels.drain().map(|(c, _)| c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_exp_is_capped_at_a_year_instead_of_overflowing() {
        let before = tokio::time::Instant::now();
        let deadline = token_deadline(u64::MAX, 30);
        let cap = Duration::from_secs(MAX_SESSION_SECS);
        assert!(deadline >= before + cap);
        assert!(deadline <= tokio::time::Instant::now() + cap);
    }

    #[test]
    fn the_leeway_extends_the_deadline_and_the_past_ends_now() {
        let now = now_unix();
        let before = tokio::time::Instant::now();
        assert!(token_deadline(now + 60, 30) >= before + Duration::from_secs(89));
        assert!(token_deadline(0, 30) <= tokio::time::Instant::now());
    }
}
