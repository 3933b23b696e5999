//! The SSE resume cursor (`Last-Event-ID` header or `last_event_id` query),
//! [`Cursor::parse`].

use tidings_gateway::sse::{Cursor, MAX_CURSOR_BYTES};

/// A cursor that parses has a digits-only epoch of at most 40 characters, and encodes to a
/// string that parses back to the same cursor.
pub fn sse_cursor(data: &[u8]) {
    // The handler refuses longer values before parsing.
    if data.len() > MAX_CURSOR_BYTES {
        return;
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(cursor) = Cursor::parse(s) else {
        return;
    };
    assert!(cursor.epoch.len() <= 40 && cursor.epoch.bytes().all(|b| b.is_ascii_digit()));
    let encoded = cursor.encode();
    assert_eq!(Cursor::parse(&encoded), Some(cursor.clone()), "{encoded}");
    // Every entry of the encoding is one the input named.
    assert!(cursor.seqs.len() <= s.matches(';').count());
}
