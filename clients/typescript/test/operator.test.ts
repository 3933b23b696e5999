/**
 * The gateway's operator controls (issue 14) as the SDK sees them:
 * - `POST /api/v1/channels/{channel}/unsubscribe`: an `unsubscribed` frame (WebSocket) or an
 *   `event: unsubscribed` (SSE) ends that one subscription with its reason;
 * - `disconnect` / `revoke`: the WebSocket closes with 4001 `revoked` (SSE: the stream ends,
 *   and the revoked token is then refused with HTTP 401): one `getToken()`, and `error` if the
 *   new token is refused too.
 */
import { afterEach, beforeEach, describe, expect, it, onTestFinished, vi } from "vitest";
import { TidingsClient, type ConnectionState, type MessageFrame, type UnsubscribedInfo } from "../src/index.js";
import { FakeEventSource, FakeWebSocket, connectLive, jsonResponse, message, mockFetch, newClient, settle, tokenFor } from "./fakes.js";

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
  FakeEventSource.reset();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

const UNSUB_P1 = { type: "unsubscribed", channel: "project:p1", reason: "server" };
const seqs = (ms: MessageFrame[]): Array<number | undefined> => ms.map((m) => m.seq);

/** A live WebSocket client holding project:p1 and project:p2, both confirmed in epoch E1. */
function wsWithTwoChannels() {
  const client = newClient();
  const got = { p1: [] as MessageFrame[], p2: [] as MessageFrame[], all: [] as MessageFrame[] };
  const ended = { p1: [] as UnsubscribedInfo[], client: [] as UnsubscribedInfo[] };
  const p1 = client.subscribe("project:p1", { onMessage: (m) => got.p1.push(m), onUnsubscribed: (i) => ended.p1.push(i) });
  const p2 = client.subscribe("project:p2", { onMessage: (m) => got.p2.push(m) });
  client.on("message", (m) => got.all.push(m));
  client.on("unsubscribed", (i) => ended.client.push(i));
  const ws = connectLive(client);
  for (const f of ws.framesOf("subscribe")) ws.reply(f, { channel: f.channel, epoch: "E1", recovered: true, missed: 0, seq: 0 });
  return { client, ws, p1, p2, got, ended };
}

describe("server unsubscribe over WebSocket", () => {
  it("ends exactly that subscription, with its reason; the others keep delivering", () => {
    const { client, ws, p1, p2, got, ended } = wsWithTwoChannels();
    const states: string[] = [];
    p1.on("state", (s) => states.push(s));
    const viaOn: UnsubscribedInfo[] = [];
    p1.on("unsubscribed", (i) => viaOn.push(i));
    ws.receive(message("project:p1", 1, 0));
    ws.receive(message("project:p2", 2, 0));

    ws.receive(UNSUB_P1);

    const info = { channel: "project:p1", reason: "server", byServer: true };
    expect(p1.state).toBe("unsubscribed");
    expect(p1.unsubscribed).toEqual(info);
    expect(states).toEqual(["unsubscribed"]);
    expect(ended.p1).toEqual([info]);
    expect(viaOn).toEqual([info]);
    expect(ended.client).toEqual([info]);
    expect(client.getSubscription("project:p1")).toBeUndefined();
    expect(client.subscriptions()).toEqual([p2]);
    expect(p2.state).toBe("subscribed");
    expect(p2.unsubscribed).toBeNull();
    expect(ws.framesOf("unsubscribe")).toHaveLength(0); // the gateway already let go

    // Late messages of the ended channel go nowhere; the other channel goes on.
    ws.receive(message("project:p1", 3, 1));
    ws.receive(message("project:p2", 4, 2));
    expect(seqs(got.p1)).toEqual([1]);
    expect(seqs(got.p2)).toEqual([2, 4]);
    expect(seqs(got.all)).toEqual([1, 2, 4]);

    // A repeated frame changes nothing and emits nothing.
    ws.receive(UNSUB_P1);
    expect(ended.client).toHaveLength(1);
    expect(client.state.status).toBe("connected");
  });

  it("is not subscribed again on reconnect; the position is kept and a later subscribe resumes from it", () => {
    const { client, ws, p1, got } = wsWithTwoChannels();
    ws.receive(message("project:p1", 7, 0));
    ws.receive(UNSUB_P1);
    expect(p1.position).toEqual({ seq: 7, epoch: "E1" });
    expect(client.position("project:p1")).toEqual({ seq: 7, epoch: "E1" });

    ws.serverClose(1006);
    vi.advanceTimersByTime(30_000);
    const ws2 = FakeWebSocket.last();
    expect(ws2).not.toBe(ws);
    ws2.open();
    ws2.welcome();
    expect(ws2.framesOf("subscribe").map((f) => f.channel)).toEqual(["project:p2"]);
    expect(client.position("project:p1")).toEqual({ seq: 7, epoch: "E1" });

    // The application asks again: a new Subscription, resuming after seq 7.
    const again = client.subscribe("project:p1");
    expect(again).not.toBe(p1);
    expect(again.unsubscribed).toBeNull();
    const f = ws2.framesOf("subscribe").at(-1)!;
    expect(f).toMatchObject({ channel: "project:p1", since: 7, epoch: "E1" });
    ws2.reply(f, { channel: "project:p1", epoch: "E1", recovered: true, missed: 1 });
    ws2.receive(message("project:p1", 7, 0)); // a duplicate: dropped
    ws2.receive(message("project:p1", 8, 7));
    expect(again.state).toBe("subscribed");
    expect(seqs(got.all).filter((s) => s !== undefined && s >= 7)).toEqual([7, 8]);
    expect(p1.state).toBe("unsubscribed"); // the old one stays ended
  });

  it("sub.unsubscribe() emits the same event with byServer false and reason client", () => {
    const { client, ws, p1, ended } = wsWithTwoChannels();
    p1.unsubscribe();
    const info = { channel: "project:p1", reason: "client", byServer: false };
    expect(p1.unsubscribed).toEqual(info);
    expect(ended.p1).toEqual([info]);
    expect(ended.client).toEqual([info]);
    expect(ws.framesOf("unsubscribe").map((f) => f.channel)).toEqual(["project:p1"]);
    // A frame for it afterwards finds nothing to end.
    ws.receive(UNSUB_P1);
    expect(ended.client).toHaveLength(1);
    expect(p1.unsubscribed).toEqual(info);
    expect(client.subscriptions().map((s) => s.channel)).toEqual(["project:p2"]);
  });

  it("ignores (and logs) a frame for a channel the client does not hold", () => {
    const debug = vi.spyOn(console, "debug").mockImplementation(() => undefined);
    const client = newClient({ debug: true });
    const sub = client.subscribe("project:p1");
    const ended: UnsubscribedInfo[] = [];
    client.on("unsubscribed", (i) => ended.push(i));
    const ws = connectLive(client);
    ws.receive({ type: "unsubscribed", channel: "project:p9", reason: "server" });
    ws.receive({ type: "unsubscribed", reason: "server" }); // no channel at all
    expect(ended).toEqual([]);
    expect(sub.state).not.toBe("unsubscribed");
    expect(client.subscriptions()).toEqual([sub]);
    expect(client.state.status).toBe("connected");
    expect(debug.mock.calls.some((c) => c.includes("project:p9") && String(c[1]).includes("not held"))).toBe(true);
  });

  it("a reason-less frame still ends the subscription, as reason server", () => {
    const { p1 } = wsWithTwoChannels();
    FakeWebSocket.last().receive({ type: "unsubscribed", channel: "project:p1" });
    expect(p1.unsubscribed).toEqual({ channel: "project:p1", reason: "server", byServer: true });
  });

  it("a gap repair that crosses the gateway's unsubscribe is let go again, and its replay is not delivered", () => {
    const { client, ws, got } = wsWithTwoChannels();
    ws.receive(message("project:p1", 5, 0));
    ws.receive(message("project:p1", 9, 8)); // a gap: re-subscribe with since 5
    const repair = ws.framesOf("subscribe").at(-1)!;
    expect(repair).toMatchObject({ channel: "project:p1", since: 5 });
    ws.receive(UNSUB_P1); // the operator's unsubscribe came first…
    ws.reply(repair, { channel: "project:p1", epoch: "E1", recovered: true, missed: 3 }); // …then the gateway took the repair
    expect(ws.framesOf("unsubscribe").map((f) => f.channel)).toEqual(["project:p1"]);
    for (const s of [6, 7, 8, 9]) ws.receive(message("project:p1", s, s - 1));
    expect(seqs(got.p1)).toEqual([5]);
    expect(client.position("project:p1")).toEqual({ seq: 5, epoch: "E1" });
    expect(client.getSubscription("project:p1")).toBeUndefined();
  });

  it("the end reaches listeners even when a state listener throws, and a resubscribe from the handler works", () => {
    vi.spyOn(console, "error").mockImplementation(() => undefined);
    const { client, ws, p1 } = wsWithTwoChannels();
    p1.on("state", () => {
      throw new Error("listener bug");
    });
    let again: unknown = null;
    p1.on("unsubscribed", () => {
      again = client.subscribe("project:p1");
    });
    ws.receive(UNSUB_P1);
    expect(p1.state).toBe("unsubscribed");
    expect(again).toBe(client.getSubscription("project:p1"));
    expect(ws.framesOf("subscribe").at(-1)).toMatchObject({ channel: "project:p1", since: 0, epoch: "E1" });
  });
});

describe("server unsubscribe over SSE", () => {
  function sseClient(extra: Partial<ConstructorParameters<typeof TidingsClient>[0]> = {}): TidingsClient {
    vi.stubGlobal("WebSocket", undefined);
    return new TidingsClient({ url: "ws://gw.test:8080/ws", token: "tok-1", EventSource: FakeEventSource, ...extra });
  }

  function live() {
    const client = sseClient();
    const got: MessageFrame[] = [];
    const p1 = client.subscribe("project:p1");
    const p2 = client.subscribe("project:p2");
    client.on("message", (m) => got.push(m));
    client.connect();
    const es = FakeEventSource.last();
    es.open();
    es.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5;project:p2=4");
    es.emit(message("project:p2", 6, 0), "e1;w4;project:p1=5;project:p2=6");
    return { client, es, p1, p2, got };
  }

  it("ends exactly that channel with its reason; the stream goes on for the others", async () => {
    const { client, es, p1, p2, got } = live();
    const ended: UnsubscribedInfo[] = [];
    p1.on("unsubscribed", (i) => ended.push(i));

    es.emitEvent("unsubscribed", { channel: "project:p1", reason: "server" });
    await settle();

    expect(ended).toEqual([{ channel: "project:p1", reason: "server", byServer: true }]);
    expect(p1.state).toBe("unsubscribed");
    expect(p1.unsubscribed?.byServer).toBe(true);
    expect(client.subscriptions()).toEqual([p2]);
    expect(FakeEventSource.instances).toHaveLength(1); // no reopen: the gateway dropped it from this stream
    expect(es.closed).toBe(false);
    es.emit(message("project:p1", 7, 5), "e1;w4;project:p1=7;project:p2=6"); // in flight: ignored
    es.emit(message("project:p2", 8, 6), "e1;w4;project:p1=7;project:p2=8");
    expect(seqs(got)).toEqual([5, 6, 8]);
    expect(p2.state).toBe("subscribed");
    expect(client.state.status).toBe("connected");
  });

  it("ignores an event for a channel the client does not hold, or without a channel", async () => {
    const { client, es } = live();
    es.emitEvent("unsubscribed", { channel: "project:p9", reason: "server" });
    es.emitEvent("unsubscribed", "not json");
    await settle();
    expect(client.subscriptions().map((s) => s.channel)).toEqual(["project:p1", "project:p2"]);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it("the next reopen leaves it out, and a later subscribe resumes from its position", async () => {
    const { client, es, p1 } = live();
    es.emitEvent("unsubscribed", { channel: "project:p1", reason: "server" });
    es.error(); // the stream drops
    vi.advanceTimersByTime(30_000);
    const es2 = FakeEventSource.last();
    expect(es2).not.toBe(es);
    expect(es2.params().get("channels")).toBe("project:p2");
    expect(es2.params().get("last_event_id")).toBe("e1;w4;project:p2=6");
    es2.open();
    expect(p1.position).toEqual({ seq: 5, epoch: "1" });

    client.subscribe("project:p1");
    await settle();
    const es3 = FakeEventSource.last();
    expect(es3.params().get("channels")).toBe("project:p2,project:p1");
    expect(es3.params().get("last_event_id")).toBe("e1;w4;project:p1=5;project:p2=6");
  });
});

describe("revoked (close 4001, reason revoked)", () => {
  it("calls getToken once, and goes to error when the new token is refused again: no further attempts", async () => {
    // A browser-like global for the `online` event.
    const target = new EventTarget();
    const g = globalThis as unknown as Record<string, unknown>;
    g.addEventListener = target.addEventListener.bind(target);
    g.removeEventListener = target.removeEventListener.bind(target);
    onTestFinished(() => {
      delete g.addEventListener;
      delete g.removeEventListener;
    });
    const getToken = vi.fn(async () => "tok-2");
    const client = newClient({ token: tokenFor(600), getToken });
    const states: ConnectionState[] = [];
    client.on("state", (s) => states.push(s));
    const errors: Error[] = [];
    client.on("error", (e) => errors.push(e));
    const ws = connectLive(client);
    const queued = client.publish("project:p1", "ev", {}, { durable: true });
    const q = queued.catch((e: unknown) => e);
    ws.serverClose(4001, "revoked");
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    const ws2 = FakeWebSocket.last();
    expect(ws2).not.toBe(ws);
    ws2.open();
    expect(ws2.frames()[0]).toEqual({ type: "auth", token: "tok-2" });
    ws2.serverClose(4001, "revoked"); // the new token is refused too
    await settle();

    expect(client.state.status).toBe("error");
    expect(client.state.error).toMatch(/4001.*revoked/);
    expect(errors.at(-1)).toMatchObject({ code: "unauthorized" });
    expect(await q).toMatchObject({ code: "unauthorized" });
    expect(states.map((s) => s.status)).toEqual(["connecting", "connected", "disconnected", "connecting", "error"]);

    // Nothing more, however long: no reconnect, no getToken (not even the refresh the first token had armed), no online wake-up.
    vi.advanceTimersByTime(3_600_000);
    target.dispatchEvent(new Event("online"));
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(client.state.status).toBe("error");
    await expect(client.publish("project:p1", "ev", {})).rejects.toMatchObject({ code: "unauthorized" });
  });

  it("a successful reconnect with the new token resets the one-retry allowance", async () => {
    let n = 1;
    const getToken = vi.fn(async () => `tok-${++n}`);
    const client = newClient({ getToken });
    connectLive(client).serverClose(4001, "revoked");
    await settle();
    const ws2 = FakeWebSocket.last();
    ws2.open();
    ws2.welcome(); // tok-2 works
    expect(client.state).toEqual({ status: "connected", reconnectAttempts: 0 });

    ws2.serverClose(4001, "revoked"); // revoked again later: one more getToken, not error
    await settle();
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(client.state.status).toBe("connecting");
    const ws3 = FakeWebSocket.last();
    ws3.open();
    expect(ws3.frames()[0]).toEqual({ type: "auth", token: "tok-3" });
    ws3.serverClose(4001, "revoked");
    await settle();
    expect(client.state.status).toBe("error");
    vi.advanceTimersByTime(600_000);
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it("without getToken a revoked close is an error at once", () => {
    const client = newClient();
    connectLive(client).serverClose(4001, "revoked");
    expect(client.state.status).toBe("error");
    expect(client.state.error).toContain("revoked");
    vi.advanceTimersByTime(600_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("a revoked close while a subscribe retry waits leaves no timer behind once in error", async () => {
    const getToken = vi.fn(async () => "tok-2");
    const client = newClient({ getToken });
    client.subscribe("project:p1");
    const ws = connectLive(client);
    const f = ws.framesOf("subscribe")[0]!;
    ws.receive({ type: "reply", id: f.id, ok: false, error: { code: "unavailable", message: "NATS" } }); // retry armed
    ws.serverClose(4001, "revoked");
    await settle();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4001, "revoked");
    await settle();
    expect(client.state.status).toBe("error");
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("revoked over SSE (the stream ends; the token is then refused with HTTP 401)", () => {
  const refused = () => jsonResponse({ error: { code: "unauthorized", message: "unauthorized: revoked" } }, 401);

  function sseClient(extra: Partial<ConstructorParameters<typeof TidingsClient>[0]> = {}): TidingsClient {
    vi.stubGlobal("WebSocket", undefined);
    return new TidingsClient({ url: "ws://gw.test:8080/ws", token: "tok-1", EventSource: FakeEventSource, ...extra });
  }

  it("getToken once, refused again: error, and no further EventSource or probe", async () => {
    const fetch = mockFetch(refused(), refused());
    const getToken = vi.fn(async () => "tok-2");
    const client = sseClient({ fetch, getToken });
    client.subscribe("project:p1");
    client.connect();
    FakeEventSource.last().open();
    expect(client.state.status).toBe("connected");

    FakeEventSource.last().error(); // the gateway cut the stream (revoked)
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 1 });
    vi.advanceTimersByTime(1_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    FakeEventSource.last().error(); // refused before opening
    await settle();
    expect(fetch).toHaveBeenCalledTimes(1);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(FakeEventSource.instances).toHaveLength(3);
    expect(FakeEventSource.last().params().get("token")).toBe("tok-2");
    FakeEventSource.last().error(); // the new token is refused too
    await settle();

    expect(client.state.status).toBe("error");
    expect(client.state.error).toMatch(/401.*revoked/);
    vi.advanceTimersByTime(3_600_000);
    await settle();
    expect(FakeEventSource.instances).toHaveLength(3);
    expect(fetch).toHaveBeenCalledTimes(2);
    expect(getToken).toHaveBeenCalledTimes(1);
  });

  it("a stream that opens with the new token resets the one-retry allowance", async () => {
    const fetch = mockFetch(refused(), refused(), refused());
    let n = 1;
    const getToken = vi.fn(async () => `tok-${++n}`);
    const client = sseClient({ fetch, getToken });
    client.subscribe("project:p1");
    client.connect();
    FakeEventSource.last().error(); // refused at once
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    FakeEventSource.last().open(); // tok-2 works
    expect(client.state.status).toBe("connected");

    FakeEventSource.last().error(); // revoked later: the stream ends
    vi.advanceTimersByTime(1_000);
    FakeEventSource.last().error(); // tok-2 refused
    await settle();
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(client.state.status).toBe("connecting");
    expect(FakeEventSource.last().params().get("token")).toBe("tok-3");
    FakeEventSource.last().error(); // tok-3 refused
    await settle();
    expect(client.state.status).toBe("error");
    vi.advanceTimersByTime(600_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(fetch).toHaveBeenCalledTimes(3);
  });
});

describe("revoked over SSE, announced (event: revoked before the stream ends)", () => {
  it("asks getToken at once, without first reconnecting with the revoked token", async () => {
    vi.stubGlobal("WebSocket", undefined);
    const fetch = mockFetch();
    const getToken = vi.fn(async () => "tok-2");
    const client = new TidingsClient({ url: "ws://gw.test:8080/ws", token: "tok-1", EventSource: FakeEventSource, fetch, getToken });
    client.subscribe("project:p1");
    client.connect();
    FakeEventSource.last().open();
    expect(client.state.status).toBe("connected");

    FakeEventSource.last().emitEvent("revoked", JSON.stringify({ reason: "revoked" }));
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.last().params().get("token")).toBe("tok-2");
    expect(fetch).not.toHaveBeenCalled();
  });
});
