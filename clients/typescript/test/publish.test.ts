import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TidingsError } from "../src/index.js";
import { FakeWebSocket, connectLive, message, newClient, settle } from "./fakes.js";

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("publish", () => {
  it("sends a publish frame with a generated msg_id, durable false by default, and resolves with the reply", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const p = client.publish("project:p1", "chat_message", { text: "hi" });
    const f = ws.lastFrame();
    expect(f).toEqual({
      type: "publish",
      id: expect.any(Number),
      channel: "project:p1",
      event: "chat_message",
      data: { text: "hi" },
      durable: false,
      msg_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
    });
    ws.reply(f);
    await expect(p).resolves.toEqual({});
  });

  it("resolves a durable publish with its seq", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const p = client.publish("project:p1", "e", 1, { durable: true, msgId: "my-id" });
    expect(ws.lastFrame()).toMatchObject({ durable: true, msg_id: "my-id" });
    ws.reply(ws.lastFrame(), { seq: 124 });
    await expect(p).resolves.toEqual({ seq: 124 });
  });

  it("rejects with the gateway's error as a TidingsError", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const p = client.publish("project:p1", "e", 1);
    ws.receive({ type: "reply", id: ws.lastFrame().id, ok: false, error: { code: "forbidden", message: "no publish claim" } });
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TidingsError);
    expect(err).toMatchObject({ code: "forbidden", message: "no publish claim" });
  });

  it("rejects with timeout when no reply comes", async () => {
    const client = newClient({ timeout: 2000 });
    const ws = connectLive(client, { heartbeat_ms: 0 });
    const p = client.publish("project:p1", "e", 1);
    const caught = p.catch((e: unknown) => e);
    vi.advanceTimersByTime(2000);
    expect(await caught).toMatchObject({ code: "timeout" });
    expect(ws.closedWith).toBeNull();
  });

  it("queues while offline and sends in order after welcome", async () => {
    const client = newClient();
    const ps = [1, 2, 3].map((n) => client.publish("project:p1", "e", { n }, { durable: true }));
    client.subscribe("project:p1");
    client.connect();
    const ws = FakeWebSocket.last();
    ws.open();
    expect(ws.framesOf("publish")).toHaveLength(0);
    ws.welcome();
    const frames = ws.frames();
    // auth, the subscribe, then the three publishes in order.
    expect(frames.map((f) => f.type)).toEqual(["auth", "subscribe", "publish", "publish", "publish"]);
    expect(ws.framesOf("publish").map((f) => f.data)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    ws.framesOf("publish").forEach((f, i) => ws.reply(f, { seq: 10 + i }));
    expect(await Promise.all(ps)).toEqual([{ seq: 10 }, { seq: 11 }, { seq: 12 }]);
  });

  it("bounds the offline queue: the 1001st publish rejects with queue_full", async () => {
    const client = newClient();
    const ok = Array.from({ length: 1000 }, (_, i) => client.publish("project:p1", "e", i));
    const over = client.publish("project:p1", "e", 1000);
    await expect(over).rejects.toMatchObject({ code: "queue_full" });
    await expect(over).rejects.toBeInstanceOf(TidingsError);
    const ws = connectLive(client);
    expect(ws.framesOf("publish")).toHaveLength(1000);
    expect(ws.framesOf("publish")[999]?.data).toBe(999);
    void ok;
  });

  it("honours maxQueue", async () => {
    const client = newClient({ maxQueue: 2 });
    void client.publish("project:p1", "e", 1);
    void client.publish("project:p1", "e", 2);
    await expect(client.publish("project:p1", "e", 3)).rejects.toMatchObject({ code: "queue_full" });
  });

  it("resends an unanswered publish with the same msg_id after a reconnect, before newer ones", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const p1 = client.publish("project:p1", "e", "first", { durable: true });
    const first = ws.lastFrame();
    ws.serverClose(1006); // sent, no reply: outcome unclear
    const p2 = client.publish("project:p1", "e", "second", { durable: true }); // queued while offline
    vi.advanceTimersByTime(20_000);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    ws2.welcome();
    const resent = ws2.framesOf("publish");
    expect(resent.map((f) => f.data)).toEqual(["first", "second"]);
    expect(resent[0]?.msg_id).toBe(first.msg_id);
    expect(resent[0]?.id).not.toBe(first.id);
    ws2.reply(resent[0]!, { seq: 7 }); // the gateway's dedupe answers the original seq
    ws2.reply(resent[1]!, { seq: 8 });
    await expect(p1).resolves.toEqual({ seq: 7 });
    await expect(p2).resolves.toEqual({ seq: 8 });
  });

  it("does not resend an answered publish", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const p = client.publish("project:p1", "e", 1, { durable: true });
    ws.reply(ws.lastFrame(), { seq: 3 });
    await p;
    ws.serverClose(1006);
    vi.advanceTimersByTime(20_000);
    FakeWebSocket.last().open();
    FakeWebSocket.last().welcome();
    expect(FakeWebSocket.last().framesOf("publish")).toHaveLength(0);
  });

  it("rejects what is unanswered on disconnect()", async () => {
    const client = newClient();
    const queued = client.publish("project:p1", "e", 1);
    client.disconnect();
    await expect(queued).rejects.toMatchObject({ code: "disconnected" });
  });

  it("rejects in-flight publishes when the gateway closes with 1009 (frame too large) instead of resending them", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const p = client.publish("project:p1", "e", "x".repeat(100));
    ws.serverClose(1009, "frame too large");
    await expect(p).rejects.toMatchObject({ code: "too_large" });
  });

  it("rejects a bad channel", async () => {
    const client = newClient();
    await expect(client.publish("nope", "e", 1)).rejects.toMatchObject({ code: "bad_channel" });
  });

  it("after a 1009 close rejects only the in-flight publishes that can be the cause, and resends the others", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const small = { text: "x".repeat(10) };
    const p0 = client.publish("project:p1", "e", small, { durable: true });
    ws.reply(ws.lastFrame(), { seq: 1 }); // the gateway read a frame of this size: its limit is at least that
    await p0;
    const p1 = client.publish("project:p1", "e", small, { durable: true }); // no larger: not the cause
    const p2 = client.publish("project:p1", "e", { text: "y".repeat(5000) }, { durable: true });
    const p2err = p2.catch((e: unknown) => e);
    ws.serverClose(1009, "frame too large");
    expect(await p2err).toMatchObject({ code: "too_large" });
    vi.advanceTimersByTime(20_000);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    ws2.welcome();
    expect(ws2.framesOf("publish").map((f) => f.data)).toEqual([small]);
    ws2.reply(ws2.framesOf("publish")[0]!, { seq: 2 });
    await expect(p1).resolves.toEqual({ seq: 2 });
  });
});

describe("publish: checked at the call", () => {
  it("rejects a frame over maxFrameBytes at once with too_large, and sends nothing", async () => {
    const client = newClient({ maxFrameBytes: 1000 });
    const ws = connectLive(client);
    await expect(client.publish("project:p1", "e", "x".repeat(1000))).rejects.toMatchObject({ code: "too_large" });
    await expect(client.publish("project:p1", "e", "é".repeat(480))).rejects.toMatchObject({ code: "too_large" }); // 960 chars of UTF-8
    expect(ws.framesOf("publish")).toHaveLength(0);
    expect(client.publish("project:p1", "e", "x".repeat(800))).toBeInstanceOf(Promise);
    expect(ws.framesOf("publish")).toHaveLength(1);
  });

  it("defaults maxFrameBytes to the gateway's 65536", async () => {
    const client = newClient();
    const ws = connectLive(client);
    await expect(client.publish("project:p1", "e", "x".repeat(65_536))).rejects.toMatchObject({ code: "too_large" });
    void client.publish("project:p1", "e", "x".repeat(65_000));
    expect(ws.framesOf("publish")).toHaveLength(1);
  });

  it("rejects data JSON cannot carry at once with bad_request, not after the timeout", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    await expect(client.publish("project:p1", "e", 10n)).rejects.toMatchObject({ code: "bad_request" });
    await expect(client.publish("project:p1", "e", circular)).rejects.toMatchObject({ code: "bad_request" });
    await expect(client.publish("project:p1", "e", () => 1)).rejects.toMatchObject({ code: "bad_request" });
    expect(ws.framesOf("publish")).toHaveLength(0);
  });

  it("sends the data as it was when publish() was called", () => {
    const client = newClient();
    const data = { n: 1 };
    void client.publish("project:p1", "e", data);
    data.n = 2;
    const ws = connectLive(client);
    expect(ws.framesOf("publish")[0]?.data).toEqual({ n: 1 });
  });
});

describe("publish: bounds and outcomes", () => {
  it("counts publishes awaiting their reply against maxQueue, not only queued ones", async () => {
    const client = newClient({ maxQueue: 2 });
    const ws = connectLive(client);
    const a = client.publish("project:p1", "e", 1);
    void client.publish("project:p1", "e", 2);
    await expect(client.publish("project:p1", "e", 3)).rejects.toMatchObject({ code: "queue_full" });
    expect(ws.framesOf("publish")).toHaveLength(2);
    ws.reply(ws.framesOf("publish")[0]!);
    await a;
    void client.publish("project:p1", "e", 4); // room again
    expect(ws.framesOf("publish")).toHaveLength(3);
  });

  it("does not resend an ephemeral publish that was sent when the connection dropped: unknown_outcome", async () => {
    const client = newClient();
    const ws = connectLive(client);
    const sent = client.publish("project:p1", "typing", { n: 1 }); // durable: false
    const sentErr = sent.catch((e: unknown) => e);
    ws.serverClose(1006);
    const queued = client.publish("project:p1", "typing", { n: 2 }); // never sent: still sent later
    const err = await sentErr;
    expect(err).toBeInstanceOf(TidingsError);
    expect(err).toMatchObject({ code: "unknown_outcome" });
    vi.advanceTimersByTime(20_000);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    ws2.welcome();
    expect(ws2.framesOf("publish").map((f) => f.data)).toEqual([{ n: 2 }]);
    ws2.reply(ws2.framesOf("publish")[0]!);
    await expect(queued).resolves.toEqual({});
  });

  it("rejects what waits with the failure's error when the client gives up, and refuses new publishes in state error", async () => {
    const client = newClient(); // no getToken: a 4001 is final
    const queued = client.publish("project:p1", "e", 1, { durable: true });
    const queuedErr = queued.catch((e: unknown) => e);
    client.connect();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4001, "token expired");
    expect(client.state.status).toBe("error");
    const err = await queuedErr;
    expect(err).toBeInstanceOf(TidingsError);
    expect(err).toMatchObject({ code: "unauthorized", message: expect.stringContaining("token expired") });
    await expect(client.publish("project:p1", "e", 2)).rejects.toMatchObject({ code: "unauthorized" });
    client.connect(); // a new start: publishes queue again
    let settled = false;
    void client.publish("project:p1", "e", 3).finally(() => (settled = true));
    await settle();
    expect(settled).toBe(false);
  });
});

describe("ack", () => {
  it("sends an ack frame when connected, and is not queued while offline", () => {
    const client = newClient();
    expect(client.ack("user:u1", 456)).toBe(false);
    const ws = connectLive(client);
    expect(client.ack("user:u1", 456)).toBe(true);
    expect(ws.lastFrame()).toEqual({ type: "ack", channel: "user:u1", seq: 456 });
    expect(ws.framesOf("ack")).toHaveLength(1);
  });

  it("autoAck acks notification messages once delivered, and nothing else", async () => {
    const client = newClient({ autoAck: true });
    const order: string[] = [];
    client.subscribe("user:u1", { onMessage: (m) => order.push(`delivered ${m.seq}`) });
    const ws = connectLive(client);
    ws.receive(message("user:u1", 5, 0, { event: "notification" }));
    ws.receive(message("user:u1", 5, 0, { event: "notification" })); // duplicate: not delivered, not acked
    ws.receive(message("user:u1", 6, 5, { event: "other" }));
    ws.receive(message("user:u1", undefined, undefined, { event: "notification" }));
    ws.receive(message("user:u1", 8, 7, { event: "notification" })); // gap: not delivered yet
    expect(ws.framesOf("ack")).toEqual([{ type: "ack", channel: "user:u1", seq: 5 }]);
    expect(order).toEqual(["delivered 5", "delivered 6", "delivered undefined"]);
    await settle();
  });

  it("does not ack without autoAck", () => {
    const client = newClient();
    client.subscribe("user:u1");
    const ws = connectLive(client);
    ws.receive(message("user:u1", 5, 0, { event: "notification" }));
    expect(ws.framesOf("ack")).toHaveLength(0);
  });
});
