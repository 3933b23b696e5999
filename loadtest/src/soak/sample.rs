//! What the soak watches in the gateway every `--sample`: resident memory, open file
//! descriptors and threads from `/proc/<pid>`, tasks and connections from its `/metrics`
//! (`tidings_gateway_tasks`, `tidings_gateway_connections`); and the least-squares slopes
//! that say whether any of them grows while the load stays the same.

use std::time::Duration;

use serde::Serialize;

use crate::sysinfo;

/// One observation of the gateway.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the load started (negative: before it).
    pub t_s: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
    pub tasks: u64,
    /// `tidings_gateway_connections`.
    pub connections: u64,
    /// Soak clients subscribed at that moment.
    pub clients: u64,
    /// Messages received by all clients so far.
    pub deliveries: u64,
    /// Messages JetStream had acknowledged to the publisher so far (× clients per channel:
    /// the deliveries asked for, so a gateway falling behind shows as a gap to `deliveries`).
    pub published: u64,
    /// The gateway's CPU time so far (user + system): a starved gateway (the box is shared)
    /// shows as a flat stretch here, and its backlog as memory.
    pub gateway_cpu_s: f64,
}

/// Least-squares slopes per minute over the samples after the warm-up.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Slopes {
    /// Samples the fit used, and the span they cover.
    pub samples: usize,
    pub from_s: f64,
    pub to_s: f64,
    pub rss_bytes_per_min: f64,
    /// RSS growth per minute that happens all the time: the mean of the per-interval
    /// increments with the highest and lowest 10 % left out. A leak per churned connection
    /// (churn is uniform) grows RSS in every interval; a backlog while the gateway is starved
    /// of CPU raises it in a few steps that the allocator keeps (a high-water mark), which
    /// the least-squares slope counts and this does not. The verdict uses this one.
    pub rss_trimmed_growth_bytes_per_min: f64,
    pub fds_per_min: f64,
    pub threads_per_min: f64,
    pub tasks_per_min: f64,
    pub connections_per_min: f64,
}

/// Reads the gateway's figures.
pub struct Probe {
    pid: u32,
    metrics_url: String,
    http: reqwest::Client,
}

impl Probe {
    pub fn new(pid: u32, base_url: &str) -> Self {
        Probe {
            pid,
            metrics_url: format!("{}/metrics", base_url.trim_end_matches('/')),
            http: reqwest::Client::new(),
        }
    }

    /// One sample at `t_s`, with the clients' own counts.
    pub async fn sample(&self, t_s: f64, clients: u64, deliveries: u64, published: u64) -> anyhow::Result<Sample> {
        let metrics = self
            .http
            .get(&self.metrics_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
                .ok_or_else(|| anyhow::anyhow!("no {name} in the gateway's /metrics"))
        };
        Ok(Sample {
            t_s,
            rss_bytes: sysinfo::rss_bytes(self.pid)?,
            fds: sysinfo::open_fds(self.pid)?,
            threads: sysinfo::threads(self.pid)?,
            tasks: gauge("tidings_gateway_tasks")?,
            connections: gauge("tidings_gateway_connections")?,
            clients,
            deliveries,
            published,
            gateway_cpu_s: sysinfo::cpu_time(self.pid)?.as_secs_f64(),
        })
    }
}

/// Least-squares slope of `y` against `x` (0 with fewer than two distinct x).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Slopes per minute of every figure over the samples at or after `warmup_s`.
pub fn slopes(samples: &[Sample], warmup_s: f64) -> Slopes {
    let used: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let fit = |f: fn(&Sample) -> u64| {
        let points: Vec<(f64, f64)> = used.iter().map(|s| (s.t_s / 60.0, f(s) as f64)).collect();
        slope(&points)
    };
    Slopes {
        samples: used.len(),
        from_s: used.first().map_or(0.0, |s| s.t_s),
        to_s: used.last().map_or(0.0, |s| s.t_s),
        rss_bytes_per_min: fit(|s| s.rss_bytes),
        rss_trimmed_growth_bytes_per_min: trimmed_growth(&used, |s| s.rss_bytes),
        fds_per_min: fit(|s| s.fds),
        threads_per_min: fit(|s| s.threads),
        tasks_per_min: fit(|s| s.tasks),
        connections_per_min: fit(|s| s.connections),
    }
}

/// The 10 %-trimmed mean of the per-minute increments of `f` between consecutive samples.
fn trimmed_growth(samples: &[&Sample], f: fn(&Sample) -> u64) -> f64 {
    let mut growth: Vec<f64> = samples
        .windows(2)
        .map(|w| (f(w[1]) as f64 - f(w[0]) as f64) * 60.0 / (w[1].t_s - w[0].t_s).max(1e-9))
        .collect();
    growth.sort_by(f64::total_cmp);
    let cut = growth.len() / 10;
    let kept = &growth[cut..growth.len() - cut];
    if kept.is_empty() {
        0.0
    } else {
        kept.iter().sum::<f64>() / kept.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise_around_a_flat_line() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat = [(0.0, 5.0), (1.0, 6.0), (2.0, 4.0), (3.0, 5.0), (4.0, 5.0)];
        assert!(slope(&flat).abs() < 0.21);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
    }

    #[test]
    fn slopes_are_per_minute_after_the_warmup() {
        let s = |t_s: f64, rss: u64| Sample {
            t_s,
            rss_bytes: rss,
            fds: 100,
            threads: 4,
            tasks: 50,
            connections: 10,
            clients: 10,
            deliveries: 0,
            published: 0,
            gateway_cpu_s: 0.0,
        };
        // A jump during the warm-up does not count; 600 bytes per 10 s after it does.
        let samples = [
            s(0.0, 0),
            s(10.0, 1_000_000),
            s(20.0, 2_000_000),
            s(30.0, 2_000_600),
            s(40.0, 2_001_200),
        ];
        let r = slopes(&samples, 20.0);
        assert_eq!(r.samples, 3);
        assert!((r.rss_bytes_per_min - 3_600.0).abs() < 1e-6, "{r:?}");
        assert_eq!(r.fds_per_min, 0.0);
    }

    #[test]
    fn trimmed_growth_sees_a_steady_leak_and_not_one_step() {
        let s = |t_s: f64, rss: u64| Sample {
            t_s,
            rss_bytes: rss,
            fds: 0,
            threads: 0,
            tasks: 0,
            connections: 0,
            clients: 0,
            deliveries: 0,
            published: 0,
            gateway_cpu_s: 0.0,
        };
        // 20 intervals of 10 s, flat but for one 100 MB step: least squares sees growth.
        let step: Vec<Sample> = (0..21)
            .map(|i| s(i as f64 * 10.0, if i < 10 { 0 } else { 100_000_000 }))
            .collect();
        let r = slopes(&step, 0.0);
        assert!(r.rss_bytes_per_min > 10_000_000.0, "{r:?}");
        assert_eq!(r.rss_trimmed_growth_bytes_per_min, 0.0);
        // 1 MB per minute in every interval: both see it.
        let leak: Vec<Sample> = (0..21).map(|i| s(i as f64 * 10.0, i * 1_000_000 / 6)).collect();
        let r = slopes(&leak, 0.0);
        assert!(
            (r.rss_trimmed_growth_bytes_per_min - 1_000_000.0).abs() < 1_000.0,
            "{r:?}"
        );
        assert!((r.rss_bytes_per_min - 1_000_000.0).abs() < 1_000.0, "{r:?}");
    }
}
