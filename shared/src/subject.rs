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
