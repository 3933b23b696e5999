//! The gateway → worker delivery confirmation: a client's `ack` frame, forwarded by the
//! gateway on core NATS to the workers, which mark in-app notifications `delivered`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Internal subject on which gateways forward client `ack` frames (a queue group of workers
/// consumes it).
pub const ACK_SUBJECT: &str = "tidings.internal.acks";

/// One forwarded confirmation: `user` received message `seq` of `channel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAck {
    /// The token's subject of the connection that confirmed.
    pub user: String,
    /// The channel the message was on, as the client named it.
    pub channel: String,
    /// The message's stream sequence.
    pub seq: u64,
}

impl ClientAck {
    /// The JSON payload published on [`ACK_SUBJECT`].
    pub fn encode(&self) -> Result<Bytes> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// Reads a payload received on [`ACK_SUBJECT`].
    pub fn decode(payload: &[u8]) -> Result<Self> {
        serde_json::from_slice(payload).map_err(|e| Error::Invalid(format!("client ack: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_the_fields_by_name() {
        let ack = ClientAck {
            user: "u1".into(),
            channel: "user:u1".into(),
            seq: 456,
        };
        assert_eq!(ClientAck::decode(&ack.encode().unwrap()).unwrap(), ack);
        let by_name = br#"{"seq":7,"channel":"user:u2","user":"u2"}"#;
        assert_eq!(ClientAck::decode(by_name).unwrap().seq, 7);
        assert!(ClientAck::decode(b"{}").is_err());
    }
}
