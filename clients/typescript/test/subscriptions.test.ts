import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TidingsError, type DiscontinuityInfo, type MessageFrame } from "../src/index.js";
import { FakeWebSocket, connectLive, message, newClient } from "./fakes.js";

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

const seqs = (ms: MessageFrame[]): Array<number | undefined> => ms.map((m) => m.seq);

/** A live client subscribed to project:p1 in epoch E1, holding seq 6. */
function at6() {
  const client = newClient();
  const got: MessageFrame[] = [];
  const sub = client.subscribe("project:p1", { onMessage: (m) => got.push(m) });
  const ws = connectLive(client);
  const s = ws.framesOf("subscribe")[0]!;
  ws.reply(s, { channel: "project:p1", epoch: "E1", recovered: true, missed: 0, seq: 4 });
  ws.receive(message("project:p1", 5, 0));
  ws.receive(message("project:p1", 6, 5));
  got.length = 0;
  return { client, sub, ws, got };
}

function reconnect(ws: FakeWebSocket): FakeWebSocket {
  ws.serverClose(1006);
  vi.advanceTimersByTime(20_000);
  const next = FakeWebSocket.last();
  next.open();
  next.welcome();
  return next;
}

describe("subscribing", () => {
  it("subscribes on welcome, and at once when already connected", () => {
    const client = newClient();
    client.subscribe("project:p1");
    const ws = connectLive(client);
    expect(ws.frames().slice(1)).toEqual([{ type: "subscribe", id: expect.any(Number), channel: "project:p1" }]);
    const sub = client.subscribe("user:u1");
    expect(ws.lastFrame()).toEqual({ type: "subscribe", id: expect.any(Number), channel: "user:u1" });
    expect(sub.state).toBe("subscribing");
    ws.reply(ws.lastFrame(), { channel: "user:u1", epoch: "E1", recovered: true, missed: 0 });
    expect(sub.state).toBe("subscribed");
  });

  it("returns the same Subscription for a channel subscribed twice, with both handlers", () => {
    const client = newClient();
    const a: MessageFrame[] = [];
    const b: MessageFrame[] = [];
    const s1 = client.subscribe("project:p1", { onMessage: (m) => a.push(m) });
    const s2 = client.subscribe("project:p1", { onMessage: (m) => b.push(m) });
    expect(s2).toBe(s1);
    const ws = connectLive(client);
    expect(ws.framesOf("subscribe")).toHaveLength(1);
    ws.receive(message("project:p1", 1, 0));
    expect(a).toHaveLength(1);
    expect(b).toHaveLength(1);
  });

  it("refuses a bad channel name at once", () => {
    const client = newClient();
    expect(() => client.subscribe("project:a.b")).toThrow(TidingsError);
    expect(() => client.subscribe("team:x")).toThrow(/not a channel/);
  });

  it("delivers to on('message') and onMessage exactly the message frame", () => {
    const client = newClient();
    const all: unknown[] = [];
    const mine: unknown[] = [];
    client.on("message", (m) => all.push(m));
    client.subscribe("project:p1", { onMessage: (m) => mine.push(m) });
    const ws = connectLive(client);
    const frame = message("project:p1", 3, 1, { data: { text: "hi" } });
    ws.receive(frame);
    ws.receive(message("project:p2", 4, 0)); // not subscribed: dropped
    expect(all).toEqual([frame]);
    expect(mine).toEqual([frame]);
  });

  it("delivers non-durable messages as they come", () => {
    const { ws, got } = at6();
    ws.receive(message("project:p1", undefined, undefined, { event: "typing" }));
    ws.receive(message("project:p1", 7, 6));
    ws.receive(message("project:p1", undefined, undefined, { event: "typing" }));
    expect(got.map((m) => m.event)).toEqual(["typing", "ev", "typing"]);
  });

  it("reports a refused subscription to onError and on('error'), and retries an unavailable one", () => {
    const client = newClient();
    const subErrors: Error[] = [];
    const clientErrors: Error[] = [];
    client.on("error", (e) => clientErrors.push(e));
    client.subscribe("project:secret", { onError: (e) => subErrors.push(e) });
    client.subscribe("project:p1");
    const ws = connectLive(client);
    const [s1, s2] = ws.framesOf("subscribe");
    ws.receive({ type: "reply", id: s1!.id, ok: false, error: { code: "forbidden", message: "no" } });
    ws.receive({ type: "reply", id: s2!.id, ok: false, error: { code: "unavailable", message: "NATS" } });
    expect(subErrors).toHaveLength(1);
    expect((subErrors[0] as TidingsError).code).toBe("forbidden");
    expect(clientErrors.map((e) => (e as TidingsError).code)).toEqual(["forbidden", "unavailable"]);
    vi.advanceTimersByTime(1000);
    expect(ws.framesOf("subscribe").map((f) => f.channel)).toEqual(["project:secret", "project:p1", "project:p1"]);
  });
});

describe("refused subscriptions", () => {
  it("a final refusal puts the subscription in state error; the next connect asks again", () => {
    const client = newClient();
    const sub = client.subscribe("project:secret");
    const ws = connectLive(client);
    ws.receive({ type: "reply", id: ws.framesOf("subscribe")[0]!.id, ok: false, error: { code: "forbidden", message: "no" } });
    expect(sub.state).toBe("error");
    vi.advanceTimersByTime(60_000);
    expect(ws.framesOf("subscribe")).toHaveLength(1); // not retried on this connection
    const ws2 = reconnect(ws);
    expect(sub.state).toBe("subscribing");
    ws2.reply(ws2.framesOf("subscribe")[0]!, { channel: "project:secret", epoch: "E1", recovered: true, missed: 0 });
    expect(sub.state).toBe("subscribed");
  });

  it("retries unavailable/rate_limited with a growing full-jitter backoff per channel, reset by a success", () => {
    vi.spyOn(Math, "random").mockReturnValue(0.999999); // the top of each window
    const client = newClient({ minReconnectDelay: 500, maxReconnectDelay: 20_000 });
    client.subscribe("project:p1");
    const ws = connectLive(client, { heartbeat_ms: 0 });
    const refuse = (code: string) => {
      const f = ws.framesOf("subscribe").at(-1)!;
      ws.receive({ type: "reply", id: f.id, ok: false, error: { code, message: "busy" } });
    };
    const nextRetry = (): number => {
      const before = ws.framesOf("subscribe").length;
      let waited = 0;
      while (ws.framesOf("subscribe").length === before && waited < 100_000) {
        vi.advanceTimersByTime(100);
        waited += 100;
      }
      return waited;
    };
    const delays: number[] = [];
    for (const code of ["unavailable", "rate_limited", "unavailable", "unavailable", "unavailable", "unavailable", "unavailable"]) {
      refuse(code);
      delays.push(nextRetry());
    }
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 20000]);
    ws.reply(ws.framesOf("subscribe").at(-1)!, { channel: "project:p1", epoch: "E1", recovered: true, missed: 0 });
    ws.receive(message("project:p1", 5, 0));
    ws.receive(message("project:p1", 9, 8)); // a gap: the channel is subscribed again…
    refuse("unavailable"); // …and refused: the backoff starts over
    expect(nextRetry()).toBe(500);
  });
});

describe("positions", () => {
  it("tracks the last delivered position", () => {
    const { sub } = at6();
    expect(sub.position).toEqual({ seq: 6, epoch: "E1" });
  });

  it("keeps null as public position until a message is delivered, but resumes from the reply's seq", () => {
    const client = newClient();
    const sub = client.subscribe("project:p1");
    const ws = connectLive(client);
    ws.reply(ws.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E1", recovered: true, missed: 0, seq: 42 });
    expect(sub.position).toBeNull();
    const ws2 = reconnect(ws);
    expect(ws2.framesOf("subscribe")[0]).toEqual({ type: "subscribe", id: expect.any(Number), channel: "project:p1", since: 42, epoch: "E1" });
  });

  it("resubscribes every channel with since and epoch after a reconnect", () => {
    const { client, ws } = at6();
    client.subscribe("broadcast");
    const ws2 = reconnect(ws);
    const subs = ws2.framesOf("subscribe");
    expect(subs).toEqual([
      { type: "subscribe", id: expect.any(Number), channel: "project:p1", since: 6, epoch: "E1" },
      { type: "subscribe", id: expect.any(Number), channel: "broadcast" },
    ]);
    // The auth frame still came first.
    expect(ws2.frames()[0]).toEqual({ type: "auth", token: "tok-1" });
  });

  it("keeps the position across unsubscribe and subscribe of the same channel", () => {
    const { client, sub, ws } = at6();
    sub.unsubscribe();
    expect(ws.lastFrame()).toEqual({ type: "unsubscribe", id: expect.any(Number), channel: "project:p1" });
    expect(sub.state).toBe("unsubscribed");
    ws.receive(message("project:p1", 7, 6)); // in flight before the unsubscribe landed: dropped
    const again = client.subscribe("project:p1");
    expect(again).not.toBe(sub);
    expect(again.position).toEqual({ seq: 6, epoch: "E1" });
    expect(ws.lastFrame()).toEqual({ type: "subscribe", id: expect.any(Number), channel: "project:p1", since: 6, epoch: "E1" });
  });

  it("resumes from an application-supplied since", () => {
    const client = newClient();
    const sub = client.subscribe("user:u1", { since: { seq: 40, epoch: "E9" } });
    expect(sub.position).toEqual({ seq: 40, epoch: "E9" });
    const ws = connectLive(client);
    expect(ws.framesOf("subscribe")[0]).toMatchObject({ channel: "user:u1", since: 40, epoch: "E9" });
  });
});

describe("exactly once, in order", () => {
  it("drops duplicates", () => {
    const { ws, got } = at6();
    ws.receive(message("project:p1", 7, 6));
    ws.receive(message("project:p1", 7, 6));
    ws.receive(message("project:p1", 5, 0));
    ws.receive(message("project:p1", 8, 7));
    expect(seqs(got)).toEqual([7, 8]);
  });

  it("repairs a gap: holds the message back, resubscribes with since=last, then delivers the replay in order", () => {
    const { ws, got, sub } = at6();
    const before = ws.sent.length;
    ws.receive(message("project:p1", 9, 8)); // 7 and 8 are missing
    expect(got).toEqual([]);
    const resub = ws.frames().slice(before);
    expect(resub).toEqual([{ type: "subscribe", id: expect.any(Number), channel: "project:p1", since: 6, epoch: "E1" }]);
    // More live messages before the reply: out of chain, dropped, no second subscribe.
    ws.receive(message("project:p1", 10, 9));
    expect(ws.frames().slice(before)).toHaveLength(1);
    ws.reply(resub[0]!, { channel: "project:p1", epoch: "E1", recovered: true, missed: 4 });
    ws.receive(message("project:p1", 7, 6));
    ws.receive(message("project:p1", 8, 7));
    ws.receive(message("project:p1", 9, 8));
    ws.receive(message("project:p1", 10, 9));
    ws.receive(message("project:p1", 9, 8)); // a late duplicate
    ws.receive(message("project:p1", 11, 10));
    expect(seqs(got)).toEqual([7, 8, 9, 10, 11]);
    expect(sub.position).toEqual({ seq: 11, epoch: "E1" });
  });

  it("does not ask forever when the repair brings the same gap: delivers with a discontinuity", () => {
    const { ws, got, sub } = at6();
    const infos: DiscontinuityInfo[] = [];
    sub.on("discontinuity", (i) => infos.push(i));
    ws.receive(message("project:p1", 9, 8));
    const resub = ws.framesOf("subscribe").at(-1)!;
    ws.reply(resub, { channel: "project:p1", epoch: "E1", recovered: true, missed: 1 });
    ws.receive(message("project:p1", 9, 8)); // 7 and 8 are gone although the gateway said recovered
    ws.receive(message("project:p1", 10, 9));
    expect(seqs(got)).toEqual([9, 10]);
    expect(infos).toEqual([{ channel: "project:p1", since: 6, epoch: "E1", newEpoch: "E1", reason: "history_incomplete" }]);
    expect(ws.framesOf("subscribe")).toHaveLength(2);
  });

  it("a repair cut by a disconnect is completed by the resubscribe", () => {
    const { ws, got } = at6();
    ws.receive(message("project:p1", 9, 8));
    const ws2 = reconnect(ws);
    expect(ws2.framesOf("subscribe")[0]).toMatchObject({ since: 6, epoch: "E1" });
    ws2.reply(ws2.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E1", recovered: true, missed: 3 });
    for (const [s, p] of [[7, 6], [8, 7], [9, 8]] as const) ws2.receive(message("project:p1", s, p));
    expect(seqs(got)).toEqual([7, 8, 9]);
  });
});

describe("discontinuities", () => {
  it("calls onDiscontinuity on recovered:false with a new epoch, then delivers what follows", () => {
    const client = newClient();
    const got: MessageFrame[] = [];
    const infos: DiscontinuityInfo[] = [];
    const clientInfos: DiscontinuityInfo[] = [];
    client.on("discontinuity", (i) => clientInfos.push(i));
    const sub = client.subscribe("project:p1", {
      since: { seq: 6, epoch: "E1" },
      onMessage: (m) => got.push(m),
      onDiscontinuity: (i) => infos.push(i),
    });
    const ws = connectLive(client);
    ws.reply(ws.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E2", recovered: false, missed: 2 });
    const expected = { channel: "project:p1", since: 6, epoch: "E1", newEpoch: "E2", reason: "epoch_changed", missed: 2 };
    expect(infos).toEqual([expected]);
    expect(clientInfos).toEqual([expected]);
    ws.receive(message("project:p1", 1, 0));
    ws.receive(message("project:p1", 2, 1));
    expect(seqs(got)).toEqual([1, 2]);
    expect(sub.position).toEqual({ seq: 2, epoch: "E2" });
    // And the next resume is in the new epoch.
    const ws2 = reconnect(ws);
    expect(ws2.framesOf("subscribe")[0]).toMatchObject({ since: 2, epoch: "E2" });
  });

  it("calls onDiscontinuity when retention dropped messages in the same epoch", () => {
    const { ws, got, sub } = at6();
    const infos: DiscontinuityInfo[] = [];
    sub.on("discontinuity", (i) => infos.push(i));
    const ws2 = reconnect(ws);
    ws2.reply(ws2.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E1", recovered: false, missed: 2 });
    expect(infos).toEqual([{ channel: "project:p1", since: 6, epoch: "E1", newEpoch: "E1", reason: "history_incomplete", missed: 2 }]);
    ws2.receive(message("project:p1", 20, 15)); // does not chain, but is the new start
    ws2.receive(message("project:p1", 21, 20));
    ws2.receive(message("project:p1", 20, 15)); // duplicate
    expect(seqs(got)).toEqual([20, 21]);
  });

  it("never reports silently: warns when nobody listens", () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const { ws } = at6();
    const ws2 = reconnect(ws);
    ws2.reply(ws2.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E1", recovered: false, missed: 0 });
    expect(warn).toHaveBeenCalledWith(expect.stringContaining("project:p1"));
  });
});
