//! The client commands of a WebSocket session (contract §4): each frame type's handler,
//! answering with a reply or an error frame; `subscribe` holds the live feed while it reads
//! the history back, then releases it.

use std::time::Instant;

use futures::SinkExt as _;
use tidings_shared::frame::{ClientFrame, Reply, ServerFrame};
use tidings_shared::{Channel, Error as SharedError, ErrorCode};
use tracing::Instrument as _;

use super::{Next, Session, encode};
use crate::conn::{CLOSE_INTERNAL, CLOSE_RATE_LIMITED, Outbound};
use crate::history::Reader;
use crate::limit::Verdict;
use crate::position::StreamPosition;
use crate::publish;
use crate::session::token_deadline;

/// Tokens a command takes from the connection's rate limit: what it makes the node do. A
/// `subscribe` with `since` is charged again for what its replay reads (see
/// [`Session::recover`]).
fn command_cost(frame: &ClientFrame) -> u32 {
    match frame {
        ClientFrame::Ping { .. } | ClientFrame::Ack { .. } | ClientFrame::Unsubscribe { .. } => 1,
        ClientFrame::Publish { durable: false, .. } => 1,
        ClientFrame::Publish { durable: true, .. } | ClientFrame::Subscribe { since: None, .. } => 2,
        ClientFrame::Subscribe { since: Some(_), .. } => 3,
        // A KV read per call, and a signature check.
        ClientFrame::Presence { .. } | ClientFrame::Auth { .. } => 4,
    }
}

/// Replayed messages per extra token a replay is charged.
const REPLAYED_PER_TOKEN: u64 = 100;

impl Session {
    /// Handles one decoded (or undecodable) client frame.
    pub(super) async fn command(&mut self, decoded: Result<ClientFrame, SharedError>) -> Next {
        let cost = decoded.as_ref().map_or(1, command_cost);
        match self.limiter.check(Instant::now(), cost) {
            Verdict::Allow => {}
            Verdict::Limit => {
                let id = decoded.as_ref().ok().and_then(ClientFrame::id);
                self.error(id, ErrorCode::RateLimited, "too many commands; slow down")
                    .await;
                return Next::Continue;
            }
            Verdict::Abuse => return Next::Close(CLOSE_RATE_LIMITED, "rate limit abused"),
        }
        let frame = match decoded {
            Ok(f) => f,
            Err(e) => {
                let id = match &e {
                    SharedError::BadFrame { id, .. } => *id,
                    _ => None,
                };
                self.error(id, e.code(), e.to_string()).await;
                return Next::Continue;
            }
        };
        match frame {
            ClientFrame::Ping { id } => self.send(&ServerFrame::Pong { id }).await,
            ClientFrame::Subscribe {
                id,
                channel,
                since,
                epoch,
            } => self.subscribe(id, &channel, since, epoch).await,
            ClientFrame::Unsubscribe { id, channel } => match Channel::parse(&channel) {
                Err(e) => self.error(id, e.code(), e.to_string()).await,
                Ok(c) => {
                    self.reg.unsubscribe(&c);
                    let reply = Reply {
                        channel: Some(c),
                        ..Reply::ok(id)
                    };
                    self.reply(reply).await;
                }
            },
            ClientFrame::Publish {
                id,
                channel,
                event,
                data,
                durable,
                msg_id,
            } => self.publish(id, &channel, event, data, durable, msg_id).await,
            ClientFrame::Ack { id, channel, seq } => self.ack(id, &channel, seq).await,
            ClientFrame::Auth { id, token } => self.refresh(id, &token).await,
            ClientFrame::Presence { id, channel } => self.presence(id, &channel).await,
        }
        Next::Continue
    }

    /// Parses a channel and checks the token may read it; answers the error itself.
    async fn readable(&mut self, id: Option<u64>, channel: &str) -> Option<Channel> {
        match Channel::parse(channel) {
            Err(e) => {
                self.error(id, e.code(), e.to_string()).await;
                None
            }
            Ok(c) if !self.claims.can_read(&c) => {
                self.error(id, ErrorCode::Forbidden, format!("this token may not read {c}"))
                    .await;
                None
            }
            Ok(c) => Some(c),
        }
    }

    async fn subscribe(&mut self, id: Option<u64>, channel: &str, since: Option<u64>, epoch: Option<String>) {
        let Some(c) = self.readable(id, channel).await else {
            return;
        };
        let is_new = !self.reg.channels.contains_key(&c);
        if is_new && self.reg.channels.len() >= self.reg.state.config.max_subscriptions {
            let msg = format!(
                "at most {} subscriptions per connection",
                self.reg.state.config.max_subscriptions
            );
            self.error(id, ErrorCode::BadRequest, msg).await;
            return;
        }
        // With `since`, live messages are held while the history is read, then joined.
        let position = match self.reg.join(&c, since.is_some()).await {
            Ok(p) => p,
            Err(e) => return self.error(id, e.code(), e.to_string()).await,
        };
        let Some(since) = since else {
            self.reg.channels.entry(c.clone()).or_insert(0);
            // `seq` (an extra field): the stream position from which this subscription
            // delivers every durable message of the channel. A client that has received
            // nothing yet recovers from there after a disconnect.
            let reply = Reply {
                channel: Some(c),
                epoch: self.reg.state.current_epoch(),
                recovered: Some(true),
                missed: Some(0),
                seq: Some(position),
                ..Reply::ok(id)
            };
            return self.reply(reply).await;
        };
        self.recover(id, c, StreamPosition { seq: since, epoch }, position)
            .await;
    }

    /// The rest of a `subscribe` with `since`: the missed messages read back, the reply, then
    /// the replay joined with what was held live meanwhile. `position`: where the
    /// subscription's live delivery starts.
    async fn recover(&mut self, id: Option<u64>, c: Channel, since: StreamPosition, position: u64) {
        // The client asks for everything after `since` (it may have dropped messages this
        // session already wrote, on seeing a gap): that is the floor now.
        self.reg.channels.insert(c.clone(), since.seq);
        // `live_from`: every message after `position` reaches this subscription live (held
        // until caught up; what was stored while the channel was being opened was read back
        // before it became ready). A client already past it is answered without reading any
        // message back, once the stream's current epoch is confirmed to be its own. What
        // arrives live after the release waits in the session's queue, which this task only
        // reads once the reply and the replay are written.
        let live_from = (position > 0).then_some(position);
        let mut replay = match self.reg.catch_up(&c, &since, live_from).await {
            Ok(r) => r,
            Err(e) => {
                return self
                    .error(id, ErrorCode::Unavailable, format!("history unavailable: {e}"))
                    .await;
            }
        };
        if !replay.same_epoch {
            // Sequences restarted: what was written before says nothing about them.
            self.reg.channels.insert(c.clone(), 0);
        }
        let reply = Reply {
            channel: Some(c.clone()),
            epoch: Some(replay.epoch.clone()),
            recovered: Some(replay.recovered),
            missed: Some(replay.missed),
            ..Reply::ok(id)
        };
        self.reply(reply).await;
        if let Some(reader) = replay.reader.take()
            && self.stream_replay(&c, reader).await.is_err()
        {
            return;
        }
        let held = self.reg.release(&c);
        let _ = self.write_messages(held).await;
    }

    /// Writes a replay chunk by chunk: each chunk (at most the replay budget) is written and
    /// flushed before the next is read, so memory stays bounded whatever was missed. A read
    /// that fails half-way closes the connection: the client resumes from what it got.
    async fn stream_replay(&mut self, c: &Channel, mut reader: Reader) -> Result<(), ()> {
        let metrics = self.reg.state.metrics.clone();
        let mut replayed = 0u64;
        loop {
            if self.reg.handle.signal.code() != 0 {
                // Told to go (drain, slow consumer) mid-replay: the session loop closes it.
                return Err(());
            }
            match reader.next_chunk(&metrics).await {
                Ok(Some(chunk)) => {
                    replayed += chunk.len() as u64;
                    metrics.recovered_messages.inc_by(chunk.len() as u64);
                    self.write_messages(chunk).await?;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(channel = %c, error = %e, "replay failed half-way");
                    self.reg.handle.signal.close(CLOSE_INTERNAL);
                    return Err(());
                }
            }
        }
        // The read's cost, beyond the command's: the connection pays it back before its next.
        self.limiter
            .charge(u32::try_from(replayed / REPLAYED_PER_TOKEN).unwrap_or(u32::MAX));
        Ok(())
    }

    /// Writes channel messages the session has not written yet, then flushes, within the
    /// write deadline.
    async fn write_messages(&mut self, messages: Vec<std::sync::Arc<crate::message::Encoded>>) -> Result<(), ()> {
        let deadline = self.write_deadline();
        let written = tokio::time::timeout(deadline, self.write_all(messages)).await;
        match self.settle_write(written) {
            None => Ok(()),
            Some(_) => Err(()),
        }
    }

    async fn write_all(&mut self, messages: Vec<std::sync::Arc<crate::message::Encoded>>) -> Result<(), axum::Error> {
        let mut written = 0u64;
        for m in messages {
            if !self.admit(&m) {
                continue;
            }
            self.socket.feed(m.ws_message(self.format)).await?;
            written += 1;
        }
        self.socket.flush().await?;
        self.reg.state.metrics.messages_delivered.inc_by(written);
        Ok(())
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        channel: &str,
        event: String,
        data: serde_json::Value,
        durable: bool,
        msg_id: Option<String>,
    ) {
        let c = match Channel::parse(channel) {
            Ok(c) => c,
            Err(e) => return self.error(id, e.code(), e.to_string()).await,
        };
        if !self.claims.can_publish(&c) {
            return self
                .error(id, ErrorCode::Forbidden, format!("this token may not publish to {c}"))
                .await;
        }
        let prepared = match publish::prepare(
            &self.reg.state,
            publish::Origin::Caller(&self.claims.sub),
            &c,
            event,
            data,
            msg_id,
            durable,
        ) {
            Ok(p) => p,
            Err(e) => return self.error(id, e.code(), e.to_string()).await,
        };
        if !durable {
            return match prepared.send_live(&self.reg.state).await {
                Ok(()) => self.reply(Reply::ok(id)).await,
                Err(e) => self.error(id, e.code(), e.to_string()).await,
            };
        }
        // Wait for the JetStream ack off this task, so the connection keeps reading and
        // writing meanwhile; the reply goes through the outbound queue.
        let state = self.reg.state.clone();
        let tx = self.reg.handle.tx.clone();
        let format = self.format;
        tokio::spawn(
            async move {
                let reply = match prepared.send_durable(&state).await {
                    Ok(seq) => Reply {
                        seq: Some(seq),
                        ..Reply::ok(id)
                    },
                    Err(e) => Reply::err(id, e.code(), e.to_string()),
                };
                if let Some(m) = encode(format, &ServerFrame::Reply(reply)) {
                    let _ = tx.try_send(Outbound::Frame(Box::new(m)));
                }
            }
            .in_current_span(),
        );
    }

    async fn ack(&mut self, id: Option<u64>, channel: &str, seq: u64) {
        let Some(c) = self.readable(id, channel).await else {
            return;
        };
        match publish::forward_ack(&self.reg.state, &self.claims.sub, &c, seq).await {
            Ok(()) => {
                if id.is_some() {
                    self.reply(Reply::ok(id)).await;
                }
            }
            Err(e) => self.error(id, e.code(), e.to_string()).await,
        }
    }

    async fn refresh(&mut self, id: Option<u64>, token: &str) {
        let claims = match self.reg.state.authenticate(Some(token)).await {
            Ok(c) => c,
            Err(reason) => {
                let msg = format!("token refused ({reason}); the current one stays until it expires");
                return self.error(id, ErrorCode::Unauthorized, msg).await;
            }
        };
        if claims.sub != self.claims.sub {
            return self
                .error(id, ErrorCode::Forbidden, "a refreshed token must be for the same user")
                .await;
        }
        // Rights may have shrunk: leave channels the new token may not read.
        let lost: Vec<Channel> = self
            .reg
            .channels
            .keys()
            .filter(|c| !claims.can_read(c))
            .cloned()
            .collect();
        for c in lost {
            self.reg.unsubscribe(&c);
        }
        self.clock
            .expire_at(token_deadline(claims.exp, self.reg.state.verifier.leeway()));
        let exp = claims.exp;
        self.reg.handle.signal.set_issued_at(claims.iat);
        self.claims = claims;
        self.reply(Reply {
            exp: Some(exp),
            ..Reply::ok(id)
        })
        .await;
    }

    async fn presence(&mut self, id: Option<u64>, channel: &str) {
        let Some(c) = self.readable(id, channel).await else {
            return;
        };
        match self.reg.state.presence.get(&c, self.claims.is_service()).await {
            Ok(p) => {
                self.reply(Reply {
                    users: Some(p.users),
                    ..Reply::ok(id)
                })
                .await
            }
            Err(e) => self.error(id, e.code(), e.to_string()).await,
        }
    }
}
