//! Configuration of both services (contract §1): every setting is a `--kebab-case` flag and
//! a `TIDINGS_*` environment variable, with the contract's defaults.
//!
//! Parsing happens once at startup; a value that cannot be used stops the process with a
//! message naming the variable, rather than failing later under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::error::{Error, Result};

mod breaker;
pub use breaker::BreakerConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Settings every Tidings process shares.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// NATS server URL(s); a comma-separated list lets the client fail over between nodes.
    #[arg(
        long,
        env = "TIDINGS_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// Log line format.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// OTLP/HTTP collector base URL (e.g. http://otel-collector:4318); unset = no trace export.
    #[arg(long, env = "TIDINGS_OTLP_ENDPOINT", hide_env_values = true)]
    pub otlp_endpoint: Option<String>,

    /// Replicas of the streams and KV buckets this process creates (3 on a NATS cluster).
    #[arg(long, env = "TIDINGS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,

    /// Allow http:// and private, loopback or link-local addresses for webhook and push URLs
    /// (local use and tests only: otherwise this opens SSRF into the cluster).
    #[arg(long, env = "TIDINGS_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// PEM file (PKCS#8 or SEC1) with the VAPID P-256 private key for Web Push.
    #[arg(long, env = "TIDINGS_VAPID_PRIVATE_KEY_FILE")]
    pub vapid_private_key_file: Option<PathBuf>,
}

/// `tidings-gateway`: the stateless WebSocket/SSE/HTTP edge.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tidings-gateway",
    version,
    about = "Tidings gateway: WebSocket, SSE and HTTP edge fanning NATS messages out to clients"
)]
pub struct GatewayConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonConfig,

    /// Address to listen on for WebSocket, SSE, HTTP API, health and metrics.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// This node's id, shown to clients and in metrics [default: the host name].
    #[arg(long, env = "TIDINGS_NODE_ID")]
    pub node_id: Option<String>,

    /// HS256 secret for client tokens.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key for RS256 (RSA) or ES256 (P-256) client tokens.
    #[arg(long, env = "TIDINGS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Interval of WebSocket pings; a peer silent for two intervals is closed.
    #[arg(long, env = "TIDINGS_HEARTBEAT_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub heartbeat_ms: u64,

    /// Largest client frame accepted (larger: close 1009).
    #[arg(long, env = "TIDINGS_MAX_FRAME_BYTES", default_value_t = 65_536, value_parser = bytes_in(64, 16 << 20))]
    pub max_frame_bytes: usize,

    /// Largest publisher body delivered (larger: dropped and counted).
    #[arg(long, env = "TIDINGS_MAX_PAYLOAD_BYTES", default_value_t = 65_536, value_parser = bytes_in(64, 16 << 20))]
    pub max_payload_bytes: usize,

    /// Largest message frame written to a client, in either wire format (a message whose
    /// encoded frame is larger is rejected once, at the gateway, and counted); at least the
    /// payload limit plus 1 KiB of envelope [default: 256 KiB, or 4 × the payload limit + 1 KiB
    /// if larger].
    #[arg(long, env = "TIDINGS_MAX_OUTBOUND_FRAME_BYTES", value_parser = bytes_in(2048, 256 << 20))]
    pub max_outbound_frame_bytes: Option<usize>,

    /// How long a SIGTERM drain spreads the connection closes over, in milliseconds.
    #[arg(long, env = "TIDINGS_DRAIN_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_ms: u64,

    /// After the drain, how long connections still open get to finish before the process
    /// exits anyway, in milliseconds.
    #[arg(long, env = "TIDINGS_SHUTDOWN_GRACE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shutdown_grace_ms: u64,

    /// How long a client has to send a complete request head (line and headers), in
    /// milliseconds; also how long a keep-alive connection may sit idle between requests.
    #[arg(long, env = "TIDINGS_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub header_read_timeout_ms: u64,

    /// How long a write to a client may make no progress before the connection is closed
    /// (4009 when a close frame can still go out), in milliseconds.
    #[arg(long, env = "TIDINGS_WRITE_DEADLINE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub write_deadline_ms: u64,

    /// Connections not in an authenticated exchange (not authenticated yet, or idle between
    /// authenticated requests); beyond it the oldest of them is closed to make room.
    #[arg(long, env = "TIDINGS_MAX_PENDING_CONNECTIONS", default_value_t = 2_048, value_parser = count_in(1, 1_000_000))]
    pub max_pending_connections: usize,

    /// Connections one user may hold on this node (more: close 4008 / 429); service tokens
    /// are not counted.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_USER", default_value_t = 1_000, value_parser = count_in(1, 10_000_000))]
    pub max_connections_per_user: usize,

    /// Bytes of stored messages one replay (subscribe with `since`, SSE resume, history) reads
    /// ahead of what the socket has taken [default: 1 MiB, or the outbound frame limit if
    /// larger].
    #[arg(long, env = "TIDINGS_REPLAY_BUDGET_BYTES", value_parser = bytes_in(64 << 10, 1 << 30))]
    pub replay_budget_bytes: Option<usize>,

    /// Sustained HTTP API requests per second per user token (service tokens are not limited).
    #[arg(long, env = "TIDINGS_HTTP_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_rate: u32,

    /// HTTP API requests a user token may send in a burst above the rate.
    #[arg(long, env = "TIDINGS_HTTP_BURST", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_burst: u32,

    /// Sustained HTTP API requests per second per client address (an IPv6 /64), for requests
    /// without a service token.
    #[arg(long, env = "TIDINGS_HTTP_ADDRESS_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_address_rate: u32,

    /// HTTP API requests one address may send in a burst above its rate.
    #[arg(long, env = "TIDINGS_HTTP_ADDRESS_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_address_burst: u32,

    /// How long durable events are kept (e.g. 24h, 7d, 90m).
    #[arg(long, env = "TIDINGS_EVENTS_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub events_max_age: Duration,

    /// How many durable events are kept per channel.
    #[arg(long, env = "TIDINGS_EVENTS_MAX_PER_CHANNEL", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub events_max_per_channel: i64,

    /// Most bytes `TIDINGS_EVENTS` holds in all (the oldest messages are dropped past it), so
    /// that publishers cannot fill the NATS servers' disks within the retention time.
    #[arg(long, env = "TIDINGS_EVENTS_MAX_BYTES", default_value_t = crate::nats::DEFAULT_EVENTS_MAX_BYTES,
        value_parser = clap::value_parser!(i64).range(65_536..))]
    pub events_max_bytes: i64,

    /// Largest number of client connections this node accepts (more: 503 at upgrade).
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 200_000, value_parser = count_in(1, 10_000_000))]
    pub max_connections: usize,

    /// Largest number of channels one connection may subscribe to.
    #[arg(long, env = "TIDINGS_MAX_SUBSCRIPTIONS", default_value_t = 512, value_parser = count_in(1, 100_000))]
    pub max_subscriptions: usize,

    /// Frames queued for one client before it is a slow consumer (closed with 4009).
    #[arg(long, env = "TIDINGS_OUTBOUND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub outbound_queue: u32,

    /// Sustained client commands per second per connection (beyond: `rate_limited`).
    #[arg(long, env = "TIDINGS_COMMAND_RATE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub command_rate: u32,

    /// Commands a connection may send in a burst above the rate; this many refused commands in
    /// a row close the connection with 4008.
    #[arg(long, env = "TIDINGS_COMMAND_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub command_burst: u32,

    /// Most missed messages replayed to one subscription; a client further behind is told
    /// `recovered:false` (and reloads) instead of starving the node.
    #[arg(long, env = "TIDINGS_REPLAY_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub replay_max: u32,

    /// How long a WebSocket client without a token in the URL or headers has to send its
    /// `auth` frame, milliseconds (then: close 4001).
    #[arg(long, env = "TIDINGS_AUTH_DEADLINE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub auth_deadline_ms: u64,

    /// Clock leeway on token `exp`/`nbf`, seconds (the contract allows at most 30).
    #[arg(long, env = "TIDINGS_JWT_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=30))]
    pub jwt_leeway_secs: u64,

    /// Longest token lifetime accepted: a token whose `exp` lies further ahead is refused, and
    /// a revocation is kept this long (e.g. 30d, 12h).
    #[arg(long, env = "TIDINGS_TOKEN_MAX_LIFETIME", default_value = "30d", value_parser = parse_duration)]
    pub token_max_lifetime: Duration,

    /// How long an operator control (disconnect, revoke, unsubscribe) waits for every
    /// gateway's answer, in milliseconds.
    #[arg(long, env = "TIDINGS_CONTROL_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub control_timeout_ms: u64,

    /// HMAC secret of GitHub webhooks; unset = the GitHub route is off.
    #[arg(long, env = "TIDINGS_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<String>,

    /// Origins (comma-separated, e.g. `https://app.example.com`) whose pages may call the HTTP
    /// API, `/sse` and `/client/tidings.mjs` from a browser; empty = same origin only.
    #[arg(long, env = "TIDINGS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

/// `tidings-worker`: the notification pipeline.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tidings-worker",
    version,
    about = "Tidings worker: preferences, quiet hours, templates, batching and delivery of notifications"
)]
pub struct WorkerConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonConfig,

    /// Address of the worker's /metrics, /healthz and /readyz.
    #[arg(long, env = "TIDINGS_METRICS_LISTEN", default_value = "127.0.0.1:9091")]
    pub metrics_listen: SocketAddr,

    /// SMTP relay(s), tried in order: smtp://host:port, smtp+starttls://user:pass@host:587,
    /// smtps://..., or file:///dir (one .eml per email).
    #[arg(
        long,
        env = "TIDINGS_SMTP_URL",
        default_value = "file:///tmp/tidings-mail",
        hide_env_values = true
    )]
    pub smtp_url: String,

    /// PEM file of an extra CA to trust for the SMTP relays' TLS (a private relay with its
    /// own certificate authority); the system's roots are trusted as well.
    #[arg(long, env = "TIDINGS_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,

    /// From address of emails.
    #[arg(long, env = "TIDINGS_EMAIL_FROM", default_value = "Tidings <tidings@localhost>")]
    pub email_from: String,

    /// Base URL of a Twilio-compatible SMS API.
    #[arg(long, env = "TIDINGS_SMS_API_URL")]
    pub sms_api_url: Option<String>,

    /// SMS account SID (basic-auth user).
    #[arg(long, env = "TIDINGS_SMS_ACCOUNT_SID")]
    pub sms_account_sid: Option<String>,

    /// SMS auth token (basic-auth password).
    #[arg(long, env = "TIDINGS_SMS_AUTH_TOKEN", hide_env_values = true)]
    pub sms_auth_token: Option<String>,

    /// Sender number of SMS.
    #[arg(long, env = "TIDINGS_SMS_FROM")]
    pub sms_from: Option<String>,

    /// VAPID subject (mailto: or https: URL) sent to push services.
    #[arg(long, env = "TIDINGS_VAPID_SUBJECT", default_value = "mailto:admin@localhost")]
    pub vapid_subject: String,

    /// Secret of the `Tidings-Signature` HMAC on webhook deliveries.
    #[arg(long, env = "TIDINGS_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// First retry delay; later ones double, with full jitter.
    #[arg(long, env = "TIDINGS_RETRY_BASE_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub retry_base_ms: u64,

    /// Attempts per channel before a delivery is dead-lettered.
    #[arg(long, env = "TIDINGS_RETRY_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub retry_max_attempts: u32,

    /// How long a delivery may run before JetStream hands it to another worker (a worker that
    /// died), in milliseconds; keep it above the slowest provider's timeout.
    #[arg(long, env = "TIDINGS_DELIVERY_ACK_WAIT_MS", default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(1000..=3_600_000))]
    pub delivery_ack_wait_ms: u64,

    /// Window in which low/normal notifications with one batch_key become one digest.
    #[arg(long, env = "TIDINGS_BATCH_WINDOW_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub batch_window_ms: u64,

    /// Instructions (MiniJinja fuel) one template part may run per render; a part over it
    /// fails its notification (nested loops over large data).
    #[arg(long, env = "TIDINGS_TEMPLATE_FUEL", default_value_t = crate::template::DEFAULT_FUEL,
        value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub template_fuel: u64,

    /// Largest rendered template part, in bytes; a larger one fails its notification.
    #[arg(long, env = "TIDINGS_TEMPLATE_MAX_BYTES", default_value_t = crate::template::DEFAULT_MAX_BYTES,
        value_parser = usize_in(1_024, 16 * 1024 * 1024, "bytes"))]
    pub template_max_bytes: usize,

    /// Most push subscriptions of one user a notification is sent to (the newest ones);
    /// preferences with more are refused when written.
    #[arg(long, env = "TIDINGS_PUSH_MAX_SUBSCRIPTIONS", default_value_t = crate::prefs::MAX_PUSH_SUBSCRIPTIONS,
        value_parser = usize_in(1, 1000, "subscriptions"))]
    pub push_max_subscriptions: usize,

    /// Most in-app inbox entries kept per user: past it (and a tenth more, so the trim runs
    /// once every many notifications) the oldest are dropped.
    #[arg(long, env = "TIDINGS_INBOX_MAX_PER_USER", default_value_t = 1_000,
        value_parser = usize_in(1, 100_000, "entries"))]
    pub inbox_max_per_user: usize,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub breaker: BreakerConfig,
}

/// A byte size between `min` and `max`.
fn bytes_in(min: u64, max: u64) -> impl clap::builder::TypedValueParser<Value = usize> {
    count_in(min, max)
}

/// A count between `min` and `max`.
fn count_in(min: u64, max: u64) -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser as _;
    clap::value_parser!(u64)
        .range(min..=max)
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// Smallest HS256 secret accepted, bytes (RFC 7518 §3.2: at least the hash's size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

impl GatewayConfig {
    /// Checks what no single setting's range can: that the settings agree with each other.
    /// A failure names the settings; the binary prints it and exits with code 2.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some(secret) = &self.jwt_secret
            && secret.len() < MIN_HS256_SECRET_BYTES
        {
            return bad(format!(
                "TIDINGS_JWT_SECRET is {} bytes: an HS256 secret needs at least {MIN_HS256_SECRET_BYTES}",
                secret.len()
            ));
        }
        let frame = self.outbound_frame_limit();
        if frame < self.max_payload_bytes + 1024 {
            return bad(format!(
                "TIDINGS_MAX_OUTBOUND_FRAME_BYTES ({frame}) must be at least TIDINGS_MAX_PAYLOAD_BYTES ({}) + 1024",
                self.max_payload_bytes
            ));
        }
        if self.replay_budget() < frame {
            return bad(format!(
                "TIDINGS_REPLAY_BUDGET_BYTES ({}) must hold at least one frame of TIDINGS_MAX_OUTBOUND_FRAME_BYTES ({frame})",
                self.replay_budget()
            ));
        }
        if self.token_max_lifetime < Duration::from_secs(60) {
            return bad("TIDINGS_TOKEN_MAX_LIFETIME must be at least 1m".into());
        }
        Ok(())
    }

    /// `TIDINGS_MAX_OUTBOUND_FRAME_BYTES`, or its default: 256 KiB, or room for a payload of
    /// the configured limit grown 4 times (MessagePack `nil`s as JSON) if that is more.
    pub fn outbound_frame_limit(&self) -> usize {
        self.max_outbound_frame_bytes
            .unwrap_or_else(|| (256 << 10).max(self.max_payload_bytes.saturating_mul(4) + 1024))
    }

    /// `TIDINGS_REPLAY_BUDGET_BYTES`, or its default: 1 MiB, or one outbound frame if larger.
    pub fn replay_budget(&self) -> usize {
        self.replay_budget_bytes
            .unwrap_or_else(|| (1 << 20).max(self.outbound_frame_limit()))
    }

    /// The node id: the configured one, else the host name, made safe for NATS subjects.
    pub fn node_id(&self) -> String {
        let raw = self.node_id.clone().unwrap_or_else(hostname);
        sanitize_node_id(&raw)
    }

    /// Reads the configured JWT keys into a verifier.
    pub fn verifier(&self) -> Result<crate::auth::Verifier> {
        let pem = match &self.jwt_public_key_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Error::Config(format!("TIDINGS_JWT_PUBLIC_KEY_FILE {}: {e}", path.display())))?,
            ),
            None => None,
        };
        Ok(
            crate::auth::Verifier::new(self.jwt_secret.as_deref().map(str::as_bytes), pem.as_deref())?
                .with_leeway(self.jwt_leeway_secs)
                .with_max_lifetime(self.token_max_lifetime.as_secs()),
        )
    }
}

/// The machine's host name (Kubernetes sets it to the pod name).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tidings".to_owned())
}

/// Keeps `[A-Za-z0-9_-]`, replacing anything else by `-`, so a node id can be a NATS token.
pub fn sanitize_node_id(raw: &str) -> String {
    let s: String = raw
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() { "tidings".to_owned() } else { s }
}

/// A parser of a count of `unit` between `min` and `max` (inclusive), whose error names
/// the bounds.
fn usize_in(
    min: usize,
    max: usize,
    unit: &'static str,
) -> impl Fn(&str) -> std::result::Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number of {unit}"))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is outside {min}..={max} {unit}"))
        }
    }
}

/// Parses `500ms`, `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 90s, 30m, 24h or 7d"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => Err(format!("unknown unit {other:?} in {s:?}: use ms, s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeMap;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let g = GatewayConfig::try_parse_from(["tidings-gateway"]).unwrap();
        assert_eq!(g.common.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(g.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(g.heartbeat_ms, 25_000);
        assert_eq!(g.max_frame_bytes, 65_536);
        assert_eq!(g.max_payload_bytes, 65_536);
        assert_eq!(g.common.stream_replicas, 1);
        assert_eq!(g.drain_ms, 10_000);
        assert_eq!(g.auth_deadline_ms, 5_000);
        assert_eq!(g.header_read_timeout_ms, 10_000);
        assert_eq!(g.write_deadline_ms, 10_000);
        assert!(g.validate().is_ok());
        assert_eq!(g.events_max_age, Duration::from_secs(86_400));
        assert_eq!(g.events_max_per_channel, 10_000);
        assert!(g.common.otlp_endpoint.is_none());
        assert!(!g.common.webhook_allow_private);

        let w = WorkerConfig::try_parse_from(["tidings-worker"]).unwrap();
        assert_eq!(w.metrics_listen.to_string(), "127.0.0.1:9091");
        assert_eq!(w.retry_base_ms, 1_000);
        assert_eq!(w.retry_max_attempts, 8);
        assert_eq!(w.batch_window_ms, 60_000);
        assert!(w.smtp_url.starts_with("file://"));
    }

    #[test]
    fn hardening_limits_have_defaults_and_bounds() {
        let w = WorkerConfig::try_parse_from(["tidings-worker"]).unwrap();
        assert_eq!(w.template_fuel, 250_000);
        assert_eq!(w.template_max_bytes, 256 * 1024);
        assert_eq!(w.push_max_subscriptions, 20);
        assert_eq!(w.inbox_max_per_user, 1_000);
        let g = GatewayConfig::try_parse_from(["tidings-gateway"]).unwrap();
        assert_eq!(g.events_max_bytes, 1 << 30);
        for (flag, value) in [
            ("--template-fuel", "10"),
            ("--template-max-bytes", "100"),
            ("--push-max-subscriptions", "0"),
            ("--inbox-max-per-user", "0"),
            ("--inbox-max-per-user", "lots"),
        ] {
            let err = WorkerConfig::try_parse_from(["tidings-worker", flag, value]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
        assert!(GatewayConfig::try_parse_from(["tidings-gateway", "--events-max-bytes", "1000"]).is_err());
    }

    /// Every `TIDINGS_*` variable a command reads, with the argument it sets; every such
    /// argument's flag is the kebab-case form of its name.
    fn wired(command: clap::Command) -> BTreeMap<String, String> {
        command
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_str()?.to_owned();
                let id = arg.get_id().as_str().to_owned();
                assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "flag of {env}");
                Some((env, id))
            })
            .collect()
    }

    fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(e, id)| (e.to_string(), id.to_string())).collect()
    }

    const COMMON: &[(&str, &str)] = &[
        ("TIDINGS_NATS_URL", "nats_url"),
        ("TIDINGS_LOG_FORMAT", "log_format"),
        ("TIDINGS_OTLP_ENDPOINT", "otlp_endpoint"),
        ("TIDINGS_STREAM_REPLICAS", "stream_replicas"),
        ("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private"),
        ("TIDINGS_VAPID_PRIVATE_KEY_FILE", "vapid_private_key_file"),
    ];

    #[test]
    fn flags_are_kebab_case_and_every_contract_variable_is_wired() {
        let mut gateway = expected(COMMON);
        gateway.extend(expected(&[
            ("TIDINGS_LISTEN", "listen"),
            ("TIDINGS_NODE_ID", "node_id"),
            ("TIDINGS_JWT_SECRET", "jwt_secret"),
            ("TIDINGS_JWT_PUBLIC_KEY_FILE", "jwt_public_key_file"),
            ("TIDINGS_HEARTBEAT_MS", "heartbeat_ms"),
            ("TIDINGS_MAX_FRAME_BYTES", "max_frame_bytes"),
            ("TIDINGS_MAX_PAYLOAD_BYTES", "max_payload_bytes"),
            ("TIDINGS_DRAIN_MS", "drain_ms"),
            ("TIDINGS_EVENTS_MAX_AGE", "events_max_age"),
            ("TIDINGS_EVENTS_MAX_PER_CHANNEL", "events_max_per_channel"),
            ("TIDINGS_EVENTS_MAX_BYTES", "events_max_bytes"),
            ("TIDINGS_MAX_CONNECTIONS", "max_connections"),
            ("TIDINGS_MAX_SUBSCRIPTIONS", "max_subscriptions"),
            ("TIDINGS_OUTBOUND_QUEUE", "outbound_queue"),
            ("TIDINGS_COMMAND_RATE", "command_rate"),
            ("TIDINGS_COMMAND_BURST", "command_burst"),
            ("TIDINGS_REPLAY_MAX", "replay_max"),
            ("TIDINGS_AUTH_DEADLINE_MS", "auth_deadline_ms"),
            ("TIDINGS_JWT_LEEWAY_SECS", "jwt_leeway_secs"),
            ("TIDINGS_GITHUB_WEBHOOK_SECRET", "github_webhook_secret"),
            ("TIDINGS_CORS_ORIGINS", "cors_origins"),
            ("TIDINGS_MAX_OUTBOUND_FRAME_BYTES", "max_outbound_frame_bytes"),
            ("TIDINGS_TOKEN_MAX_LIFETIME", "token_max_lifetime"),
            ("TIDINGS_CONTROL_TIMEOUT_MS", "control_timeout_ms"),
            ("TIDINGS_SHUTDOWN_GRACE_MS", "shutdown_grace_ms"),
            ("TIDINGS_HEADER_READ_TIMEOUT_MS", "header_read_timeout_ms"),
            ("TIDINGS_WRITE_DEADLINE_MS", "write_deadline_ms"),
            ("TIDINGS_MAX_PENDING_CONNECTIONS", "max_pending_connections"),
            ("TIDINGS_MAX_CONNECTIONS_PER_USER", "max_connections_per_user"),
            ("TIDINGS_REPLAY_BUDGET_BYTES", "replay_budget_bytes"),
            ("TIDINGS_HTTP_RATE", "http_rate"),
            ("TIDINGS_HTTP_BURST", "http_burst"),
            ("TIDINGS_HTTP_ADDRESS_RATE", "http_address_rate"),
            ("TIDINGS_HTTP_ADDRESS_BURST", "http_address_burst"),
        ]));
        assert_eq!(wired(GatewayConfig::command()), gateway);
        let mut worker = expected(COMMON);
        worker.extend(expected(&[
            ("TIDINGS_METRICS_LISTEN", "metrics_listen"),
            ("TIDINGS_SMTP_URL", "smtp_url"),
            ("TIDINGS_SMTP_CA_FILE", "smtp_ca_file"),
            ("TIDINGS_EMAIL_FROM", "email_from"),
            ("TIDINGS_SMS_API_URL", "sms_api_url"),
            ("TIDINGS_SMS_ACCOUNT_SID", "sms_account_sid"),
            ("TIDINGS_SMS_AUTH_TOKEN", "sms_auth_token"),
            ("TIDINGS_SMS_FROM", "sms_from"),
            ("TIDINGS_VAPID_SUBJECT", "vapid_subject"),
            ("TIDINGS_WEBHOOK_SECRET", "webhook_secret"),
            ("TIDINGS_RETRY_BASE_MS", "retry_base_ms"),
            ("TIDINGS_RETRY_MAX_ATTEMPTS", "retry_max_attempts"),
            ("TIDINGS_DELIVERY_ACK_WAIT_MS", "delivery_ack_wait_ms"),
            ("TIDINGS_BATCH_WINDOW_MS", "batch_window_ms"),
            ("TIDINGS_TEMPLATE_FUEL", "template_fuel"),
            ("TIDINGS_TEMPLATE_MAX_BYTES", "template_max_bytes"),
            ("TIDINGS_PUSH_MAX_SUBSCRIPTIONS", "push_max_subscriptions"),
            ("TIDINGS_INBOX_MAX_PER_USER", "inbox_max_per_user"),
            ("TIDINGS_BREAKER_FAILURES", "breaker_failures"),
            ("TIDINGS_BREAKER_WINDOW_MS", "breaker_window_ms"),
            ("TIDINGS_BREAKER_FAILURE_RATE", "breaker_failure_rate"),
            ("TIDINGS_BREAKER_MIN_REQUESTS", "breaker_min_requests"),
            ("TIDINGS_BREAKER_OPEN_MS", "breaker_open_ms"),
            ("TIDINGS_BREAKER_MAX_OPEN_MS", "breaker_max_open_ms"),
        ]));
        assert_eq!(wired(WorkerConfig::command()), worker);
        let g = GatewayConfig::try_parse_from([
            "tidings-gateway",
            "--nats-url",
            "nats://a:1,nats://b:2",
            "--events-max-age",
            "7d",
            "--events-max-per-channel",
            "5",
            "--stream-replicas",
            "3",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(g.events_max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(g.common.stream_replicas, 3);
        assert_eq!(g.common.log_format, LogFormat::Json);
        assert!(GatewayConfig::try_parse_from(["tidings-gateway", "--events-max-age", "soon"]).is_err());
        assert!(GatewayConfig::try_parse_from(["tidings-gateway", "--stream-replicas", "0"]).is_err());
        GatewayConfig::command().debug_assert();
        WorkerConfig::command().debug_assert();
    }

    #[test]
    fn inconsistent_or_out_of_range_settings_are_refused() {
        let parse = |args: &[&str]| {
            GatewayConfig::try_parse_from(std::iter::once("tidings-gateway").chain(args.iter().copied()))
        };
        let ok = parse(&["--jwt-secret", &"s".repeat(32)]).unwrap();
        assert!(ok.validate().is_ok());
        let short = parse(&["--jwt-secret", "short"]).unwrap();
        assert!(short.validate().unwrap_err().to_string().contains("at least 32"));
        // Unset, the frame limit follows the payload limit; set too low, it is refused.
        let derived = parse(&["--max-payload-bytes", "300000"]).unwrap();
        assert_eq!(derived.outbound_frame_limit(), 300_000 * 4 + 1024);
        assert!(derived.validate().is_ok());
        let frames = parse(&["--max-payload-bytes", "300000", "--max-outbound-frame-bytes", "262144"]).unwrap();
        assert!(
            frames
                .validate()
                .unwrap_err()
                .to_string()
                .contains("TIDINGS_MAX_OUTBOUND_FRAME_BYTES")
        );
        for bad in [
            &["--heartbeat-ms", "99999999999999"][..],
            &["--max-frame-bytes", "10"],
            &["--max-outbound-frame-bytes", "100"],
            &["--drain-ms", "18446744073709551615"],
            &["--write-deadline-ms", "0"],
            &["--max-pending-connections", "0"],
            &["--outbound-queue", "4294967295"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn node_ids_are_subject_safe() {
        assert_eq!(sanitize_node_id("gw.pod-1 x*"), "gw-pod-1-x-");
        assert_eq!(sanitize_node_id(""), "tidings");
    }
}
