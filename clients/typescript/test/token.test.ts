import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { TidingsError } from "../src/index.js";
import { FakeWebSocket, connectLive, newClient, settle, tokenFor } from "./fakes.js";

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date("2025-06-01T12:00:00Z"));
  FakeWebSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

/** Advances fake time in steps, letting promise continuations run in between. */
async function advance(ms: number): Promise<void> {
  vi.advanceTimersByTime(ms);
  await settle();
}

describe("token refresh", () => {
  it("calls getToken at 90 % of the lifetime and sends auth on the live connection, without reconnecting", async () => {
    const next = tokenFor(7200);
    const getToken = vi.fn(async () => next);
    const client = newClient({ token: tokenFor(3600), getToken });
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(3240_000 - 1);
    expect(getToken).not.toHaveBeenCalled();
    await advance(1);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(ws.lastFrame()).toEqual({ type: "auth", id: expect.any(Number), token: next });
    ws.reply(ws.lastFrame(), { exp: Math.floor(Date.now() / 1000) + 7200 });
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(ws.closedWith).toBeNull();
    expect(client.state.status).toBe("connected");
  });

  it("refreshes 60 s before exp for short tokens, and uses the new token for the next connect", async () => {
    const next = tokenFor(300);
    const getToken = vi.fn(async () => next);
    const client = newClient({ token: tokenFor(300), getToken }); // 90 % = 270 s, exp - 60 s = 240 s
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(239_999);
    expect(getToken).not.toHaveBeenCalled();
    await advance(1);
    expect(getToken).toHaveBeenCalledTimes(1);
    ws.reply(ws.lastFrame(), { exp: 0 });
    await settle();
    ws.serverClose(1006);
    await advance(20_000);
    FakeWebSocket.last().open();
    expect(FakeWebSocket.last().frames()[0]).toEqual({ type: "auth", token: next });
  });

  it("keeps refreshing, once per token", async () => {
    let n = 0;
    const getToken = vi.fn(async () => {
      n++;
      return tokenFor(1000 * (n + 1)); // always later than the previous one
    });
    const client = newClient({ token: tokenFor(1000), getToken });
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(900_000); // 90 % of 1000 s
    expect(getToken).toHaveBeenCalledTimes(1);
    ws.reply(ws.lastFrame(), { exp: 0 });
    await settle();
    await advance(1800_000); // 90 % of 2000 s
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(ws.framesOf("auth").filter((f) => f.id !== undefined)).toHaveLength(2);
  });

  it("retries a failing getToken with backoff before exp, then reports an error", async () => {
    const getToken = vi.fn(async () => Promise.reject(new Error("auth server down")));
    const client = newClient({ token: tokenFor(3600), getToken });
    const errors: TidingsError[] = [];
    client.on("error", (e) => errors.push(e));
    connectLive(client, { heartbeat_ms: 0 });
    await advance(3240_000);
    expect(getToken).toHaveBeenCalledTimes(1);
    await advance(1000);
    expect(getToken).toHaveBeenCalledTimes(2);
    await advance(2000);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.message).toMatch(/token refresh failed/);
    await advance(100_000);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(client.state.status).toBe("connected"); // the session runs until the gateway says 4001
  });

  it("retries when the gateway refuses the new token", async () => {
    const getToken = vi.fn(async () => tokenFor(7200 + getToken.mock.calls.length));
    const client = newClient({ token: tokenFor(3600), getToken });
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(3240_000);
    const auth = ws.lastFrame();
    ws.receive({ type: "reply", id: auth.id, ok: false, error: { code: "unauthorized", message: "bad" } });
    await settle();
    await advance(1000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(ws.framesOf("auth").filter((f) => f.id !== undefined)).toHaveLength(2);
  });

  it("stops refreshing after disconnect()", async () => {
    const getToken = vi.fn(async () => tokenFor(7200));
    const client = newClient({ token: tokenFor(3600), getToken });
    connectLive(client, { heartbeat_ms: 0 });
    client.disconnect();
    await advance(4000_000);
    expect(getToken).not.toHaveBeenCalled();
  });

  it("renews an expired token before connecting", async () => {
    const fresh = tokenFor(3600);
    const getToken = vi.fn(async () => fresh);
    const client = newClient({ token: tokenFor(-10), getToken });
    client.connect();
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    FakeWebSocket.last().open();
    expect(FakeWebSocket.last().frames()[0]).toEqual({ type: "auth", token: fresh });
  });

  it("takes the user from the token before welcome", () => {
    const client = newClient({ token: tokenFor(3600, { sub: "zed" }) });
    expect(client.user).toBe("zed");
    expect(client.claims?.projects).toEqual(["p1"]);
    connectLive(client, { user: "zed2" });
    expect(client.user).toBe("zed2");
  });
});
