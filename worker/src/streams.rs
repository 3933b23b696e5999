//! The streams only the worker uses: configurations of `TIDINGS_DELIVERIES`, the dead-letter
//! stream and `TIDINGS_BATCH_ITEMS` (the ones both services use are in `tidings_shared`).

use std::time::Duration;

use async_nats::jetstream::stream;
use tidings_shared::notify::names::*;

/// Configuration of `TIDINGS_DELIVERIES`: external deliveries waiting for a worker.
///
/// A job is stored under `tidings.delivery.<channel>.<notification id>` and the stream keeps
/// at most one message per subject, refusing another: while a job is queued, waiting out
/// quiet hours or retrying, a second copy of it cannot be queued, however long after the
/// first (the `Nats-Msg-Id` duplicate window only covers 10 minutes). Once the job is done
/// and gone, a copy may be queued again, and its delivery finds the channel's outcome in the
/// status and sends nothing.
pub fn delivery_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: DELIVERY_STREAM.to_owned(),
        description: Some("Tidings external deliveries (work queue)".to_owned()),
        subjects: vec![format!("{DELIVERY_PREFIX}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 86_400),
        duplicate_window: Duration::from_secs(600),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Configuration of the dead-letter stream: kept 30 days for inspection and replay.
pub fn dead_letter_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: DEAD_STREAM.to_owned(),
        description: Some("Tidings deliveries given up on, with their last error".to_owned()),
        subjects: vec![format!("{DEAD_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(30 * 86_400),
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Configuration of `TIDINGS_BATCH_ITEMS`: notifications waiting in a batch window.
pub fn batch_items_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: BATCH_ITEMS_STREAM.to_owned(),
        description: Some("Tidings notifications waiting in a batch window".to_owned()),
        subjects: vec![format!("{BATCH_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 86_400),
        num_replicas: replicas,
        ..Default::default()
    }
}
