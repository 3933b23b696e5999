//! The notification pipeline's state, all of it in JetStream: preferences, templates and
//! inbox entries in KV buckets; statuses as a stream of transitions per notification with
//! optimistic concurrency, so two workers updating two channels of one notification never
//! lose each other's update.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};

use crate::error::{Error, Result};
use crate::notify::NotificationStatus;
use crate::notify::names::*;
use crate::prefs::Preferences;
use crate::template::Template;

mod inbox;
pub use inbox::{InboxPage, InboxQuery};

/// Configuration of `TIDINGS_STATUS`: every transition of every notification for a week.
pub fn status_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STATUS_STREAM.to_owned(),
        description: Some("Tidings notification status transitions".to_owned()),
        subjects: vec![format!("{STATUS_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 86_400),
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Gets a KV bucket, creating it if absent (safe when several processes race).
pub async fn ensure_kv(js: &jetstream::Context, bucket: &str, replicas: usize) -> Result<kv::Store> {
    let cfg = kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    ensure_kv_with(js, cfg).await
}

/// Gets the KV bucket `cfg` names, creating it with `cfg` if absent (another process may
/// create it meanwhile: then that one is taken).
pub async fn ensure_kv_with(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store> {
    if let Ok(s) = js.get_key_value(&cfg.bucket).await {
        return Ok(s);
    }
    let bucket = cfg.bucket.clone();
    match js.create_key_value(cfg).await {
        Ok(s) => Ok(s),
        Err(_) => js.get_key_value(bucket).await.map_err(Error::nats),
    }
}

/// What [`Store::create_status`] found.
#[derive(Debug)]
pub enum Created {
    /// The status was written: its sequence.
    New(u64),
    /// The id had a status already: that one, with its sequence.
    Exists(NotificationStatus, u64),
}

/// The pipeline's state, shared by gateways and workers.
#[derive(Clone)]
pub struct Store {
    js: jetstream::Context,
    prefs: kv::Store,
    templates: kv::Store,
    inbox: kv::Store,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Store {
    /// Opens (creating if needed) the buckets and the status stream.
    pub async fn open(js: jetstream::Context, replicas: usize) -> Result<Self> {
        crate::nats::ensure_stream(&js, &status_stream_config(replicas), crate::nats::Ownership::User).await?;
        Ok(Store {
            prefs: ensure_kv(&js, PREFERENCES_BUCKET, replicas).await?,
            templates: ensure_kv(&js, TEMPLATES_BUCKET, replicas).await?,
            inbox: ensure_kv(&js, INBOX_BUCKET, replicas).await?,
            js,
        })
    }

    /// The templates bucket (the worker keeps it in memory through a watch).
    pub fn templates_bucket(&self) -> &kv::Store {
        &self.templates
    }

    /// The preferences bucket (the worker keeps it in memory through a watch).
    pub fn preferences_bucket(&self) -> &kv::Store {
        &self.prefs
    }

    /// The JetStream context.
    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// A user's preferences (defaults when none were stored).
    pub async fn preferences(&self, user: &str) -> Result<Preferences> {
        match self.prefs.get(user).await.map_err(Error::nats)? {
            None => Ok(Preferences::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Stored(format!("preferences: {e}"))),
        }
    }

    /// Stores preferences (validate them first).
    pub async fn put_preferences(&self, user: &str, prefs: &Preferences) -> Result<()> {
        let bytes = serde_json::to_vec(prefs).map_err(|e| Error::Encode(e.to_string()))?;
        self.prefs.put(user, bytes.into()).await.map_err(Error::nats)?;
        Ok(())
    }

    /// A template, if it exists (read from JetStream each time).
    pub async fn template(&self, name: &str) -> Result<Option<Arc<Template>>> {
        match self.templates.get(name).await.map_err(Error::nats)? {
            None => Ok(None),
            Some(bytes) => crate::template::decode_stored(&bytes).map(|t| Some(Arc::new(t))),
        }
    }

    /// Stores a template (validate it first).
    pub async fn put_template(&self, name: &str, template: &Template) -> Result<()> {
        let bytes = serde_json::to_vec(template).map_err(|e| Error::Encode(e.to_string()))?;
        self.templates.put(name, bytes.into()).await.map_err(Error::nats)?;
        Ok(())
    }

    fn status_subject(id: &str) -> String {
        format!("{STATUS_PREFIX}.{id}")
    }

    /// The current status of a notification and its position in the stream.
    pub async fn status(&self, id: &str) -> Result<Option<(NotificationStatus, u64)>> {
        // A direct get needs only the stream's name: no STREAM.INFO round trip first.
        let stream = self.js.get_stream_no_info(STATUS_STREAM).await.map_err(Error::nats)?;
        match stream.direct_get_last_for_subject(Self::status_subject(id)).await {
            Ok(m) => {
                let doc = serde_json::from_slice(&m.payload).map_err(|e| Error::Stored(format!("status: {e}")))?;
                Ok(Some((doc, m.sequence)))
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::nats(e)),
        }
    }

    /// Writes `doc` if the subject's last sequence is still `expected` (0: no status yet):
    /// the new sequence, or `None` if the condition refused it (someone wrote first).
    async fn write_status(&self, doc: &NotificationStatus, expected: u64) -> Result<Option<u64>> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        let bytes = serde_json::to_vec(doc).map_err(|e| Error::Encode(e.to_string()))?;
        match crate::nats::publish_acked(&self.js, Self::status_subject(&doc.id), headers, bytes.into()).await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(Error::nats(e)),
        }
    }

    /// Records a new notification's first status in one round trip (the write itself checks
    /// that none exists). If the id already has one, that one is returned instead: the same
    /// request seen before, or a status the gateway wrote on accepting it.
    pub async fn create_status(&self, doc: &NotificationStatus) -> Result<Created> {
        if let Some(seq) = self.write_status(doc, 0).await? {
            return Ok(Created::New(seq));
        }
        match self.status(&doc.id).await? {
            Some((existing, seq)) => Ok(Created::Exists(existing, seq)),
            // Refused, yet gone: only if it was purged in between; the caller retries.
            None => Err(Error::Conflict(format!(
                "status of {} vanished while being created",
                doc.id
            ))),
        }
    }

    /// Applies `change` to the current status and publishes the result as the next
    /// transition, retrying on concurrent updates. `change` returns false to write nothing.
    pub async fn update_status(
        &self,
        id: &str,
        change: impl FnMut(&mut NotificationStatus) -> bool,
    ) -> Result<Option<NotificationStatus>> {
        Ok(self.update_status_from(id, None, change).await?.map(|(doc, _)| doc))
    }

    /// [`Self::update_status`] starting from a version the caller already holds (what it
    /// last read or wrote, with its sequence), saving the read when nobody changed it since;
    /// returns the written version for the next update.
    pub async fn update_status_from(
        &self,
        id: &str,
        mut known: Option<(NotificationStatus, u64)>,
        mut change: impl FnMut(&mut NotificationStatus) -> bool,
    ) -> Result<Option<(NotificationStatus, u64)>> {
        for _ in 0..20 {
            let current = match known.take() {
                Some(k) => Some(k),
                None => self.status(id).await?,
            };
            let Some((mut doc, seq)) = current else {
                return Ok(None);
            };
            if !change(&mut doc) {
                return Ok(Some((doc, seq)));
            }
            doc.summarize();
            match self.write_status(&doc, seq).await {
                Ok(Some(written)) => return Ok(Some((doc, written))),
                Ok(None) => tracing::debug!(id, "status update raced; retrying"),
                Err(e) => tracing::debug!(id, error = %e, "status update failed; retrying"),
            }
        }
        Err(Error::Conflict(format!("status of {id} kept changing under us")))
    }

    /// Timestamp for status documents and inbox entries.
    pub fn now() -> String {
        now_rfc3339()
    }
}
