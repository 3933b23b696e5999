//! Publisher bodies (`tidings.events.*` / `tidings.live.*`), [`PublishBody::decode`].

use tidings_shared::Error;
use tidings_shared::body::{MAX_MESSAGE_ID_LEN, PublishBody, is_valid_event};
use tidings_shared::depth::{MAX_DEPTH, value_depth};

/// `TIDINGS_MAX_PAYLOAD_BYTES`' default.
pub const MAX_PAYLOAD_BYTES: usize = 65_536;

/// Decodes `data` both as a JSON body (no `Content-Type`) and as a MessagePack one; a body
/// that decodes is valid and survives both encodings unchanged.
pub fn publish_body(data: &[u8]) {
    for content_type in [
        None,
        Some("application/json"),
        Some("application/msgpack; charset=binary"),
    ] {
        let body = match PublishBody::decode(data, content_type, MAX_PAYLOAD_BYTES) {
            Ok(body) => body,
            Err(Error::TooLarge { .. }) => {
                assert!(data.len() > MAX_PAYLOAD_BYTES);
                return;
            }
            Err(Error::BadBody(_) | Error::TooDeep { .. }) => continue,
            Err(other) => panic!("decode answered {other:?}"),
        };
        assert!(is_valid_event(&body.event), "event {:?}", body.event);
        if let Some(id) = &body.id {
            assert!(!id.is_empty() && id.len() <= MAX_MESSAGE_ID_LEN && !id.chars().any(char::is_control));
        }
        // The body is level 1, its `data` starts at level 2.
        assert!(value_depth(&body.data) < MAX_DEPTH, "data too deep");
        let json = body.to_json().expect("a decoded body encodes as JSON");
        assert_eq!(PublishBody::decode(&json, None, usize::MAX).ok(), Some(body.clone()));
        let msgpack = body.to_msgpack().expect("a decoded body encodes as MessagePack");
        let back = PublishBody::decode(&msgpack, Some("application/msgpack"), usize::MAX);
        assert_eq!(back.ok(), Some(body));
    }
}
