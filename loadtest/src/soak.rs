//! `soak`: does the gateway leak under a long, steady, churning load?
//!
//! N clients over K channels hold WebSocket subscriptions while a publisher sends numbered
//! durable messages at a fixed total delivery rate (by default half the measured maximum
//! sustained fan-out). Every minute `--churn` percent of the clients close and as many new
//! ones (new users, starting fresh) connect, one at a time, spread evenly over the minute.
//! Every `--sample` the gateway's RSS, open file descriptors, threads and runtime tasks are
//! recorded; after the warm-up, least-squares slopes per minute say whether any of them
//! grows while the load stays the same. Loss and duplicates are counted per client over
//! exactly what it was owed while subscribed (see [`client`]).
//!
//! Verdict (`pass`): nothing lost, nothing duplicated, every connection set up; once every
//! client has closed, the gateway's fds and tasks are back within `--slack` of what they
//! were before the run; and the RSS slope is within `--max-rss-slope` (see
//! docs/TESTING.md for how the bound relates to a leak per churned connection).

mod client;
mod sample;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::chart::{self, Line, Panel};
use crate::sysinfo;
use client::{Ctx, Tally};
use sample::{Probe, Sample, Slopes};

/// Half of the maximum sustained fan-out measured in docs/BENCHMARKS.md (89,600
/// deliveries/s with p99 < 50 ms: 5,000 clients over 100 channels, 2 cores).
pub const HALF_MEASURED_MAX: u64 = 44_800;

/// Settings of one run.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Where the gateway and NATS are.
    #[command(flatten)]
    pub target: crate::Target,
    /// How long the load runs (setup and the final drain come on top).
    #[arg(long, default_value = "30m", value_parser = tidings_shared::config::parse_duration)]
    pub duration: Duration,
    /// Client connections held throughout.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Channels the clients are spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Total deliveries per second (messages/s × clients per channel).
    #[arg(long, default_value_t = HALF_MEASURED_MAX)]
    pub deliveries_per_second: u64,
    /// Percent of the connections replaced per minute.
    #[arg(long, default_value_t = 10.0)]
    pub churn: f64,
    /// Time between two samples of the gateway.
    #[arg(long, default_value = "10s", value_parser = tidings_shared::config::parse_duration)]
    pub sample: Duration,
    /// Samples before this (from the start of the load) are left out of the slopes.
    #[arg(long, default_value = "5m", value_parser = tidings_shared::config::parse_duration)]
    pub warmup: Duration,
    /// Verdict: the highest steady RSS growth after the warm-up, bytes per minute (the
    /// trimmed mean of the per-interval growth; the least-squares slope is reported too).
    #[arg(long, default_value_t = 1_048_576.0)]
    pub max_rss_slope: f64,
    /// Verdict: fds and tasks may exceed their pre-run values by this much once every
    /// client has closed.
    #[arg(long, default_value_t = 50)]
    pub slack: u64,
    /// Payload bytes per message (besides the envelope; ~160-byte frames as in `fanout`).
    #[arg(long, default_value_t = 60)]
    pub payload: usize,
    /// PID of the gateway (else read from /api/v1/stats with a service token).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Where the result and the chart go.
    #[command(flatten)]
    pub output: crate::Output,
}

/// One pass/fail check of the verdict.
#[derive(Debug, Serialize)]
pub struct Check {
    pub what: &'static str,
    pub value: f64,
    pub limit: f64,
    pub pass: bool,
}

/// The result.
#[derive(Debug, Serialize)]
pub struct SoakResult {
    pub scenario: &'static str,
    pub machine: sysinfo::Machine,
    pub connections: usize,
    pub channels: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub churn_percent_per_minute: f64,
    pub target_deliveries_per_second: u64,
    pub messages_per_second: f64,
    pub messages_published: u64,
    pub deliveries: u64,
    pub deliveries_per_second: f64,
    /// Clients that subscribed (the initial N plus every replacement).
    pub clients_opened: u64,
    /// Clients closed by the churn while the load ran.
    pub clients_churned: u64,
    pub connect_failures: u64,
    /// Connections the gateway ended unasked (resumed with `since`).
    pub dropped: u64,
    pub resets: u64,
    pub drain_timeouts: u64,
    /// Deliveries owed to the clients (their windows, summed), lost and duplicated.
    pub owed: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// The gateway before any client connected, and after all had closed.
    pub before: Sample,
    pub after: Sample,
    pub slopes: Slopes,
    pub checks: Vec<Check>,
    pub pass: bool,
    pub samples: Vec<Sample>,
}

/// Runs the scenario.
pub async fn run(args: SoakArgs) -> anyhow::Result<SoakResult> {
    let machine = sysinfo::machine();
    sysinfo::ensure_open_files(args.connections + args.connections / 10)?;
    let addr = crate::ensure_loopback(&args.target.url).await?;
    let pid = match args.gateway_pid {
        Some(pid) => pid,
        None => crate::gateway_stats(&args.target.url, &args.target.secret).await?.pid,
    };
    let probe = Probe::new(pid, &args.target.url);
    let k = args.channels.max(1);
    let per_channel = (args.connections as f64 / k as f64).max(1.0);
    let rate = args.deliveries_per_second as f64 / per_channel;
    let ctx = Arc::new(Ctx {
        addr,
        host: args
            .target
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        secret: args.target.secret.clone(),
        prefix: format!("sk{}", std::process::id()),
        issued: (0..k).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..k).map(|_| AtomicU64::new(0)).collect(),
        gate: Arc::new(tokio::sync::Semaphore::new(200)),
        tally: Tally::default(),
    });
    let before = probe.sample(0.0, 0, 0, 0).await?;

    let mut fleet = Fleet::connect(&ctx, args.connections, k).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let js = async_nats::jetstream::new(async_nats::connect(&args.target.nats_url).await?);
    let publisher = tokio::spawn(publish(js, ctx.clone(), stop.clone(), rate, "x".repeat(args.payload)));
    let start = Instant::now();
    eprintln!(
        "soak: {} clients over {k} channels subscribed; {rate:.1} msg/s (~{} deliveries/s) for {:?}",
        args.connections, args.deliveries_per_second, args.duration
    );

    let samples = fleet.churn(&ctx, &args, &probe, start, &publisher).await?;
    let load_s = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await??;
    let churned = fleet.churned;
    fleet.close_all().await;
    let after = settle(&probe, &before, args.slack, load_s).await?;
    let t = &ctx.tally;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let slopes = sample::slopes(&samples, args.warmup.as_secs_f64());
    let checks = vec![
        check("lost", get(&t.lost) as f64, 0.0),
        check("duplicates", get(&t.duplicates) as f64, 0.0),
        check("connect failures", get(&t.connect_failures) as f64, 0.0),
        check(
            "fds after − before",
            after.fds as f64 - before.fds as f64,
            args.slack as f64,
        ),
        check(
            "tasks after − before",
            after.tasks as f64 - before.tasks as f64,
            args.slack as f64,
        ),
        check(
            "RSS growth, bytes/min (10 %-trimmed mean of the intervals)",
            slopes.rss_trimmed_growth_bytes_per_min,
            args.max_rss_slope,
        ),
    ];
    let result = SoakResult {
        scenario: "soak",
        machine,
        connections: args.connections,
        channels: k,
        duration_s: load_s,
        warmup_s: args.warmup.as_secs_f64(),
        churn_percent_per_minute: args.churn,
        target_deliveries_per_second: args.deliveries_per_second,
        messages_per_second: published as f64 / load_s.max(1e-9),
        messages_published: published,
        deliveries: get(&t.deliveries),
        deliveries_per_second: samples.last().map_or(0, |s| s.deliveries) as f64 / load_s.max(1e-9),
        clients_opened: get(&t.opened),
        clients_churned: churned,
        connect_failures: get(&t.connect_failures),
        dropped: get(&t.dropped),
        resets: get(&t.resets),
        drain_timeouts: get(&t.drain_timeouts),
        owed: get(&t.owed),
        lost: get(&t.lost),
        duplicates: get(&t.duplicates),
        before,
        after,
        slopes,
        pass: checks.iter().all(|c| c.pass),
        checks,
        samples,
    };
    eprintln!(
        "soak: {:.0} s, {} deliveries, lost {}, duplicates {}; slopes/min: RSS {:.0} B (trimmed {:.0} B), fds {:.2}, tasks {:.2}; pass {}",
        result.duration_s,
        result.deliveries,
        result.lost,
        result.duplicates,
        result.slopes.rss_bytes_per_min,
        result.slopes.rss_trimmed_growth_bytes_per_min,
        result.slopes.fds_per_min,
        result.slopes.tasks_per_min,
        result.pass
    );
    if let Some(path) = &args.output.chart {
        chart::write(path, &render_chart(&result))?;
    }
    Ok(result)
}

fn check(what: &'static str, value: f64, limit: f64) -> Check {
    Check {
        what,
        value,
        limit,
        pass: value <= limit,
    }
}

/// The live clients, one slot each, and the ones closing.
struct Fleet {
    /// Per slot: the channel, the signal that closes its client, the client's task.
    slots: Vec<(usize, Option<oneshot::Sender<()>>, JoinHandle<()>)>,
    closing: Vec<JoinHandle<()>>,
    next_user: u64,
    churned: u64,
}

impl Fleet {
    /// Starts `n` clients over `k` channels (at most 200 setting up at once) and waits
    /// until all are subscribed (or failed).
    async fn connect(ctx: &Arc<Ctx>, n: usize, k: usize) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet {
            slots: Vec::with_capacity(n),
            closing: Vec::new(),
            next_user: 0,
            churned: 0,
        };
        for i in 0..n {
            let slot = fleet.spawn(ctx, i % k);
            fleet.slots.push(slot);
        }
        let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
        loop {
            let t = &ctx.tally;
            let up = t.opened.load(Ordering::Relaxed) + t.finished.load(Ordering::Relaxed);
            if up >= n as u64 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "only {up} of {n} clients set up in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(fleet)
    }

    fn spawn(&mut self, ctx: &Arc<Ctx>, c: usize) -> (usize, Option<oneshot::Sender<()>>, JoinHandle<()>) {
        let (tx, rx) = oneshot::channel();
        let user = self.next_user;
        self.next_user += 1;
        (c, Some(tx), tokio::spawn(client::run(ctx.clone(), c, user, rx)))
    }

    /// Replaces one client every 60 s / (N × churn %), round robin over the slots, and
    /// samples the gateway every `--sample`, until `--duration` has passed.
    async fn churn(
        &mut self,
        ctx: &Arc<Ctx>,
        args: &SoakArgs,
        probe: &Probe,
        start: Instant,
        publisher: &JoinHandle<anyhow::Result<u64>>,
    ) -> anyhow::Result<Vec<Sample>> {
        let per_minute = self.slots.len() as f64 * args.churn / 100.0;
        let every = Duration::from_secs_f64(60.0 / per_minute.max(1e-3));
        let end = start + args.duration;
        let mut next_churn = start + every;
        let mut next_sample = start;
        let mut samples = Vec::new();
        let mut cursor = 0usize;
        while Instant::now() < end {
            anyhow::ensure!(!publisher.is_finished(), "the publisher stopped");
            if Instant::now() >= next_sample {
                let t = &ctx.tally;
                let s = probe
                    .sample(
                        start.elapsed().as_secs_f64(),
                        t.subscribed.load(Ordering::Relaxed),
                        t.deliveries.load(Ordering::Relaxed),
                        ctx.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum(),
                    )
                    .await?;
                samples.push(s);
                next_sample += args.sample;
                self.closing.retain(|h| !h.is_finished());
            }
            if args.churn > 0.0 && Instant::now() >= next_churn && !self.slots.is_empty() {
                let i = cursor % self.slots.len();
                cursor += 1;
                let c = self.slots[i].0;
                let fresh = self.spawn(ctx, c);
                let (_, close, task) = std::mem::replace(&mut self.slots[i], fresh);
                if let Some(close) = close {
                    let _ = close.send(());
                }
                self.closing.push(task);
                self.churned += 1;
                next_churn += every;
            }
            let wake = next_sample
                .min(if args.churn > 0.0 { next_churn } else { end })
                .min(end);
            tokio::time::sleep_until(wake).await;
        }
        Ok(samples)
    }

    /// Tells every client to close and waits for all (each drains for at most
    /// [`client::DRAIN`]).
    async fn close_all(self) {
        let mut tasks = self.closing;
        for (_, close, task) in self.slots {
            if let Some(close) = close {
                let _ = close.send(());
            }
            tasks.push(task);
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Publishes numbered messages at `rate` per second, round robin over the channels, one
/// acknowledged at a time (so numbers are stored in order), until `stop`. A failed publish
/// is retried with the same `Nats-Msg-Id`, which JetStream stores at most once. Returns
/// how many were published.
async fn publish(
    js: async_nats::jetstream::Context,
    ctx: Arc<Ctx>,
    stop: Arc<AtomicBool>,
    rate: f64,
    pad: String,
) -> anyhow::Result<u64> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let start = Instant::now();
    let k = ctx.issued.len();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let c = (i as usize) % k;
        let n = ctx.issued[c].fetch_add(1, Ordering::AcqRel);
        let body = format!(r#"{{"event":"soak","data":{{"n":{n},"pad":"{pad}"}}}}"#);
        let subject = format!("tidings.events.project.{}-{c}", ctx.prefix);
        let id = format!("{}-{c}-{n}", ctx.prefix);
        let mut attempt = 0;
        loop {
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(body.clone().into())
                .message_id(&id);
            let acked = async { js.send_publish(subject.clone(), msg).await?.await };
            match acked.await {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("soak: publish {id} failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        ctx.acked[c].store(n + 1, Ordering::Release);
        i += 1;
    }
    Ok(i)
}

/// Waits (at most 60 s) until the gateway has no connection left and its fds and tasks are
/// back within `slack` of `before`; returns the last sample either way.
async fn settle(probe: &Probe, before: &Sample, slack: u64, t_s: f64) -> anyhow::Result<Sample> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = probe.sample(t_s, 0, 0, 0).await?;
        let back = s.connections == 0 && s.fds <= before.fds + slack && s.tasks <= before.tasks + slack;
        if back || Instant::now() >= deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// RSS, fds and tasks over the run (slopes in the titles); deliveries/s received against
/// those asked for, and the gateway's CPU, which explain a backlog when the box is shared.
fn render_chart(r: &SoakResult) -> String {
    let line = |label: &str, color, f: &dyn Fn(&Sample) -> f64| Line {
        label: label.to_owned(),
        color,
        dashed: false,
        points: r.samples.iter().map(|s| (s.t_s / 60.0, f(s))).collect(),
    };
    // Per sample interval: (minutes, value per second).
    let per_second = |label: &str, color, f: &dyn Fn(&Sample) -> f64| Line {
        label: label.to_owned(),
        color,
        dashed: false,
        points: r
            .samples
            .windows(2)
            .map(|w| (w[1].t_s / 60.0, (f(&w[1]) - f(&w[0])) / (w[1].t_s - w[0].t_s).max(1e-9)))
            .collect(),
    };
    let per_channel = r.connections as f64 / r.channels.max(1) as f64;
    let x = "minutes".to_owned();
    let sl = &r.slopes;
    let title = format!(
        "soak: {} clients, {} % churn/min, {} deliveries/s target, lost {}, dup {}, {}",
        r.connections, r.churn_percent_per_minute, r.target_deliveries_per_second, r.lost, r.duplicates, r.machine.date
    );
    chart::render(
        &title,
        &[
            Panel {
                title: format!(
                    "RSS after warm-up: {:.0} KiB/min (trimmed {:.0})",
                    sl.rss_bytes_per_min / 1024.0,
                    sl.rss_trimmed_growth_bytes_per_min / 1024.0
                ),
                x_label: x.clone(),
                y_label: "MiB".into(),
                lines: vec![line("gateway RSS", chart::TIDINGS[0], &|s| {
                    s.rss_bytes as f64 / 1048576.0
                })],
            },
            Panel {
                title: format!("fds ({:.2}/min), tasks ({:.2}/min)", sl.fds_per_min, sl.tasks_per_min),
                x_label: x.clone(),
                y_label: "count".into(),
                lines: vec![
                    line("open fds", chart::TIDINGS[0], &|s| s.fds as f64),
                    line("tasks", chart::TIDINGS[1], &|s| s.tasks as f64),
                    line("connections", chart::TIDINGS[2], &|s| s.connections as f64),
                ],
            },
            Panel {
                title: "deliveries/s".into(),
                x_label: x.clone(),
                y_label: "deliveries/s".into(),
                lines: vec![
                    per_second("received", chart::TIDINGS[0], &|s| s.deliveries as f64),
                    per_second("asked for", chart::BASELINE[0], &|s| s.published as f64 * per_channel),
                ],
            },
            Panel {
                title: format!("gateway CPU (threads {:.2}/min)", sl.threads_per_min),
                x_label: x,
                y_label: "cores".into(),
                lines: vec![per_second("gateway", chart::TIDINGS[0], &|s| s.gateway_cpu_s)],
            },
        ],
    )
}
