import { describe, expect, it, vi } from "vitest";
import { TidingsClient, TidingsError } from "../src/index.js";
import { deriveHttpUrl } from "../src/http.js";
import { FakeWebSocket, jsonResponse, mockFetch } from "./fakes.js";

function client(fetch: ReturnType<typeof mockFetch>, extra: Partial<ConstructorParameters<typeof TidingsClient>[0]> = {}) {
  return new TidingsClient({ url: "ws://gw.test:8080/ws", token: "tok-1", WebSocket: FakeWebSocket, fetch, ...extra });
}

const headers = (init: RequestInit | undefined): Record<string, string> => (init?.headers ?? {}) as Record<string, string>;

describe("httpUrl", () => {
  it("derives from the WebSocket URL", () => {
    expect(deriveHttpUrl("ws://host:8080/ws")).toBe("http://host:8080");
    expect(deriveHttpUrl("wss://host/ws")).toBe("https://host");
    expect(deriveHttpUrl("wss://host/tidings/ws/")).toBe("https://host/tidings");
    expect(deriveHttpUrl("ws://host:8080")).toBe("http://host:8080");
    expect(new TidingsClient({ url: "wss://a.b/ws" }).httpUrl).toBe("https://a.b");
    expect(new TidingsClient({ url: "wss://a.b/ws", httpUrl: "https://api.a.b/" }).httpUrl).toBe("https://api.a.b");
  });
});

describe("HTTP helpers", () => {
  it("history: GET with since and limit, bearer token", async () => {
    const body = { messages: [{ type: "message", channel: "project:p1", seq: 6 }], recovered: true, more: false, epoch: "E" };
    const fetch = mockFetch(jsonResponse(body), jsonResponse(body));
    const c = client(fetch);
    await expect(c.history("project:p1", { since: 5, limit: 10 })).resolves.toEqual(body);
    await c.history("project:p1", { since: { seq: 5, epoch: "E1" } });
    const [url, init] = fetch.mock.calls[0]!;
    expect(url).toBe("http://gw.test:8080/api/v1/channels/project:p1/history?since=5&limit=10");
    expect(init?.method).toBe("GET");
    expect(headers(init).Authorization).toBe("Bearer tok-1");
    expect(fetch.mock.calls[1]![0]).toBe("http://gw.test:8080/api/v1/channels/project:p1/history?since=5&epoch=E1");
  });

  it("presence, inbox and markRead hit their routes", async () => {
    const fetch = mockFetch(
      jsonResponse({ users: ["u1"], connections: 2 }),
      jsonResponse({ items: [], unread: 0 }),
      jsonResponse({ items: [], unread: 0 }),
      jsonResponse({ items: [], unread: 0, next: null }),
      jsonResponse({ id: "n1", read: true }),
    );
    const c = client(fetch);
    await expect(c.presence("project:p1")).resolves.toEqual({ users: ["u1"], connections: 2 });
    await c.inbox("u1", { unread: true, limit: 20 });
    await c.inbox("u1");
    await c.inbox("u1", { limit: 20, before: "n20" });
    await expect(c.markRead("u1", "n1")).resolves.toEqual({ id: "n1", read: true });
    expect(fetch.mock.calls.map(([u, i]) => `${i?.method} ${u}`)).toEqual([
      "GET http://gw.test:8080/api/v1/channels/project:p1/presence",
      "GET http://gw.test:8080/api/v1/users/u1/inbox?unread=true&limit=20",
      "GET http://gw.test:8080/api/v1/users/u1/inbox",
      "GET http://gw.test:8080/api/v1/users/u1/inbox?limit=20&before=n20",
      "POST http://gw.test:8080/api/v1/users/u1/inbox/n1/read",
    ]);
    for (const [, init] of fetch.mock.calls) expect(headers(init).Authorization).toBe("Bearer tok-1");
  });

  it("parses error bodies into TidingsError with status", async () => {
    const fetch = mockFetch(
      jsonResponse({ error: { code: "forbidden", message: "this token may not read project:x" } }, 403),
      new Response("bad gateway", { status: 502 }),
      new Response("", { status: 429 }),
    );
    const c = client(fetch);
    const e1 = await c.presence("project:x").catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(TidingsError);
    expect(e1).toMatchObject({ code: "forbidden", message: "this token may not read project:x", status: 403 });
    await expect(c.presence("project:x")).rejects.toMatchObject({ code: "internal", status: 502 });
    await expect(c.presence("project:x")).rejects.toMatchObject({ code: "rate_limited", status: 429 });
  });

  it("reports network failures as TidingsError network", async () => {
    const c = client(mockFetch(new TypeError("fetch failed")));
    await expect(c.inbox("u1")).rejects.toMatchObject({ code: "network" });
  });

  it("retries a 401 once with a token from getToken", async () => {
    const fetch = mockFetch(
      jsonResponse({ error: { code: "unauthorized", message: "expired" } }, 401),
      jsonResponse({ items: [], unread: 3 }),
    );
    const getToken = vi.fn(async () => "tok-2");
    const c = client(fetch, { getToken });
    await expect(c.inbox("u1")).resolves.toEqual({ items: [], unread: 3 });
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(headers(fetch.mock.calls[1]![1]).Authorization).toBe("Bearer tok-2");
  });

  it("gets a token first when it has none", async () => {
    const fetch = mockFetch(jsonResponse({ users: [], connections: 0 }));
    const c = new TidingsClient({ url: "ws://gw.test:8080/ws", getToken: async () => "from-getToken", fetch });
    await c.presence("broadcast");
    expect(headers(fetch.mock.calls[0]![1]).Authorization).toBe("Bearer from-getToken");
  });
});
