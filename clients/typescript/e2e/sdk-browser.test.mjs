// The SDK as an app would load it (`/client/tidings.mjs`, served by the gateway) in a real
// Chromium: WebSockets that cannot connect fall back to SSE, which then delivers in order,
// resumes after its gateway restarts, and publishes over HTTP.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Cluster, browser, freePort, publish, token } from "./harness.mjs";

let cluster;
let chrome;
let page;

before(async () => {
  cluster = await Cluster.start({ worker: false });
  chrome = await browser();
  page = await chrome.context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  // Any page of the gateway's origin: the SDK is loaded from it like an app would.
  await page.goto(`${cluster.gateway.base}/client/tidings.mjs`);
});

after(async () => {
  await chrome?.close();
  await cluster?.stop();
});

test("with WebSockets unreachable the SDK falls back to SSE, resumes after a gateway restart and publishes over HTTP", async () => {
  const deadPort = await freePort();
  const jwt = token({ sub: "sse-user", projects: ["sse"], publish: ["project:sse"] });
  await page.evaluate(
    async ({ deadPort, jwt, http }) => {
      const { TidingsClient } = await import("/client/tidings.mjs");
      const client = new TidingsClient({
        url: `ws://127.0.0.1:${deadPort}/ws`,
        httpUrl: http,
        token: jwt,
        transports: ["websocket", "sse"],
        minReconnectDelay: 50,
        maxReconnectDelay: 500,
      });
      window.got = [];
      window.states = [];
      client.on("state", (s) => window.states.push(s.status));
      client.subscribe("project:sse", { onMessage: (m) => window.got.push(m.seq) });
      client.connect();
      window.client = client;
    },
    { deadPort, jwt, http: cluster.gateway.base },
  );
  await page.waitForFunction(() => window.client.transport === "sse" && window.client.state.status === "connected", null, {
    timeout: 20_000,
  });

  const seqs = [];
  for (let i = 0; i < 5; i++) seqs.push(await publish(cluster.gateway.base, "project:sse", "tick", { i }));
  await page.waitForFunction((n) => window.got.length >= n, seqs.length, { timeout: 10_000 });
  assert.deepEqual(await page.evaluate(() => window.got), seqs);

  // The gateway goes away and comes back on the same port: the EventSource resumes from its
  // cursor, so what was published meanwhile arrives once, in order.
  const gw = cluster.gateway;
  await gw.stop("SIGKILL");
  const other = await cluster.startGateway();
  for (let i = 5; i < 10; i++) seqs.push(await publish(other.base, "project:sse", "tick", { i }));
  cluster.gateway = await cluster.startGateway(gw.port);
  await page.waitForFunction((n) => window.got.length >= n, seqs.length, { timeout: 30_000 });
  assert.deepEqual(await page.evaluate(() => window.got), seqs, "once each, in order");

  const reply = await page.evaluate(() => window.client.publish("project:sse", "from_sse", { ok: true }));
  assert.ok(Number.isInteger(reply.seq), JSON.stringify(reply));
  await page.waitForFunction((seq) => window.got.includes(seq), reply.seq, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => window.client.transport), "sse");
});
