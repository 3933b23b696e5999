//! WebSocket frames of contract §4, as serde types.
//!
//! The same types serve both wire formats (JSON text frames and MessagePack maps with the
//! same field names); see [`crate::codec`] for the encoding. Client frames keep `channel` as
//! a plain string so that a bad name is answered with `bad_channel` (by the handler, via
//! [`crate::Channel::parse`]) rather than a generic decode error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::channel::Channel;
use crate::error::ErrorCode;

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Start receiving a channel, optionally recovering what was missed after `since`.
    Subscribe {
        /// Command id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name, validated by the handler.
        channel: String,
        /// Last durable `seq` the client holds on this channel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The `epoch` the client got together with `since`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// Command id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
    },
    /// Publish from a client (needs the `publish` claim).
    Publish {
        /// Command id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
        /// Event name (`^[A-Za-z0-9_.-]{1,64}$`).
        event: String,
        /// Any JSON payload.
        #[serde(default)]
        data: Value,
        /// Store in `TIDINGS_EVENTS` (replayable) rather than the live subject.
        #[serde(default)]
        durable: bool,
        /// Idempotency key for durable publishes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    },
    /// Delivery confirmation of a received durable message.
    Ack {
        /// Command id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel the message came on.
        channel: String,
        /// The message's `seq`.
        seq: u64,
    },
    /// Application-level ping, answered with `pong`.
    Ping {
        /// Command id, echoed in the pong.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// First-frame authentication, or a token refresh before `exp`.
    Auth {
        /// Command id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The JWT.
        token: String,
    },
    /// Ask who is present in a channel, cluster-wide.
    Presence {
        /// Command id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Channel name.
        channel: String,
    },
}

impl ClientFrame {
    /// The command id, if the client set one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Ack { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Auth { id, .. }
            | ClientFrame::Presence { id, .. } => *id,
        }
    }
}

/// `{"code","message"}` inside replies, `error` frames and HTTP error bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of the contract's codes.
    pub code: ErrorCode,
    /// Human-readable explanation, safe to show.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

impl From<&crate::Error> for ErrorBody {
    fn from(e: &crate::Error) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

/// First frame after a successful connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// This connection's session id (unique across the cluster).
    pub session: String,
    /// The gateway node serving it.
    pub node: String,
    /// The token's `sub`.
    pub user: String,
    /// Interval of the server's WebSocket pings.
    pub heartbeat_ms: u64,
}

/// A message delivered on a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageFrame {
    /// Channel it was published on.
    pub channel: Channel,
    /// Event name.
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
    /// Message id (the publisher's, or generated).
    pub id: String,
    /// Time the message was stored (durable) or received (live), RFC 3339 UTC.
    pub ts: String,
    /// Stream sequence; durable messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Sequence of the previous durable message of this channel (0 if none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<u64>,
}

/// Answer to a client command; only the fields relevant to that command are set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The command's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Whether the command succeeded.
    pub ok: bool,
    /// Why it failed (`ok:false` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Subscribe: the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Subscribe: the stream's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Subscribe: whether the client's history is now complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Subscribe: how many missed messages follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// Durable publish: the stored sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Auth refresh: the new token's expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Presence: users present in the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
}

impl Reply {
    /// A bare `ok:true` reply.
    pub fn ok(id: Option<u64>) -> Self {
        Reply {
            id,
            ok: true,
            ..Reply::default()
        }
    }

    /// An `ok:false` reply with an error.
    pub fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply {
            id,
            ok: false,
            error: Some(ErrorBody::new(code, message)),
            ..Reply::default()
        }
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Sent once after authentication.
    Welcome(Welcome),
    /// A channel message.
    Message(MessageFrame),
    /// Answer to a command.
    Reply(Reply),
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A problem with a frame that had no usable id.
    Error {
        /// What went wrong.
        error: ErrorBody,
    },
    /// The server ended a subscription (an operator's `POST
    /// /api/v1/channels/{channel}/unsubscribe`): no more messages of `channel` come.
    Unsubscribed {
        /// The channel left.
        channel: Channel,
        /// Why, e.g. `server`.
        reason: String,
    },
    /// The node is going away: reconnect (elsewhere) after about `retry_ms`.
    Reconnect {
        /// Why, e.g. `shutdown`.
        reason: String,
        /// Suggested delay before reconnecting, spread to avoid a thundering herd.
        retry_ms: u64,
    },
}
