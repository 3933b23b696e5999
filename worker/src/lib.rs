//! `tidings-worker`: the notification pipeline.
//!
//! Workers share durable JetStream pull consumers, so any number of replicas split the work
//! and each message is processed by one of them; all state lives in JetStream (statuses,
//! delivery jobs, dead letters) and KV (preferences, templates, inbox). See `docs/NOTIFICATIONS.md`.
#![warn(missing_docs)]

pub mod attempt;
pub mod batch;
pub mod breaker;
pub mod deliver;
pub mod email;
pub mod error;
pub mod inapp;
pub mod inbox_tally;
pub mod intake;
pub mod jobs;
pub mod kv_mirror;
pub mod metrics;
pub mod poison;
pub mod prefs;
pub mod progress;
pub mod provider;
pub mod push;
pub mod quiet;
pub mod render;
pub mod retry;
pub mod sms;
pub mod streams;
pub mod targets;
pub mod templates;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt as _;
use tidings_shared::config::WorkerConfig;
use tidings_shared::nats::{self, Ownership, Provisioner};
use tidings_shared::notify::DeliveryChannel;
use tidings_shared::notify::names::{DELIVERY_PREFIX, DELIVERY_STREAM};
use tidings_shared::ops::Health;
use tidings_shared::store::{self, Store};
use tidings_shared::subject::NOTIFY_STREAM;
use tokio::sync::{Notify, watch};

pub use error::{Error, Result};
pub use metrics::Metrics;

/// Notifications processed at once by one worker.
const INTAKE_CONCURRENCY: usize = 64;
/// Deliveries attempted at once by one worker.
const DELIVERY_CONCURRENCY: usize = 64;
/// Templates rendered at once by one worker (on the blocking pool): with fuel, a render is
/// milliseconds at most, so a few threads keep up, and a flood of heavy templates cannot
/// take more than these.
const RENDER_CONCURRENCY: usize = 4;
/// How long a request may be in hand before JetStream gives it to another worker (a worker
/// that died): planning takes milliseconds.
pub(crate) const INTAKE_ACK_WAIT: Duration = Duration::from_secs(10);

/// What the pipeline's steps share; cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    /// NATS.
    pub nats: async_nats::Client,
    /// JetStream.
    pub js: async_nats::jetstream::Context,
    /// Preferences, templates, inbox, statuses.
    pub store: Store,
    /// Templates, kept in memory through a watch on their bucket.
    pub templates: templates::TemplateCache,
    /// Preferences, kept in memory through a watch on their bucket (behind a read barrier).
    pub prefs: prefs::PrefsCache,
    /// When to count a user's inbox against `inbox_max_per_user`.
    pub inbox_tally: Arc<inbox_tally::InboxTally>,
    /// Renders templates off the runtime, within their budget.
    pub renderer: render::Renderer,
    /// Metrics.
    pub metrics: Metrics,
    /// Webhook client.
    pub webhook: webhook::WebhookSender,
    /// SMTP relays (or the file transport).
    pub mailer: Arc<email::Mailer>,
    /// SMS provider, when configured.
    pub sms: Option<Arc<sms::SmsSender>>,
    /// Web Push sender.
    pub push: Arc<push::PushSender>,
    /// Attempts per channel before a dead letter.
    pub max_attempts: u32,
    /// How long a delivery job may go without an ack before JetStream hands it out again.
    pub delivery_ack_wait: Duration,
    /// Most push subscriptions of one user sent to (the newest ones).
    pub push_max_subscriptions: usize,
    /// Most inbox entries kept per user.
    pub inbox_max_per_user: usize,
    /// First retry delay.
    pub retry_base: Duration,
    /// Open batches (KV).
    pub batches: async_nats::jetstream::kv::Store,
    /// How long a batch stays open.
    pub batch_window: Duration,
    /// Circuit breakers per delivery target (KV).
    pub breakers: breaker::Breakers,
}

/// The streams a worker keeps in place: it owns `TIDINGS_NOTIFY` and the pipeline's own
/// streams, and creates `TIDINGS_EVENTS` with default retention if no gateway did yet
/// (gateways own its settings).
pub fn streams(config: &WorkerConfig) -> Vec<(async_nats::jetstream::stream::Config, Ownership)> {
    let replicas = usize::from(config.common.stream_replicas);
    vec![
        (nats::notify_stream_config(replicas), Ownership::Owner),
        (
            nats::events_stream_config(Duration::from_secs(86_400), 10_000, replicas),
            Ownership::User,
        ),
        (store::status_stream_config(replicas), Ownership::Owner),
        (streams::delivery_stream_config(replicas), Ownership::Owner),
        (streams::dead_letter_stream_config(replicas), Ownership::Owner),
        (streams::batch_items_stream_config(replicas), Ownership::Owner),
    ]
}

/// Runs a worker until `shutdown` resolves: then it stops taking work, finishes what it
/// holds, and returns.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let metrics = Metrics::new()?;
    let on_connect = Arc::new(Notify::new());
    let name = format!("tidings-worker/{}", tidings_shared::config::hostname());
    let client = nats::connect(&config.common.nats_url, &name, on_connect.clone()).await?;
    let provisioner = Provisioner::spawn(client.clone(), on_connect, streams(&config));
    let health = Health::new(client.clone(), provisioner.clone(), metrics.registry.clone());
    let webhook = webhook::WebhookSender::new(config.webhook_secret.as_deref(), config.common.webhook_allow_private)
        .map_err(|e| tidings_shared::Error::Config(format!("HTTP client: {e}")))?;
    let mailer = Arc::new(email::Mailer::new(
        &config.smtp_url,
        &config.email_from,
        config.smtp_ca_file.as_deref(),
    )?);
    let sms = sms::SmsSender::new(
        config.sms_api_url.as_deref(),
        config.sms_account_sid.as_deref(),
        config.sms_auth_token.as_deref(),
        config.sms_from.as_deref(),
    )
    .map(Arc::new);
    let vapid = match &config.common.vapid_private_key_file {
        Some(path) => Some(Arc::new(tidings_shared::vapid::Vapid::from_file(path)?)),
        None => {
            tracing::info!("TIDINGS_VAPID_PRIVATE_KEY_FILE is not set: push deliveries will fail with that reason");
            None
        }
    };
    let push_client = provider::guarded_client(config.common.webhook_allow_private)
        .map_err(|e| tidings_shared::Error::Config(format!("HTTP client: {e}")))?;
    let push = Arc::new(push::PushSender::new(
        push_client,
        vapid,
        config.vapid_subject.clone(),
        config.common.webhook_allow_private,
    ));
    if sms.is_none() {
        tracing::info!("SMS is not configured: SMS deliveries will fail with that reason");
    }
    if config.webhook_secret.is_none() {
        tracing::warn!("TIDINGS_WEBHOOK_SECRET is not set: webhooks go out unsigned");
    }
    let listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "worker metrics listening");

    let (stop_tx, stop) = watch::channel(false);
    let senders = Senders {
        webhook,
        mailer,
        sms,
        push,
    };
    let pipeline = tokio::spawn(pipeline(
        client.clone(),
        provisioner,
        metrics.clone(),
        senders,
        config.clone(),
        stop,
    ));
    let drain = health.clone();
    axum::serve(listener, health.router::<()>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain.start_draining();
            tracing::info!("stopping: no new work; finishing what is in hand");
            let _ = stop_tx.send(true);
        })
        .await?;
    match tokio::time::timeout(Duration::from_secs(25), pipeline).await {
        Ok(_) => {}
        Err(_) => tracing::warn!("work in hand did not finish in 25 s; JetStream will hand it to another worker"),
    }
    if let Err(e) = client.flush().await {
        tracing::debug!(error = %e, "final NATS flush failed");
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The external channels' senders.
struct Senders {
    webhook: webhook::WebhookSender,
    mailer: Arc<email::Mailer>,
    sms: Option<Arc<sms::SmsSender>>,
    push: Arc<push::PushSender>,
}

/// The worker's work: once NATS and the store are ready, the intake consumer and one
/// delivery consumer per external channel, until `stop`.
async fn pipeline(
    client: async_nats::Client,
    provisioner: Provisioner,
    metrics: Metrics,
    senders: Senders,
    config: WorkerConfig,
    stop: watch::Receiver<bool>,
) {
    let js = async_nats::jetstream::new(client.clone());
    let replicas = usize::from(config.common.stream_replicas);
    let thresholds = breaker::Thresholds::from_config(&config.breaker);
    let Some((store, batches, breakers)) = open_store(&js, &provisioner, replicas, thresholds, &stop).await else {
        return;
    };
    // A breaker counts as open in the gauge until a probe is this overdue (see gauge::series).
    let stale = breakers.thresholds().max_open + Duration::from_millis(config.delivery_ack_wait_ms);
    tokio::spawn(breaker::gauge::follow(
        breakers.bucket().clone(),
        metrics.breaker_open.clone(),
        stale,
    ));
    // Planning reads a template per notification: kept in memory, current through a watch.
    let templates = templates::TemplateCache::spawn(store.templates_bucket().clone());
    let budget = tidings_shared::template::Budget {
        fuel: config.template_fuel,
        max_bytes: config.template_max_bytes,
    };
    // And preferences, read per notification by planning and by each delivery attempt.
    let prefs = prefs::PrefsCache::spawn(store.clone(), store.preferences_bucket().clone());
    let ctx = Ctx {
        templates,
        prefs,
        inbox_tally: Arc::new(inbox_tally::InboxTally::new(config.inbox_max_per_user)),
        renderer: render::Renderer::new(budget, RENDER_CONCURRENCY),
        nats: client,
        js: js.clone(),
        store: store.clone(),
        metrics,
        webhook: senders.webhook,
        mailer: senders.mailer,
        sms: senders.sms,
        push: senders.push,
        max_attempts: config.retry_max_attempts,
        delivery_ack_wait: Duration::from_millis(config.delivery_ack_wait_ms),
        push_max_subscriptions: config.push_max_subscriptions,
        inbox_max_per_user: config.inbox_max_per_user,
        retry_base: Duration::from_millis(config.retry_base_ms),
        batches,
        batch_window: Duration::from_millis(config.batch_window_ms),
        breakers,
    };
    tokio::spawn(inapp::ack_loop(ctx.clone(), store));
    let intake = consume(
        ctx.clone(),
        NOTIFY_STREAM,
        "tidings-intake",
        Vec::new(),
        INTAKE_ACK_WAIT,
        INTAKE_CONCURRENCY,
        stop.clone(),
        // Boxed: the handler's future is large, and `for_each_concurrent` would otherwise
        // copy all of it for every message.
        |ctx, msg| Box::pin(async move { intake::handle(&ctx, msg).await }),
    );
    // One consumer per channel, so a slow or failing provider never holds back another
    // channel's deliveries.
    let deliveries = DeliveryChannel::ALL
        .into_iter()
        .filter(|c| *c != DeliveryChannel::InApp)
        .map(|channel| {
            let ack_wait = Duration::from_millis(config.delivery_ack_wait_ms);
            consume_deliveries(ctx.clone(), channel, ack_wait, stop.clone())
        });
    tokio::join!(intake, futures::future::join_all(deliveries));
}

/// What [`open_store`] opens: the store, the batches bucket and the breakers.
type Opened = (Store, async_nats::jetstream::kv::Store, breaker::Breakers);

/// Waits for NATS and the streams, then opens the store, the batches bucket and the
/// breakers' bucket (retried every 200 ms); `None` if stopped first.
async fn open_store(
    js: &async_nats::jetstream::Context,
    provisioner: &Provisioner,
    replicas: usize,
    thresholds: breaker::Thresholds,
    stop: &watch::Receiver<bool>,
) -> Option<Opened> {
    loop {
        if *stop.borrow() {
            return None;
        }
        if provisioner.is_ready() {
            let opened = async {
                let store = Store::open(js.clone(), replicas).await?;
                let batches = store::ensure_kv(js, tidings_shared::notify::names::BATCHES_BUCKET, replicas).await?;
                let breakers = breaker::Breakers::open(js, replicas, thresholds).await?;
                Ok::<_, crate::Error>((store, batches, breakers))
            };
            match opened.await {
                Ok(s) => return Some(s),
                Err(e) => tracing::warn!(error = %e, "opening the notification store failed; retrying"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stopped(stop.clone()) => return None,
        }
    }
}

/// The delivery consumer of one external channel.
async fn consume_deliveries(ctx: Ctx, channel: DeliveryChannel, ack_wait: Duration, stop: watch::Receiver<bool>) {
    let channel = channel.as_str();
    consume(
        ctx,
        DELIVERY_STREAM,
        &format!("tidings-delivery-{channel}"),
        // Jobs are on `<prefix>.<channel>.<id>`; a job published by hand (a dead
        // letter replayed) may be on `<prefix>.<channel>`.
        vec![
            format!("{DELIVERY_PREFIX}.{channel}"),
            format!("{DELIVERY_PREFIX}.{channel}.>"),
        ],
        // Counted from when the worker starts a job (it sends a progress ack then).
        ack_wait,
        DELIVERY_CONCURRENCY,
        stop,
        |ctx, msg| Box::pin(async move { deliver::handle(&ctx, msg).await }),
    )
    .await;
}

/// Runs a durable pull consumer shared by every worker, `concurrency` messages at a time,
/// until `stop`; then finishes the messages in hand. Recreated after errors.
#[allow(clippy::too_many_arguments)]
async fn consume<F, Fut>(
    ctx: Ctx,
    stream: &str,
    durable: &str,
    filters: Vec<String>,
    ack_wait: Duration,
    concurrency: usize,
    stop: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(Ctx, async_nats::jetstream::Message) -> Fut + Clone,
    Fut: Future<Output = ()>,
{
    while !*stop.borrow() {
        let consumer = async {
            let s = ctx.js.get_stream(stream).await.map_err(tidings_shared::Error::nats)?;
            let config = pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subjects: filters.clone(),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                // Unlimited: jobs waiting out quiet hours or a retry delay (NAK'd with a
                // delay) stay in the ack-pending set, and must not stall the channel.
                // Concurrency is bounded locally instead.
                max_ack_pending: -1,
                ..Default::default()
            };
            let consumer: async_nats::jetstream::consumer::PullConsumer = s
                .get_or_create_consumer(durable, config.clone())
                .await
                .map_err(tidings_shared::Error::nats)?;
            // A consumer left by an older worker with other filters is brought up to date.
            let have = &consumer.cached_info().config;
            let mut have_filters = have.filter_subjects.clone();
            if !have.filter_subject.is_empty() {
                have_filters.push(have.filter_subject.clone());
            }
            if have_filters == filters {
                return Ok(consumer);
            }
            tracing::info!(consumer = durable, ?filters, "updating the consumer's filters");
            s.update_consumer(config).await.map_err(tidings_shared::Error::nats)
        };
        let messages = match consumer.await {
            // Fetch no more than can be worked on, so little waits in this worker's buffer.
            Ok(c) => c
                .stream()
                .max_messages_per_batch(concurrency)
                .messages()
                .await
                .map_err(tidings_shared::Error::nats),
            Err(e) => Err(e),
        };
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = durable, error = %e, "consumer unavailable; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = stopped(stop.clone()) => return,
                }
            }
        };
        tracing::info!(consumer = durable, "consuming");
        messages
            .take_until(stopped(stop.clone()))
            .for_each_concurrent(concurrency, |m| {
                let ctx = ctx.clone();
                let handler = handler.clone();
                async move {
                    match m {
                        Ok(msg) => handler(ctx, msg).await,
                        Err(e) => tracing::debug!(error = %e, "consumer stream hiccup"),
                    }
                }
            })
            .await;
    }
}
