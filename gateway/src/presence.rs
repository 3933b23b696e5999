//! Cluster-wide presence: who is subscribed to a channel on any gateway.
//!
//! Each gateway writes, per channel with local subscribers, one entry of the KV bucket
//! `TIDINGS_PRESENCE` under the key `<channel tail>.<node id>` (e.g. `project.p1.gw-2`),
//! holding its local users. Changes are written within [`DEBOUNCE`]; every entry is
//! rewritten each [`REFRESH`], and the bucket forgets entries after [`TTL`], so a gateway
//! that dies without cleaning up disappears from presence within that time. A query reads
//! the last entry of every node for the channel in one ordered-consumer pass and merges them
//! with this node's own (always fresh) view.
//!
//! Entries and answers are bounded: an entry lists at most [`MAX_LISTED`] users (with the
//! node's count of them), so `broadcast`, which every user of a node is in, stays far below
//! NATS's payload limit; and only service tokens are shown who is in `broadcast` (users get
//! the counts), since that list is everyone online.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tidings_shared::{Channel, Error as SharedError};
use tokio::sync::OnceCell;

use crate::error::Result;
use crate::hub::{Hub, LocalPresence};

/// KV bucket of presence entries.
pub const BUCKET: &str = "TIDINGS_PRESENCE";
/// How long an entry lives without being rewritten.
pub const TTL: Duration = Duration::from_secs(30);
/// How often every local entry is rewritten.
pub const REFRESH: Duration = Duration::from_secs(10);
/// How long changes are collected before being written.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Most users one entry, and one answer, lists.
pub const MAX_LISTED: usize = 1_000;
/// Entries written at once by a refresh.
const CONCURRENT_WRITES: usize = 64;

/// One node's presence entry.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    users: Vec<String>,
    connections: u64,
    /// Distinct users on the node (more than `users` lists when it was cut).
    #[serde(default)]
    user_count: Option<u64>,
}

/// Presence in a channel across the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// Distinct users, sorted; at most [`MAX_LISTED`], and none for a user asking about
    /// `broadcast`.
    pub users: Vec<String>,
    /// Subscribed connections.
    pub connections: u64,
    /// Distinct users (when a list was cut: the sum of the nodes' counts, an upper bound).
    pub user_count: u64,
    /// Whether `users` lists fewer than there are.
    pub truncated: bool,
}

/// Reads and writes presence for one gateway.
#[derive(Clone)]
pub struct PresenceBoard {
    js: jetstream::Context,
    node: Arc<str>,
    hub: Arc<Hub>,
    replicas: usize,
    store: Arc<OnceCell<kv::Store>>,
}

impl PresenceBoard {
    /// A board for node `node` on `js`.
    pub fn new(js: jetstream::Context, node: Arc<str>, hub: Arc<Hub>, replicas: usize) -> Self {
        PresenceBoard {
            js,
            node,
            hub,
            replicas,
            store: Arc::default(),
        }
    }

    async fn store(&self) -> Result<&kv::Store> {
        self.store
            .get_or_try_init(|| async {
                let cfg = kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "Tidings presence: one entry per channel and gateway".to_owned(),
                    history: 1,
                    max_age: TTL,
                    num_replicas: self.replicas,
                    storage: jetstream::stream::StorageType::Memory,
                    ..Default::default()
                };
                tidings_shared::store::ensure_kv_with(&self.js, cfg).await
            })
            .await
            .map_err(Into::into)
    }

    fn key(&self, channel: &Channel) -> String {
        format!("{}.{}", channel.tail(), self.node)
    }

    async fn write(&self, channel: &Channel, local: &LocalPresence) -> Result<()> {
        let store = self.store().await?;
        if local.connections == 0 {
            store.purge(self.key(channel)).await.map_err(SharedError::nats)?;
        } else {
            let entry = Entry {
                users: local.users.clone(),
                connections: local.connections,
                user_count: Some(local.user_count),
            };
            let bytes = serde_json::to_vec(&entry).map_err(|e| SharedError::Encode(e.to_string()))?;
            store
                .put(self.key(channel), bytes.into())
                .await
                .map_err(SharedError::nats)?;
        }
        Ok(())
    }

    /// Keeps this node's entries current until the process ends.
    pub async fn publish_loop(self) {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let channels: Vec<Channel> = tokio::select! {
                () = self.hub.presence_changed() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    self.hub.take_presence_changes()
                }
                _ = refresh.tick() => self.hub.channels(),
            };
            let unique: HashSet<Channel> = channels.into_iter().collect();
            // Pipelined: a node with many channels refreshes them in a few round trips.
            let board = &self;
            futures::stream::iter(unique)
                .for_each_concurrent(CONCURRENT_WRITES, |channel| async move {
                    let this = board;
                    let local = this.hub.local_presence(&channel);
                    if let Err(e) = this.write(&channel, &local).await {
                        tracing::debug!(%channel, error = %e, "presence write failed; retried at the next refresh");
                    }
                })
                .await;
        }
    }

    /// Presence in `channel` across every gateway. `list_broadcast`: whether the caller may
    /// see who is in `broadcast` (service tokens).
    pub async fn get(&self, channel: &Channel, list_broadcast: bool) -> Result<Presence> {
        let local = self.hub.local_presence(channel);
        let mut truncated = local.users.len() as u64 != local.user_count;
        let mut counted = local.user_count;
        let mut users: BTreeSet<String> = local.users.into_iter().collect();
        let mut connections = local.connections;
        // Makes sure the bucket (and so its stream) exists.
        self.store().await?;
        let stream_name = format!("KV_{BUCKET}");
        let stream = self.js.get_stream(&stream_name).await.map_err(SharedError::nats)?;
        let prefix = format!("$KV.{BUCKET}.{}.", channel.tail());
        let mut consumer: jetstream::consumer::Consumer<pull::OrderedConfig> = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{prefix}*"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(SharedError::nats)?;
        let info = consumer.info().await.map_err(SharedError::nats)?;
        let (pending, name) = (info.num_pending, info.name.clone());
        let own = format!("{prefix}{}", self.node);
        if pending > 0 {
            let mut messages = consumer.messages().await.map_err(SharedError::nats)?;
            for _ in 0..pending {
                let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
                let Ok(Some(Ok(msg))) = next else { break };
                let op = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .map(|v| v.as_str().to_owned());
                if msg.subject.as_str() == own || matches!(op.as_deref(), Some("DEL" | "PURGE")) {
                    continue;
                }
                if let Ok(entry) = serde_json::from_slice::<Entry>(&msg.payload) {
                    let count = entry.user_count.unwrap_or(entry.users.len() as u64);
                    truncated |= entry.users.len() as u64 != count;
                    counted += count;
                    users.extend(entry.users.into_iter().take(MAX_LISTED));
                    connections += entry.connections;
                }
            }
        }
        // Ordered consumers are not removed when dropped; do not leave one per query behind.
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "deleting presence consumer failed (it expires by itself)");
        }
        let user_count = if truncated { counted } else { users.len() as u64 };
        truncated |= users.len() > MAX_LISTED;
        let hidden = *channel == Channel::Broadcast && !list_broadcast;
        Ok(Presence {
            users: if hidden {
                Vec::new()
            } else {
                users.into_iter().take(MAX_LISTED).collect()
            },
            connections,
            user_count,
            truncated: truncated || (hidden && user_count > 0),
        })
    }
}
