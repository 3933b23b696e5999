import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TidingsClient, type DiscontinuityInfo, type MessageFrame } from "../src/index.js";
import { FakeEventSource, FakeWebSocket, jsonResponse, message, mockFetch, settle, tokenFor } from "./fakes.js";

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
  FakeEventSource.reset();
  // "No WebSocket" must mean none, also on runtimes that have a global one (Node ≥ 22).
  vi.stubGlobal("WebSocket", undefined);
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

function sseClient(extra: Partial<ConstructorParameters<typeof TidingsClient>[0]> = {}): TidingsClient {
  return new TidingsClient({ url: "ws://gw.test:8080/ws", token: "tok-1", EventSource: FakeEventSource, ...extra });
}

const seqs = (ms: MessageFrame[]): Array<number | undefined> => ms.map((m) => m.seq);

describe("choosing SSE", () => {
  it("uses SSE at once when there is no WebSocket", () => {
    const client = sseClient();
    client.subscribe("project:p1");
    client.subscribe("user:u1");
    client.connect();
    const es = FakeEventSource.last();
    expect(es.url).toBe("http://gw.test:8080/sse?channels=project:p1,user:u1&token=tok-1");
    expect(client.state.status).toBe("connecting");
    es.open();
    expect(client.state).toEqual({ status: "connected", reconnectAttempts: 0 });
    expect(client.transport).toBe("sse");
  });

  it("falls back to SSE after two WebSocket attempts that never reached welcome", () => {
    vi.spyOn(Math, "random").mockReturnValue(0);
    const client = sseClient({ WebSocket: FakeWebSocket, timeout: 5000 });
    client.subscribe("project:p1");
    client.connect();
    FakeWebSocket.last().fail(); // failure 1: the socket does not even open
    vi.advanceTimersByTime(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last().open(); // opens, but no welcome comes (a proxy that eats frames)
    vi.advanceTimersByTime(4999);
    expect(FakeEventSource.instances).toHaveLength(0);
    vi.advanceTimersByTime(1); // failure 2: welcome timeout
    expect(FakeWebSocket.last().closedWith).not.toBeNull();
    vi.advanceTimersByTime(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeEventSource.instances).toHaveLength(1);
    FakeEventSource.last().open();
    expect(client.state.status).toBe("connected");
    expect(client.transport).toBe("sse");
  });

  it("does not fall back when WebSocket worked before (a network drop, not a blocked transport)", () => {
    vi.spyOn(Math, "random").mockReturnValue(0);
    const client = sseClient({ WebSocket: FakeWebSocket });
    client.connect();
    FakeWebSocket.last().open();
    FakeWebSocket.last().welcome();
    for (let i = 0; i < 4; i++) {
      FakeWebSocket.last().fail();
      vi.advanceTimersByTime(1);
    }
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(FakeWebSocket.instances).toHaveLength(5);
  });

  it("never uses SSE when transports excludes it", () => {
    vi.spyOn(Math, "random").mockReturnValue(0);
    const client = sseClient({ WebSocket: FakeWebSocket, transports: ["websocket"] });
    client.connect();
    for (let i = 0; i < 4; i++) {
      FakeWebSocket.last().fail();
      vi.advanceTimersByTime(20_000);
    }
    expect(FakeEventSource.instances).toHaveLength(0);
  });

  it("uses SSE only when transports is [\"sse\"], and disconnect() closes it", () => {
    const client = sseClient({ WebSocket: FakeWebSocket, transports: ["sse"] });
    client.subscribe("broadcast");
    client.connect();
    expect(FakeWebSocket.instances).toHaveLength(0);
    const es = FakeEventSource.last();
    es.open();
    client.disconnect();
    expect(es.closed).toBe(true);
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 0 });
    vi.advanceTimersByTime(60_000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it("is connected without an EventSource while nothing is subscribed, and opens one on subscribe", async () => {
    const client = sseClient();
    client.connect();
    expect(client.state.status).toBe("connected");
    expect(FakeEventSource.instances).toHaveLength(0);
    client.subscribe("broadcast");
    await settle();
    expect(FakeEventSource.last().params().get("channels")).toBe("broadcast");
  });
});

describe("SSE delivery and cursors", () => {
  function live(): { client: TidingsClient; es: FakeEventSource; got: MessageFrame[] } {
    const client = sseClient();
    const got: MessageFrame[] = [];
    client.subscribe("project:p1", { onMessage: (m) => got.push(m) });
    client.connect();
    const es = FakeEventSource.last();
    es.open();
    return { client, es, got };
  }

  it("delivers message events and drops duplicates", () => {
    const { es, got } = live();
    es.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5");
    es.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5");
    es.emit(message("project:p1", 6, 5), "e1;w4;project:p1=6");
    es.emit(message("project:p1", undefined, undefined, { event: "typing" }));
    expect(seqs(got)).toEqual([5, 6, undefined]);
    expect(got[0]).toMatchObject({ type: "message", channel: "project:p1", seq: 5 });
  });

  it("reopens with last_event_id when the channel set changes", async () => {
    const { client, es } = live();
    es.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5");
    client.subscribe("user:u1");
    client.subscribe("broadcast"); // same turn: one reopen
    await settle();
    expect(es.closed).toBe(true);
    expect(FakeEventSource.instances).toHaveLength(2);
    const next = FakeEventSource.last();
    expect(next.params().get("channels")).toBe("project:p1,user:u1,broadcast");
    // The new channels are named, from the newest position seen (5), not left to the watermark.
    expect(next.params().get("last_event_id")).toBe("e1;w4;broadcast=5;project:p1=5;user:u1=5");
    expect(next.params().get("token")).toBe("tok-1");
    expect(client.state.status).toBe("connected");
  });

  it("a gap reopens with the cursor of the last accepted message", async () => {
    const { es, got } = live();
    es.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5");
    es.emit(message("project:p1", 9, 8), "e1;w4;project:p1=9");
    await settle();
    expect(seqs(got)).toEqual([5]);
    const next = FakeEventSource.last();
    expect(next).not.toBe(es);
    expect(next.params().get("last_event_id")).toBe("e1;w4;project:p1=5");
    next.open();
    for (const [s, p] of [[6, 5], [7, 6], [8, 7], [9, 8]] as const) next.emit(message("project:p1", s, p), `e1;w4;project:p1=${s}`);
    expect(seqs(got)).toEqual([5, 6, 7, 8, 9]);
  });

  it("does not reopen forever when the gap is permanent (retention dropped the messages)", async () => {
    const { es, got, client } = live();
    const infos: DiscontinuityInfo[] = [];
    client.on("discontinuity", (i) => infos.push(i));
    es.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5");
    es.emit(message("project:p1", 9, 8), "e1;w4;project:p1=9");
    await settle();
    const next = FakeEventSource.last();
    next.open();
    next.emit(message("project:p1", 9, 8), "e1;w4;project:p1=9");
    await settle();
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(seqs(got)).toEqual([5, 9]);
    expect(infos).toMatchObject([{ channel: "project:p1", since: 5, reason: "history_incomplete" }]);
  });

  it("reconnects after an error with backoff and the cursor", () => {
    const { client, es } = live();
    es.emit(message("project:p1", 5, 0), "c-opaque-5");
    es.error();
    expect(es.closed).toBe(true); // no automatic EventSource reconnect with stale URL
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 1 });
    vi.advanceTimersByTime(20_000);
    expect(FakeEventSource.last().params().get("last_event_id")).toBe("c-opaque-5");
  });

  it("resumes WebSocket-era positions when falling back", () => {
    const client = sseClient();
    client.subscribe("user:u1", { since: { seq: 40, epoch: "E7" } });
    client.subscribe("project:p1", { since: { seq: 12, epoch: "E7" } });
    client.connect();
    expect(FakeEventSource.last().params().get("last_event_id")).toBe("eE7;w12;project:p1=12;user:u1=40");
  });

  it("reports a recreated stream (another epoch in the cursor) as a discontinuity", () => {
    const client = sseClient();
    const infos: DiscontinuityInfo[] = [];
    const got: MessageFrame[] = [];
    client.subscribe("project:p1", { onDiscontinuity: (i) => infos.push(i), onMessage: (m) => got.push(m) });
    client.connect();
    const es = FakeEventSource.last();
    es.open();
    es.emit(message("project:p1", 50, 49), "e111;w40;project:p1=50");
    es.emit(message("project:p1", 3, 2), "e222;w0;project:p1=3");
    expect(infos).toEqual([{ channel: "project:p1", since: 50, epoch: "111", newEpoch: "222", reason: "epoch_changed" }]);
    expect(seqs(got)).toEqual([50, 3]);
  });

  it("reopens with the new token after a refresh", async () => {
    vi.setSystemTime(new Date("2025-06-01T12:00:00Z"));
    const next = tokenFor(7200);
    const client = sseClient({ token: tokenFor(3600), getToken: async () => next });
    client.subscribe("user:u1");
    client.connect();
    const es = FakeEventSource.last();
    es.open();
    es.emit(message("user:u1", 5, 0), "e1;w1;user:u1=5");
    vi.advanceTimersByTime(3240_000);
    await settle();
    const es2 = FakeEventSource.last();
    expect(es2).not.toBe(es);
    expect(es2.params().get("token")).toBe(next);
    expect(es2.params().get("last_event_id")).toBe("e1;w1;user:u1=5");
  });
});

describe("SSE cursors built from positions", () => {
  function live(): { client: TidingsClient; es: FakeEventSource; got: MessageFrame[] } {
    const client = sseClient();
    const got: MessageFrame[] = [];
    client.subscribe("project:p1", { onMessage: (m) => got.push(m) });
    client.connect();
    const es = FakeEventSource.last();
    es.open();
    return { client, es, got };
  }

  it("starts a channel added later at the newest position seen, never at the session's old watermark", async () => {
    const { client, es } = live();
    es.emit(message("project:p1", 500, 0), "e1;w100;project:p1=500"); // the session began at 100
    client.subscribe("user:u1");
    await settle();
    expect(FakeEventSource.last().params().get("last_event_id")).toBe("e1;w100;project:p1=500;user:u1=500");
  });

  it("keeps a channel's floor across reopens until it has a position", async () => {
    const { client, es } = live();
    es.emit(message("project:p1", 500, 0), "e1;w100;project:p1=500");
    client.subscribe("user:u1");
    await settle();
    const es2 = FakeEventSource.last();
    es2.open();
    es2.emit(message("project:p1", 600, 500), "e1;w100;project:p1=600;user:u1=500");
    client.subscribe("broadcast");
    await settle();
    expect(FakeEventSource.last().params().get("last_event_id")).toBe("e1;w100;broadcast=600;project:p1=600;user:u1=500");
  });

  it("merges positions into the cursor: an application since, and the last delivered seq rather than a refused one", async () => {
    const { client, es, got } = live();
    client.subscribe("user:u1");
    await settle();
    const es2 = FakeEventSource.last();
    es2.open();
    es2.emit(message("project:p1", 5, 0), "e1;w4;project:p1=5;user:u1=4");
    es2.emit(message("project:p1", 9, 8), "e1;w4;project:p1=9;user:u1=4"); // a gap: refused
    es2.emit(message("user:u1", 10, 0), "e1;w4;project:p1=9;user:u1=10"); // accepted, its cursor names p1=9
    await settle();
    expect(seqs(got)).toEqual([5]);
    const es3 = FakeEventSource.last();
    expect(es3).not.toBe(es2);
    expect(es3.params().get("last_event_id")).toBe("e1;w4;project:p1=5;user:u1=10"); // p1 is repaired from 5
    client.subscribe("broadcast", { since: { seq: 3, epoch: "1" } });
    await settle();
    expect(FakeEventSource.last().params().get("last_event_id")).toBe("e1;w3;broadcast=3;project:p1=5;user:u1=10");
    void es;
  });

  it("builds a cursor for a fallback even when some channels have no position", () => {
    const client = sseClient();
    client.subscribe("project:p1", { since: { seq: 12, epoch: "E7" } });
    client.subscribe("user:u1");
    client.connect();
    expect(FakeEventSource.last().params().get("last_event_id")).toBe("eE7;w12;project:p1=12;user:u1=12");
  });
});

describe("SSE failures before open", () => {
  const body = (code: string, msg: string, status: number) => jsonResponse({ error: { code, message: msg } }, status);

  it("reads the status of a failed stream: 401 gets one new token, then error (as a WebSocket 4001)", async () => {
    const fetch = mockFetch(body("unauthorized", "unauthorized: expired", 401), body("unauthorized", "unauthorized: bad signature", 401));
    const getToken = vi.fn(async () => "tok-2");
    const client = sseClient({ fetch, getToken });
    client.subscribe("project:p1");
    client.connect();
    FakeEventSource.last().error();
    await settle();
    const [url, init] = fetch.mock.calls[0]!;
    expect(url).toBe("http://gw.test:8080/sse?channels=project:p1"); // the same stream, the token in a header
    expect((init?.headers as Record<string, string>).Authorization).toBe("Bearer tok-1");
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.last().params().get("token")).toBe("tok-2");
    FakeEventSource.last().error();
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(client.state.status).toBe("error");
    expect(client.state.error).toMatch(/401/);
    vi.advanceTimersByTime(60_000);
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it("403 fails the channel it names and streams the others", async () => {
    const fetch = mockFetch(body("forbidden", "this token may not read project:p2", 403));
    const client = sseClient({ fetch });
    const errors: Error[] = [];
    const p1 = client.subscribe("project:p1");
    const p2 = client.subscribe("project:p2", { onError: (e) => errors.push(e) });
    client.subscribe("project:p22"); // a name that merely starts like the refused one
    client.connect();
    FakeEventSource.last().error();
    await settle();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: "forbidden", status: 403 });
    expect(p2.state).toBe("error");
    const es = FakeEventSource.last();
    expect(es.params().get("channels")).toBe("project:p1,project:p22");
    es.open();
    expect(client.state.status).toBe("connected");
    expect(p1.state).toBe("subscribed");
    expect(p2.state).toBe("error");
    client.subscribe("user:u1"); // later reopens leave it out too
    await settle();
    expect(FakeEventSource.last().params().get("channels")).toBe("project:p1,project:p22,user:u1");
  });

  it("a refusal that names no channel fails them all", async () => {
    const fetch = mockFetch(body("bad_request", "at most 2 channels per connection", 400));
    const client = sseClient({ fetch });
    const subs = ["project:a", "project:b", "project:c"].map((c) => client.subscribe(c));
    client.connect();
    FakeEventSource.last().error();
    await settle();
    expect(subs.map((s) => s.state)).toEqual(["error", "error", "error"]);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(client.state.status).toBe("connected"); // nothing to stream; HTTP publishing still works
  });

  it("a stream that would open now (200) was a passing failure: aborted at once, then backoff", async () => {
    let signal: AbortSignal | undefined;
    const fetch = vi.fn(async (_url: string, init?: RequestInit) => {
      signal = init?.signal ?? undefined;
      return new Response("", { status: 200, headers: { "Content-Type": "text/event-stream" } });
    });
    const client = sseClient({ fetch });
    client.subscribe("project:p1");
    client.connect();
    FakeEventSource.last().error();
    await settle();
    expect(signal?.aborted).toBe(true);
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 1 });
  });

  it("gives up on an EventSource that does not open within timeout", () => {
    const client = sseClient({ timeout: 3000 });
    client.subscribe("project:p1");
    client.connect();
    const es = FakeEventSource.last();
    vi.advanceTimersByTime(2999);
    expect(es.closed).toBe(false);
    vi.advanceTimersByTime(1);
    expect(es.closed).toBe(true);
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 1 });
  });
});

describe("publishing over SSE", () => {
  it("POSTs to /api/v1/publish with the msg id and the bearer token", async () => {
    const fetch = mockFetch(jsonResponse({ seq: 77 }, 202));
    const client = sseClient({ fetch });
    client.connect();
    const r = await client.publish("project:p1", "chat_message", { text: "hi" }, { msgId: "m-1" });
    expect(r).toEqual({ seq: 77 });
    const [url, init] = fetch.mock.calls[0]!;
    expect(url).toBe("http://gw.test:8080/api/v1/publish");
    expect(init?.method).toBe("POST");
    expect(JSON.parse(String(init?.body))).toEqual({ channel: "project:p1", event: "chat_message", data: { text: "hi" }, id: "m-1" });
    expect((init?.headers as Record<string, string>).Authorization).toBe("Bearer tok-1");
  });

  it("queues until the stream opens, and resends with the same id after a network failure", async () => {
    const fetch = mockFetch(new TypeError("network down"), jsonResponse({ seq: 5 }, 202));
    const client = sseClient({ fetch });
    client.subscribe("project:p1");
    const p = client.publish("project:p1", "e", 1);
    client.connect();
    expect(fetch).not.toHaveBeenCalled();
    FakeEventSource.last().open();
    await settle();
    expect(fetch).toHaveBeenCalledTimes(1);
    vi.advanceTimersByTime(500);
    await settle();
    expect(fetch).toHaveBeenCalledTimes(2);
    await expect(p).resolves.toEqual({ seq: 5 });
    const ids = fetch.mock.calls.map(([, init]) => JSON.parse(String(init?.body)).id);
    expect(ids[0]).toBe(ids[1]);
  });

  it("rejects with the gateway's error", async () => {
    const fetch = mockFetch(jsonResponse({ error: { code: "forbidden", message: "no" } }, 403));
    const client = sseClient({ fetch });
    client.connect();
    await expect(client.publish("project:p1", "e", 1)).rejects.toMatchObject({ code: "forbidden", status: 403 });
  });
});
