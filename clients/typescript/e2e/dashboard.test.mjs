// The dashboard in a real Chromium against a real NATS, gateway and worker (CONTRACT §9):
// live progress, surviving a gateway SIGKILL with nothing lost or repeated, a publish made
// offline, a signed GitHub example, the inbox badge, and a screenshot for the docs.

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Cluster, api, artefacts, browser, deliverGithub, publish, recordStates, token } from "./harness.mjs";

const examples = createRequire(import.meta.url)("@octokit/webhooks-examples");
const example = (event, pick) => examples.find((e) => e.name === event).examples.find(pick);
const prExample = example("pull_request", (p) => p.action === "opened");
const checkExample = example("check_run", (p) => p.action === "completed" && p.repository.id === prExample.repository.id);
const REPO = String(prExample.repository.id);
const USER = "ada";

let cluster;
let chrome;
let page;
/** The second gateway: publishes while the page's gateway is down, as other services would. */
let publisher;

const countEvents = (channel, event) =>
  page.locator(`[data-testid="event"][data-channel="${channel}"][data-event="${event}"]`).count();

before(async () => {
  cluster = await Cluster.start();
  publisher = await cluster.startGateway();
  chrome = await browser();
  page = await chrome.context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await recordStates(page);
  const jwt = token({ sub: USER, projects: ["demo", REPO], publish: ["project:demo"] });
  await page.goto(`${cluster.gateway.base}/#token=${jwt}&projects=demo,${REPO}`);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="connection-state"]')?.textContent?.trim() === "connected",
    null,
    { timeout: 15_000 },
  );
});

after(async () => {
  if (page && process.exitCode) console.error(cluster?.logs());
  await chrome?.close();
  await cluster?.stop();
});

test("a published agent_run_progress shows within 1 s, and the page is connected", async () => {
  assert.equal((await page.textContent('[data-testid="connection-state"]'))?.trim(), "connected");
  const started = Date.now();
  await publish(cluster.gateway.base, "project:demo", "agent_run_progress", { run_id: "run-1", progress: 40, step: "plan" });
  await page.waitForSelector('[data-testid="agent-run"][data-run-id="run-1"][data-progress="40"]', { timeout: 1000 });
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 1000, `shown after ${elapsed} ms`);
  // The latest value wins, on the same bar.
  await publish(cluster.gateway.base, "project:demo", "agent_run_progress", { run_id: "run-1", progress: 75 });
  await page.waitForSelector('[data-testid="agent-run"][data-run-id="run-1"][data-progress="75"]', { timeout: 5000 });
  assert.equal(await page.locator('[data-testid="agent-run"][data-run-id="run-1"]').count(), 1);
});

test("a gateway SIGKILLed and restarted: disconnected, connected, every message once and in order, the offline publish once", async () => {
  const before = await countEvents("project:demo", "step");
  // States from here on: the page's first "disconnected" (before its first connect) must not count.
  const mark = await page.evaluate(() => window.__states.length);
  const gw = cluster.gateway;
  await gw.stop("SIGKILL");
  await page.waitForFunction((m) => window.__states.slice(m).includes("disconnected"), mark, { timeout: 10_000 });
  assert.notEqual(await page.evaluate(() => window.tidings.client.state.status), "connected");

  // Published elsewhere while this page's gateway is down.
  const seqs = [];
  for (let i = 0; i < 20; i++) {
    seqs.push(await publish(publisher.base, "project:demo", "step", { i }));
  }
  // Published by the page itself while it knows it is offline: queued by the SDK.
  const offline = page.evaluate(() =>
    window.tidings.client.publish("project:demo", "chat_message", { text: "sent while offline" }, { durable: true }),
  );

  cluster.gateway = await cluster.startGateway(gw.port);
  await page.waitForFunction(
    (m) => {
      const s = window.__states.slice(m);
      return s.lastIndexOf("connected") > s.indexOf("disconnected") && s[s.length - 1] === "connected";
    },
    mark,
    { timeout: 30_000 },
  );
  const reply = await offline;
  assert.ok(Number.isInteger(reply?.seq), `publish reply ${JSON.stringify(reply)}`);

  await page.waitForFunction(
    (n) => document.querySelectorAll('[data-testid="event"][data-channel="project:demo"][data-event="step"]').length >= n,
    before + seqs.length,
    { timeout: 15_000 },
  );
  const shown = await page.$$eval('[data-testid="event"][data-channel="project:demo"][data-event="step"]', (els) =>
    els.map((e) => Number(e.getAttribute("data-seq"))),
  );
  assert.deepEqual(shown.slice(before), seqs, "every message published meanwhile, once, in order");

  // The offline publish is stored once and shown once.
  await page.waitForFunction(
    (seq) => document.querySelector(`[data-testid="event"][data-channel="project:demo"][data-seq="${seq}"]`),
    reply.seq,
    { timeout: 10_000 },
  );
  assert.equal(await countEvents("project:demo", "chat_message"), 1);
  const { messages } = await api(publisher.base, "GET", "/api/v1/channels/project:demo/history?limit=1000");
  assert.equal(messages.filter((m) => m.event === "chat_message").length, 1, "stored once");
  // The SDK delivered nothing twice: the page's own safety net caught no duplicate.
  assert.equal(await page.evaluate(() => window.tidings.stats.duplicates), 0);
});

/** Delivers `payload` to the GitHub route as GitHub does, signed, and expects it published. */
async function github(event, payload, delivery) {
  const { status, answer } = await deliverGithub(cluster.gateway.base, event, payload, delivery);
  assert.equal(status, 202, JSON.stringify(answer));
}

test("a signed GitHub pull_request example shows up as a PR item", async () => {
  await github("pull_request", prExample, "e2e-dashboard-pr");
  const item = page.locator('[data-testid="pr-item"]', { hasText: prExample.pull_request.title });
  await item.first().waitFor({ timeout: 5000 });
  assert.match(await item.first().textContent(), new RegExp(`#${prExample.pull_request.number}`));
});

test("a notification raises the unread badge; mark-as-read lowers it", async () => {
  const badge = () => page.textContent('[data-testid="inbox-unread"]').then((t) => Number(t?.trim()));
  const base = cluster.gateway.base;
  const start = await badge();
  await api(base, "PUT", "/api/v1/templates/e2e_run_done", { in_app: { title: "Run {{ run }} finished", body: "all green" } });
  const { id } = await api(base, "POST", "/api/v1/notifications", {
    user: USER,
    template: "e2e_run_done",
    data: { run: "run-1" },
    priority: "high",
    channels: ["in_app"],
  });
  const item = page.locator(`[data-testid="inbox-item"][data-id="${id}"]`);
  await item.waitFor({ timeout: 15_000 });
  assert.match(await item.textContent(), /Run run-1 finished/);
  await page.waitForFunction((n) => Number(document.querySelector('[data-testid="inbox-unread"]')?.textContent) === n, start + 1, {
    timeout: 5000,
  });

  await item.locator('[data-testid="mark-read"]').click();
  await page.waitForFunction((n) => Number(document.querySelector('[data-testid="inbox-unread"]')?.textContent) === n, start, {
    timeout: 5000,
  });
  const inbox = await api(base, "GET", `/api/v1/users/${USER}/inbox`);
  assert.equal(inbox.items.find((i) => i.id === id)?.read, true, "marked read on the server");
  assert.equal(inbox.unread, start);
});

test("a screenshot of the live dashboard is written as a test artefact", async () => {
  for (const [run, progress, step] of [
    ["run-2", 20, "checkout"],
    ["run-3", 90, "review"],
  ]) {
    await publish(cluster.gateway.base, "project:demo", "agent_run_progress", { run_id: run, progress, step, status: "running" });
  }
  await github("check_run", checkExample, "e2e-dashboard-check");
  await page.waitForSelector('[data-testid="agent-run"][data-run-id="run-3"][data-progress="90"]', { timeout: 5000 });
  await page.locator('[data-testid="validation-item"]').first().waitFor({ timeout: 5000 });
  mkdirSync(artefacts, { recursive: true });
  const file = join(artefacts, "dashboard.png");
  await page.screenshot({ path: file, fullPage: false });
  const { statSync } = await import("node:fs");
  assert.ok(statSync(file).size > 10_000, "a real picture");
});
