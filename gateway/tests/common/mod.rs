//! Helpers shared by the gateway's integration tests: this crate's gateway binary and secret
//! for [`tidings_tests::gateway`], and tokens signed with that secret.
#![allow(dead_code)]

use tidings_shared::auth::Claims;
pub use tidings_tests::gateway::{Gateway, Launcher};
use tidings_tests::tokens;
pub use tidings_tests::tokens::claims;

pub const SECRET: &str = "gateway-test-secret";
pub const BIN: &str = env!("CARGO_BIN_EXE_tidings-gateway");

/// Gateways of these tests: this crate's binary, this file's secret.
pub fn gateways() -> Launcher {
    Launcher {
        bin: BIN.into(),
        secret: SECRET.into(),
    }
}

/// `c` signed with the gateways' secret.
pub fn sign(c: &Claims) -> String {
    tokens::sign(c, SECRET)
}

/// A user token: reads `projects`, publishes to `publish`.
pub fn user_token(sub: &str, projects: &[&str], publish: &[&str]) -> String {
    sign(&claims(sub, projects, publish, 600))
}

pub fn service_token() -> String {
    sign(&tokens::service(claims("ops", &[], &[], 600)))
}
