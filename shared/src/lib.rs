//! The Tidings protocol crate: the one place the wire contract (`CONTRACT.md`) lives.
//!
//! - [`channel`] / [`subject`]: channel names and the NATS subjects they map to;
//! - [`frame`] / [`codec`]: WebSocket frames and their JSON / MessagePack encodings;
//! - [`body`]: what other services publish on NATS;
//! - [`auth`]: JWT verification and the access rule;
//! - [`config`]: every `TIDINGS_*` setting;
//! - [`ack`]: the gateway → worker delivery confirmation (subject and payload);
//! - [`nats`]: connecting, provisioning JetStream, publishing with an ack;
//! - [`notify`] / [`prefs`] / [`template`] / [`store`]: the notification pipeline's types,
//!   rules and JetStream-backed state;
//! - [`netguard`]: the IANA special-purpose address blocks webhook and push deliveries may
//!   not reach (SSRF guard);
//! - [`redact`]: URLs shown in logs, errors and statuses, without their secrets;
//! - [`ops`] / [`telemetry`]: health, readiness, metrics, logs and traces;
//! - `client` (feature `client`): a reconnecting, recovering Rust client.
#![warn(missing_docs)]

pub mod ack;
pub mod auth;
pub mod body;
pub mod channel;
#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod config;
pub mod depth;
pub mod error;
pub mod frame;
pub mod nats;
pub mod netguard;
pub mod notify;
pub mod ops;
pub mod prefs;
pub mod redact;
pub mod store;
pub mod subject;
pub mod telemetry;
pub mod template;
pub mod vapid;

pub use channel::Channel;
pub use error::{AuthReason, Error, ErrorCode, Result};
