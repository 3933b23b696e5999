//! Channel names (`project:<id>`, `user:<id>`, `broadcast`) and their NATS subjects.
//!
//! A [`Channel`] can only be built by parsing, and parsing accepts only ids of
//! `[A-Za-z0-9_-]{1,128}`, so no client-controlled string can ever inject `.`, `*`, `>` or
//! whitespace into a NATS subject.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::subject::{EVENTS_PREFIX, LIVE_PREFIX, STORED_PREFIX};

/// Longest id accepted in `project:<id>` and `user:<id>`.
pub const MAX_ID_LEN: usize = 128;

/// A validated channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `project:<id>`: readable by users whose token lists the project.
    Project(String),
    /// `user:<id>`: readable by that user only.
    User(String),
    /// `broadcast`: readable by everyone.
    Broadcast,
}

/// Returns whether `id` is a valid project or user id.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn bad(name: &str, reason: &'static str) -> Error {
    // Never echo an unbounded client string into logs or replies.
    let mut shown: String = name.chars().take(64).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    Error::BadChannel { name: shown, reason }
}

impl Channel {
    /// Parses `project:<id>`, `user:<id>` or `broadcast`; anything else is `bad_channel`.
    pub fn parse(name: &str) -> Result<Self> {
        if name == "broadcast" {
            return Ok(Channel::Broadcast);
        }
        let (kind, id) = name
            .split_once(':')
            .ok_or_else(|| bad(name, "expected project:<id>, user:<id> or broadcast"))?;
        if !is_valid_id(id) {
            return Err(bad(name, "id must match [A-Za-z0-9_-]{1,128}"));
        }
        match kind {
            "project" => Ok(Channel::Project(id.to_owned())),
            "user" => Ok(Channel::User(id.to_owned())),
            _ => Err(bad(name, "expected project:<id>, user:<id> or broadcast")),
        }
    }

    /// The `project:<id>` channel, if `id` is valid.
    pub fn project(id: &str) -> Result<Self> {
        if is_valid_id(id) {
            Ok(Channel::Project(id.to_owned()))
        } else {
            Err(bad(id, "id must match [A-Za-z0-9_-]{1,128}"))
        }
    }

    /// The `user:<id>` channel, if `id` is valid.
    pub fn user(id: &str) -> Result<Self> {
        if is_valid_id(id) {
            Ok(Channel::User(id.to_owned()))
        } else {
            Err(bad(id, "id must match [A-Za-z0-9_-]{1,128}"))
        }
    }

    /// The subject tail shared by every prefix: `project.<id>`, `user.<id>`, `broadcast`
    /// (also usable as a KV key part).
    pub fn tail(&self) -> String {
        match self {
            Channel::Project(id) => format!("project.{id}"),
            Channel::User(id) => format!("user.{id}"),
            Channel::Broadcast => "broadcast".to_owned(),
        }
    }

    /// Durable subject, stored in `TIDINGS_EVENTS`: `tidings.events.project.<id>`.
    pub fn durable_subject(&self) -> String {
        format!("{EVENTS_PREFIX}.{}", self.tail())
    }

    /// Ephemeral subject (no history): `tidings.live.project.<id>`.
    pub fn live_subject(&self) -> String {
        format!("{LIVE_PREFIX}.{}", self.tail())
    }

    /// Internal subject on which `TIDINGS_EVENTS` re-publishes this channel's stored
    /// messages: `tidings.stored.project.<id>`.
    pub fn stored_subject(&self) -> String {
        format!("{STORED_PREFIX}.{}", self.tail())
    }

    /// The channel a durable, live or stored subject belongs to; `None` for any other subject.
    pub fn from_subject(subject: &str) -> Option<Self> {
        let tail = [EVENTS_PREFIX, LIVE_PREFIX, STORED_PREFIX]
            .iter()
            .find_map(|p| subject.strip_prefix(p)?.strip_prefix('.'))?;
        if tail == "broadcast" {
            return Some(Channel::Broadcast);
        }
        let (kind, id) = tail.split_once('.')?;
        if !is_valid_id(id) {
            return None;
        }
        match kind {
            "project" => Some(Channel::Project(id.to_owned())),
            "user" => Some(Channel::User(id.to_owned())),
            _ => None,
        }
    }

    /// The id of a project or user channel.
    pub fn id(&self) -> Option<&str> {
        match self {
            Channel::Project(id) | Channel::User(id) => Some(id),
            Channel::Broadcast => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Project(id) => write!(f, "project:{id}"),
            Channel::User(id) => write!(f, "user:{id}"),
            Channel::Broadcast => f.write_str("broadcast"),
        }
    }
}

impl FromStr for Channel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Channel::parse(s)
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Channel::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    #[test]
    fn parses_the_three_shapes() {
        assert_eq!(Channel::parse("project:p1").ok(), Some(Channel::Project("p1".into())));
        assert_eq!(Channel::parse("user:u-1_A").ok(), Some(Channel::User("u-1_A".into())));
        assert_eq!(Channel::parse("broadcast").ok(), Some(Channel::Broadcast));
    }

    #[test]
    fn rejects_injection_attempts() {
        for bad in [
            "",
            "project:",
            "project:a.b",
            "project:*",
            "project:>",
            "user:a b",
            "user:a\tb",
            "broadcast:x",
            "Broadcast",
            "team:x",
            "project:a:b",
            "user:ä",
            "project: p",
            "user:a\n",
            "tidings.events.project.p1",
        ] {
            let err = Channel::parse(bad).expect_err(bad);
            assert_eq!(err.code(), ErrorCode::BadChannel, "{bad}");
        }
        let long = format!("project:{}", "a".repeat(129));
        assert_eq!(Channel::parse(&long).map_err(|e| e.code()), Err(ErrorCode::BadChannel));
        let max = format!("project:{}", "a".repeat(128));
        assert!(Channel::parse(&max).is_ok());
    }

    #[test]
    fn subjects_follow_the_contract() {
        let c = Channel::parse("project:p1").unwrap();
        assert_eq!(c.durable_subject(), "tidings.events.project.p1");
        assert_eq!(c.live_subject(), "tidings.live.project.p1");
        assert_eq!(c.stored_subject(), "tidings.stored.project.p1");
        assert_eq!(Channel::Broadcast.durable_subject(), "tidings.events.broadcast");
        assert_eq!(Channel::user("u1").unwrap().live_subject(), "tidings.live.user.u1");
        assert_eq!(
            Channel::from_subject("tidings.stored.user.u1"),
            Some(Channel::User("u1".into()))
        );
        assert_eq!(
            Channel::from_subject("tidings.live.broadcast"),
            Some(Channel::Broadcast)
        );
        assert_eq!(Channel::from_subject("tidings.events.project.a.b"), None);
        assert_eq!(Channel::from_subject("tidings.notify"), None);
    }

    #[test]
    fn serde_validates() {
        let c: Channel = serde_json::from_str("\"user:u1\"").unwrap();
        assert_eq!(c, Channel::User("u1".into()));
        assert!(serde_json::from_str::<Channel>("\"user:u.1\"").is_err());
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"user:u1\"");
    }

    fn assert_safe_subject(subject: &str, prefix: &str) {
        assert!(!subject.contains('*') && !subject.contains('>'), "{subject}");
        assert!(!subject.chars().any(char::is_whitespace), "{subject}");
        // prefix + kind + id: exactly one token per level, so no `.` inside the id.
        let tokens = subject.strip_prefix(prefix).unwrap().split('.').count();
        assert!(tokens == 2 || tokens == 3, "{subject}");
        assert!(subject.split('.').all(|t| !t.is_empty()), "{subject}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any string at all: either it is accepted and every subject is safe and maps back
        /// to the same channel, or it is rejected with `bad_channel`.
        #[test]
        fn any_string_is_safe_or_bad_channel(s in "\\PC{0,140}|(project|user):[ -~]{0,140}|(project|user):[A-Za-z0-9_-]{1,128}") {
            match Channel::parse(&s) {
                Ok(c) => {
                    prop_assert_eq!(c.to_string(), s.clone());
                    for (subject, prefix) in [
                        (c.durable_subject(), "tidings.events"),
                        (c.live_subject(), "tidings.live"),
                        (c.stored_subject(), "tidings.stored"),
                    ] {
                        assert_safe_subject(&subject, prefix);
                        prop_assert_eq!(Channel::from_subject(&subject), Some(c.clone()));
                    }
                }
                Err(e) => prop_assert_eq!(e.code(), ErrorCode::BadChannel),
            }
        }

        /// Ids with any forbidden character are always rejected.
        #[test]
        fn ids_with_forbidden_characters_are_rejected(
            kind in "project|user",
            pre in "[A-Za-z0-9_-]{0,10}",
            bad in "[.*> \t\n:/\\\\]|\\PC",
            post in "[A-Za-z0-9_-]{0,10}",
        ) {
            prop_assume!(!(bad.len() == 1 && is_valid_id(&bad)));
            let s = format!("{kind}:{pre}{bad}{post}");
            prop_assert_eq!(Channel::parse(&s).map_err(|e| e.code()), Err(ErrorCode::BadChannel));
        }
    }
}
