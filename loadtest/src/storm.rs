//! `reconnect-storm`: a gateway dies under N clients; how fast do they all resume on
//! another, and is anything lost?
//!
//! N clients (the reconnecting Rust client SDK, `tidings_shared::client`, configured with
//! gateways A then B) subscribe on gateway A; a publisher sends numbered durable messages to
//! their K channels throughout. Once every client has received messages, A is SIGKILLed
//! (the pid its `/api/v1/stats` reports; it must be on loopback). The report gives the time
//! from the kill until every client is connected and resubscribed on B, until every client
//! has caught up (received a message published after the kill, everything before it having
//! arrived), how many messages came back through recovery, and loss and duplicates as the
//! application sees them (by the per-channel message number).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings_shared::Channel;
use tidings_shared::client::{Client, ClientOptions, ConnectionState, Event};

use crate::chart::{self, Line, Panel};
use crate::fanout::now_us;
use crate::sysinfo;

/// Settings of one run.
#[derive(Debug, clap::Args)]
pub struct StormArgs {
    /// Gateway A (`--url`, killed), NATS and the secret.
    #[command(flatten)]
    pub target: crate::Target,
    /// Gateway B, where the clients resume.
    #[arg(long)]
    pub url_b: String,
    /// Clients.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Channels the clients are spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Messages per second published over all channels, before, during and after the kill.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Publishing time before the kill (at least until every client has a message).
    #[arg(long, default_value = "2s", value_parser = tidings_shared::config::parse_duration)]
    pub before: Duration,
    /// nats-server's pid, to report its CPU time during the storm too.
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// Give up waiting for the clients after this long.
    #[arg(long, default_value = "60s", value_parser = tidings_shared::config::parse_duration)]
    pub timeout: Duration,
    /// Where the result and the chart go.
    #[command(flatten)]
    pub output: crate::Output,
}

/// The result.
#[derive(Debug, Serialize)]
pub struct StormResult {
    pub scenario: &'static str,
    pub machine: sysinfo::Machine,
    pub connections: usize,
    pub channels: usize,
    pub rate: u64,
    /// Clients that were on A when it was killed.
    pub on_killed_gateway: usize,
    /// Clients connected and resubscribed on B in the end.
    pub resumed: usize,
    pub resume_ms_p50: f64,
    pub resume_ms_p99: f64,
    /// Kill → every client resubscribed on B.
    pub all_resumed_ms: f64,
    /// Kill → every client received a message published after the kill (all before it too).
    pub all_caught_up_ms: f64,
    /// Messages delivered on B that were published before the client resumed (recovery).
    pub messages_recovered: u64,
    pub messages_published: u64,
    pub messages_delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Resubscriptions answered `recovered:false` (must be 0).
    pub resets: u64,
    pub gateway_b_cpu_seconds: f64,
    /// CPU time, kill → every client caught up, of the three processes sharing the machine:
    /// the storm is bounded by their sum over the cores, not by gateway B alone.
    pub storm_cpu: StormCpu,
    /// Nothing lost or duplicated, every client resumed.
    pub clean: bool,
    /// (ms since the kill, clients resumed) for the chart.
    pub resume_curve: Vec<(f64, usize)>,
}

/// CPU seconds (user + system) spent from the kill until every client caught up.
#[derive(Debug, Default, Serialize)]
pub struct StormCpu {
    pub gateway_b_s: f64,
    /// This generator (10,000 WebSocket clients reconnecting, and the publisher).
    pub generator_s: f64,
    /// nats-server, when `--nats-pid` was given.
    pub nats_s: Option<f64>,
    /// Their sum over the wall time: how many cores the storm kept busy.
    pub cores_busy: f64,
}

impl StormCpu {
    /// From CPU samples of gateway B (as the server), nats-server and this generator taken
    /// `wall` apart.
    fn of(spent: &sysinfo::Cpu, wall: Duration) -> StormCpu {
        let gateway_b_s = spent.server.unwrap_or(0.0);
        let busy = gateway_b_s + spent.generator + spent.nats.unwrap_or(0.0);
        StormCpu {
            gateway_b_s,
            generator_s: spent.generator,
            nats_s: spent.nats,
            cores_busy: busy / wall.as_secs_f64().max(1e-9),
        }
    }
}

#[derive(Deserialize)]
struct Data {
    n: u64,
    t: u64,
}

/// What one client's consumer saw.
#[derive(Default)]
struct Tracker {
    /// Next message number expected.
    next: AtomicU64,
    /// `recovered:false` answers (history not complete).
    resets: AtomicU64,
    got_any: AtomicBool,
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    recovered: AtomicU64,
    /// µs timestamps (0: not yet).
    resumed_at: AtomicU64,
    caught_up_at: AtomicU64,
}

/// Each client's channel index and what its consumer saw.
type Trackers = [(usize, Arc<Tracker>)];

/// Runs the scenario.
pub async fn run(args: StormArgs) -> anyhow::Result<StormResult> {
    let machine = sysinfo::machine();
    crate::ensure_loopback(&args.target.url).await?;
    crate::ensure_loopback(&args.url_b).await?;
    sysinfo::ensure_open_files(args.connections)?;
    let a = crate::gateway_stats(&args.target.url, &args.target.secret).await?;
    let b = crate::gateway_stats(&args.url_b, &args.target.secret).await?;
    anyhow::ensure!(a.pid != b.pid, "gateways A and B are the same process");
    let b_cpu0 = sysinfo::cpu_time(b.pid)?;
    let k = args.channels.max(1);
    let prefix = format!("st{}", std::process::id());
    let killed_at = Arc::new(AtomicU64::new(0));

    let (trackers, tasks, on_a) = connect_clients(&args, &prefix, k, &killed_at, &a.node).await?;
    let _stop = crate::AbortOnDrop(tasks);
    anyhow::ensure!(
        on_a == args.connections,
        "only {on_a} of {} clients connected to gateway A",
        args.connections
    );

    // The publisher: numbered messages, round robin over the channels, until told to stop.
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..k).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let js = async_nats::jetstream::new(async_nats::connect(&args.target.nats_url).await?);
    let publisher = tokio::spawn(publish(js, published.clone(), stop.clone(), prefix, args.rate.max(1)));

    let deadline = Instant::now() + args.timeout;
    wait_until_warm(&trackers, Instant::now() + args.before, deadline, &publisher).await?;
    let kill_us = now_us();
    killed_at.store(kill_us, Ordering::Relaxed);
    let at_kill = (sysinfo::Cpu::sample(Some(b.pid), args.nats_pid)?, Instant::now());
    kill(a.pid)?;
    eprintln!("reconnect-storm: killed gateway A (pid {}) under {on_a} clients", a.pid);
    wait_for_recovery(&trackers, deadline).await;
    let spent = sysinfo::Cpu::sample(Some(b.pid), args.nats_pid)?.since(&at_kill.0);
    let storm_cpu = StormCpu::of(&spent, at_kill.1.elapsed());
    stop.store(true, Ordering::Relaxed);
    publisher.await??;
    settle(&trackers, &published).await;

    let tally = Tally::of(&trackers, &published, kill_us);
    let b_cpu = sysinfo::cpu_time(b.pid)?.saturating_sub(b_cpu0).as_secs_f64();
    let result = tally.into_result(&args, machine, k, on_a, b_cpu, storm_cpu);
    eprintln!(
        "reconnect-storm: all {} resumed in {:.0} ms, caught up in {:.0} ms, recovered {}, lost {}, duplicates {}",
        result.resumed,
        result.all_resumed_ms,
        result.all_caught_up_ms,
        result.messages_recovered,
        result.lost,
        result.duplicates
    );
    if let Some(path) = &args.output.chart {
        chart::write(path, &render_chart(&result))?;
    }
    Ok(result)
}

/// Connects the clients, at most 200 at once, each followed by its consumer task, so
/// that a slow handshake does not hold up the rest. Returns the trackers, the consumer
/// tasks and how many clients landed on gateway A (`node_a`).
async fn connect_clients(
    args: &StormArgs,
    prefix: &str,
    k: usize,
    killed_at: &Arc<AtomicU64>,
    node_a: &str,
) -> anyhow::Result<(Vec<(usize, Arc<Tracker>)>, Vec<tokio::task::JoinHandle<()>>, usize)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let mut trackers = Vec::with_capacity(args.connections);
    let mut setups = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let tracker = Arc::new(Tracker::default());
        trackers.push((i % k, tracker.clone()));
        let channel = Channel::parse(&format!("project:{prefix}-{}", i % k))?;
        // One user per client, as users connect (a node caps connections per user).
        let token = crate::mint(&args.target.secret, &format!("loadtest-storm-{i}"), &["*"], None)?;
        let mut options = ClientOptions::new(vec![args.target.url.clone(), args.url_b.clone()], &token, vec![channel]);
        options.buffer = 64;
        let permit = gate.clone().acquire_owned().await?;
        let (killed_at, node_a) = (killed_at.clone(), node_a.to_owned());
        setups.push(tokio::spawn(async move {
            let client = Client::connect(options);
            let node = connected_node(&client).await;
            drop(permit);
            let on_a = node.as_deref() == Some(node_a.as_str());
            let task = tokio::spawn(consume(client, tracker, killed_at, node_a));
            (on_a, task)
        }));
    }
    let mut tasks = Vec::with_capacity(args.connections);
    let mut on_a = 0;
    for s in setups {
        let (a_side, task) = s.await?;
        on_a += usize::from(a_side);
        tasks.push(task);
    }
    Ok((trackers, tasks, on_a))
}

/// The node a client first connects to, or `None` if it does not connect within 30 s.
async fn connected_node(client: &Client) -> Option<String> {
    let mut state = client.state();
    tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| matches!(s, ConnectionState::Connected { .. })),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .and_then(|s| match &*s {
        ConnectionState::Connected { node } => Some(node.clone()),
        _ => None,
    })
}

/// Publishes numbered messages at `rate` per second, round robin over the channels,
/// until `stop`; `published[c]` counts what channel `c` has stored.
async fn publish(
    js: async_nats::jetstream::Context,
    published: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    prefix: String,
    rate: u64,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let c = (i as usize) % published.len();
        let n = published[c].load(Ordering::Relaxed);
        let body = format!(r#"{{"event":"storm","data":{{"n":{n},"t":{}}}}}"#, now_us());
        // Acked one by one, so every number counted was stored.
        js.publish(format!("tidings.events.project.{prefix}-{c}"), body.into())
            .await?
            .await?;
        published[c].fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    Ok(())
}

/// Waits until every client has received a message and `warm` has passed, so the kill
/// hits clients in steady state; fails at `deadline` or if the publisher stopped.
async fn wait_until_warm(
    trackers: &Trackers,
    warm: Instant,
    deadline: Instant,
    publisher: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    loop {
        let all = trackers.iter().all(|(_, t)| t.got_any.load(Ordering::Relaxed));
        if all && Instant::now() >= warm {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every client received a message before the kill"
        );
        anyhow::ensure!(!publisher.is_finished(), "the publisher stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILLs gateway A: no graceful drain, as in a crash.
fn kill(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "could not kill gateway A (pid {pid})");
    Ok(())
}

/// Waits until every client has resumed and caught up, or until `deadline` (the result
/// then reports who did not).
async fn wait_for_recovery(trackers: &Trackers, deadline: Instant) {
    let done = |f: fn(&Tracker) -> u64| trackers.iter().all(|(_, t)| f(t) != 0);
    while !(done(|t| t.resumed_at.load(Ordering::Relaxed)) && done(|t| t.caught_up_at.load(Ordering::Relaxed)))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lets the last published messages arrive (bounded to 10 s), so they are not counted lost.
async fn settle(trackers: &Trackers, published: &[AtomicU64]) {
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle
        && !trackers
            .iter()
            .all(|(c, t)| t.next.load(Ordering::Relaxed) >= published[*c].load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The trackers' counts, summed over the clients.
struct Tally {
    /// Ms from the kill to each resumption, sorted.
    resume: Vec<f64>,
    all_caught_up_ms: f64,
    lost: u64,
    duplicates: u64,
    resets: u64,
    recovered: u64,
    published: u64,
    delivered: u64,
}

impl Tally {
    fn of(trackers: &Trackers, published: &[AtomicU64], kill_us: u64) -> Self {
        let since_kill = |at: u64| (at.saturating_sub(kill_us)) as f64 / 1000.0;
        let mut resume: Vec<f64> = trackers
            .iter()
            .map(|(_, t)| t.resumed_at.load(Ordering::Relaxed))
            .filter(|&at| at != 0)
            .map(since_kill)
            .collect();
        resume.sort_by(f64::total_cmp);
        let caught_up: Vec<u64> = trackers
            .iter()
            .map(|(_, t)| t.caught_up_at.load(Ordering::Relaxed))
            .collect();
        let all_caught_up_ms = if caught_up.contains(&0) {
            f64::INFINITY
        } else {
            caught_up.iter().copied().map(since_kill).fold(0.0, f64::max)
        };
        let sum = |f: fn(&Tracker) -> u64| trackers.iter().map(|(_, t)| f(t)).sum::<u64>();
        let lost: u64 = trackers
            .iter()
            .map(|(c, t)| {
                t.gaps.load(Ordering::Relaxed)
                    + published[*c]
                        .load(Ordering::Relaxed)
                        .saturating_sub(t.next.load(Ordering::Relaxed))
            })
            .sum();
        Tally {
            resume,
            all_caught_up_ms,
            lost,
            duplicates: sum(|t| t.duplicates.load(Ordering::Relaxed)),
            resets: sum(|t| t.resets.load(Ordering::Relaxed)),
            recovered: sum(|t| t.recovered.load(Ordering::Relaxed)),
            published: published.iter().map(|p| p.load(Ordering::Relaxed)).sum(),
            delivered: sum(|t| t.delivered.load(Ordering::Relaxed)),
        }
    }

    /// The result of the run, with the resume curve thinned to about 200 points.
    fn into_result(
        self,
        args: &StormArgs,
        machine: sysinfo::Machine,
        channels: usize,
        on_a: usize,
        gateway_b_cpu_seconds: f64,
        storm_cpu: StormCpu,
    ) -> StormResult {
        let resume = self.resume;
        let curve = resume
            .iter()
            .enumerate()
            .map(|(i, &ms)| (ms, i + 1))
            .step_by((resume.len() / 200).max(1))
            .chain(resume.last().map(|&ms| (ms, resume.len())))
            .collect();
        let all_resumed = resume.len() == args.connections;
        StormResult {
            scenario: "reconnect-storm",
            machine,
            connections: args.connections,
            channels,
            rate: args.rate,
            on_killed_gateway: on_a,
            resumed: resume.len(),
            resume_ms_p50: crate::percentile(&resume, 0.5),
            resume_ms_p99: crate::percentile(&resume, 0.99),
            all_resumed_ms: if all_resumed {
                resume.last().copied().unwrap_or(0.0)
            } else {
                f64::INFINITY
            },
            all_caught_up_ms: self.all_caught_up_ms,
            messages_recovered: self.recovered,
            messages_published: self.published,
            messages_delivered: self.delivered,
            lost: self.lost,
            duplicates: self.duplicates,
            resets: self.resets,
            gateway_b_cpu_seconds,
            storm_cpu,
            clean: self.lost == 0 && self.duplicates == 0 && self.resets == 0 && all_resumed,
            resume_curve: curve,
        }
    }
}

/// One client's application: checks numbering, notes when it resumed on another gateway.
async fn consume(mut client: Client, t: Arc<Tracker>, killed_at: Arc<AtomicU64>, node_a: String) {
    let mut state = client.state();
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let resumed = matches!(&*state.borrow_and_update(), ConnectionState::Connected { node } if *node != node_a);
                if resumed && killed_at.load(Ordering::Relaxed) != 0 && t.resumed_at.load(Ordering::Relaxed) == 0 {
                    t.resumed_at.store(now_us(), Ordering::Relaxed);
                }
            }
            event = client.next() => {
                let m = match event {
                    Some(Event::Message(m)) => m,
                    Some(Event::Reset { .. }) => {
                        t.resets.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    None => return,
                };
                let Ok(d) = serde_json::from_value::<Data>(m.data) else { continue };
                t.delivered.fetch_add(1, Ordering::Relaxed);
                t.got_any.store(true, Ordering::Relaxed);
                // Every client was subscribed (confirmed) before message 0 was published.
                let next = t.next.load(Ordering::Relaxed);
                if d.n < next {
                    t.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                t.gaps.fetch_add(d.n - next, Ordering::Relaxed);
                t.next.store(d.n + 1, Ordering::Relaxed);
                let killed = killed_at.load(Ordering::Relaxed);
                if killed != 0 {
                    let resumed = t.resumed_at.load(Ordering::Relaxed);
                    if resumed == 0 || d.t < resumed {
                        t.recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    let complete = t.gaps.load(Ordering::Relaxed) == 0;
                    if d.t > killed && resumed != 0 && complete && t.caught_up_at.load(Ordering::Relaxed) == 0 {
                        t.caught_up_at.store(now_us(), Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn render_chart(r: &StormResult) -> String {
    chart::render(
        &format!(
            "reconnect storm: {} clients, gateway killed, {} msg/s, {}",
            r.connections, r.rate, r.machine.date
        ),
        &[Panel {
            title: format!(
                "all resumed in {:.2} s, lost {}, duplicates {}",
                r.all_resumed_ms / 1000.0,
                r.lost,
                r.duplicates
            ),
            x_label: "ms since the kill".into(),
            y_label: "clients resubscribed on B".into(),
            lines: vec![Line {
                label: "Tidings".into(),
                color: chart::TIDINGS[0],
                dashed: false,
                points: r.resume_curve.iter().map(|&(ms, n)| (ms, n as f64)).collect(),
            }],
        }],
    )
}
