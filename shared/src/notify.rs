//! Names of contract §7 that several processes share: the delivery channels of a
//! notification and the statuses each of them moves through.

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
