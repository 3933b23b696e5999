//! Connecting to NATS and creating the JetStream streams Tidings needs.
//!
//! Both services start whether or not NATS is up: the client reconnects forever with a
//! capped, jittered backoff and logs every state change, and the [`Provisioner`] (re)creates
//! the streams each time the connection comes (back) up, so a NATS node restarted with an
//! empty store is repaired without restarting Tidings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::subject::{EVENTS_PREFIX, EVENTS_STREAM, NOTIFY_STREAM, NOTIFY_SUBJECT, STORED_PREFIX};

/// Longest pause between two reconnect attempts. Short, so that `/readyz` turns green within
/// a few seconds of NATS coming back.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How often the client pings a NATS server that sent nothing. async-nats drops the
/// connection when a third ping falls due with two unanswered, so a server that went silent
/// without closing the connection (a network partition: no RST, no FIN) is noticed within
/// about three intervals and `/readyz` turns 503 within 5 s. With async-nats' default (60 s)
/// a partitioned process stayed "ready" for up to three minutes. Any message from the server
/// resets the timer, so a busy connection sends no pings at all.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Duplicate window of `TIDINGS_EVENTS`: a `Nats-Msg-Id` seen within it is stored once.
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Publishes to JetStream and waits for the stream's ack (both the send and the ack can
/// fail with a [`PublishError`]). Empty `headers` publish without a header block.
pub async fn publish_acked<S: async_nats::subject::ToSubject>(
    js: &jetstream::Context,
    subject: S,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> std::result::Result<PublishAck, PublishError> {
    let sent = if headers.is_empty() {
        js.publish(subject, payload).await?
    } else {
        js.publish_with_headers(subject, headers, payload).await?
    };
    sent.await
}

/// Parses `TIDINGS_NATS_URL` (comma-separated list allowed).
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>> {
    let addrs: Vec<ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| Error::Config(format!("TIDINGS_NATS_URL entry {:?}: {e}", crate::redact::url(u))))
        })
        .collect::<Result<_>>()?;
    if addrs.is_empty() {
        return Err(Error::Config("TIDINGS_NATS_URL is empty".into()));
    }
    Ok(addrs)
}

/// How the client authenticates: credentials in the first URL that has any
/// (`nats://user:password@host`, or `nats://token@host`), percent-decoded. async-nats reads
/// none from a list of addresses, so they are passed as options.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    /// User and password.
    UserPassword(String, String),
    /// A token (user part without a password).
    Token(String),
}

/// The credentials the URLs carry, if any (see [`Credentials`]).
pub fn credentials(addrs: &[ServerAddr]) -> Option<Credentials> {
    let addr = addrs.iter().find(|a| a.username().is_some())?;
    let user = percent_decode(addr.username()?);
    Some(match addr.password() {
        Some(p) => Credentials::UserPassword(user, percent_decode(p)),
        None => Credentials::Token(user),
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Delay before reconnect attempt `attempt`: exponential from 50 ms, capped, full jitter.
pub fn reconnect_delay(attempt: usize) -> Duration {
    let exp = 50u64.saturating_mul(1u64 << attempt.min(16) as u32);
    let cap = exp.min(MAX_RECONNECT_DELAY.as_millis() as u64);
    Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
}

/// Prefix of the reply subjects of Tidings' processes (see `k8s/nats/accounts.conf`).
pub const INBOX_PREFIX: &str = "_INBOX_tidings";

/// Connects to NATS. Returns at once even when NATS is down (the client keeps retrying in the
/// background); `on_connect` is notified on every (re)connect.
pub async fn connect(urls: &str, name: &str, on_connect: Arc<Notify>) -> Result<Client> {
    let addrs = server_addrs(urls)?;
    // Logged on every state change: without the credentials the URLs may carry.
    let shown = crate::redact::urls(urls);
    let options = match credentials(&addrs) {
        Some(Credentials::UserPassword(user, password)) => ConnectOptions::with_user_and_password(user, password),
        Some(Credentials::Token(token)) => ConnectOptions::with_token(token),
        None => ConnectOptions::new(),
    };
    let options = options
        .name(name)
        // Tidings' own reply subjects (JetStream and KV answers, control answers) under a
        // prefix of their own, so that NATS permissions can keep other users of the account
        // (publishers, who subscribe to `_INBOX.>` for their own replies) from reading them.
        .custom_inbox_prefix(INBOX_PREFIX)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let on_connect = on_connect.clone();
            let urls = shown.clone();
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!(nats = %urls, "NATS connected");
                        on_connect.notify_one();
                    }
                    Event::Disconnected => tracing::warn!(nats = %urls, "NATS disconnected; reconnecting"),
                    Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
                    Event::Draining => tracing::info!("NATS connection draining"),
                    Event::Closed => tracing::warn!("NATS connection closed"),
                    Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer: messages dropped"),
                    Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
                    Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
                }
            }
        });
    async_nats::connect_with_options(addrs, options)
        .await
        .map_err(Error::nats)
}

/// Whether the client is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

/// Default of `TIDINGS_EVENTS_MAX_BYTES`: 1 GiB of durable messages in all.
pub const DEFAULT_EVENTS_MAX_BYTES: i64 = 1 << 30;

/// Configuration of `TIDINGS_EVENTS`: every durable channel message, replayable until
/// `max_age` or `max_per_channel` drops it (or the stream's byte limit, by default
/// [`DEFAULT_EVENTS_MAX_BYTES`]: set `max_bytes` for `TIDINGS_EVENTS_MAX_BYTES`), re-published with its sequence headers on
/// `tidings.stored.>` for the gateways' fan-out.
pub fn events_stream_config(max_age: Duration, max_per_channel: i64, replicas: usize) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("Tidings durable channel events (replay and recovery)".to_owned()),
        subjects: vec![format!("{EVENTS_PREFIX}.>")],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age,
        max_messages_per_subject: max_per_channel,
        max_bytes: DEFAULT_EVENTS_MAX_BYTES,
        num_replicas: replicas,
        duplicate_window: EVENTS_DUPLICATE_WINDOW,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: format!("{EVENTS_PREFIX}.>"),
            destination: format!("{STORED_PREFIX}.>"),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Configuration of `TIDINGS_NOTIFY`: the work queue of notification requests; each request
/// is removed once a worker acknowledges it.
pub fn notify_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: NOTIFY_STREAM.to_owned(),
        description: Some("Tidings notification requests (work queue)".to_owned()),
        subjects: vec![NOTIFY_SUBJECT.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 86_400),
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    }
}

/// What a process does with a stream that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// This process's settings define the stream: update it when they differ.
    Owner,
    /// Another process defines it: create it with defaults if absent, never overwrite.
    User,
}

/// The settings Tidings controls; anything else the server fills in is left alone. Values
/// Tidings leaves at their defaults (0) are not compared, since the server reports its own
/// defaults for them (a 2-minute duplicate window, -1 messages per subject).
fn differs(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects != want.subjects
        || have.max_age != want.max_age
        || (want.max_messages_per_subject > 0 && have.max_messages_per_subject != want.max_messages_per_subject)
        || (want.max_bytes > 0 && have.max_bytes != want.max_bytes)
        || have.num_replicas != want.num_replicas
        || (!want.duplicate_window.is_zero() && have.duplicate_window != want.duplicate_window)
        || have.allow_direct != want.allow_direct
        || have.republish != want.republish
        || have.description != want.description
}

/// Creates the stream, or updates it if this process owns it and its settings differ.
/// Safe when many replicas run it at once: a lost creation race is retried as an update.
#[tracing::instrument(skip_all, fields(stream = %want.name, ?ownership))]
pub async fn ensure_stream(
    js: &jetstream::Context,
    want: &stream::Config,
    ownership: Ownership,
) -> Result<stream::Info> {
    let mut last_err = None;
    for attempt in 0..6u32 {
        if attempt > 0 {
            tokio::time::sleep(reconnect_delay(attempt as usize)).await;
        }
        let mut s = match js.get_or_create_stream(want.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(stream = %want.name, error = %e, attempt, "creating stream failed; retrying");
                last_err = Some(Error::nats(e));
                continue;
            }
        };
        let info = match s.info().await {
            Ok(i) => i.clone(),
            Err(e) => {
                last_err = Some(Error::nats(e));
                continue;
            }
        };
        if ownership == Ownership::User || !differs(&info.config, want) {
            return Ok(info);
        }
        match js.update_stream(want.clone()).await {
            Ok(info) => {
                tracing::info!(stream = %want.name, "stream settings updated");
                return Ok(info);
            }
            Err(e) => {
                tracing::debug!(stream = %want.name, error = %e, attempt, "updating stream failed; retrying");
                last_err = Some(Error::nats(e));
            }
        }
    }
    tracing::warn!(stream = %want.name, "could not create or update the stream");
    Err(last_err.unwrap_or(Error::Timeout("creating or updating a stream")))
}

/// The stream's identity for clients' `epoch`: its creation time in nanoseconds, which
/// changes whenever the stream is deleted and recreated.
pub fn epoch_of(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// Keeps the streams in place for as long as the process runs, and says whether they are.
#[derive(Clone)]
pub struct Provisioner {
    ready: Arc<AtomicBool>,
    /// Counts the rounds in which every stream was found in place: it moves after each
    /// (re)connect, once JetStream answers again.
    rounds: tokio::sync::watch::Receiver<u64>,
    epochs: Arc<std::sync::RwLock<std::collections::HashMap<String, String>>>,
}

impl Provisioner {
    /// Starts provisioning `streams` now and after every reconnect.
    pub fn spawn(client: Client, on_connect: Arc<Notify>, streams: Vec<(stream::Config, Ownership)>) -> Self {
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let epochs: Arc<std::sync::RwLock<std::collections::HashMap<String, String>>> = Arc::default();
        let seen = epochs.clone();
        let (round_done, rounds) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            let js = jetstream::new(client.clone());
            loop {
                // Wait for a connection first, so the first attempt does not burn its retries.
                if !is_connected(&client) {
                    on_connect.notified().await;
                }
                let mut ok = true;
                for (cfg, ownership) in &streams {
                    match ensure_stream(&js, cfg, *ownership).await {
                        Ok(info) => {
                            let epoch = epoch_of(&info);
                            tracing::info!(stream = %cfg.name, %epoch, messages = info.state.messages, "stream ready");
                            if let Ok(mut e) = seen.write() {
                                e.insert(cfg.name.clone(), epoch);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(stream = %cfg.name, error = %e, "stream not ready");
                            ok = false;
                        }
                    }
                }
                flag.store(ok, Ordering::Release);
                if ok {
                    round_done.send_modify(|n| *n += 1);
                    // Again after the next reconnect (the server may have lost its store).
                    on_connect.notified().await;
                } else {
                    tokio::time::sleep(MAX_RECONNECT_DELAY).await;
                }
            }
        });
        Provisioner { ready, epochs, rounds }
    }

    /// Moves after every (re)connect once the streams are in place again: what may have been
    /// missed while disconnected can then be read back.
    pub fn rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rounds.clone()
    }

    /// The epoch (see [`epoch_of`]) of `stream` when it was last provisioned.
    pub fn epoch(&self, stream: &str) -> Option<String> {
        self.epochs.read().ok()?.get(stream).cloned()
    }

    /// Whether every stream was last seen in place.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_come_from_the_urls() {
        use super::{Credentials, credentials, server_addrs};
        let of = |urls: &str| credentials(&server_addrs(urls).unwrap());
        assert_eq!(of("nats://a:4222,nats://b:4222"), None);
        assert_eq!(
            of("nats://a:4222,nats://tidings:p%40ss%3Aw@b:4222"),
            Some(Credentials::UserPassword("tidings".into(), "p@ss:w".into()))
        );
        assert_eq!(of("nats://s3cr3t@a:4222"), Some(Credentials::Token("s3cr3t".into())));
    }

    use super::*;

    #[test]
    fn addrs() {
        assert_eq!(server_addrs("nats://a:1, nats://b:2").unwrap().len(), 2);
        assert!(server_addrs("").is_err());
        assert!(server_addrs("http://[::1").is_err());
    }

    #[test]
    fn delays_are_capped_and_jittered() {
        for attempt in 0..100 {
            let d = reconnect_delay(attempt);
            assert!(d <= MAX_RECONNECT_DELAY, "{d:?}");
        }
        assert!(reconnect_delay(0) <= Duration::from_millis(50));
    }

    #[test]
    fn events_stream_republishes_to_the_stored_prefix() {
        let c = events_stream_config(Duration::from_secs(60), 10, 3);
        assert_eq!(c.subjects, vec!["tidings.events.>".to_string()]);
        let rp = c.republish.unwrap();
        assert_eq!(
            (rp.source.as_str(), rp.destination.as_str()),
            ("tidings.events.>", "tidings.stored.>")
        );
        assert_eq!(c.num_replicas, 3);
        assert_eq!(notify_stream_config(1).retention, stream::RetentionPolicy::WorkQueue);
    }
}
