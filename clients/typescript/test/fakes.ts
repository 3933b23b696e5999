/**
 * Test doubles for the browser APIs the client uses: a WebSocket that records what the
 * client sends and lets the test push frames and closes, an EventSource, and JWT helpers.
 */
import { vi } from "vitest";
import { TidingsClient } from "../src/index.js";
import type { TidingsClientOptions } from "../src/index.js";

type Handler = ((ev: unknown) => void) | null;

export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
  }
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances.at(-1);
    if (!ws) throw new Error("no WebSocket was created");
    return ws;
  }

  readonly url: string;
  readonly protocols: string | string[] | undefined;
  readyState = 0;
  sent: string[] = [];
  closedWith: { code: number | undefined; reason: string | undefined } | null = null;
  onopen: Handler = null;
  onmessage: Handler = null;
  onclose: Handler = null;
  onerror: Handler = null;

  constructor(url: string, protocols?: string | string[]) {
    this.url = url;
    this.protocols = protocols;
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  /** The client closes: recorded; the close event a real socket fires later goes to whatever is still attached. */
  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
    this.onclose?.({ code: code ?? 1005, reason: reason ?? "" });
  }

  // ---- the test's side ----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(frame: unknown): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  welcome(extra: Record<string, unknown> = {}): void {
    this.receive({ type: "welcome", session: "s1", node: "n1", user: "u1", heartbeat_ms: 25000, ...extra });
  }
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  fail(): void {
    this.onerror?.({});
    this.serverClose(1006);
  }
  frames(): Array<Record<string, unknown>> {
    return this.sent.map((s) => JSON.parse(s) as Record<string, unknown>);
  }
  framesOf(type: string): Array<Record<string, unknown>> {
    return this.frames().filter((f) => f.type === type);
  }
  lastFrame(): Record<string, unknown> {
    const f = this.frames().at(-1);
    if (!f) throw new Error("nothing sent");
    return f;
  }
  /** Answers a command frame with `ok:true` and extra fields. */
  reply(frame: Record<string, unknown>, extra: Record<string, unknown> = {}): void {
    this.receive({ type: "reply", id: frame.id, ok: true, ...extra });
  }
}

export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }
  static last(): FakeEventSource {
    const es = FakeEventSource.instances.at(-1);
    if (!es) throw new Error("no EventSource was created");
    return es;
  }

  readonly url: string;
  readyState = 0;
  closed = false;
  onopen: Handler = null;
  onmessage: Handler = null;
  onerror: Handler = null;

  constructor(url: string) {
    this.url = url;
    FakeEventSource.instances.push(this);
  }
  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  emit(frame: Record<string, unknown>, id?: string): void {
    this.onmessage?.({ data: JSON.stringify(frame), lastEventId: id ?? "" });
  }
  error(): void {
    this.onerror?.({});
  }
  /** A named event (`event: <type>`): delivered, as a browser does, to that type's listeners only (here the `on<type>` property the client sets). */
  emitEvent(type: string, data: unknown): void {
    const handler = (this as unknown as Record<string, Handler | undefined>)[`on${type}`];
    handler?.({ type, data: typeof data === "string" ? data : JSON.stringify(data), lastEventId: "" });
  }
  params(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
}

const b64url = (s: string): string => Buffer.from(s).toString("base64url");

/** An unsigned JWT with the given claims (the client never verifies). */
export function makeToken(claims: Record<string, unknown>): string {
  return `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}.c2ln`;
}

/** A token for `u1` valid for `seconds` from the (possibly fake) clock. */
export function tokenFor(seconds = 3600, extra: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  return makeToken({ sub: "u1", iat: now, exp: now + seconds, projects: ["p1"], ...extra });
}

export function newClient(opts: Partial<TidingsClientOptions> = {}): TidingsClient {
  return new TidingsClient({
    url: "ws://gw.test:8080/ws",
    token: "tok-1",
    WebSocket: FakeWebSocket,
    ...opts,
  });
}

/** Connects and brings the socket to `welcome`; returns the socket. */
export function connectLive(client: TidingsClient, welcome: Record<string, unknown> = {}): FakeWebSocket {
  client.connect();
  const ws = FakeWebSocket.last();
  ws.open();
  ws.welcome(welcome);
  return ws;
}

export function message(channel: string, seq?: number, prev?: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const m: Record<string, unknown> = {
    type: "message",
    channel,
    event: "ev",
    data: { n: seq ?? null },
    id: `m${seq ?? Math.random()}`,
    ts: "2025-01-01T00:00:00.000Z",
  };
  if (seq !== undefined) m.seq = seq;
  if (prev !== undefined) m.prev = prev;
  return { ...m, ...extra };
}

/** Lets pending promise continuations run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

export function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

export function mockFetch(...responses: Array<Response | Error>) {
  const fn = vi.fn(async (_url: string, _init?: RequestInit): Promise<Response> => {
    const next = responses.shift();
    if (next === undefined) throw new Error("unexpected fetch");
    if (next instanceof Error) throw next;
    return next;
  });
  return fn;
}
