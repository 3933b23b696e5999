//! Fuzzing entry points. Each function takes the raw bytes a cargo-fuzz target in `fuzz/`
//! receives, feeds them to the production function that reads that kind of outside input,
//! and asserts what must hold of its answer (round trips, limits, the claims a verified
//! token carries), panicking when it does not.
//!
//! The same functions run twice: under libFuzzer (`cargo +nightly fuzz run <target>`), and
//! in the stable `cargo test` (`tests/replay.rs`), which replays every committed corpus and
//! regression input, so a fixed crash stays fixed without a nightly toolchain.
#![warn(missing_docs)]

pub mod body;
pub mod channel;
pub mod cursor;
pub mod frame;
pub mod github;
pub mod jwt;
pub mod prefs;
pub mod template;

/// An entry point: takes the fuzzer's bytes, panics when an invariant fails.
pub type Entry = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` file and the
/// `fuzz/corpus/<name>/` directory) and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("client_frame_json", frame::client_frame_json),
    ("client_frame_msgpack", frame::client_frame_msgpack),
    ("publish_body", body::publish_body),
    ("channel", channel::channel),
    ("jwt", jwt::jwt),
    ("sse_cursor", cursor::sse_cursor),
    ("github_payload", github::github_payload),
    ("preferences", prefs::preferences),
    ("template", template::template),
];
