//! `recovery`: how long a client that was away takes to get the messages it missed.
//!
//! Subscribes once to learn its position, disconnects, has N durable messages published to
//! its channel (pipelined through JetStream), reconnects with `since`, and times the
//! subscription until the N-th missed message has arrived, checking order and completeness.

use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Settings of one `recovery` run.
#[derive(Debug, clap::Args)]
pub struct RecoveryArgs {
    /// Where the gateway and NATS are.
    #[command(flatten)]
    pub target: crate::Target,
    /// Messages missed while away.
    #[arg(long, default_value_t = 10_000)]
    pub missed: usize,
    /// Payload bytes per message (besides the envelope).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Where the result and the chart go.
    #[command(flatten)]
    pub output: crate::Output,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct RecoveryResult {
    pub scenario: &'static str,
    pub machine: crate::sysinfo::Machine,
    pub missed: usize,
    pub recovered: bool,
    pub received: usize,
    pub in_order: bool,
    pub first_message_ms: f64,
    pub all_messages_ms: f64,
    pub messages_per_second: f64,
    /// Missed messages that did not arrive.
    pub lost: usize,
    /// Messages that arrived more than once.
    pub duplicates: usize,
    /// `recovered: true`, everything, once, in order.
    pub clean: bool,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(t.as_str())?),
            Ok(Some(Ok(_))) => continue,
            other => anyhow::bail!("connection ended: {other:?}"),
        }
    }
}

async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/ws?token={token}", url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let welcome = next_json(&mut ws).await?;
    anyhow::ensure!(welcome["type"] == "welcome", "expected welcome, got {welcome}");
    Ok(ws)
}

/// Runs the scenario.
pub async fn run(args: RecoveryArgs) -> anyhow::Result<RecoveryResult> {
    let machine = crate::sysinfo::machine();
    crate::ensure_loopback(&args.target.url).await?;
    let channel = format!("project:recovery-{}", std::process::id());
    let token = crate::mint(&args.target.secret, "loadtest-recovery", &["*"], None)?;
    let (since, epoch) = position(&args.target.url, &token, &channel).await?;
    let want = publish_missed(&args, &channel).await?;

    let mut ws = connect(&args.target.url, &token).await?;
    let start = Instant::now();
    let sub = json!({"type":"subscribe","id":2,"channel":channel,"since":since,"epoch":epoch}).to_string();
    ws.send(Message::Text(sub.into())).await?;
    let reply = next_json(&mut ws).await?;
    let recovered = reply["recovered"].as_bool().unwrap_or(false);
    let mut got = Vec::with_capacity(args.missed);
    let mut arrivals = Vec::with_capacity(args.missed);
    while got.len() < want.len() {
        let m = next_json(&mut ws).await?;
        if m["type"] == "message" {
            arrivals.push(start.elapsed().as_secs_f64() * 1000.0);
            got.push(m["seq"].as_u64().unwrap_or(0));
        }
    }
    let all = start.elapsed();
    let distinct: std::collections::BTreeSet<u64> = got.iter().copied().collect();
    let lost = want.iter().filter(|s| !distinct.contains(s)).count();
    let duplicates = got.len() - distinct.len();
    if let Some(path) = &args.output.chart {
        let title = format!("recovery of {} missed messages, {}", args.missed, machine.date);
        crate::chart::write(path, &render_chart(&title, &arrivals, all))?;
    }
    let first = arrivals.first().map(|&ms| Duration::from_secs_f64(ms / 1000.0));
    Ok(RecoveryResult {
        scenario: "recovery",
        machine,
        lost,
        duplicates,
        clean: recovered && lost == 0 && duplicates == 0 && got == want,
        missed: args.missed,
        recovered,
        received: got.len(),
        in_order: got == want,
        first_message_ms: first.unwrap_or_default().as_secs_f64() * 1000.0,
        all_messages_ms: all.as_secs_f64() * 1000.0,
        messages_per_second: got.len() as f64 / all.as_secs_f64().max(1e-9),
    })
}

/// Subscribes once and disconnects, to learn the channel's position (`since`, `epoch`)
/// the way a client that goes away knows it.
async fn position(url: &str, token: &str, channel: &str) -> anyhow::Result<(u64, Value)> {
    let mut ws = connect(url, token).await?;
    let sub = json!({"type":"subscribe","id":1,"channel":channel}).to_string();
    ws.send(Message::Text(sub.into())).await?;
    let reply = next_json(&mut ws).await?;
    let since = reply["seq"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no position in {reply}"))?;
    let epoch = reply["epoch"].clone();
    ws.close(None).await?;
    Ok((since, epoch))
}

/// Publishes the messages the client misses, pipelined (acks awaited per 1000); returns
/// their stream sequences in order, which is what the client must receive.
async fn publish_missed(args: &RecoveryArgs, channel: &str) -> anyhow::Result<Vec<u64>> {
    let nats = async_nats::connect(&args.target.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let subject = format!("tidings.events.{}", channel.replacen(':', ".", 1));
    let pad = "x".repeat(args.payload);
    let mut acks = Vec::with_capacity(1000);
    let mut want = Vec::with_capacity(args.missed);
    for n in 0..args.missed {
        let body = json!({"event":"missed","data":{"n":n,"pad":pad}}).to_string();
        acks.push(js.publish(subject.clone(), body.into()).await?);
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                want.push(a.await?.sequence);
            }
        }
    }
    for a in acks.drain(..) {
        want.push(a.await?.sequence);
    }
    Ok(want)
}

/// Messages received over time since the resubscription, thinned to about 200 points.
fn render_chart(title: &str, arrivals: &[f64], all: Duration) -> String {
    let points = arrivals
        .iter()
        .enumerate()
        .step_by((arrivals.len() / 200).max(1))
        .map(|(i, &ms)| (ms, (i + 1) as f64))
        .chain(arrivals.last().map(|&ms| (ms, arrivals.len() as f64)))
        .collect();
    crate::chart::render(
        title,
        &[crate::chart::Panel {
            title: format!("all {} in {:.0} ms", arrivals.len(), all.as_secs_f64() * 1000.0),
            x_label: "ms since subscribe with since".into(),
            y_label: "messages received".into(),
            lines: vec![crate::chart::Line {
                label: "Tidings".into(),
                color: crate::chart::TIDINGS[0],
                dashed: false,
                points,
            }],
        }],
    )
}
