//! The crate's one error type and the protocol's error codes.
//!
//! Every failure a client, publisher or operator can cause maps to one [`ErrorCode`] of the
//! contract (§4), so that the gateway can answer with the right `reply`, close code or HTTP
//! status without string matching.

use serde::{Deserialize, Serialize};

/// Error codes a client sees in `reply.error.code` and HTTP error bodies (contract §4, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token, or a token that is forged, expired or malformed.
    Unauthorized,
    /// The token is valid but may not do this.
    Forbidden,
    /// The request is malformed (bad JSON, unknown frame type, missing field, bad value).
    BadRequest,
    /// A channel name outside `project:<id>`, `user:<id>`, `broadcast`.
    BadChannel,
    /// Too many commands in too little time.
    RateLimited,
    /// A frame or payload over the configured size limit.
    TooLarge,
    /// The thing asked for does not exist.
    NotFound,
    /// NATS or JetStream cannot be reached right now; try again.
    Unavailable,
    /// A bug or an unexpected failure on our side.
    Internal,
}

impl ErrorCode {
    /// The wire spelling, as in `"bad_channel"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status of contract §6 for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::BadRequest | ErrorCode::BadChannel => 400,
            ErrorCode::RateLimited => 429,
            ErrorCode::TooLarge => 413,
            ErrorCode::NotFound => 404,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused. Each reason is distinct so that logs, metrics and tests can tell
/// a forged token from an expired one; clients only ever see `unauthorized`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthReason {
    /// No token was given at all.
    Missing,
    /// Not three base64url segments, or a header/claims that do not parse.
    Malformed,
    /// The header says `alg: none`: an unsigned token.
    AlgNone,
    /// A real algorithm, but not one this node is configured to accept.
    AlgorithmNotAllowed,
    /// The signature does not match the configured key.
    BadSignature,
    /// `exp` is in the past (beyond the allowed leeway).
    Expired,
    /// `nbf` is in the future (beyond the allowed leeway).
    NotYetValid,
    /// The token has no `exp` claim.
    MissingExp,
    /// The token has no (or an empty) `sub` claim.
    MissingSub,
    /// `sub` cannot name a user channel (it must match `[A-Za-z0-9_-]{1,128}`).
    BadSub,
    /// No verification key is configured on this node.
    NoKeyConfigured,
    /// The user's tokens issued before an instant were revoked, this one among them.
    Revoked,
    /// `exp` lies further ahead than the longest token lifetime accepted
    /// (`TIDINGS_TOKEN_MAX_LIFETIME`): a revocation would not outlive it.
    LifetimeTooLong,
}

impl AuthReason {
    /// A stable label, used in logs and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReason::Missing => "missing",
            AuthReason::Malformed => "malformed",
            AuthReason::AlgNone => "alg_none",
            AuthReason::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthReason::BadSignature => "bad_signature",
            AuthReason::Expired => "expired",
            AuthReason::NotYetValid => "not_yet_valid",
            AuthReason::MissingExp => "missing_exp",
            AuthReason::MissingSub => "missing_sub",
            AuthReason::BadSub => "bad_sub",
            AuthReason::NoKeyConfigured => "no_key_configured",
            AuthReason::Revoked => "revoked",
            AuthReason::LifetimeTooLong => "lifetime_too_long",
        }
    }
}

impl std::fmt::Display for AuthReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the shared crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A channel name that is not one of the three allowed shapes.
    #[error("bad channel {name:?}: {reason}")]
    BadChannel {
        /// The rejected input, truncated for logging.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A client frame that does not decode. `id` is the command id when it could still be
    /// read, so that the answer can be a `reply` rather than a bare `error`.
    #[error("bad frame: {reason}")]
    BadFrame {
        /// The frame's `id`, if the frame was readable enough to have one.
        id: Option<u64>,
        /// What is wrong with it.
        reason: String,
    },
    /// A publisher body (contract §3) that is not delivered.
    #[error("bad publisher body: {0}")]
    BadBody(String),
    /// A request, preferences or push subscription with a field that is not acceptable
    /// (`<field>: <why>`).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A template that does not parse, lacks a part, or does not render.
    #[error("template: {0}")]
    Template(String),
    /// A stored record (preferences, status, inbox entry, template, batch) that does not
    /// decode.
    #[error("unreadable stored record: {0}")]
    Stored(String),
    /// A frame or body over its size limit.
    #[error("too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Size of what was received.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Input nested deeper than the limit (arrays and objects).
    #[error("nested deeper than {limit} levels")]
    TooDeep {
        /// The limit, [`crate::depth::MAX_DEPTH`].
        limit: usize,
    },
    /// A token was refused.
    #[error("unauthorized: {0}")]
    Auth(AuthReason),
    /// A configuration value that cannot be used (bad key file, bad duration...).
    #[error("configuration: {0}")]
    Config(String),
    /// A NATS or JetStream operation failed; the client's error is kept as the source.
    #[error("nats: {0}")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// NATS did not answer in time (`what` timed out).
    #[error("nats: {0} timed out")]
    Timeout(&'static str),
    /// A record changed or vanished under a read-modify-write, past the retries; the
    /// operation as a whole can be retried.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Telemetry could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// A value of ours could not be encoded (a bug: our types always encode).
    #[error("encode: {0}")]
    Encode(String),
}

impl Error {
    /// The protocol code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadChannel { .. } => ErrorCode::BadChannel,
            Error::BadFrame { .. }
            | Error::BadBody(_)
            | Error::Invalid(_)
            | Error::Template(_)
            | Error::TooDeep { .. } => ErrorCode::BadRequest,
            // As before the variant was split out of `BadBody`: a 400, not a 500.
            Error::Stored(_) => ErrorCode::BadRequest,
            Error::TooLarge { .. } => ErrorCode::TooLarge,
            Error::Auth(_) => ErrorCode::Unauthorized,
            Error::Nats(_) | Error::Timeout(_) | Error::Conflict(_) => ErrorCode::Unavailable,
            Error::Config(_) | Error::Telemetry(_) | Error::Encode(_) => ErrorCode::Internal,
        }
    }

    /// Wraps any NATS client error, kept as the source; they all mean "try again later" to
    /// a caller.
    pub fn nats(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Nats(err.into())
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
