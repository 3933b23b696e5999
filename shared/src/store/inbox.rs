//! The in-app inbox: one KV entry per notification under `<user>.<id>`, bounded per user
//! (the worker drops the oldest past `TIDINGS_INBOX_MAX_PER_USER`, see [`Store::trim_inbox`])
//! and read a page at a time (newest first, `before` a cursor). A read still loads the
//! user's entries, at most the bound, since the answer counts every unread one.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::kv;
use futures::StreamExt as _;

use super::Store;
use crate::error::{Error, Result};
use crate::notify::InboxItem;
use crate::notify::names::INBOX_BUCKET;

/// What a page of the inbox asks for.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    /// Only unread entries.
    pub unread_only: bool,
    /// At most this many.
    pub limit: usize,
    /// Only entries older than this one: the `next` of the page before (an entry id), or a
    /// time (RFC 3339).
    pub before: Option<String>,
}

/// A page of the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPage {
    /// Entries, newest first.
    pub items: Vec<InboxItem>,
    /// Unread entries in all.
    pub unread: usize,
    /// The cursor of the next page (the last item's id), if there are more.
    pub next: Option<String>,
}

/// Newest first: by creation time, then id (both descending).
fn newest_first(a: &InboxItem, b: &InboxItem) -> std::cmp::Ordering {
    b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id))
}

/// The sort key entries must be older than, from a cursor: an entry's own key, or a time
/// (formatted as entries' `created_at`, so that strings compare as times).
fn cursor_key(items: &[InboxItem], before: &str) -> Result<(String, String)> {
    if let Some(i) = items.iter().find(|i| i.id == before) {
        return Ok((i.created_at.clone(), i.id.clone()));
    }
    let at: jiff::Timestamp = before.parse().map_err(|_| {
        Error::Invalid(format!(
            "before: {before:?} is neither an inbox entry nor an RFC 3339 time"
        ))
    })?;
    Ok((at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), String::new()))
}

/// The page `q` asks for out of every entry of a user (in any order).
pub(crate) fn page(mut items: Vec<InboxItem>, q: &InboxQuery) -> Result<InboxPage> {
    let unread = items.iter().filter(|i| !i.read).count();
    items.sort_by(newest_first);
    let key = q.before.as_deref().map(|b| cursor_key(&items, b)).transpose()?;
    let mut rest = items
        .into_iter()
        .filter(|i| !q.unread_only || !i.read)
        .filter(|i| key.as_ref().is_none_or(|(at, id)| (&i.created_at, &i.id) < (at, id)));
    let items: Vec<InboxItem> = rest.by_ref().take(q.limit).collect();
    let next = match rest.next() {
        Some(_) => items.last().map(|i| i.id.clone()),
        None => None,
    };
    Ok(InboxPage { items, unread, next })
}

impl Store {
    fn inbox_key(user: &str, id: &str) -> String {
        format!("{user}.{id}")
    }

    /// Stores a new inbox entry unless it exists already (a redelivered request must not
    /// reset an entry the user has read since); true if this call created it.
    pub async fn create_inbox(&self, user: &str, item: &InboxItem) -> Result<bool> {
        let bytes = serde_json::to_vec(item).map_err(|e| Error::Encode(e.to_string()))?;
        match self.inbox.create(Self::inbox_key(user, &item.id), bytes.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::nats(e)),
        }
    }

    /// Stores an inbox entry, replacing what was there.
    pub async fn put_inbox(&self, user: &str, item: &InboxItem) -> Result<()> {
        let bytes = serde_json::to_vec(item).map_err(|e| Error::Encode(e.to_string()))?;
        self.inbox
            .put(Self::inbox_key(user, &item.id), bytes.into())
            .await
            .map_err(Error::nats)?;
        Ok(())
    }

    /// One inbox entry.
    pub async fn inbox_item(&self, user: &str, id: &str) -> Result<Option<InboxItem>> {
        match self.inbox.get(Self::inbox_key(user, id)).await.map_err(Error::nats)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Stored(format!("inbox entry: {e}"))),
        }
    }

    /// A user's inbox, newest first: at most `limit` entries (only unread ones if asked),
    /// and the number of unread entries in all.
    pub async fn inbox(&self, user: &str, unread_only: bool, limit: usize) -> Result<(Vec<InboxItem>, usize)> {
        let q = InboxQuery {
            unread_only,
            limit,
            before: None,
        };
        let p = self.inbox_page(user, &q).await?;
        Ok((p.items, p.unread))
    }

    /// A page of a user's inbox (see [`InboxQuery`]).
    pub async fn inbox_page(&self, user: &str, q: &InboxQuery) -> Result<InboxPage> {
        page(self.inbox_entries(user).await?, q)
    }

    /// An ordered consumer over the last value of each of `user`'s inbox keys, its stream,
    /// and how many it will deliver (deleted keys included).
    async fn inbox_consumer(
        &self,
        user: &str,
    ) -> Result<(
        async_nats::jetstream::stream::Stream,
        async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>,
        u64,
    )> {
        let stream = self
            .js
            .get_stream(format!("KV_{INBOX_BUCKET}"))
            .await
            .map_err(Error::nats)?;
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("$KV.{INBOX_BUCKET}.{user}.*"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(Error::nats)?;
        let pending = consumer.info().await.map_err(Error::nats)?.num_pending;
        Ok((stream, consumer, pending))
    }

    /// How many entries `user`'s inbox holds (without reading them).
    pub async fn inbox_len(&self, user: &str) -> Result<u64> {
        let (stream, mut consumer, pending) = self.inbox_consumer(user).await?;
        let name = consumer.info().await.map_err(Error::nats)?.name.clone();
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "deleting inbox consumer failed (it expires by itself)");
        }
        Ok(pending)
    }

    /// Every entry of `user`'s inbox, in the order they were last written.
    async fn inbox_entries(&self, user: &str) -> Result<Vec<InboxItem>> {
        Ok(self.inbox_entries_at(user).await?.into_iter().map(|(i, _)| i).collect())
    }

    /// Every entry of `user`'s inbox with its stream sequence, in the order they were last
    /// written.
    async fn inbox_entries_at(&self, user: &str) -> Result<Vec<(InboxItem, u64)>> {
        let (stream, mut consumer, mut pending) = self.inbox_consumer(user).await?;
        let name = consumer.info().await.map_err(Error::nats)?.name.clone();
        let mut items = Vec::new();
        if pending > 0 {
            let mut messages = consumer.messages().await.map_err(Error::nats)?;
            while pending > 0 {
                let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await else {
                    break;
                };
                let info = msg.info().map(|i| (i.pending, i.stream_sequence)).ok();
                pending = info.map_or(0, |(p, _)| p);
                let op = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .map(|v| v.as_str().to_owned());
                if matches!(op.as_deref(), Some("DEL" | "PURGE")) {
                    continue;
                }
                if let (Ok(item), Some((_, seq))) = (serde_json::from_slice::<InboxItem>(&msg.payload), info) {
                    items.push((item, seq));
                }
            }
        }
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "deleting inbox consumer failed (it expires by itself)");
        }
        Ok(items)
    }

    /// Drops the oldest entries of `user`'s inbox past `max`, leaving no marker (the entries'
    /// messages are purged from the bucket's stream); returns how many were dropped.
    ///
    /// Usually one purge: every message of the user's older than the oldest entry kept is
    /// one to drop (or a deletion marker), so they go in one request by sequence; only
    /// entries to drop that were written again since (marked read) go one by one.
    pub async fn trim_inbox(&self, user: &str, max: usize) -> Result<usize> {
        let mut items = self.inbox_entries_at(user).await?;
        if items.len() <= max {
            return Ok(0);
        }
        items.sort_by(|(a, _), (b, _)| newest_first(a, b));
        let stream = self
            .js
            .get_stream_no_info(format!("KV_{INBOX_BUCKET}"))
            .await
            .map_err(Error::nats)?;
        let (kept, old) = items.split_at(max);
        let first_kept = kept.iter().map(|(_, seq)| *seq).min().unwrap_or(u64::MAX);
        if old.iter().any(|(_, seq)| *seq < first_kept) {
            stream
                .purge()
                .filter(format!("$KV.{INBOX_BUCKET}.{user}.*"))
                .sequence(first_kept)
                .await
                .map_err(Error::nats)?;
        }
        for (old, _) in old.iter().filter(|(_, seq)| *seq > first_kept) {
            stream
                .purge()
                .filter(format!("$KV.{INBOX_BUCKET}.{}", Self::inbox_key(user, &old.id)))
                .await
                .map_err(Error::nats)?;
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Priority;

    fn item(id: &str, at: &str, read: bool) -> InboxItem {
        InboxItem {
            id: id.into(),
            title: String::new(),
            body: String::new(),
            project: None,
            priority: Priority::Normal,
            created_at: format!("2026-01-01T00:00:{at}.000Z"),
            read,
        }
    }

    fn ids(p: &InboxPage) -> Vec<&str> {
        p.items.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn pages_follow_the_cursor_newest_first() {
        let all: Vec<InboxItem> = (0..5)
            .map(|i| item(&format!("n{i}"), &format!("0{i}"), i == 3))
            .collect();
        let q = |before: Option<&str>, unread_only| InboxQuery {
            unread_only,
            limit: 2,
            before: before.map(str::to_owned),
        };
        let p1 = page(all.clone(), &q(None, false)).unwrap();
        assert_eq!(
            (ids(&p1), p1.unread, p1.next.as_deref()),
            (vec!["n4", "n3"], 4, Some("n3"))
        );
        let p2 = page(all.clone(), &q(Some("n3"), false)).unwrap();
        assert_eq!((ids(&p2), p2.next.as_deref()), (vec!["n2", "n1"], Some("n1")));
        let p3 = page(all.clone(), &q(Some("n1"), false)).unwrap();
        assert_eq!((ids(&p3), p3.next.as_deref()), (vec!["n0"], None));
        let unread = page(all.clone(), &q(Some("n4"), true)).unwrap();
        assert_eq!(ids(&unread), vec!["n2", "n1"]);
        let by_time = page(all.clone(), &q(Some("2026-01-01T00:00:02Z"), false)).unwrap();
        assert_eq!(ids(&by_time), vec!["n1", "n0"]);
        assert!(page(all, &q(Some("nope"), false)).is_err());
    }
}
