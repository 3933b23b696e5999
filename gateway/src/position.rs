//! Named positions in `TIDINGS_EVENTS`, instead of anonymous integers and tuples: where a
//! client is ([`StreamPosition`]), where a durable message sits in its channel's chain
//! ([`Link`]), and where a channel stood when this node opened it ([`Opening`]).

/// A position in the stream as a client holds it: a sequence, and the epoch (the stream's
/// creation) it belongs to. Without an epoch the current one is assumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    /// Everything of the channel up to this stream sequence was received.
    pub seq: u64,
    /// The epoch `seq` belongs to; from another epoch, `seq` means nothing.
    pub epoch: Option<String>,
}

/// A durable message's place in its channel: its stream sequence and the sequence of the
/// channel's previous message (0 if none), which clients check to see gaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// The message's stream sequence.
    pub seq: u64,
    /// The previous message's sequence on the same channel.
    pub prev: u64,
}

/// Where a channel stood when this node opened it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opening {
    /// The stream position from which everything of the channel is still to come: the
    /// channel's last stored sequence, or the stream's if it has none; `None` if NATS could
    /// not tell.
    pub stream: Option<u64>,
    /// The channel's own last sequence (0 if none): the `prev` its next message names.
    pub channel_last: u64,
}
