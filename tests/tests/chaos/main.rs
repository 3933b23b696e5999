//! The chaos group: delivery guarantees under network faults, with real NATS, gateways and
//! workers in network namespaces of the test's own (see `tidings_tests::netns`).
//!
//! Each scenario is bounded in time and asserts, afterwards, zero loss and zero duplicates
//! by `seq` per channel per client (or, for notifications, a final status for each), plus
//! what the fault should do (a `/readyz` 503 within 5 s, a stream leader that moves). Each
//! prints its figures on one `CHAOS` line (`--nocapture` shows them).
//!
//! Needs root, `ip` and `nft` (`scripts/install-tools`), and the binaries built
//! (`cargo build --bins`; `scripts/test` does it first). Scenarios run one at a time (they
//! are heavy for two cores). Run alone with:
//! `cargo build --bins && cargo test -p tidings-tests --test chaos -- --nocapture`.

mod gateway_partition;
mod ledger;
mod lossy_links;
mod nats_partition;
mod setup;
mod worker_partition;
