//! Notification types of contract §7 shared by the gateway (intake, status, inbox routes)
//! and the worker: requests, channels, statuses, inbox entries, delivery jobs; and the
//! JetStream names of the pipeline.

use serde::{Deserialize, Serialize};

/// Where a notification can be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryChannel {
    /// A durable `notification` message on `user:<id>` plus an inbox entry.
    InApp,
    /// Email over SMTP (or the file transport).
    Email,
    /// SMS through a Twilio-compatible API.
    Sms,
    /// Web Push to the user's browser subscriptions.
    Push,
    /// An HMAC-signed POST to the user's webhook URL.
    Webhook,
}

impl DeliveryChannel {
    /// Every channel, in the contract's order.
    pub const ALL: [DeliveryChannel; 5] = [
        DeliveryChannel::InApp,
        DeliveryChannel::Email,
        DeliveryChannel::Sms,
        DeliveryChannel::Push,
        DeliveryChannel::Webhook,
    ];

    /// The wire spelling (`in_app`, `email`, ...), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryChannel::InApp => "in_app",
            DeliveryChannel::Email => "email",
            DeliveryChannel::Sms => "sms",
            DeliveryChannel::Push => "push",
            DeliveryChannel::Webhook => "webhook",
        }
    }
}

/// Status of one channel of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting to be processed.
    Pending,
    /// Turned off by the user's channel or category preferences.
    Suppressed,
    /// Held until the end of the user's quiet hours.
    Deferred,
    /// Collected into a digest with others of the same `batch_key`.
    Batched,
    /// Handed to the channel's provider.
    Sent,
    /// Confirmed received (in-app `ack`).
    Delivered,
    /// Read by the user (in-app).
    Read,
    /// Given up on, with an error.
    Failed,
}

impl DeliveryStatus {
    /// The statuses a channel can end a processing step in (metric label values).
    pub const REPORTED: [DeliveryStatus; 7] = [
        DeliveryStatus::Suppressed,
        DeliveryStatus::Deferred,
        DeliveryStatus::Batched,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
        DeliveryStatus::Failed,
    ];

    /// The wire spelling, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Suppressed => "suppressed",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Batched => "batched",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Bypasses quiet hours and batching.
    Critical,
    /// Urgent, but respects quiet hours.
    High,
    /// The default.
    #[default]
    Normal,
    /// Can wait; batched with others.
    Low,
}

/// A notification request (contract §7), from `POST /api/v1/notifications` or `tidings.notify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    /// Idempotency key and the notification's id (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The user to notify.
    pub user: String,
    /// The project it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Template name.
    pub template: String,
    /// Template variables.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Priority (default `normal`).
    #[serde(default)]
    pub priority: Priority,
    /// Channels to use; absent: the user's preferences decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<DeliveryChannel>>,
    /// Category, for per-category preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Digest key for batching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_key: Option<String>,
}

impl NotificationRequest {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |field: &str, why: &str| Err(crate::Error::Invalid(format!("{field}: {why}")));
        // `data` is a field of the request: level 2.
        crate::depth::check_value(&self.data, 2)?;
        if let Some(id) = &self.id
            && !crate::channel::is_valid_id(id)
        {
            return bad("id", "must match [A-Za-z0-9_-]{1,128}");
        }
        if !crate::channel::is_valid_id(&self.user) {
            return bad("user", "must match [A-Za-z0-9_-]{1,128}");
        }
        if let Some(p) = &self.project
            && !crate::channel::is_valid_id(p)
        {
            return bad("project", "must match [A-Za-z0-9_-]{1,128}");
        }
        if !crate::channel::is_valid_id(&self.template) {
            return bad("template", "must match [A-Za-z0-9_-]{1,128}");
        }
        if self.channels.as_ref().is_some_and(Vec::is_empty) {
            return bad("channels", "must not be empty when given");
        }
        if self.category.as_ref().is_some_and(|c| c.is_empty() || c.len() > 64) {
            return bad("category", "must be 1 to 64 characters");
        }
        if self.batch_key.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
            return bad("batch_key", "must be 1 to 128 characters");
        }
        Ok(())
    }
}

/// One channel's state in a notification status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// Where the channel is.
    pub status: DeliveryStatus,
    /// Delivery attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// Last error (failures and retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// End of the deferral (RFC 3339), for `deferred`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Which provider or relay sent it (an extra field), e.g. `smtp://mail-2:25`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The digest it went out in, when batched (an extra field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Times its job was handed back because the target's circuit breaker was open (an
    /// extra field): those hand-outs are not attempts, and the poison-message count of
    /// JetStream deliveries leaves them out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The status of a notification (contract §6), one document per transition on
/// `tidings.status.<id>`; the last one is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationStatus {
    /// Notification id.
    pub id: String,
    /// The user.
    pub user: String,
    /// Summary of the channels (see [`NotificationStatus::summarize`]).
    pub status: String,
    /// When the request was accepted (RFC 3339).
    pub created_at: String,
    /// Per channel.
    #[serde(default)]
    pub channels: std::collections::BTreeMap<DeliveryChannel, ChannelState>,
    /// Why the whole notification failed (invalid request, unknown template...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether a worker recorded the plan of every channel (an extra field). It is written
    /// before the plan's side effects go out; the request, if handed out again, carries out
    /// what the recorded plan still calls for, idempotently.
    #[serde(default)]
    pub planned: bool,
    /// The `TIDINGS_NOTIFY` stream sequence of the request whose plan this is (an extra
    /// field): how a worker tells its own request, handed out again, from a new request
    /// that reuses the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_seq: Option<u64>,
}

impl NotificationStatus {
    /// Recomputes `status` from the channels: the least advanced in-flight state while any
    /// channel is in flight (`pending`, `deferred`, `batched`), else the most advanced outcome
    /// reached by any channel (`read` > `delivered` > `sent`), else `failed` or `suppressed`.
    pub fn summarize(&mut self) {
        use DeliveryStatus::*;
        let has = |s: DeliveryStatus| self.channels.values().any(|c| c.status == s);
        self.status = if self.error.is_some() && self.channels.is_empty() {
            "failed"
        } else if has(Pending) {
            "pending"
        } else if has(Deferred) {
            "deferred"
        } else if has(Batched) {
            "batched"
        } else if has(Read) {
            "read"
        } else if has(Delivered) {
            "delivered"
        } else if has(Sent) {
            "sent"
        } else if has(Failed) {
            "failed"
        } else if self.channels.is_empty() {
            "pending"
        } else {
            "suppressed"
        }
        .to_owned();
    }
}

/// An in-app inbox entry (contract §6); its `id` is the notification's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    /// Notification id.
    pub id: String,
    /// Rendered title.
    pub title: String,
    /// Rendered body.
    pub body: String,
    /// Project, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Priority.
    pub priority: Priority,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Whether the user read it.
    pub read: bool,
}

/// What a channel part renders to: a delivery job's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    /// Title / subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Body / text.
    pub body: String,
    /// HTML body (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// URL (push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Rendered webhook object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One external delivery, queued on `tidings.delivery.<channel>` (stream
/// `TIDINGS_DELIVERIES`) and processed by whichever worker takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Notification id.
    pub id: String,
    /// The user.
    pub user: String,
    /// The channel.
    pub channel: DeliveryChannel,
    /// Project, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Priority.
    pub priority: Priority,
    /// Category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The rendered content.
    pub content: Rendered,
    /// The request's data (webhook payloads carry it).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Not before this instant (unix milliseconds): the end of quiet hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    /// When the notification was created (RFC 3339).
    pub created_at: String,
    /// Set on a digest's flush job: the batch to send as one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestRef>,
}

/// A batch of notifications waiting to go out as one digest: its KV entry (open while
/// items may still join) and the subject its items are stored on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRef {
    /// KV key of the open batch in `TIDINGS_BATCHES`.
    pub key: String,
    /// Subject of the batch's items in `TIDINGS_BATCH_ITEMS`.
    pub subject: String,
    /// Template the digest is rendered with (`items` and `count` added to its data).
    pub template: String,
}

/// One notification waiting in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    /// Notification id.
    pub id: String,
    /// The request's data.
    pub data: serde_json::Value,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// JetStream and KV names of the notification pipeline.
pub mod names {
    /// Stream of status transitions, `tidings.status.<id>`; the last message per subject is
    /// the current status.
    pub const STATUS_STREAM: &str = "TIDINGS_STATUS";
    /// Subject prefix of status transitions.
    pub const STATUS_PREFIX: &str = "tidings.status";
    /// Work queue of external deliveries, `tidings.delivery.<channel>`.
    pub const DELIVERY_STREAM: &str = "TIDINGS_DELIVERIES";
    /// Subject prefix of delivery jobs.
    pub const DELIVERY_PREFIX: &str = "tidings.delivery";
    /// Dead letters, `tidings.dead.<channel>`: jobs given up on, with the last error, to
    /// inspect and replay (republish the job to `tidings.delivery.<channel>`).
    pub const DEAD_STREAM: &str = "TIDINGS_DEAD_LETTERS";
    /// Subject prefix of dead letters.
    pub const DEAD_PREFIX: &str = "tidings.dead";
    /// KV bucket of preferences, key = user id.
    pub const PREFERENCES_BUCKET: &str = "TIDINGS_PREFERENCES";
    /// KV bucket of templates, key = template name.
    pub const TEMPLATES_BUCKET: &str = "TIDINGS_TEMPLATES";
    /// KV bucket of inbox entries, key = `<user>.<notification id>`.
    pub const INBOX_BUCKET: &str = "TIDINGS_INBOX";
    /// KV bucket of open batches, key = `<user>.<batch hash>.<channel>`.
    pub const BATCHES_BUCKET: &str = "TIDINGS_BATCHES";
    /// KV bucket of circuit breakers, key = `<channel>.<hash of the target>`.
    pub const BREAKERS_BUCKET: &str = "TIDINGS_BREAKERS";
    /// Stream of batched items, `tidings.batch.<user>.<batch hash>.<channel>`.
    pub const BATCH_ITEMS_STREAM: &str = "TIDINGS_BATCH_ITEMS";
    /// Subject prefix of batched items.
    pub const BATCH_PREFIX: &str = "tidings.batch";
    /// Event name of in-app notification messages on `user:<id>`.
    pub const NOTIFICATION_EVENT: &str = "notification";
}
