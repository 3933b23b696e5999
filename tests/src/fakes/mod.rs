//! Fake providers for the worker's delivery tests: a webhook receiver, an SMS API and a Web
//! Push service, each a real HTTP server on a free port.

pub mod push;
pub mod sms;
pub mod webhook;
