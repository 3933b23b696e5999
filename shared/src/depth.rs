//! Nesting limits of what clients and publishers send. A value nested thousands deep costs a
//! recursive parser (and a recursive drop) a stack frame per level: serde_json stops at 128
//! by itself, rmp-serde only at 1024, and a `serde_json::Value` built some other way has no
//! limit at all. Every decoder of outside input checks [`MAX_DEPTH`] first, without
//! recursion.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// Deepest nesting of arrays and objects accepted in a client frame, a publisher body or a
/// notification request (the frame or body itself is level 1).
pub const MAX_DEPTH: usize = 64;

/// The error for input nested deeper than [`MAX_DEPTH`].
pub fn too_deep() -> Error {
    Error::TooDeep { limit: MAX_DEPTH }
}

/// Whether the JSON text `bytes` nests arrays and objects at most `max` deep. A linear scan
/// that skips strings; it does not validate (the parser does that next).
pub fn json_within(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parses JSON text, refusing it when nested deeper than [`MAX_DEPTH`].
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, JsonError> {
    if !json_within(bytes, MAX_DEPTH) {
        return Err(JsonError::TooDeep);
    }
    serde_json::from_slice(bytes).map_err(JsonError::Parse)
}

/// Parses MessagePack, refusing it when nested deeper than [`MAX_DEPTH`].
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

/// Why [`from_json`] failed.
#[derive(Debug)]
pub enum JsonError {
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not the expected JSON.
    Parse(serde_json::Error),
}

/// How deep a JSON value nests (a scalar is 0, `[]` is 1), without recursion.
pub fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                deepest = deepest.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Refuses a value nested deeper than `max` (the value being at level `base`).
pub fn check_value(value: &Value, base: usize) -> Result<()> {
    if base + value_depth(value) > MAX_DEPTH {
        return Err(too_deep());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_json(depth: usize) -> Vec<u8> {
        let mut s = "[".repeat(depth);
        s.push_str(&"]".repeat(depth));
        s.into_bytes()
    }

    fn nested_msgpack(depth: usize) -> Vec<u8> {
        // fixarray of one element, `depth` times, then nil.
        let mut v = vec![0x91; depth];
        v.push(0xc0);
        v
    }

    #[test]
    fn json_depth_is_counted_outside_strings() {
        assert!(json_within(&nested_json(64), 64));
        assert!(!json_within(&nested_json(65), 64));
        assert!(json_within(br#"{"a":"[[[[[[[[[[\"[[[["}"#, 2));
        assert!(matches!(
            from_json::<Value>(&nested_json(60_000)),
            Err(JsonError::TooDeep)
        ));
    }

    #[test]
    fn sixty_thousand_deep_msgpack_is_refused_without_overflowing_the_stack() {
        assert!(from_msgpack::<Value>(&nested_msgpack(60_000)).is_err());
        assert!(from_msgpack::<Value>(&nested_msgpack(65)).is_err());
        assert!(from_msgpack::<Value>(&nested_msgpack(63)).is_ok());
    }

    #[test]
    fn value_depth_needs_no_recursion() {
        let mut v = Value::Null;
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(value_depth(&v), 100_000);
        assert!(check_value(&v, 1).is_err());
        // Dropping it recursively would overflow: take it apart by hand.
        let mut cur = v;
        while let Value::Array(mut items) = cur {
            cur = items.pop().unwrap_or(Value::Null);
        }
    }
}
