import { afterEach, beforeEach, describe, expect, it, onTestFinished, vi } from "vitest";
import type { ConnectionState } from "../src/index.js";
import { FakeWebSocket, connectLive, newClient, settle } from "./fakes.js";

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

function recordStates(client: ReturnType<typeof newClient>): ConnectionState[] {
  const states: ConnectionState[] = [];
  client.on("state", (s) => states.push(s));
  return states;
}

describe("connecting", () => {
  it("starts disconnected, goes connecting on connect() and connected on welcome", () => {
    const client = newClient();
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 0 });
    const states = recordStates(client);
    client.connect();
    expect(client.state).toEqual({ status: "connecting", reconnectAttempts: 0 });
    const ws = FakeWebSocket.last();
    ws.open();
    expect(client.state.status).toBe("connecting"); // open is not enough: welcome is
    ws.welcome({ user: "alice" });
    expect(client.state).toEqual({ status: "connected", reconnectAttempts: 0 });
    expect(states.map((s) => s.status)).toEqual(["connecting", "connected"]);
    expect(client.user).toBe("alice");
  });

  it("sends the token as the first frame, not in the URL, with the tidings.v1.json subprotocol", () => {
    const client = newClient({ token: "secret-token" });
    client.connect();
    const ws = FakeWebSocket.last();
    expect(ws.url).toBe("ws://gw.test:8080/ws");
    expect(ws.url).not.toContain("secret-token");
    expect(ws.protocols).toBe("tidings.v1.json");
    ws.open();
    expect(ws.frames()).toEqual([{ type: "auth", token: "secret-token" }]);
  });

  it("calls getToken before the first connect when no token is given", async () => {
    const getToken = vi.fn(async () => "fresh");
    const client = newClient({ token: undefined as unknown as string, getToken });
    client.connect();
    expect(FakeWebSocket.instances).toHaveLength(0);
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    FakeWebSocket.last().open();
    expect(FakeWebSocket.last().frames()[0]).toEqual({ type: "auth", token: "fresh" });
  });

  it("connect() twice opens one socket", () => {
    const client = newClient();
    client.connect();
    client.connect();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("errors out without any transport", () => {
    vi.stubGlobal("WebSocket", undefined);
    onTestFinished(() => void vi.unstubAllGlobals());
    const client = newClient({ WebSocket: undefined, transports: ["websocket"] });
    client.connect();
    expect(client.state.status).toBe("error");
    expect(client.state.error).toMatch(/no transport/);
  });
});

describe("reconnecting", () => {
  it("goes disconnected on an abnormal close, then connecting after the backoff, and resets attempts on welcome", () => {
    vi.spyOn(Math, "random").mockReturnValue(0.5);
    const client = newClient();
    const ws = connectLive(client);
    const states = recordStates(client);
    ws.serverClose(1006);
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 1 });
    // attempt 0: cap 500, random 0.5 → 250 ms
    vi.advanceTimersByTime(249);
    expect(FakeWebSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(client.state).toEqual({ status: "connecting", reconnectAttempts: 1 });
    // This one fails before welcome: attempt 1, cap 1000 → 500 ms.
    FakeWebSocket.last().fail();
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 2 });
    vi.advanceTimersByTime(500);
    expect(FakeWebSocket.instances).toHaveLength(3);
    FakeWebSocket.last().open();
    FakeWebSocket.last().welcome();
    expect(client.state).toEqual({ status: "connected", reconnectAttempts: 0 });
    expect(states.map((s) => `${s.status}:${s.reconnectAttempts}`)).toEqual([
      "disconnected:1",
      "connecting:1",
      "disconnected:2",
      "connecting:2",
      "connected:0",
    ]);
  });

  it("grows the delay cap with each failure up to maxReconnectDelay", () => {
    vi.spyOn(Math, "random").mockReturnValue(0.999999);
    const client = newClient({ minReconnectDelay: 100, maxReconnectDelay: 1000, transports: ["websocket"] });
    client.connect();
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      FakeWebSocket.last().fail();
      const before = FakeWebSocket.instances.length;
      let waited = 0;
      while (FakeWebSocket.instances.length === before) {
        vi.advanceTimersByTime(1);
        waited++;
      }
      delays.push(waited);
    }
    expect(delays).toEqual([100, 200, 400, 800, 1000, 1000]);
  });

  it.each([4008, 4009, 1012, 1006, 1001, 1011])("reconnects after close code %i", (code) => {
    const client = newClient();
    const ws = connectLive(client);
    ws.serverClose(code, "bye");
    expect(client.state.status).toBe("disconnected");
    vi.advanceTimersByTime(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(client.state.status).toBe("connecting");
  });

  it("honours a reconnect frame's retry_ms (plus a little jitter) and closes the socket", () => {
    vi.spyOn(Math, "random").mockReturnValue(0);
    const client = newClient();
    const ws = connectLive(client);
    ws.receive({ type: "reconnect", reason: "shutdown", retry_ms: 3000 });
    expect(ws.closedWith).not.toBeNull();
    expect(client.state.status).toBe("disconnected");
    vi.advanceTimersByTime(2999);
    expect(FakeWebSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("reconnect frame jitter stays small", () => {
    vi.spyOn(Math, "random").mockReturnValue(0.99);
    const client = newClient();
    connectLive(client).receive({ type: "reconnect", reason: "shutdown", retry_ms: 1000 });
    vi.advanceTimersByTime(1000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(200);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("reconnects at once on the browser's online event", () => {
    const target = new EventTarget();
    const g = globalThis as unknown as Record<string, unknown>;
    g.addEventListener = target.addEventListener.bind(target);
    g.removeEventListener = target.removeEventListener.bind(target);
    try {
      vi.spyOn(Math, "random").mockReturnValue(0.99);
      const client = newClient();
      connectLive(client).serverClose(1006);
      expect(FakeWebSocket.instances).toHaveLength(1);
      target.dispatchEvent(new Event("online"));
      expect(FakeWebSocket.instances).toHaveLength(2);
      expect(client.state.status).toBe("connecting");
      // After disconnect() the listener is gone.
      client.disconnect();
      target.dispatchEvent(new Event("online"));
      expect(FakeWebSocket.instances).toHaveLength(2);
    } finally {
      delete g.addEventListener;
      delete g.removeEventListener;
    }
  });

  it("gives up waiting for welcome after the timeout", () => {
    const client = newClient({ timeout: 3000, transports: ["websocket"] });
    client.connect();
    const ws = FakeWebSocket.last();
    ws.open();
    vi.advanceTimersByTime(3000);
    expect(ws.closedWith).not.toBeNull();
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 1 });
  });
});

describe("close 4001", () => {
  it("calls getToken once and reconnects with the new token", async () => {
    const getToken = vi.fn(async () => "tok-2");
    const client = newClient({ getToken });
    const ws = connectLive(client);
    ws.serverClose(4001, "token expired");
    expect(client.state.status).toBe("disconnected");
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    expect(ws2.frames()[0]).toEqual({ type: "auth", token: "tok-2" });
    ws2.welcome();
    expect(client.state.status).toBe("connected");
  });

  it("goes to error when the fresh token is refused with 4001 again before welcome", async () => {
    const getToken = vi.fn(async () => "tok-2");
    const client = newClient({ getToken });
    const states: string[] = [];
    client.on("state", (s) => states.push(s.status));
    const errors: Error[] = [];
    client.on("error", (e) => errors.push(e));
    client.connect();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4001, "bad signature");
    await settle();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4001, "bad signature");
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(client.state.status).toBe("error");
    expect(client.state.error).toMatch(/4001/);
    expect(errors.at(-1)?.message).toMatch(/4001/);
    vi.advanceTimersByTime(60_000);
    expect(FakeWebSocket.instances).toHaveLength(2); // no loop
    expect(states.at(-1)).toBe("error");
  });

  it("goes to error at once without getToken", () => {
    const client = newClient();
    connectLive(client).serverClose(4001, "expired");
    expect(client.state).toMatchObject({ status: "error" });
    expect(client.state.error).toContain("expired");
    vi.advanceTimersByTime(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("goes to error when getToken throws", async () => {
    const client = newClient({ getToken: async () => Promise.reject(new Error("login needed")) });
    connectLive(client).serverClose(4001);
    await settle();
    expect(client.state.status).toBe("error");
    expect(client.state.error).toContain("login needed");
  });

  it("a 4001 after a later welcome gets a fresh getToken again", async () => {
    const getToken = vi.fn(async () => "tok-n");
    const client = newClient({ getToken });
    connectLive(client).serverClose(4001);
    await settle();
    FakeWebSocket.last().open();
    FakeWebSocket.last().welcome();
    FakeWebSocket.last().serverClose(4001);
    await settle();
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(client.state.status).toBe("connecting");
  });

  it("connect() after error tries again", async () => {
    const client = newClient();
    connectLive(client).serverClose(4001);
    expect(client.state.status).toBe("error");
    client.connect();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(client.state.status).toBe("connecting");
  });
});

describe("disconnect()", () => {
  it("closes, goes disconnected and never reconnects", () => {
    const client = newClient();
    const ws = connectLive(client);
    client.disconnect();
    expect(ws.closedWith?.code).toBe(1000);
    expect(client.state).toEqual({ status: "disconnected", reconnectAttempts: 0 });
    vi.advanceTimersByTime(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("cancels a pending reconnect", () => {
    const client = newClient();
    connectLive(client).serverClose(1006);
    client.disconnect();
    vi.advanceTimersByTime(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state.status).toBe("disconnected");
  });
});

describe("heartbeat", () => {
  it("pings every heartbeat_ms after welcome", () => {
    const client = newClient();
    const ws = connectLive(client, { heartbeat_ms: 1000 });
    expect(ws.framesOf("ping")).toHaveLength(0);
    vi.advanceTimersByTime(1000);
    ws.receive({ type: "pong", id: 1 });
    vi.advanceTimersByTime(1000);
    const pings = ws.framesOf("ping");
    expect(pings).toHaveLength(2);
    expect(typeof pings[0]?.id).toBe("number");
    expect(pings[1]?.id).not.toBe(pings[0]?.id);
  });

  it("closes and reconnects when no frame arrives for 2 × heartbeat_ms", () => {
    const client = newClient();
    const ws = connectLive(client, { heartbeat_ms: 1000 });
    vi.advanceTimersByTime(1999);
    expect(ws.closedWith).toBeNull();
    vi.advanceTimersByTime(1);
    expect(ws.closedWith).not.toBeNull();
    expect(client.state.status).toBe("disconnected");
    vi.advanceTimersByTime(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("any frame keeps the connection alive", () => {
    const client = newClient();
    const ws = connectLive(client, { heartbeat_ms: 1000 });
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(1500);
      ws.receive({ type: "pong", id: 99 });
    }
    expect(ws.closedWith).toBeNull();
    vi.advanceTimersByTime(2000);
    expect(ws.closedWith).not.toBeNull();
  });

  it("does not declare a throttled background tab dead: a late check pings and looks again once", () => {
    const client = newClient();
    const ws = connectLive(client, { heartbeat_ms: 1000 });
    // A hidden tab: no timer ran for a minute (the clock moved, the timers did not fire).
    vi.setSystemTime(Date.now() + 60_000);
    vi.advanceTimersByTime(2000); // the dead-check fires, 60 s late, after 62 s of silence
    expect(ws.closedWith).toBeNull();
    const pings = ws.framesOf("ping").length;
    expect(pings).toBeGreaterThanOrEqual(3); // the interval's two, and the check's own
    ws.receive({ type: "pong", id: ws.framesOf("ping").at(-1)?.id });
    vi.advanceTimersByTime(1500); // the re-check finds the pong
    expect(ws.closedWith).toBeNull();
    expect(client.state.status).toBe("connected");
  });

  it("a late check that gets no answer either declares the connection dead", () => {
    const client = newClient();
    const ws = connectLive(client, { heartbeat_ms: 1000 });
    vi.setSystemTime(Date.now() + 60_000);
    vi.advanceTimersByTime(2000);
    expect(ws.closedWith).toBeNull();
    vi.advanceTimersByTime(1000); // one more period, still nothing
    expect(ws.closedWith).not.toBeNull();
    expect(client.state.status).toBe("disconnected");
  });
});
