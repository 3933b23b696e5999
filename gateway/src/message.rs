//! Turning one NATS message into one channel message, parsed once and encoded once per wire
//! format, whatever the number of recipients.
//!
//! Durable messages arrive as `TIDINGS_EVENTS` re-publishes them (`tidings.stored.*`), with
//! the stream sequence in `Nats-Sequence`, the channel's previous sequence in
//! `Nats-Last-Sequence` and the storage time in `Nats-Time-Stamp`; ephemeral ones arrive as
//! published on `tidings.live.*`.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_nats::HeaderMap;
use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use tidings_shared::body::PublishBody;
use tidings_shared::codec::WireFormat;
use tidings_shared::frame::{MessageFrame, ServerFrame};
use tidings_shared::subject::CONTENT_TYPE_HEADER;
use tidings_shared::{Channel, Error as SharedError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::position::Link;

/// How large a message may be: its publisher body, and its frame in either wire format.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `TIDINGS_MAX_PAYLOAD_BYTES`.
    pub payload: usize,
    /// `TIDINGS_MAX_OUTBOUND_FRAME_BYTES`: what every connection's write buffer can take.
    pub frame: usize,
}

impl Limits {
    /// The limits a configuration sets.
    pub fn of(config: &tidings_shared::config::GatewayConfig) -> Self {
        Limits {
            payload: config.max_payload_bytes,
            frame: config.outbound_frame_limit(),
        }
    }
}

/// A channel message ready to be written to any number of clients.
pub struct Encoded {
    /// The decoded message (kept for lazy MessagePack encoding and for SSE cursors).
    pub frame: MessageFrame,
    json: Utf8Bytes,
    msgpack: OnceLock<Bytes>,
    /// When NATS stored the message (durable) or the gateway received it (live).
    pub stored_at: SystemTime,
    /// The fan-out span's context when spans are exported and the publisher sent one:
    /// each frame write is its child.
    pub trace: Option<tidings_shared::telemetry::TraceParent>,
}

impl Encoded {
    /// Encodes `frame` as JSON now; MessagePack on first use, once, unless the frame could be
    /// over `max_frame` in it. A frame larger than `max_frame` in either format is refused
    /// here, once, instead of breaking every connection it would be written to (a small
    /// MessagePack body can grow several times as JSON: `nil` is 1 byte, `null` 4 and a comma;
    /// a float is 9 bytes in MessagePack, `0.5` is 3 in JSON).
    pub fn new(frame: MessageFrame, stored_at: SystemTime, max_frame: usize) -> Result<Arc<Self>, Rejected> {
        let message = ServerFrame::Message(frame.clone());
        let json = WireFormat::Json.encode(&message).map_err(Rejected::invalid)?;
        let json = Utf8Bytes::try_from(json).map_err(|e| Rejected::invalid(SharedError::Encode(e.to_string())))?;
        check_frame(json.len(), max_frame, "JSON")?;
        let msgpack = OnceLock::new();
        // MessagePack is at most 3 times the JSON's size (the float case above).
        if json.len().saturating_mul(MSGPACK_GROWTH) > max_frame {
            let packed = WireFormat::Msgpack.encode(&message).map_err(Rejected::invalid)?;
            check_frame(packed.len(), max_frame, "MessagePack")?;
            let _ = msgpack.set(packed);
        }
        Ok(Arc::new(Encoded {
            frame,
            json,
            msgpack,
            stored_at,
            trace: None,
        }))
    }

    /// The WebSocket message for a client speaking `format`: the same shared bytes for all.
    pub fn ws_message(&self, format: WireFormat) -> Message {
        match format {
            WireFormat::Json => Message::Text(self.json.clone()),
            WireFormat::Msgpack => Message::Binary(
                self.msgpack
                    .get_or_init(|| {
                        WireFormat::Msgpack
                            .encode(&ServerFrame::Message(self.frame.clone()))
                            .unwrap_or_else(|e| {
                                tracing::error!(error = %e, "MessagePack encoding failed");
                                Bytes::new()
                            })
                    })
                    .clone(),
            ),
        }
    }

    /// The JSON `message` frame, as SSE `data:` carries it.
    pub fn json(&self) -> &str {
        self.json.as_str()
    }
}

/// How many times larger than its JSON a frame can be as MessagePack.
const MSGPACK_GROWTH: usize = 3;

fn check_frame(size: usize, max_frame: usize, format: &str) -> Result<(), Rejected> {
    if size > max_frame {
        return Err(Rejected {
            reason: "frame_too_large",
            detail: format!("the {format} frame is {size} bytes, over TIDINGS_MAX_OUTBOUND_FRAME_BYTES ({max_frame})"),
        });
    }
    Ok(())
}

impl Rejected {
    fn invalid(e: SharedError) -> Self {
        Rejected {
            reason: "invalid",
            detail: e.to_string(),
        }
    }
}

/// Why a publisher's message was not delivered (the label of
/// `tidings_gateway_rejected_messages_total`).
#[derive(Debug)]
pub struct Rejected {
    /// `invalid`, `too_large` or `frame_too_large` (see [`crate::metrics::REJECT_REASONS`]).
    pub reason: &'static str,
    /// Details for the log line.
    pub detail: String,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    header(headers, name).and_then(|v| v.trim().parse().ok())
}

/// RFC 3339 UTC with milliseconds, as in `"2026-11-22T01:00:00.123Z"`.
pub fn format_ts(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let dt = dt
        .replace_nanosecond(dt.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(dt);
    dt.format(&Rfc3339).unwrap_or_default()
}

/// The link a re-published durable message carries: its sequence and the sequence of the
/// previous message of its subject (`Nats-Last-Sequence`).
pub fn stored_position(msg: &async_nats::Message) -> Option<Link> {
    let headers = msg.headers.as_ref();
    let seq = header_u64(headers, "Nats-Sequence")?;
    Some(Link {
        seq,
        prev: header_u64(headers, "Nats-Last-Sequence").unwrap_or(0),
    })
}

/// The id of a durable message whose publisher gave none: derived from its sequence, so that
/// every gateway, and every replay, shows the same id.
pub fn stored_id(seq: u64) -> String {
    format!("seq-{seq}")
}

/// Parses and encodes a NATS message for `channel`. `durable` is the link to show for
/// a stored message (from [`stored_position`], `prev` possibly corrected by the caller), `None`
/// for an ephemeral one.
pub fn from_nats(
    msg: &async_nats::Message,
    channel: &Channel,
    durable: Option<Link>,
    limits: Limits,
) -> Result<Arc<Encoded>, Rejected> {
    let headers = msg.headers.as_ref();
    let stored_at = match durable {
        Some(_) => header(headers, "Nats-Time-Stamp")
            .and_then(|t| OffsetDateTime::parse(t.trim(), &Rfc3339).ok())
            .map(SystemTime::from)
            .unwrap_or_else(SystemTime::now),
        None => SystemTime::now(),
    };
    encode_stored(&msg.payload, headers, channel, durable, stored_at, limits)
}

/// The one way from a publisher's payload to a channel message, for the live feed and for
/// history alike: the body decoded (`too_large` / `invalid` if it cannot be), the id
/// defaulted, the frame encoded. `durable` and `stored_at` as for [`from_nats`].
pub fn encode_stored(
    payload: &[u8],
    headers: Option<&HeaderMap>,
    channel: &Channel,
    durable: Option<Link>,
    stored_at: SystemTime,
    limits: Limits,
) -> Result<Arc<Encoded>, Rejected> {
    let body =
        PublishBody::decode(payload, header(headers, CONTENT_TYPE_HEADER), limits.payload).map_err(|e| Rejected {
            reason: if matches!(e, SharedError::TooLarge { .. }) {
                "too_large"
            } else {
                "invalid"
            },
            detail: e.to_string(),
        })?;
    let id = match (body.id, durable) {
        (Some(id), _) => id,
        (None, Some(link)) => stored_id(link.seq),
        (None, None) => nuid::next().to_string(),
    };
    let frame = MessageFrame {
        channel: channel.clone(),
        event: body.event,
        data: body.data,
        id,
        ts: format_ts(stored_at),
        seq: durable.map(|l| l.seq),
        prev: durable.map(|l| l.prev),
    };
    Encoded::new(frame, stored_at, limits.frame)
}
