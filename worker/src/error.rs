//! The worker's error type.

/// Everything the worker can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A protocol or NATS error from the shared crate.
    #[error(transparent)]
    Shared(#[from] tidings_shared::Error),
    /// A metric could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics listener could not be bound or served.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with the worker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
