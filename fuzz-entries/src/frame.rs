//! The WebSocket client frame decoder, [`WireFormat::decode_client`], for both formats.

use tidings_shared::Error;
use tidings_shared::codec::WireFormat;
use tidings_shared::depth::{MAX_DEPTH, value_depth};
use tidings_shared::frame::ClientFrame;

/// `TIDINGS_MAX_FRAME_BYTES`' default: what a gateway reads of one frame.
pub const MAX_FRAME_BYTES: usize = 65_536;

/// A JSON text frame.
pub fn client_frame_json(data: &[u8]) {
    client_frame(WireFormat::Json, data);
}

/// A MessagePack binary frame.
pub fn client_frame_msgpack(data: &[u8]) {
    client_frame(WireFormat::Msgpack, data);
}

/// Decodes `data` as the gateway does; a frame that decodes must stay within the nesting
/// limit, and re-encode, in either format, to itself.
fn client_frame(format: WireFormat, data: &[u8]) {
    let frame = match format.decode_client(data, MAX_FRAME_BYTES) {
        Ok(frame) => frame,
        Err(Error::TooLarge { size, limit }) => {
            assert!(size > limit && data.len() > MAX_FRAME_BYTES, "too large at {size}");
            return;
        }
        Err(Error::BadFrame { .. }) => return,
        Err(other) => panic!("decode_client answered {other:?}, not bad_request"),
    };
    if let ClientFrame::Publish { data, .. } = &frame {
        // The frame is level 1, its `data` starts at level 2.
        assert!(value_depth(data) < MAX_DEPTH, "data nests {} deep", value_depth(data));
    }
    for out in WireFormat::ALL {
        let bytes = out.encode(&frame).expect("a decoded frame encodes");
        let back = out
            .decode_client(&bytes, usize::MAX)
            .unwrap_or_else(|e| panic!("{format:?} frame re-encoded as {out:?} does not decode: {e}"));
        assert_eq!(back, frame, "{format:?} frame changed through {out:?}");
    }
}
