//! NATS names of contract §3 and the internal ones derived from them.
//!
//! Kept in one place so that a grep for a subject finds every user of it.

/// JetStream stream that stores every durable event (`tidings.events.>`).
pub const EVENTS_STREAM: &str = "TIDINGS_EVENTS";
/// JetStream work-queue stream of notification requests (`tidings.notify`).
pub const NOTIFY_STREAM: &str = "TIDINGS_NOTIFY";

/// Prefix of the durable subjects other services publish to.
pub const EVENTS_PREFIX: &str = "tidings.events";
/// Prefix of the ephemeral (no history) subjects.
pub const LIVE_PREFIX: &str = "tidings.live";
/// Subject of notification requests.
pub const NOTIFY_SUBJECT: &str = "tidings.notify";

/// Internal: `TIDINGS_EVENTS` re-publishes every stored message under this prefix with its
/// stream sequence in headers, so a gateway needs one core subscription per channel to see
/// durable messages exactly as stored (with `seq` and the per-channel previous sequence).
pub const STORED_PREFIX: &str = "tidings.stored";

/// Header carrying the publisher body's encoding; `application/msgpack` selects MessagePack.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// Content type of MessagePack publisher bodies.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// The `Nats-Msg-Id` of a message stored on `channel` with the publisher's own `id`.
/// JetStream's duplicate window is stream-wide and keyed by this header alone, so a bare id
/// would let a message on one channel suppress another channel's message with the same id:
/// it is namespaced by who publishes (`origin`: `client.<user>`, `github`, `inapp`) and by
/// the channel.
pub fn stored_msg_id(origin: &str, channel: &crate::Channel, id: &str) -> String {
    format!("{origin}/{channel}/{id}")
}
