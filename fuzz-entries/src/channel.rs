//! Channel names, [`Channel::parse`], and the NATS subjects they map to,
//! [`Channel::from_subject`].

use tidings_shared::{Channel, ErrorCode};

/// A name that parses prints back to itself, maps to subjects that are single, wildcard-free
/// NATS tokens per level and map back to it; a subject that names a channel is one of that
/// channel's subjects.
pub fn channel(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Channel::parse(s) {
        Ok(c) => {
            assert_eq!(c.to_string(), s);
            assert_eq!(s.parse::<Channel>().ok(), Some(c.clone()));
            for subject in [c.durable_subject(), c.live_subject(), c.stored_subject()] {
                assert!(
                    !subject.contains(['*', '>']) && !subject.chars().any(char::is_whitespace),
                    "{subject}"
                );
                assert!(subject.split('.').all(|t| !t.is_empty()), "{subject}");
                assert!(matches!(subject.split('.').count(), 3 | 4), "{subject}");
                assert_eq!(Channel::from_subject(&subject), Some(c.clone()), "{subject}");
            }
            let json = serde_json::to_string(&c).expect("a channel serialises");
            assert_eq!(serde_json::from_str::<Channel>(&json).ok(), Some(c));
        }
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::BadChannel);
            // The error echoes at most 64 characters of the name, each at most `\u{10ffff}`
            // once escaped.
            assert!(e.to_string().len() <= 64 * 10 + 200, "{e}");
        }
    }
    if let Some(c) = Channel::from_subject(s) {
        assert!(
            [c.durable_subject(), c.live_subject(), c.stored_subject()].contains(&s.to_owned()),
            "{s} maps to {c}"
        );
    }
}
