// Benchmark: publish → DOM update in the real dashboard, in Debian's Chromium, at a paced rate
// into one page. Not a test: it asserts nothing about speed, it reports.
//
//   TIDINGS_NATS_SERVER=$(scripts/install-tools) TIDINGS_BIN_DIR=target/release \
//     node clients/typescript/bench/dom-latency.mjs --rates 100,1000 --seconds 10 --runs 3
//
// For each rate and run: a fresh NATS, gateway and worker-less cluster; the dashboard opened
// on project:bench; messages published the way back-end services publish, straight to NATS
// on `tidings.events.project.bench` (a plain NATS client over TCP, one connection), on a
// fixed schedule, each with its own message id. The page stamps when the SDK hands each
// message to the app (`sdk_*`) and, with a MutationObserver, when its `event` element enters
// the DOM (`p50/p99/max`). Latency = that stamp − the moment the PUB was written to the
// socket (both clocks are this machine's, performance.timeOrigin + performance.now()).
// Messages whose element never appears within 5 s of the end are counted as lost.
// `--pages dashboard,sdk` (the default) also runs the baseline: the same SDK in a blank page
// with no rendering (`p50/p99` there = publish → SDK handler), alternating with the dashboard.

import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { cpus } from "node:os";

import { connect } from "node:net";

import { Cluster, browser, token } from "../e2e/harness.mjs";

/** A minimal NATS publisher: CONNECT, then PUB frames on one TCP connection. */
async function natsPublisher(port) {
  const sock = connect(port, "127.0.0.1");
  sock.setNoDelay(true);
  await new Promise((ok, fail) => sock.once("connect", ok).once("error", fail));
  sock.on("data", (d) => {
    if (d.toString().includes("PING")) sock.write("PONG\r\n");
  });
  sock.write('CONNECT {"verbose":false,"pedantic":false,"name":"dom-latency"}\r\n');
  return {
    pub(subject, body) {
      sock.write(`PUB ${subject} ${Buffer.byteLength(body)}\r\n${body}\r\n`);
    },
    close: () => sock.end(),
  };
}

const { values } = parseArgs({
  options: {
    rates: { type: "string", default: "100,1000" },
    seconds: { type: "string", default: "10" },
    runs: { type: "string", default: "3" },
    pages: { type: "string", default: "dashboard,sdk" },
  },
});
const pages = values.pages.split(",");
const rates = values.rates.split(",").map(Number);
const seconds = Number(values.seconds);
const runs = Number(values.runs);

const now = () => performance.timeOrigin + performance.now();
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/**
 * The baseline: the same SDK build in a blank page of the gateway's origin, one subscription,
 * no rendering. What it measures is the path NATS → gateway → socket → SDK alone.
 */
async function openSdkPage(page, base, jwt) {
  await page.goto(`${base}/client/tidings.mjs`);
  await page.evaluate(
    async ({ jwt, base }) => {
      const { TidingsClient } = await import("/client/tidings.mjs");
      window.__seen = new Map();
      window.__recv = window.__seen;
      const client = new TidingsClient({ url: `${base.replace("http", "ws")}/ws`, token: jwt });
      client.subscribe("project:bench", {
        onMessage: (m) => window.__seen.has(m.id) || window.__seen.set(m.id, performance.timeOrigin + performance.now()),
      });
      client.connect();
      window.tidings = { client };
    },
    { jwt, base },
  );
  await page.waitForFunction(() => window.tidings.client.state.status === "connected", null, { timeout: 15_000 });
}

/** The dashboard, with its DOM watched for each message's row and its SDK for each message. */
async function openDashboard(page, base, jwt) {
  await page.addInitScript(() => {
    window.__seen = new Map();
    new MutationObserver((records) => {
      const t = performance.timeOrigin + performance.now();
      for (const r of records)
        for (const n of r.addedNodes)
          if (n.nodeType === 1 && n.dataset?.testid === "event" && n.dataset.event === "bench") {
            if (!window.__seen.has(n.dataset.id)) window.__seen.set(n.dataset.id, t);
          }
    }).observe(document, { childList: true, subtree: true });
  });
  await page.goto(`${base}/#token=${jwt}&projects=bench`);
  await page.waitForFunction(() => document.querySelector('[data-testid="connection-state"]')?.textContent?.trim() === "connected", null, {
    timeout: 15_000,
  });
  // Also stamp when the SDK hands each message to the app: splits the path into
  // network + gateway + SDK, and rendering.
  await page.evaluate(() => {
    window.__recv = new Map();
    window.tidings.client.on("message", (m) => {
      if (m.event === "bench" && !window.__recv.has(m.id)) window.__recv.set(m.id, performance.timeOrigin + performance.now());
    });
  });
}

async function one(rate, kind) {
  const cluster = await Cluster.start({ worker: false });
  const chrome = await browser();
  try {
    const page = await chrome.context.newPage();
    const jwt = token({ sub: "bench", projects: ["bench"] });
    await (kind === "sdk" ? openSdkPage : openDashboard)(page, cluster.gateway.base, jwt);
    const nats = await natsPublisher(cluster.natsPort);
    const sent = new Map();
    const total = rate * seconds;
    const start = now() + 100;
    for (let i = 0; i < total; i++) {
      const due = start + (i * 1000) / rate;
      const wait = due - now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      const id = `bench-${i}`;
      sent.set(id, now());
      nats.pub("tidings.events.project.bench", JSON.stringify({ event: "bench", data: { i }, id }));
    }
    const achieved = total / ((now() - start) / 1000);
    await page
      .waitForFunction((n) => window.__seen.size >= n, sent.size, { timeout: 5000 })
      .catch(() => {});
    nats.close();
    // The gateway's own share: stored in NATS → frame written to the socket.
    const metrics = await (await fetch(`${cluster.gateway.base}/metrics`)).text();
    const metric = (name) => Number(metrics.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1] ?? NaN);
    const gatewayMean =
      (metric("tidings_gateway_delivery_latency_seconds_sum") / metric("tidings_gateway_delivery_latency_seconds_count")) * 1000;
    const seen = new Map(await page.evaluate(() => [...window.__seen]));
    const recv = new Map(await page.evaluate(() => [...window.__recv]));
    const lat = [];
    const toSdk = [];
    for (const [id, t] of sent) {
      if (seen.has(id)) lat.push(seen.get(id) - t);
      if (recv.has(id)) toSdk.push(recv.get(id) - t);
    }
    lat.sort((a, b) => a - b);
    toSdk.sort((a, b) => a - b);
    return {
      page: kind,
      rate,
      achieved: Math.round(achieved),
      published: sent.size,
      shown: lat.length,
      lost: sent.size - lat.length,
      p50_ms: +pct(lat, 50).toFixed(2),
      p99_ms: +pct(lat, 99).toFixed(2),
      max_ms: +lat[lat.length - 1].toFixed(2),
      sdk_p50_ms: +pct(toSdk, 50).toFixed(2),
      sdk_p99_ms: +pct(toSdk, 99).toFixed(2),
      gateway_mean_ms: +gatewayMean.toFixed(2),
    };
  } finally {
    await chrome.close();
    await cluster.stop();
  }
}

console.log(`# dom-latency: ${cpus().length} × ${cpus()[0]?.model}, ${new Date().toISOString()}, node ${process.version}`);
// Runs alternate between the pages, so both see the same minutes of a noisy VM.
for (const rate of rates) {
  for (let r = 1; r <= runs; r++) {
    for (const kind of pages) {
      const result = await one(rate, kind);
      console.log(JSON.stringify({ run: r, seconds, ...result }));
    }
  }
}
