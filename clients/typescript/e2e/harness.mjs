// The real parts an end-to-end test drives: nats-server (JetStream, a temporary store),
// tidings-gateway and tidings-worker (the workspace's debug builds), and Debian's Chromium
// through playwright-core. Everything is started on free loopback ports and stopped by PID.
//
// Environment (scripts/test sets all three):
//   TIDINGS_NATS_SERVER  path of nats-server (scripts/install-tools prints it)
//   TIDINGS_BIN_DIR      directory of tidings-gateway / tidings-worker (default ../../target/debug)
//   CHROMIUM             path of Chromium (default: `command -v chromium`)

import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../..");
export const artefacts = resolve(here, "../test-results");
const binDir = process.env.TIDINGS_BIN_DIR ?? join(repoRoot, "target/debug");

export const JWT_SECRET = "e2e-jwt-secret-of-at-least-thirty-two-bytes";
export const GITHUB_SECRET = "e2e-github-secret";

function required(name, value) {
  if (!value) throw new Error(`${name} is not set: run the tests through scripts/test, which installs it`);
  return value;
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually(what, check, timeoutMs = 15_000, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Every child still running: killed when this process exits, however it exits. */
const running = new Set();
process.once("exit", () => {
  for (const c of running) c.proc.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM", "SIGPIPE", "SIGHUP"]) {
  process.once(sig, () => process.exit(1));
}

/** A child process whose output is kept (and shown when a test fails). */
class Child {
  constructor(name, bin, args, env) {
    this.name = name;
    this.log = [];
    this.proc = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 500) this.log.shift();
    };
    this.proc.stdout.on("data", keep);
    this.proc.stderr.on("data", keep);
    running.add(this);
    this.exited = new Promise((ok) =>
      this.proc.once("exit", (code, signal) => {
        running.delete(this);
        ok({ code, signal });
      }),
    );
  }

  get pid() {
    return this.proc.pid;
  }

  /** Sends `signal` and waits for the exit. */
  async stop(signal = "SIGTERM") {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

async function waitHttp(url, want = 200, timeoutMs = 30_000) {
  await eventually(`${url} → ${want}`, async () => (await fetch(url)).status === want, timeoutMs, 50);
}

async function waitPort(port, child, timeoutMs = 15_000) {
  const { connect } = await import("node:net");
  await eventually(
    `${child.name} on port ${port}`,
    () => {
      if (child.proc.exitCode !== null) throw new Error(`${child.name} exited: ${child.log.join("")}`);
      return new Promise((ok) => {
        const s = connect(port, "127.0.0.1", () => {
          s.destroy();
          ok(true);
        });
        s.on("error", () => ok(false));
      });
    },
    timeoutMs,
    50,
  );
}

/** Mints an HS256 JWT for the gateway's test secret. */
export function token(claims, ttlSecs = 3600) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = { exp: Math.floor(Date.now() / 1000) + ttlSecs, ...claims };
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(body)}`;
  const sig = createHmac("sha256", JWT_SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${sig}`;
}

export const serviceToken = () => token({ sub: "e2e-service", role: "service" });

/** `X-Hub-Signature-256` of `body` as GitHub computes it. */
export function githubSignature(body, secret = GITHUB_SECRET) {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** POSTs `payload` to `base`'s GitHub route as GitHub does, signed; returns status and answer. */
export async function deliverGithub(base, event, payload, delivery) {
  const body = JSON.stringify(payload);
  const resp = await fetch(`${base}/api/v1/webhooks/github`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "X-GitHub-Event": event,
      "X-GitHub-Delivery": delivery,
      "X-Hub-Signature-256": githubSignature(body),
    },
    body,
  });
  const text = await resp.text();
  return { status: resp.status, answer: text ? JSON.parse(text) : null };
}

/**
 * One NATS server, one or more gateways, one worker. `stop()` ends them all.
 */
export class Cluster {
  static async start({ worker = true } = {}) {
    const c = new Cluster();
    await c.startNats();
    c.gateway = await c.startGateway();
    if (worker) c.worker = await c.startWorker();
    return c;
  }

  constructor() {
    this.children = [];
    this.dir = mkdtempSync(join(tmpdir(), "tidings-e2e-"));
  }

  async startNats() {
    const bin = required("TIDINGS_NATS_SERVER", process.env.TIDINGS_NATS_SERVER);
    this.natsPort = await freePort();
    const nats = new Child("nats-server", bin, ["-a", "127.0.0.1", "-p", String(this.natsPort), "-js", "-sd", join(this.dir, "nats")], {});
    this.children.push(nats);
    await waitPort(this.natsPort, nats);
    this.natsUrl = `nats://127.0.0.1:${this.natsPort}`;
  }

  /** Starts a gateway on `port` (a free one by default) and waits for /readyz. */
  async startGateway(port, env = {}) {
    port ??= await freePort();
    const gw = new Child(`gateway:${port}`, join(binDir, "tidings-gateway"), [], {
      TIDINGS_NATS_URL: this.natsUrl,
      TIDINGS_LISTEN: `127.0.0.1:${port}`,
      TIDINGS_NODE_ID: `e2e-${port}`,
      TIDINGS_JWT_SECRET: JWT_SECRET,
      TIDINGS_GITHUB_WEBHOOK_SECRET: GITHUB_SECRET,
      TIDINGS_WEBHOOK_ALLOW_PRIVATE: "true",
      TIDINGS_DRAIN_MS: "200",
      ...env,
    });
    this.children.push(gw);
    gw.port = port;
    gw.base = `http://127.0.0.1:${port}`;
    await waitHttp(`${gw.base}/readyz`);
    return gw;
  }

  async startWorker() {
    const port = await freePort();
    const mail = join(this.dir, "mail");
    mkdirSync(mail, { recursive: true });
    const w = new Child("worker", join(binDir, "tidings-worker"), [], {
      TIDINGS_NATS_URL: this.natsUrl,
      TIDINGS_METRICS_LISTEN: `127.0.0.1:${port}`,
      TIDINGS_SMTP_URL: `file://${mail}`,
      TIDINGS_WEBHOOK_ALLOW_PRIVATE: "true",
    });
    this.children.push(w);
    await waitHttp(`http://127.0.0.1:${port}/readyz`);
    return w;
  }

  /** Logs of every process, for a failing test's message. */
  logs() {
    return this.children.map((c) => `--- ${c.name}\n${c.log.join("").slice(-4000)}`).join("\n");
  }

  async stop() {
    for (const c of [...this.children].reverse()) await c.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A service-token HTTP call to `base`; returns the parsed body, throws on non-2xx. */
export async function api(base, method, path, body, bearer = serviceToken()) {
  const resp = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${bearer}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Durable publish through `base`'s HTTP API; returns the stored seq. */
export async function publish(base, channel, event, data, id) {
  const { seq } = await api(base, "POST", "/api/v1/publish", { channel, event, data, ...(id ? { id } : {}) });
  return seq;
}

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  try {
    return execFileSync("sh", ["-c", "command -v chromium"]).toString().trim();
  } catch {
    throw new Error("chromium is not installed: run the tests through scripts/test, which installs it");
  }
}

/** Debian's Chromium with a fresh profile; `close()` removes the profile. */
export async function browser() {
  const profile = mkdtempSync(join(tmpdir(), "tidings-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

/** Texts the page's `connection-state` element takes, recorded from the page's first paint. */
export async function recordStates(page) {
  await page.addInitScript(() => {
    window.__states = [];
    const watch = () => {
      const el = document.querySelector('[data-testid="connection-state"]');
      if (!el) return requestAnimationFrame(watch);
      const note = () => {
        const t = el.textContent?.trim() ?? "";
        if (window.__states[window.__states.length - 1] !== t) window.__states.push(t);
      };
      note();
      new MutationObserver(note).observe(el, { childList: true, characterData: true, subtree: true });
    };
    watch();
  });
}

export { mkdirSync };
