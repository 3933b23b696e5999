//! The two wire formats of the WebSocket protocol and their encoders and decoders.
//!
//! JSON travels in text frames, MessagePack (maps with named fields, never positional
//! arrays) in binary frames. Decoding never panics: any bad input becomes
//! [`Error::BadFrame`] (code `bad_request`) carrying the frame's `id` when it is readable.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frame::ClientFrame;

/// WebSocket subprotocol selecting JSON text frames (the default).
pub const SUBPROTOCOL_JSON: &str = "tidings.v1.json";
/// WebSocket subprotocol selecting MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "tidings.v1.msgpack";

/// How frames of one connection are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireFormat {
    /// JSON in text frames.
    #[default]
    Json,
    /// MessagePack maps in binary frames.
    Msgpack,
}

impl WireFormat {
    /// Every format, for code that prepares one encoding per format.
    pub const ALL: [WireFormat; 2] = [WireFormat::Json, WireFormat::Msgpack];

    /// The format named by a WebSocket subprotocol.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            SUBPROTOCOL_JSON => Some(WireFormat::Json),
            SUBPROTOCOL_MSGPACK => Some(WireFormat::Msgpack),
            _ => None,
        }
    }

    /// The subprotocol name of this format.
    pub fn subprotocol(self) -> &'static str {
        match self {
            WireFormat::Json => SUBPROTOCOL_JSON,
            WireFormat::Msgpack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// Whether frames of this format travel as binary WebSocket frames.
    pub fn is_binary(self) -> bool {
        self == WireFormat::Msgpack
    }

    /// Encodes any frame. Done once per message and format, then shared by every recipient.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        match self {
            WireFormat::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| Error::Encode(e.to_string())),
            WireFormat::Msgpack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| Error::Encode(e.to_string())),
        }
    }

    /// Decodes any type from this format (used by clients and tests for server frames).
    pub fn decode<T: for<'de> Deserialize<'de>>(self, bytes: &[u8]) -> Result<T> {
        match self {
            WireFormat::Json => serde_json::from_slice(bytes).map_err(|e| json_error(bytes, &e)),
            WireFormat::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| msgpack_error(bytes, &e)),
        }
    }

    /// Decodes a client frame, refusing frames over `max_bytes` first.
    pub fn decode_client(self, bytes: &[u8], max_bytes: usize) -> Result<ClientFrame> {
        if bytes.len() > max_bytes {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        // Nesting is checked before anything else is parsed (the id probe included).
        let too_deep = || Error::BadFrame {
            id: None,
            reason: format!("nested deeper than {} levels", crate::depth::MAX_DEPTH),
        };
        match self {
            WireFormat::Json => match crate::depth::from_json(bytes) {
                Ok(frame) => Ok(frame),
                Err(crate::depth::JsonError::TooDeep) => Err(too_deep()),
                Err(crate::depth::JsonError::Parse(e)) => Err(json_error(bytes, &e)),
            },
            WireFormat::Msgpack => match crate::depth::from_msgpack(bytes) {
                Ok(frame) => Ok(frame),
                Err(rmp_serde::decode::Error::DepthLimitExceeded) => Err(too_deep()),
                Err(e) => Err(msgpack_error(bytes, &e)),
            },
        }
    }
}

/// The parts of a frame readable even when the whole frame is not.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    id: Option<u64>,
}

fn json_error(bytes: &[u8], e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let reason = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!("invalid JSON: {e}"),
        Category::Data => format!("invalid frame: {e}"),
    };
    let id = serde_json::from_slice::<Probe>(bytes).ok().and_then(|p| p.id);
    Error::BadFrame { id, reason }
}

fn msgpack_error(bytes: &[u8], e: &rmp_serde::decode::Error) -> Error {
    let id = rmp_serde::from_slice::<Probe>(bytes).ok().and_then(|p| p.id);
    Error::BadFrame {
        id,
        reason: format!("invalid MessagePack frame: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Channel;
    use crate::error::ErrorCode;
    use crate::frame::*;
    use serde_json::json;

    fn client_frames() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Subscribe {
                id: Some(1),
                channel: "project:p1".into(),
                since: Some(123),
                epoch: Some("e1".into()),
            },
            ClientFrame::Subscribe {
                id: None,
                channel: "broadcast".into(),
                since: None,
                epoch: None,
            },
            ClientFrame::Unsubscribe {
                id: Some(2),
                channel: "project:p1".into(),
            },
            ClientFrame::Publish {
                id: Some(3),
                channel: "project:p1".into(),
                event: "chat_message".into(),
                data: json!({"text": "hi", "n": [1, 2.5, null, true], "nested": {"k": "v"}}),
                durable: true,
                msg_id: Some("m-1".into()),
            },
            ClientFrame::Publish {
                id: None,
                channel: "user:u1".into(),
                event: "typing".into(),
                data: json!(null),
                durable: false,
                msg_id: None,
            },
            ClientFrame::Ack {
                id: None,
                channel: "user:u1".into(),
                seq: 456,
            },
            ClientFrame::Ping { id: Some(4) },
            ClientFrame::Ping { id: None },
            ClientFrame::Auth {
                id: Some(6),
                token: "a.b.c".into(),
            },
            ClientFrame::Presence {
                id: Some(5),
                channel: "project:p1".into(),
            },
        ]
    }

    fn server_frames() -> Vec<ServerFrame> {
        vec![
            ServerFrame::Welcome(Welcome {
                session: "s1".into(),
                node: "n1".into(),
                user: "u1".into(),
                heartbeat_ms: 25000,
            }),
            ServerFrame::Message(MessageFrame {
                channel: Channel::Project("p1".into()),
                event: "agent_run_progress".into(),
                data: json!({"pct": 42, "step": "build"}),
                id: "m1".into(),
                ts: "2026-11-22T01:00:00.123Z".into(),
                seq: Some(124),
                prev: Some(120),
            }),
            ServerFrame::Message(MessageFrame {
                channel: Channel::Broadcast,
                event: "typing".into(),
                data: json!("x"),
                id: "m2".into(),
                ts: "2026-11-22T01:00:00Z".into(),
                seq: None,
                prev: None,
            }),
            ServerFrame::Reply(Reply {
                channel: Some(Channel::User("u1".into())),
                epoch: Some("e".into()),
                recovered: Some(true),
                missed: Some(3),
                ..Reply::ok(Some(1))
            }),
            ServerFrame::Reply(Reply {
                seq: Some(99),
                ..Reply::ok(Some(3))
            }),
            ServerFrame::Reply(Reply {
                exp: Some(1_900_000_000),
                ..Reply::ok(Some(6))
            }),
            ServerFrame::Reply(Reply {
                users: Some(vec!["u1".into(), "u2".into()]),
                ..Reply::ok(Some(5))
            }),
            ServerFrame::Reply(Reply::err(Some(7), ErrorCode::Forbidden, "no")),
            ServerFrame::Pong { id: Some(4) },
            ServerFrame::Error {
                error: ErrorBody::new(ErrorCode::BadRequest, "bad"),
            },
            ServerFrame::Reconnect {
                reason: "shutdown".into(),
                retry_ms: 1500,
            },
        ]
    }

    #[test]
    fn every_client_frame_round_trips_in_both_formats() {
        for fmt in WireFormat::ALL {
            for f in client_frames() {
                let bytes = fmt.encode(&f).unwrap();
                let back = fmt.decode_client(&bytes, 65536).unwrap();
                assert_eq!(back, f, "{fmt:?}");
            }
        }
    }

    #[test]
    fn every_server_frame_round_trips_in_both_formats() {
        for fmt in WireFormat::ALL {
            for f in server_frames() {
                let bytes = fmt.encode(&f).unwrap();
                let back: ServerFrame = fmt.decode(&bytes).unwrap();
                assert_eq!(back, f, "{fmt:?}");
            }
        }
    }

    #[test]
    fn json_matches_the_contract_spelling() {
        let v: serde_json::Value =
            serde_json::from_slice(&WireFormat::Json.encode(&server_frames()[0]).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type":"welcome","session":"s1","node":"n1","user":"u1","heartbeat_ms":25000})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&WireFormat::Json.encode(&server_frames()[1]).unwrap()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 124);
        assert_eq!(v["prev"], 120);
        let v: serde_json::Value =
            serde_json::from_slice(&WireFormat::Json.encode(&server_frames()[2]).unwrap()).unwrap();
        assert!(v.get("seq").is_none() && v.get("prev").is_none());
        let v: serde_json::Value =
            serde_json::from_slice(&WireFormat::Json.encode(&server_frames()[7]).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type":"reply","id":7,"ok":false,"error":{"code":"forbidden","message":"no"}})
        );
        let f = WireFormat::Json
            .decode_client(
                br#"{"type":"subscribe","id":1,"channel":"project:p1","since":123,"epoch":"x"}"#,
                1024,
            )
            .unwrap();
        assert_eq!(f, client_frames()[0].clone().with_epoch("x"));
    }

    #[test]
    fn msgpack_uses_named_maps() {
        let bytes = WireFormat::Msgpack.encode(&ServerFrame::Pong { id: Some(4) }).unwrap();
        // fixmap with 2 entries: "type" => "pong", "id" => 4
        assert_eq!(bytes[0], 0x82);
        let as_json: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(as_json, json!({"type":"pong","id":4}));
    }

    fn bad(fmt: WireFormat, bytes: &[u8]) -> (ErrorCode, Option<u64>, String) {
        match fmt.decode_client(bytes, 1024) {
            Err(e @ Error::BadFrame { .. }) => {
                let code = e.code();
                let Error::BadFrame { id, reason } = e else {
                    unreachable!()
                };
                (code, id, reason)
            }
            other => panic!("expected BadFrame, got {other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_typed_errors_with_the_id_when_readable() {
        let (code, id, reason) = bad(WireFormat::Json, br#"{"type":"launch","id":9}"#);
        assert_eq!((code, id), (ErrorCode::BadRequest, Some(9)));
        assert!(reason.contains("unknown variant"), "{reason}");

        let (code, id, reason) = bad(WireFormat::Json, br#"{"type":"subscribe","id":10}"#);
        assert_eq!((code, id), (ErrorCode::BadRequest, Some(10)));
        assert!(reason.contains("missing field `channel`"), "{reason}");

        let (code, id, reason) = bad(WireFormat::Json, br#"{"type":"subscribe","#);
        assert_eq!((code, id), (ErrorCode::BadRequest, None));
        assert!(reason.starts_with("invalid JSON"), "{reason}");

        for junk in [
            &b""[..],
            b"null",
            b"[]",
            b"42",
            b"\xff\xfe",
            br#"{"id":1}"#,
            br#"{"type":7}"#,
            br#"{"type":"ack","channel":"user:u","seq":-1}"#,
        ] {
            let (code, _, _) = bad(WireFormat::Json, junk);
            assert_eq!(code, ErrorCode::BadRequest);
            let (code, _, _) = bad(WireFormat::Msgpack, junk);
            assert_eq!(code, ErrorCode::BadRequest);
        }

        let unknown = rmp_serde::to_vec_named(&json!({"type":"launch","id":11})).unwrap();
        assert_eq!(bad(WireFormat::Msgpack, &unknown).1, Some(11));
        let missing = rmp_serde::to_vec_named(&json!({"type":"ack","id":12,"channel":"user:u"})).unwrap();
        let (code, id, reason) = bad(WireFormat::Msgpack, &missing);
        assert_eq!((code, id), (ErrorCode::BadRequest, Some(12)));
        assert!(reason.contains("seq"), "{reason}");
    }

    #[test]
    fn oversized_frames_are_too_large() {
        let big = vec![b' '; 2048];
        let err = WireFormat::Json.decode_client(&big, 1024).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn subprotocols() {
        assert_eq!(
            WireFormat::from_subprotocol("tidings.v1.msgpack"),
            Some(WireFormat::Msgpack)
        );
        assert_eq!(WireFormat::from_subprotocol(" tidings.v1.json"), Some(WireFormat::Json));
        assert_eq!(WireFormat::from_subprotocol("mqtt"), None);
        assert!(WireFormat::Msgpack.is_binary());
    }

    impl ClientFrame {
        fn with_epoch(self, e: &str) -> Self {
            match self {
                ClientFrame::Subscribe { id, channel, since, .. } => ClientFrame::Subscribe {
                    id,
                    channel,
                    since,
                    epoch: Some(e.into()),
                },
                other => other,
            }
        }
    }
}
