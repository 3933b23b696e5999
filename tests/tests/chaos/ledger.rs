//! Who published what and who received what: a paced durable publisher, and clients that
//! follow one channel across reconnects (resuming with `since`/`epoch` as the contract says)
//! while recording every `message` frame, so that loss, duplicates and gaps show exactly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_tests::{Incoming, TokenIn, WsClient, wait_for};
use tokio::task::JoinHandle;

/// Published sequences per channel, in publish order.
pub type Published = Arc<Mutex<BTreeMap<String, Vec<u64>>>>;

/// Channel `i` of a scenario.
pub fn channel(i: usize) -> String {
    format!("project:c{i}")
}

/// Messages published so far, all channels.
pub fn count(published: &Published) -> usize {
    published.lock().unwrap().values().map(Vec::len).sum()
}

/// Publishes `rate` messages a second round-robin over `channels` channels for `duration`,
/// through JetStream at `nats_urls` with a `Nats-Msg-Id` each, retrying each until it is
/// stored (a retried publish that had been stored is deduplicated, so it counts once).
pub fn start_publisher(
    nats_urls: String,
    channels: usize,
    rate: u64,
    duration: Duration,
) -> (Published, JoinHandle<()>) {
    let published: Published = Arc::default();
    let out = published.clone();
    let task = tokio::spawn(async move {
        let addrs = tidings_shared::nats::server_addrs(&nats_urls).unwrap();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 * channels as u64 / rate));
        let total = rate * duration.as_millis() as u64 / 1000;
        let mut n = 0u64;
        while n < total {
            ticker.tick().await;
            for c in 0..channels {
                let ch = channel(c);
                let subject = format!("tidings.events.project.c{c}");
                let body = json!({"event":"tick","data":{"n":n}}).to_string();
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("chaos-{n}").as_str());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
                let seq = loop {
                    let attempt = async {
                        js.publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                            .await?
                            .await
                            .map_err(async_nats::Error::from)
                    };
                    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                        Ok(Ok(ack)) => break ack.sequence,
                        _ if tokio::time::Instant::now() > deadline => panic!("publish {n} never stored"),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                let mut p = out.lock().unwrap();
                let v = p.entry(ch).or_default();
                if v.last() != Some(&seq) {
                    v.push(seq);
                }
                n += 1;
            }
        }
    });
    (published, task)
}

/// What one client saw on its channel, across all its connections.
#[derive(Debug, Default)]
pub struct Track {
    /// Durable sequences delivered, in order, each once.
    pub seqs: Vec<u64>,
    /// Frames whose `seq` was not beyond the last delivered one.
    pub duplicates: u64,
    /// Frames whose `prev` was beyond the last delivered `seq` (the client then reconnects
    /// with `since`, as the contract's clients do).
    pub gaps: u64,
    /// Frames whose `prev` was before the last delivered `seq` (a broken chain).
    pub broken: u64,
    /// `recovered:false` answers to a resume.
    pub resets: u64,
    /// Connections opened (the first one included).
    pub sessions: u64,
    /// Whether a subscription was ever confirmed.
    pub subscribed: bool,
    epoch: Option<String>,
}

/// A client following one channel; dropping it disconnects.
pub struct Tracker {
    pub channel: String,
    pub track: Arc<Mutex<Track>>,
    task: JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a connection may carry no frame before the client gives up on it.
const SILENCE: Duration = Duration::from_secs(30);

impl Tracker {
    /// `clients` trackers over `channels` channels, half preferring gateway `a` and half `b`
    /// (each falls back to the other), once every one is subscribed.
    pub async fn spread(clients: usize, channels: usize, [a, b]: [&String; 2], token: &str) -> Vec<Tracker> {
        let trackers: Vec<Tracker> = (0..clients)
            .map(|i| {
                let urls = if i % 2 == 0 {
                    vec![a.clone(), b.clone()]
                } else {
                    vec![b.clone(), a.clone()]
                };
                Tracker::start(urls, token.to_owned(), channel(i % channels))
            })
            .collect();
        wait_subscribed(&trackers, Duration::from_secs(30)).await;
        trackers
    }

    /// Follows `channel` through the gateways at `urls` (the first preferred; after a failed
    /// connection, the next).
    pub fn start(urls: Vec<String>, token: String, channel: String) -> Tracker {
        let track: Arc<Mutex<Track>> = Arc::default();
        let (t, ch) = (track.clone(), channel.clone());
        let task = tokio::spawn(async move {
            let mut attempt = 0u32;
            // Bounded like everything here; a scenario ends far sooner.
            for i in 0..10_000 {
                let url = &urls[i % urls.len()];
                match session(url, &token, &ch, &t).await {
                    End::Gap => attempt = 0,
                    End::Failed(_) => {
                        attempt = (attempt + 1).min(4);
                        let cap = 100u64 << attempt;
                        tokio::time::sleep(Duration::from_millis(fastrand::u64(cap / 2..=cap))).await;
                    }
                }
            }
        });
        Tracker { channel, track, task }
    }
}

enum End {
    Gap,
    Failed(#[allow(dead_code)] String),
}

/// One connection: subscribe (resuming from what is held), then record frames until it ends.
async fn session(url: &str, token: &str, channel: &str, track: &Mutex<Track>) -> End {
    let connect = WsClient::connect(url, TokenIn::Query(token.to_owned()), None);
    let mut ws = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return End::Failed(e.to_string()),
        Err(_) => return End::Failed("connect timed out".into()),
    };
    match ws.recv_timeout(Duration::from_secs(5)).await {
        Some(Incoming::Frame(f)) if f["type"] == "welcome" => {}
        other => return End::Failed(format!("no welcome: {other:?}")),
    }
    let (since, epoch) = {
        let mut t = track.lock().unwrap();
        t.sessions += 1;
        (t.seqs.last().copied(), t.epoch.clone())
    };
    let mut sub = json!({"type":"subscribe","id":1,"channel":channel});
    if let Some(s) = since {
        sub["since"] = json!(s);
        if let Some(e) = epoch {
            sub["epoch"] = json!(e);
        }
    }
    if let Err(e) = ws.send(sub).await {
        return End::Failed(e.to_string());
    }
    let mut last_frame = Instant::now();
    loop {
        let frame = match ws.recv_timeout(Duration::from_secs(1)).await {
            None if last_frame.elapsed() > SILENCE => return End::Failed("silent".into()),
            None => continue,
            Some(Incoming::Frame(f)) => f,
            Some(other) => return End::Failed(format!("{other:?}")),
        };
        last_frame = Instant::now();
        match frame["type"].as_str() {
            Some("reply") if frame["id"] == 1 => {
                if frame["ok"] != true {
                    return End::Failed(format!("subscribe refused: {frame}"));
                }
                let mut t = track.lock().unwrap();
                if since.is_some() && frame["recovered"] == false {
                    t.resets += 1;
                }
                if let Some(e) = frame["epoch"].as_str() {
                    t.epoch = Some(e.to_owned());
                }
                t.subscribed = true;
            }
            Some("message") if frame["channel"] == channel && record(&frame, &mut track.lock().unwrap()) => {
                return End::Gap;
            }
            Some("reconnect") => return End::Failed("asked to reconnect".into()),
            _ => {}
        }
    }
}

/// Records one message frame; true on a gap (the caller resumes on a new connection).
fn record(frame: &Value, t: &mut Track) -> bool {
    let Some(seq) = frame["seq"].as_u64() else {
        return false;
    };
    let prev = frame["prev"].as_u64().unwrap_or(0);
    match t.seqs.last().copied() {
        Some(last) if seq <= last => t.duplicates += 1,
        Some(last) if prev > last => {
            t.gaps += 1;
            return true;
        }
        Some(last) if prev < last => {
            t.broken += 1;
            t.seqs.push(seq);
        }
        _ => t.seqs.push(seq),
    }
    false
}

/// Waits until every tracker is subscribed.
pub async fn wait_subscribed(trackers: &[Tracker], timeout: Duration) {
    tidings_tests::eventually(timeout, "every client subscribed", || async {
        trackers
            .iter()
            .all(|t| t.track.lock().unwrap().subscribed)
            .then_some(())
    })
    .await;
}

/// The outcome of a scenario, over all its clients.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Durable messages the clients should have got (each client its channel's).
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    /// Delivered but never published (or out of order).
    pub unexpected: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub broken: u64,
    pub resets: u64,
    /// Connections opened beyond each client's first.
    pub reconnects: u64,
    /// How long after the end of publishing the last client had everything.
    pub settle: Duration,
}

impl Verdict {
    /// The figures as `key=value` pairs for [`crate::setup::report`].
    pub fn figures(&self) -> Vec<(&'static str, String)> {
        vec![
            ("expected", self.expected.to_string()),
            ("delivered", self.delivered.to_string()),
            ("loss", self.missing.to_string()),
            ("duplicates", self.duplicates.to_string()),
            ("unexpected", self.unexpected.to_string()),
            ("gaps_resumed", self.gaps.to_string()),
            ("broken_chain", self.broken.to_string()),
            ("resets", self.resets.to_string()),
            ("reconnects", self.reconnects.to_string()),
            ("settle_ms", self.settle.as_millis().to_string()),
        ]
    }

    /// Zero loss, zero duplicates, every chain intact, no reset.
    pub fn assert_clean(&self) {
        assert_eq!(
            (self.missing, self.duplicates, self.unexpected, self.broken, self.resets),
            (0, 0, 0, 0, 0),
            "loss, duplicates, unexpected, broken chains, resets: {self:?}"
        );
        assert_eq!(self.delivered, self.expected, "{self:?}");
    }
}

/// Waits (up to `timeout`) until every client holds its channel's published sequences,
/// then compares exactly.
pub async fn settle(trackers: &[Tracker], published: &Published, timeout: Duration) -> Verdict {
    let start = Instant::now();
    let complete = || {
        let p = published.lock().unwrap();
        trackers.iter().all(|t| {
            let want = p.get(&t.channel).map_or(&[][..], Vec::as_slice);
            t.track.lock().unwrap().seqs.len() >= want.len()
        })
    };
    let _ = wait_for(timeout, || async { complete().then_some(()) }).await;
    let mut v = Verdict {
        settle: start.elapsed(),
        ..Verdict::default()
    };
    let p = published.lock().unwrap();
    for t in trackers {
        let want = p.get(&t.channel).cloned().unwrap_or_default();
        let track = t.track.lock().unwrap();
        let got: std::collections::HashSet<u64> = track.seqs.iter().copied().collect();
        let wanted: std::collections::HashSet<u64> = want.iter().copied().collect();
        v.expected += want.len() as u64;
        v.delivered += track.seqs.len() as u64;
        v.missing += want.iter().filter(|s| !got.contains(s)).count() as u64;
        v.unexpected += track.seqs.iter().filter(|s| !wanted.contains(s)).count() as u64;
        if track.seqs != want && v.unexpected == 0 && v.missing == 0 {
            v.unexpected += 1; // same sets, another order
        }
        v.duplicates += track.duplicates;
        v.gaps += track.gaps;
        v.broken += track.broken;
        v.resets += track.resets;
        v.reconnects += track.sessions.saturating_sub(1);
    }
    v
}
