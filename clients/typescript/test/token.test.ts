import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { decodeJwt, type TidingsError } from "../src/index.js";
import { FakeWebSocket, connectLive, makeToken, newClient, settle, tokenFor } from "./fakes.js";

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
    const first = tokenFor(300);
    const next = tokenFor(600); // a later exp than `first`: a real refresh, accepted
    expect(next).not.toBe(first);
    const getToken = vi.fn(async () => next);
    const client = newClient({ token: first, getToken }); // 90 % = 270 s, exp - 60 s = 240 s
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(239_999);
    expect(getToken).not.toHaveBeenCalled();
    await advance(1);
    expect(getToken).toHaveBeenCalledTimes(1);
    const auth = ws.lastFrame();
    expect(auth).toEqual({ type: "auth", id: expect.any(Number), token: next });
    ws.reply(auth, { exp: decodeJwt(next)?.exp });
    await settle();
    expect(client.claims?.exp).toBe(decodeJwt(next)?.exp); // adopted
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

  it("does not storm with short tokens: a 30 s token is refreshed every 15 s", async () => {
    const getToken = vi.fn(async () => tokenFor(30)); // minted at call time: a later exp each time
    const client = newClient({ token: tokenFor(30), getToken });
    const ws = connectLive(client, { heartbeat_ms: 0 });
    let answered = 0;
    for (let t = 0; t < 60_000; t += 100) {
      await advance(100);
      const auths = ws.framesOf("auth").filter((f) => f.id !== undefined);
      for (const f of auths.slice(answered)) ws.reply(f, { exp: 0 });
      answered = auths.length;
      await settle();
    }
    expect(getToken).toHaveBeenCalledTimes(4); // at 15, 30, 45 and 60 s
    expect(client.state.status).toBe("connected");
  });

  it("does not storm when the local clock is ahead of the gateway's (exp already past locally)", async () => {
    // The gateway's clock is 2 h behind: every token it mints has expired by our clock.
    const skewed = () => {
      const now = Math.floor(Date.now() / 1000) - 7200;
      return makeToken({ sub: "u1", iat: now, exp: now + 3600 });
    };
    const getToken = vi.fn(async () => skewed());
    const client = newClient({ token: skewed(), getToken });
    client.connect();
    await settle(); // the token looks expired: one getToken before connecting
    expect(getToken).toHaveBeenCalledTimes(1);
    const ws = FakeWebSocket.last();
    ws.open();
    ws.welcome({ heartbeat_ms: 0 });
    await advance(3240_000 - 1); // 90 % of the token's own lifetime, counted from its receipt
    expect(getToken).toHaveBeenCalledTimes(1);
    await advance(1);
    expect(getToken).toHaveBeenCalledTimes(2);
    ws.reply(ws.lastFrame(), { exp: 0 });
    await advance(60_000);
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it("adopts a refreshed token only after the gateway accepted it", async () => {
    const first = tokenFor(3600);
    const next = tokenFor(7200);
    const client = newClient({ token: first, getToken: async () => next });
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(3240_000);
    const auth = ws.lastFrame();
    expect(auth).toMatchObject({ type: "auth", token: next });
    expect(client.claims?.exp).toBe(decodeJwt(first)?.exp); // sent, not yet accepted
    ws.receive({ type: "reply", id: auth.id, ok: false, error: { code: "unauthorized", message: "bad signature" } });
    await settle();
    expect(client.claims?.exp).toBe(decodeJwt(first)?.exp); // refused: the old token stays
    ws.serverClose(1006);
    await advance(20_000);
    FakeWebSocket.last().open();
    expect(FakeWebSocket.last().frames()[0]).toEqual({ type: "auth", token: first });
  });

  it("never adopts a token that expires no later than the current one", async () => {
    const first = tokenFor(3600);
    const stale = makeToken({ sub: "u1", iat: 0, exp: decodeJwt(first)!.exp! - 10 });
    const errors: TidingsError[] = [];
    const client = newClient({ token: first, getToken: async () => stale });
    client.on("error", (e) => errors.push(e));
    const ws = connectLive(client, { heartbeat_ms: 0 });
    await advance(3240_000);
    expect(ws.framesOf("auth").filter((f) => f.id !== undefined)).toHaveLength(0);
    expect(client.claims?.exp).toBe(decodeJwt(first)?.exp);
    for (let i = 0; i < 5; i++) await advance(1000); // the retries
    expect(errors.at(-1)?.message).toMatch(/token refresh failed/);
    expect(client.claims?.exp).toBe(decodeJwt(first)?.exp);
  });
});
