// @vitest-environment happy-dom
import { act, cleanup, render, renderHook, waitFor } from "@testing-library/react";
import { StrictMode, createElement, type ReactNode } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TidingsClient } from "../src/index.js";
import {
  TidingsProvider,
  useChannel,
  useConnectionState,
  useNotifications,
  usePresence,
  useWebSocket,
  type UseWebSocketResult,
} from "../src/react.js";
import { FakeWebSocket, jsonResponse, message, settle as flush } from "./fakes.js";

type FetchMock = ReturnType<typeof vi.fn<(url: string, init?: RequestInit) => Promise<Response>>>;

let client: TidingsClient;
let fetchMock: FetchMock;

beforeEach(() => {
  FakeWebSocket.reset();
  fetchMock = vi.fn<(url: string, init?: RequestInit) => Promise<Response>>(async () => jsonResponse({}));
  client = new TidingsClient({ url: "ws://gw.test:8080/ws", token: "tok-1", WebSocket: FakeWebSocket, fetch: fetchMock });
});
afterEach(() => {
  cleanup();
  client.disconnect();
});

const wrapper = ({ children }: { children?: ReactNode }) => createElement(TidingsProvider, { client }, children);

/** The provider connected on mount; bring the socket to welcome. */
function welcome(): FakeWebSocket {
  const ws = FakeWebSocket.last();
  act(() => {
    ws.open();
    ws.welcome();
  });
  return ws;
}

describe("TidingsProvider", () => {
  it("connects on mount and shares one client and one socket between components", () => {
    function A() {
      useChannel("project:p1");
      useConnectionState();
      return null;
    }
    function B() {
      const { state } = useWebSocket();
      return createElement("span", { "data-testid": "status" }, state.status);
    }
    const view = render(createElement(TidingsProvider, { client }, createElement(A), createElement(B), createElement(B)));
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(view.getAllByText("connecting")).toHaveLength(2);
    const ws = welcome();
    expect(view.getAllByText("connected")).toHaveLength(2);
    expect(ws.framesOf("subscribe").map((f) => f.channel)).toEqual(["project:p1"]);
  });

  it("survives StrictMode's double effects with one subscription", () => {
    function A() {
      useChannel("project:p1");
      return null;
    }
    render(createElement(StrictMode, null, createElement(TidingsProvider, { client }, createElement(A), createElement(A))));
    const ws = welcome();
    expect(ws.framesOf("subscribe").map((f) => f.channel)).toEqual(["project:p1"]);
    expect(client.subscriptions().map((s) => s.channel)).toEqual(["project:p1"]);
  });

  it("throws a clear error outside the provider", () => {
    vi.spyOn(console, "error").mockImplementation(() => undefined);
    expect(() => renderHook(() => useWebSocket())).toThrow(/TidingsProvider/);
  });
});

describe("useWebSocket", () => {
  it("returns exactly { state, sendMessage, subscribe, unsubscribe }", () => {
    const { result } = renderHook(() => useWebSocket(), { wrapper });
    expect(Object.keys(result.current).sort()).toEqual(["sendMessage", "state", "subscribe", "unsubscribe"]);
    expect(result.current.state).toEqual({ status: "connecting", reconnectAttempts: 0 });
    welcome();
    expect(result.current.state).toEqual({ status: "connected", reconnectAttempts: 0 });
  });

  it("exposes the last project message in the project shape", () => {
    const { result } = renderHook(() => useWebSocket(), { wrapper });
    const ws = welcome();
    act(() => result.current.subscribe("p1"));
    act(() =>
      ws.receive(message("project:p1", 9, 0, { event: "agent_run_progress", data: { run_id: "r1", progress: 40 }, id: "msg-9", ts: "2025-01-01T00:00:09.000Z" })),
    );
    expect(result.current.state.lastMessage).toEqual({
      type: "agent_run_progress",
      projectId: "p1",
      data: { run_id: "r1", progress: 40 },
      timestamp: "2025-01-01T00:00:09.000Z",
      messageId: "msg-9",
    });
  });

  it("reference-counts project subscriptions across components", () => {
    const hooks: UseWebSocketResult[] = [];
    function C({ i }: { i: number }) {
      hooks[i] = useWebSocket();
      return null;
    }
    const view = render(createElement(TidingsProvider, { client }, createElement(C, { i: 0 }), createElement(C, { i: 1 })));
    const ws = welcome();
    act(() => {
      hooks[0]!.subscribe("p1");
      hooks[1]!.subscribe("p1");
      hooks[1]!.subscribe("p1"); // same component twice: still one reference
    });
    expect(ws.framesOf("subscribe")).toEqual([{ type: "subscribe", id: expect.any(Number), channel: "project:p1" }]);
    act(() => hooks[0]!.unsubscribe("p1"));
    expect(ws.framesOf("unsubscribe")).toHaveLength(0);
    expect(client.getSubscription("project:p1")).toBeDefined();
    act(() => hooks[1]!.unsubscribe("p1"));
    expect(ws.framesOf("unsubscribe")).toEqual([{ type: "unsubscribe", id: expect.any(Number), channel: "project:p1" }]);
    // Unmounting releases what a component still holds.
    act(() => hooks[0]!.subscribe("p2"));
    view.unmount();
    expect(ws.framesOf("unsubscribe").map((f) => f.channel)).toEqual(["project:p1", "project:p2"]);
  });

  it("sendMessage publishes the type as the event on project:<projectId>", async () => {
    const { result } = renderHook(() => useWebSocket(), { wrapper });
    const ws = welcome();
    let p!: Promise<unknown>;
    act(() => {
      p = result.current.sendMessage({ type: "chat_message", projectId: "p1", data: { text: "hi" } }, { durable: true });
    });
    const f = ws.lastFrame();
    expect(f).toMatchObject({ type: "publish", channel: "project:p1", event: "chat_message", data: { text: "hi" }, durable: true });
    ws.reply(f, { seq: 5 });
    await expect(p).resolves.toEqual({ seq: 5 });
  });
});

describe("useChannel", () => {
  it("keeps the last messages (bounded), the last message and the position", () => {
    const { result } = renderHook(() => useChannel("project:p1", { limit: 2 }), { wrapper });
    const ws = welcome();
    act(() => ws.reply(ws.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E1", recovered: true, missed: 0 }));
    act(() => {
      ws.receive(message("project:p1", 1, 0));
      ws.receive(message("project:p1", 2, 1));
      ws.receive(message("project:p1", 3, 2));
    });
    expect(result.current.messages.map((m) => m.seq)).toEqual([2, 3]);
    expect(result.current.lastMessage?.seq).toBe(3);
    expect(result.current.position).toEqual({ seq: 3, epoch: "E1" });
  });

  it("unsubscribes on unmount", () => {
    const { unmount } = renderHook(() => useChannel("broadcast"), { wrapper });
    const ws = welcome();
    unmount();
    expect(ws.framesOf("unsubscribe").map((f) => f.channel)).toEqual(["broadcast"]);
  });
});

describe("channels that cannot be subscribed", () => {
  it("useNotifications with a user id that is no channel id reports bad_channel in error instead of crashing", async () => {
    fetchMock.mockResolvedValue(jsonResponse({ items: [], unread: 0 }));
    const { result } = renderHook(() => useNotifications("alice@example.com"), { wrapper });
    await waitFor(() => expect(result.current.loading).toBe(false));
    expect(result.current.error).toMatchObject({ code: "bad_channel" });
    expect(client.subscriptions()).toHaveLength(0);
  });

  it("useChannel reports a bad name as state error", () => {
    const { result, unmount } = renderHook(() => useChannel("team:x"), { wrapper });
    expect(result.current.state).toBe("error");
    expect(result.current.error).toMatchObject({ code: "bad_channel" });
    unmount();
  });

  it("useChannel reports a channel the gateway refuses as state error", () => {
    const { result } = renderHook(() => useChannel("project:secret"), { wrapper });
    expect(result.current.state).toBe("subscribing");
    const ws = welcome();
    const f = ws.framesOf("subscribe")[0]!;
    act(() => ws.receive({ type: "reply", id: f.id, ok: false, error: { code: "forbidden", message: "no" } }));
    expect(result.current.state).toBe("error");
    expect(result.current.error).toMatchObject({ code: "forbidden" });
  });
});

describe("hook reference counts and the application's own subscriptions", () => {
  it("never unsubscribes a channel the application subscribed after the hooks did", () => {
    const { unmount } = renderHook(() => useChannel("project:p1"), { wrapper });
    const ws = welcome();
    const got: unknown[] = [];
    const mine = client.subscribe("project:p1", { onMessage: (m) => got.push(m) }); // the same Subscription
    unmount();
    expect(ws.framesOf("unsubscribe")).toHaveLength(0);
    expect(mine.state).not.toBe("unsubscribed");
    ws.receive(message("project:p1", 1, 0));
    expect(got).toHaveLength(1);
  });

  it("keeps counting holders when the subscription was ended from outside and taken again", () => {
    const hooks: UseWebSocketResult[] = [];
    function C({ i }: { i: number }) {
      hooks[i] = useWebSocket();
      return null;
    }
    render(createElement(TidingsProvider, { client }, createElement(C, { i: 0 }), createElement(C, { i: 1 }), createElement(C, { i: 2 })));
    const ws = welcome();
    act(() => {
      hooks[0]!.subscribe("p1");
      hooks[1]!.subscribe("p1");
    });
    act(() => client.getSubscription("project:p1")!.unsubscribe()); // the application ends it
    act(() => hooks[2]!.subscribe("p1")); // a third holder: subscribed anew
    expect(client.getSubscription("project:p1")?.state).toBe("subscribing");
    act(() => hooks[0]!.unsubscribe("p1"));
    act(() => hooks[1]!.unsubscribe("p1"));
    expect(client.getSubscription("project:p1")).toBeDefined(); // hooks[2] still holds it
    expect(ws.framesOf("unsubscribe")).toHaveLength(1); // only the application's
    act(() => hooks[2]!.unsubscribe("p1"));
    expect(client.getSubscription("project:p1")).toBeUndefined();
    expect(ws.framesOf("unsubscribe")).toHaveLength(2);
  });
});

describe("a subscription the gateway ended (operator unsubscribe)", () => {
  const unsubscribed = (channel: string) => ({ type: "unsubscribed", channel, reason: "server" });

  it("useChannel shows state unsubscribed with the reason, keeps its messages, and unmounts cleanly", () => {
    const { result, unmount } = renderHook(() => useChannel("project:p1"), { wrapper });
    expect(result.current.unsubscribed).toBeNull();
    const ws = welcome();
    act(() => ws.reply(ws.framesOf("subscribe")[0]!, { channel: "project:p1", epoch: "E1", recovered: true, missed: 0 }));
    act(() => ws.receive(message("project:p1", 1, 0)));
    expect(result.current.state).toBe("subscribed");

    act(() => ws.receive(unsubscribed("project:p1")));
    expect(result.current.state).toBe("unsubscribed");
    expect(result.current.unsubscribed).toEqual({ channel: "project:p1", reason: "server", byServer: true });
    expect(result.current.error).toBeNull();
    expect(result.current.messages.map((m) => m.seq)).toEqual([1]);
    expect(result.current.position).toEqual({ seq: 1, epoch: "E1" });

    act(() => ws.receive(message("project:p1", 2, 1))); // nothing more arrives
    expect(result.current.messages.map((m) => m.seq)).toEqual([1]);
    act(() => ws.serverClose(1006));
    expect(result.current.state).toBe("unsubscribed"); // a reconnect does not bring it back
    unmount();
    expect(ws.framesOf("unsubscribe")).toHaveLength(0);
    expect(client.subscriptions()).toHaveLength(0);
  });

  it("useChannel on another channel is not affected, and a remount subscribes again from the position", () => {
    const p1 = renderHook(() => useChannel("project:p1"), { wrapper });
    const p2 = renderHook(() => useChannel("project:p2"), { wrapper });
    const ws = welcome();
    for (const f of ws.framesOf("subscribe")) act(() => ws.reply(f, { channel: f.channel, epoch: "E1", recovered: true, missed: 0 }));
    act(() => ws.receive(message("project:p1", 3, 0)));
    act(() => ws.receive(unsubscribed("project:p1")));
    act(() => ws.receive(message("project:p2", 4, 0)));
    expect(p2.result.current.state).toBe("subscribed");
    expect(p2.result.current.unsubscribed).toBeNull();
    expect(p2.result.current.messages.map((m) => m.seq)).toEqual([4]);
    p1.unmount();
    const again = renderHook(() => useChannel("project:p1"), { wrapper });
    expect(ws.framesOf("subscribe").at(-1)).toMatchObject({ channel: "project:p1", since: 3, epoch: "E1" });
    expect(again.result.current.state).toBe("subscribing");
    expect(again.result.current.unsubscribed).toBeNull();
  });

  it("useWebSocket lets a project the gateway unsubscribed go, so subscribe(projectId) works again", () => {
    const { result } = renderHook(() => useWebSocket(), { wrapper });
    const ws = welcome();
    act(() => result.current.subscribe("p1"));
    expect(ws.framesOf("subscribe").map((f) => f.channel)).toEqual(["project:p1"]);
    act(() => ws.receive(unsubscribed("project:p1")));
    expect(client.getSubscription("project:p1")).toBeUndefined();
    act(() => result.current.subscribe("p1"));
    expect(ws.framesOf("subscribe").map((f) => f.channel)).toEqual(["project:p1", "project:p1"]);
    act(() => result.current.unsubscribe("p1"));
    expect(ws.framesOf("unsubscribe").map((f) => f.channel)).toEqual(["project:p1"]);
  });

  it("useNotifications reports the live channel's end in unsubscribed", async () => {
    fetchMock.mockResolvedValue(jsonResponse({ items: [], unread: 0 }));
    const { result } = renderHook(() => useNotifications("u1"), { wrapper });
    const ws = welcome();
    await waitFor(() => expect(result.current.loading).toBe(false));
    expect(result.current.unsubscribed).toBeNull();
    act(() => ws.receive(unsubscribed("user:u1")));
    expect(result.current.unsubscribed).toEqual({ channel: "user:u1", reason: "server", byServer: true });
    expect(result.current.error).toBeNull();
  });
});

describe("useConnectionState", () => {
  it("follows the client state", () => {
    const { result } = renderHook(() => useConnectionState(), { wrapper });
    expect(result.current.status).toBe("connecting");
    const ws = welcome();
    expect(result.current).toEqual({ status: "connected", reconnectAttempts: 0 });
    act(() => ws.serverClose(1006));
    expect(result.current).toEqual({ status: "disconnected", reconnectAttempts: 1 });
  });
});

const item = (id: string, read = false) => ({
  id,
  title: `t-${id}`,
  body: "b",
  priority: "normal",
  created_at: "2025-01-01T00:00:00Z",
  read,
});

describe("useNotifications", () => {
  it("loads the inbox, merges live notifications without duplicates, and marks read optimistically", async () => {
    fetchMock.mockResolvedValueOnce(jsonResponse({ items: [item("n2"), item("n1", true)], unread: 1 }));
    const { result } = renderHook(() => useNotifications("u1", { pageSize: 2 }), { wrapper });
    expect(Object.keys(result.current).sort()).toEqual(
      ["error", "fetchMore", "hasMore", "items", "loading", "markRead", "refetch", "unread", "unsubscribed"].sort(),
    );
    await waitFor(() => expect(result.current.loading).toBe(false));
    expect(fetchMock.mock.calls[0]![0]).toBe("http://gw.test:8080/api/v1/users/u1/inbox?limit=2");
    expect(result.current.items.map((i) => i.id)).toEqual(["n2", "n1"]);
    expect(result.current.unread).toBe(1);
    expect(result.current.hasMore).toBe(true);

    const ws = welcome();
    expect(ws.framesOf("subscribe").map((f) => f.channel)).toEqual(["user:u1"]);
    const live = { id: "n3", title: "Build failed", body: "x", project: "p1", priority: "high", category: null, created_at: "2025-01-02T00:00:00Z" };
    act(() => {
      ws.receive(message("user:u1", 10, 0, { event: "notification", id: "n3", data: live }));
      ws.receive(message("user:u1", 11, 10, { event: "notification", id: "n2", data: { ...live, id: "n2" } })); // already listed
      ws.receive(message("user:u1", 12, 11, { event: "chat" }));
    });
    expect(result.current.items.map((i) => i.id)).toEqual(["n3", "n2", "n1"]);
    expect(result.current.items[0]).toEqual({
      id: "n3",
      title: "Build failed",
      body: "x",
      project: "p1",
      priority: "high",
      created_at: "2025-01-02T00:00:00Z",
      read: false,
    });
    expect(result.current.unread).toBe(2);

    let resolveRead!: (r: Response) => void;
    fetchMock.mockImplementationOnce(() => new Promise<Response>((r) => (resolveRead = r)));
    let done!: Promise<void>;
    await act(async () => {
      done = result.current.markRead("n3");
      await flush();
    });
    expect(result.current.unread).toBe(1); // before the server answered
    expect(result.current.items[0]?.read).toBe(true);
    const [url, init] = fetchMock.mock.calls[1]!;
    expect(`${init?.method} ${url}`).toBe("POST http://gw.test:8080/api/v1/users/u1/inbox/n3/read");
    await act(async () => {
      resolveRead(jsonResponse({ ...item("n3"), read: true }));
      await done;
    });
    expect(result.current.unread).toBe(1);
    expect(result.current.error).toBeNull();
  });

  it("undoes a refused markRead and reports the error", async () => {
    fetchMock.mockResolvedValueOnce(jsonResponse({ items: [item("n1")], unread: 1 }));
    const { result } = renderHook(() => useNotifications("u1"), { wrapper });
    await waitFor(() => expect(result.current.loading).toBe(false));
    fetchMock.mockResolvedValueOnce(jsonResponse({ error: { code: "not_found", message: "no inbox entry n1" } }, 404));
    await act(() => result.current.markRead("n1"));
    expect(result.current.unread).toBe(1);
    expect(result.current.items[0]?.read).toBe(false);
    expect(result.current.error).toMatchObject({ code: "not_found", status: 404 });
  });

  it("fetchMore grows the limit; hasMore turns false on a short page; refetch keeps the limit", async () => {
    fetchMock
      .mockResolvedValueOnce(jsonResponse({ items: [item("a"), item("b")], unread: 3 }))
      .mockResolvedValueOnce(jsonResponse({ items: [item("a"), item("b"), item("c")], unread: 3 }))
      .mockResolvedValueOnce(jsonResponse({ items: [item("a"), item("b"), item("c")], unread: 3 }));
    const { result } = renderHook(() => useNotifications("u1", { pageSize: 2 }), { wrapper });
    await waitFor(() => expect(result.current.hasMore).toBe(true));
    await act(() => result.current.fetchMore());
    expect(result.current.items.map((i) => i.id)).toEqual(["a", "b", "c"]);
    expect(result.current.hasMore).toBe(false);
    await act(() => result.current.refetch());
    expect(fetchMock.mock.calls.map(([u]) => new URL(u).searchParams.get("limit"))).toEqual(["2", "4", "4"]);
  });

  it("fetchMore asks for the page after the cursor and appends it; refetch reloads what is shown", async () => {
    fetchMock
      .mockResolvedValueOnce(jsonResponse({ items: [item("a"), item("b")], unread: 3, next: "b" }))
      .mockResolvedValueOnce(jsonResponse({ items: [item("c"), item("d")], unread: 3, next: "d" }))
      .mockResolvedValueOnce(jsonResponse({ items: [item("e")], unread: 3, next: null }))
      .mockResolvedValueOnce(jsonResponse({ items: [item("a"), item("b"), item("c"), item("d"), item("e")], unread: 3, next: null }));
    const { result } = renderHook(() => useNotifications("u1", { pageSize: 2 }), { wrapper });
    await waitFor(() => expect(result.current.hasMore).toBe(true));
    await act(() => result.current.fetchMore());
    expect(result.current.items.map((i) => i.id)).toEqual(["a", "b", "c", "d"]);
    expect(result.current.hasMore).toBe(true);
    await act(() => result.current.fetchMore());
    expect(result.current.items.map((i) => i.id)).toEqual(["a", "b", "c", "d", "e"]);
    expect(result.current.hasMore).toBe(false);
    expect(result.current.unread).toBe(3);
    await act(() => result.current.fetchMore()); // nothing more: no request
    await act(() => result.current.refetch());
    const asked = fetchMock.mock.calls.map(([u]) => new URL(u).search);
    expect(asked).toEqual(["?limit=2", "?limit=2&before=b", "?limit=2&before=d", "?limit=6"]);
    expect(result.current.items.map((i) => i.id)).toEqual(["a", "b", "c", "d", "e"]);
  });

  it("keeps a live notification that arrived while the page was loading", async () => {
    let resolvePage!: (r: Response) => void;
    fetchMock.mockImplementationOnce(() => new Promise<Response>((r) => (resolvePage = r)));
    const { result } = renderHook(() => useNotifications("u1"), { wrapper });
    const ws = welcome();
    act(() => ws.receive(message("user:u1", 3, 0, { event: "notification", id: "new", data: { id: "new", title: "x" } })));
    await act(flush);
    expect(result.current.loading).toBe(true);
    await act(async () => resolvePage(jsonResponse({ items: [item("old")], unread: 1 })));
    await waitFor(() => expect(result.current.loading).toBe(false));
    expect(result.current.items.map((i) => i.id)).toEqual(["new", "old"]);
    expect(result.current.unread).toBe(2);
  });
});

describe("usePresence", () => {
  it("fetches presence and polls it", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval"] });
    try {
      fetchMock
        .mockResolvedValueOnce(jsonResponse({ users: ["u1"], connections: 1 }))
        .mockResolvedValueOnce(jsonResponse({ users: ["u1", "u2"], connections: 3 }));
      const { result } = renderHook(() => usePresence("project:p1", { intervalMs: 5000 }), { wrapper });
      await act(flush);
      expect(result.current.users).toEqual(["u1"]);
      expect(fetchMock.mock.calls[0]![0]).toBe("http://gw.test:8080/api/v1/channels/project:p1/presence");
      await act(async () => {
        vi.advanceTimersByTime(5000);
        await flush();
      });
      expect(result.current.connections).toBe(3);
      expect(result.current.users).toEqual(["u1", "u2"]);
      expect(typeof result.current.refetch).toBe("function");
    } finally {
      vi.useRealTimers();
    }
  });
});
