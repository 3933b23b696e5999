//! Publishing from the edge (client `publish` frames and `POST /api/v1/publish`): the same
//! validation and the same subjects as any other publisher (contract §3).

use async_nats::HeaderMap;
use bytes::Bytes;
use tidings_shared::ack::{ACK_SUBJECT, ClientAck};
use tidings_shared::body::{PublishBody, validate_event, validate_message_id};
use tidings_shared::nats::publish_acked;
use tidings_shared::subject::stored_msg_id;
use tidings_shared::telemetry;
use tidings_shared::{Channel, Error as SharedError};
use tracing::Instrument as _;

use crate::AppState;
use crate::error::{Error, Result};

/// Who publishes a message from the edge: its `Nats-Msg-Id` is namespaced by it, so that no
/// caller's id can suppress another's message (see [`stored_msg_id`]).
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A client or service, by its token's `sub`.
    Caller(&'a str),
    /// The GitHub webhook route.
    GitHub,
}

impl Origin<'_> {
    fn namespace(&self) -> String {
        match self {
            Origin::Caller(sub) => format!("client.{sub}"),
            Origin::GitHub => "github".to_owned(),
        }
    }
}

/// A validated message, encoded once, ready to publish.
pub struct Prepared {
    channel: Channel,
    payload: Bytes,
    msg_id: Option<String>,
}

/// Validates the event name, the id and the size, and encodes the publisher body.
pub fn prepare(
    state: &AppState,
    origin: Origin<'_>,
    channel: &Channel,
    event: String,
    data: serde_json::Value,
    msg_id: Option<String>,
    durable: bool,
) -> Result<Prepared> {
    validate_event(&event)?;
    // `data` is a field of the body: level 2.
    tidings_shared::depth::check_value(&data, 2)?;
    if let Some(id) = &msg_id {
        validate_message_id(id)?;
    }
    let body = PublishBody {
        event,
        data,
        id: Some(msg_id.clone().unwrap_or_else(|| nuid::next().to_string())),
    };
    let payload = body.to_json()?;
    let limit = state.config.max_payload_bytes;
    if payload.len() > limit {
        return Err(SharedError::TooLarge {
            size: payload.len(),
            limit,
        }
        .into());
    }
    Ok(Prepared {
        channel: channel.clone(),
        payload: payload.into(),
        msg_id: msg_id
            .filter(|_| durable)
            .map(|id| stored_msg_id(&origin.namespace(), channel, &id)),
    })
}

impl Prepared {
    /// Stores the message in `TIDINGS_EVENTS`; returns its sequence (the original one for a
    /// repeated `msg_id` within the duplicate window).
    pub async fn send_durable(self, state: &AppState) -> Result<u64> {
        let span = telemetry::span_if_exporting(|| tracing::info_span!("nats publish", channel = %self.channel));
        async move {
            let mut headers = HeaderMap::new();
            if let Some(id) = &self.msg_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            // The stream's re-publish keeps it: the gateways' fan-out joins this trace.
            telemetry::inject_nats(&mut headers);
            let ack = publish_acked(&state.js, self.channel.durable_subject(), headers, self.payload)
                .await
                .map_err(SharedError::nats)?;
            Ok(ack.sequence)
        }
        .instrument(span)
        .await
    }

    /// Publishes on the ephemeral subject (no history, no sequence).
    pub async fn send_live(self, state: &AppState) -> Result<()> {
        let sent = if telemetry::exporting() {
            let span = tracing::info_span!("nats publish", channel = %self.channel);
            let mut headers = HeaderMap::new();
            span.in_scope(|| telemetry::inject_nats(&mut headers));
            state
                .nats
                .publish_with_headers(self.channel.live_subject(), headers, self.payload)
                .instrument(span)
                .await
        } else {
            state.nats.publish(self.channel.live_subject(), self.payload).await
        };
        sent.map_err(|e| Error::from(SharedError::nats(e)))
    }
}

/// Forwards a client's delivery confirmation.
pub async fn forward_ack(state: &AppState, user: &str, channel: &Channel, seq: u64) -> Result<()> {
    let ack = ClientAck {
        user: user.to_owned(),
        channel: channel.to_string(),
        seq,
    };
    state
        .nats
        .publish(ACK_SUBJECT, ack.encode()?)
        .await
        .map_err(|e| Error::from(SharedError::nats(e)))
}
