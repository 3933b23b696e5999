//! `notify`: notifications per second through the worker pipeline, to in-app and to a
//! local webhook receiver, with end-to-end latency (request published → webhook received).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::Serialize;
use serde_json::json;

use crate::sysinfo;

/// Settings of one `notify` run.
#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// Where the gateway and NATS are.
    #[command(flatten)]
    pub target: crate::Target,
    /// Notifications to send.
    #[arg(long, default_value_t = 5_000)]
    pub count: usize,
    /// Requests per second (0: as fast as possible, a burst).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// PID of the worker, to report its CPU time.
    #[arg(long)]
    pub worker_pid: Option<u32>,
    /// PID of nats-server, to report its CPU time too (the gateway's is read from
    /// `/api/v1/stats`; the generator's, including the webhook receiver, from itself).
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = tidings_shared::config::parse_duration)]
    pub timeout: Duration,
    /// Where the result and the chart go.
    #[command(flatten)]
    pub output: crate::Output,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct NotifyResult {
    pub scenario: &'static str,
    pub machine: sysinfo::Machine,
    pub count: usize,
    pub offered_rate: u64,
    pub webhooks_received: usize,
    pub in_app_stored: usize,
    pub seconds: f64,
    pub notifications_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub worker_cpu_seconds: Option<f64>,
    /// nats-server's CPU seconds over the run (with `--nats-pid`).
    pub nats_cpu_seconds: Option<f64>,
    /// The gateway's CPU seconds over the run (it forwards the in-app messages).
    pub gateway_cpu_seconds: Option<f64>,
    /// This process's CPU seconds: publisher, webhook receiver, in-app counter.
    pub generator_cpu_seconds: f64,
    /// Every request reached both in-app and the webhook.
    pub clean: bool,
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver(seen: Seen) -> anyhow::Result<String> {
    async fn hook(
        axum::extract::State(seen): axum::extract::State<Seen>,
        headers: axum::http::HeaderMap,
    ) -> &'static str {
        if let Some(id) = headers.get("tidings-id").and_then(|v| v.to_str().ok()) {
            seen.lock()
                .map(|mut s| s.entry(id.to_owned()).or_insert_with(Instant::now).elapsed())
                .ok();
        }
        "ok"
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/hook"))
}

/// Runs the scenario.
pub async fn run(args: NotifyArgs) -> anyhow::Result<NotifyResult> {
    let machine = sysinfo::machine();
    crate::ensure_loopback(&args.target.url).await?;
    let user = format!("load-{}", std::process::id());
    let seen: Seen = Arc::default();
    let hook = receiver(seen.clone()).await?;
    configure(&args, &user, &hook).await?;

    let nats = async_nats::connect(&args.target.nats_url).await?;
    let in_app = count_in_app(&nats, &user).await?;
    let js = async_nats::jetstream::new(nats);
    let gateway_pid = crate::gateway_stats(&args.target.url, &args.target.secret).await?.pid;
    let pids = [
        args.worker_pid,
        args.nats_pid,
        Some(gateway_pid),
        Some(std::process::id()),
    ];
    let cpu_before = pids.map(|p| p.map(sysinfo::cpu_time).transpose());

    let start = Instant::now();
    let sent_at = send_requests(&js, &args, &user).await?;
    let deadline = start + args.timeout;
    loop {
        let webhooks = seen.lock().map(|s| s.len()).unwrap_or(0);
        let stored = in_app.load(std::sync::atomic::Ordering::Relaxed);
        if (webhooks >= args.count && stored >= args.count) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let [worker_cpu, nats_cpu, gateway_cpu, generator_cpu] = cpu_since(pids, cpu_before);
    let received: HashMap<String, Instant> = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut latencies: Vec<f64> = received
        .iter()
        .filter_map(|(id, at)| {
            sent_at
                .get(id)
                .map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let done = received.len().min(in_app.load(std::sync::atomic::Ordering::Relaxed));
    let in_app_stored = in_app.load(std::sync::atomic::Ordering::Relaxed);
    let result = NotifyResult {
        scenario: "notify",
        machine,
        count: args.count,
        offered_rate: args.rate,
        webhooks_received: received.len(),
        in_app_stored: in_app.load(std::sync::atomic::Ordering::Relaxed),
        seconds: elapsed.as_secs_f64(),
        notifications_per_second: done as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms_p50: crate::percentile(&latencies, 0.5),
        latency_ms_p90: crate::percentile(&latencies, 0.9),
        latency_ms_p99: crate::percentile(&latencies, 0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(0.0),
        worker_cpu_seconds: worker_cpu,
        nats_cpu_seconds: nats_cpu,
        gateway_cpu_seconds: gateway_cpu,
        generator_cpu_seconds: generator_cpu.unwrap_or_default(),
        clean: received.len() == args.count && in_app_stored == args.count,
    };
    if let Some(path) = &args.output.chart {
        write_chart(path, &args, &result, &latencies)?;
    }
    Ok(result)
}

/// Stores the `loadtest` template and points `user`'s webhook at our receiver, so every
/// request goes to both in-app and the webhook.
async fn configure(args: &NotifyArgs, user: &str, hook: &str) -> anyhow::Result<()> {
    let svc = crate::mint(&args.target.secret, "loadtest-ops", &[], Some("service"))?;
    let http = reqwest::Client::new();
    let put = |path: String, body: serde_json::Value| {
        let req = http
            .put(format!("{}{path}", args.target.url))
            .bearer_auth(&svc)
            .json(&body);
        async move {
            let r = req.send().await?;
            anyhow::ensure!(
                r.status().is_success(),
                "PUT failed: {}",
                r.text().await.unwrap_or_default()
            );
            Ok::<_, anyhow::Error>(())
        }
    };
    put(
        "/api/v1/templates/loadtest".into(),
        json!({"in_app":{"title":"Run {{ n }}","body":"step {{ n }} done"},"webhook":{"text":"run {{ n }}"}}),
    )
    .await?;
    put(
        format!("/api/v1/users/{user}/preferences"),
        json!({"webhook_url": hook}),
    )
    .await
}

/// Counts the in-app notifications stored for `user` (subscribed before the first
/// request, so none is missed).
async fn count_in_app(nats: &async_nats::Client, user: &str) -> anyhow::Result<Arc<std::sync::atomic::AtomicUsize>> {
    let mut stored = nats.subscribe(format!("tidings.stored.user.{user}")).await?;
    let in_app = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = in_app.clone();
    tokio::spawn(async move {
        while stored.next().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    nats.flush().await?;
    Ok(in_app)
}

/// Publishes `args.count` requests, paced at `args.rate` (0: as fast as acks allow, in
/// batches of 1000). Returns when each was sent, by id.
async fn send_requests(
    js: &async_nats::jetstream::Context,
    args: &NotifyArgs,
    user: &str,
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut pace = (args.rate > 0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64)));
    let mut sent_at = HashMap::with_capacity(args.count);
    let mut acks = Vec::with_capacity(1000);
    for n in 0..args.count {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let id = format!("{user}-{n}");
        let req = json!({"id": id, "user": user, "template": "loadtest", "data": {"n": n}, "channels": ["in_app", "webhook"]});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        sent_at.insert(id, Instant::now());
        acks.push(
            js.publish_with_headers("tidings.notify", headers, req.to_string().into())
                .await?,
        );
        if acks.len() == 1000 || pace.is_some() {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    Ok(sent_at)
}

/// CPU seconds of each process since the first request (None: no pid, or it was gone).
fn cpu_since(pids: [Option<u32>; 4], before: [anyhow::Result<Option<Duration>>; 4]) -> [Option<f64>; 4] {
    let mut cpu = [None; 4];
    for ((slot, pid), before) in cpu.iter_mut().zip(pids).zip(before) {
        if let (Some(pid), Ok(Some(before))) = (pid, before) {
            *slot = sysinfo::cpu_time(pid)
                .ok()
                .map(|now| now.saturating_sub(before).as_secs_f64());
        }
    }
    cpu
}

/// The latency percentile chart.
fn write_chart(
    path: &std::path::Path,
    args: &NotifyArgs,
    result: &NotifyResult,
    latencies: &[f64],
) -> anyhow::Result<()> {
    let title = format!(
        "notify: {} requests, offered {}, {:.0}/s done, {}",
        args.count,
        if args.rate == 0 {
            "burst".to_owned()
        } else {
            format!("{}/s", args.rate)
        },
        result.notifications_per_second,
        result.machine.date
    );
    crate::chart::write(
        path,
        &crate::chart::percentile_chart(&title, "request → webhook received", latencies),
    )
}
