// Benchmark: publish → DOM update in the real dashboard, in Debian's Chromium, at a paced rate
// into one page. Not a test: it asserts nothing about speed, it reports.
//
//   TIDINGS_NATS_SERVER=$(scripts/install-tools) TIDINGS_BIN_DIR=target/release \
//     node clients/typescript/bench/dom-latency.mjs --rates 100,1000 --seconds 10 --runs 3
//
// For each rate and run: a fresh NATS, gateway and worker-less cluster; the dashboard opened
// on project:bench; messages published over HTTP (POST /api/v1/publish, keep-alive) on a
// fixed schedule; the page's MutationObserver stamps the moment each `event` element with
// that message's seq enters the DOM. Latency = that stamp − the moment the publish request
// was made (both clocks are this machine's, performance.timeOrigin + performance.now()).
// Messages whose element never appears within 5 s of the end are counted as lost.

import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { cpus } from "node:os";

import { Cluster, browser, serviceToken, token } from "../e2e/harness.mjs";

const { values } = parseArgs({
  options: {
    rates: { type: "string", default: "100,1000" },
    seconds: { type: "string", default: "10" },
    runs: { type: "string", default: "3" },
  },
});
const rates = values.rates.split(",").map(Number);
const seconds = Number(values.seconds);
const runs = Number(values.runs);

const now = () => performance.timeOrigin + performance.now();
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

async function one(rate) {
  const cluster = await Cluster.start({ worker: false });
  const chrome = await browser();
  try {
    const page = await chrome.context.newPage();
    await page.addInitScript(() => {
      window.__seen = new Map();
      new MutationObserver((records) => {
        const t = performance.timeOrigin + performance.now();
        for (const r of records)
          for (const n of r.addedNodes)
            if (n.nodeType === 1 && n.dataset?.testid === "event" && n.dataset.event === "bench") {
              const seq = Number(n.dataset.seq);
              if (!window.__seen.has(seq)) window.__seen.set(seq, t);
            }
      }).observe(document, { childList: true, subtree: true });
    });
    const jwt = token({ sub: "bench", projects: ["bench"] });
    await page.goto(`${cluster.gateway.base}/#token=${jwt}&projects=bench`);
    await page.waitForFunction(() => document.querySelector('[data-testid="connection-state"]')?.textContent?.trim() === "connected", null, {
      timeout: 15_000,
    });

    const auth = `Bearer ${serviceToken()}`;
    const sent = new Map();
    const total = rate * seconds;
    const start = now() + 100;
    const inflight = [];
    let errors = 0;
    for (let i = 0; i < total; i++) {
      const due = start + (i * 1000) / rate;
      const wait = due - now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      const t = now();
      inflight.push(
        fetch(`${cluster.gateway.base}/api/v1/publish`, {
          method: "POST",
          headers: { Authorization: auth, "Content-Type": "application/json" },
          body: JSON.stringify({ channel: "project:bench", event: "bench", data: { i } }),
        })
          .then((r) => r.json())
          .then((b) => sent.set(b.seq, t))
          .catch(() => errors++),
      );
    }
    await Promise.all(inflight);
    const achieved = total / ((now() - start) / 1000);
    await page
      .waitForFunction((n) => window.__seen.size >= n, sent.size, { timeout: 5000 })
      .catch(() => {});
    const seen = new Map(await page.evaluate(() => [...window.__seen]));
    const lat = [];
    for (const [seq, t] of sent) if (seen.has(seq)) lat.push(seen.get(seq) - t);
    lat.sort((a, b) => a - b);
    return {
      rate,
      achieved: Math.round(achieved),
      published: sent.size,
      errors,
      shown: lat.length,
      lost: sent.size - lat.length,
      p50_ms: +pct(lat, 50).toFixed(2),
      p99_ms: +pct(lat, 99).toFixed(2),
      max_ms: +lat[lat.length - 1].toFixed(2),
    };
  } finally {
    await chrome.close();
    await cluster.stop();
  }
}

console.log(`# dom-latency: ${cpus().length} × ${cpus()[0]?.model}, ${new Date().toISOString()}, node ${process.version}`);
for (const rate of rates) {
  for (let r = 1; r <= runs; r++) {
    const result = await one(rate);
    console.log(JSON.stringify({ run: r, seconds, ...result }));
  }
}
