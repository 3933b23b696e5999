/**
 * The gateway's HTTP API (CONTRACT.md §6): history, presence, the inbox, and the publish
 * route that SSE mode uses. Every request carries `Authorization: Bearer <current token>`;
 * a 401 is retried once with a token from `getToken()` (the token may have expired between
 * refreshes). Error bodies `{"error":{"code","message"}}` become a `TidingsError` with the
 * HTTP `status`.
 */
import { TidingsError } from "./errors.js";
import type {
  FetchLike,
  HistoryOptions,
  HistoryResult,
  InboxItem,
  InboxOptions,
  InboxResult,
  PresenceResult,
  PublishResult,
} from "./types.js";

/** Where the HTTP client gets its token. */
export interface TokenSource {
  current(): Promise<string | undefined>;
  /** A fresh token after a 401, or `null` when there is no `getToken`. */
  renew: (() => Promise<string>) | null;
}

/** `ws://host:8080/ws` → `http://host:8080` (wss → https; a trailing `/ws` is stripped, any prefix kept). */
export function deriveHttpUrl(wsUrl: string): string {
  const u = new URL(wsUrl);
  const scheme = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  let path = u.pathname.replace(/\/+$/, "");
  if (path.endsWith("/ws")) path = path.slice(0, -3);
  return `${scheme}//${u.host}${path}`;
}

/** A path segment. Valid channel names only contain `:` besides URL-safe characters, and `:` is legal in a path. */
export const segment = (s: string): string => encodeURIComponent(s).replace(/%3A/gi, ":");

const STATUS_CODES: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  413: "too_large",
  429: "rate_limited",
  503: "unavailable",
};

/** The `TidingsError` of an error response (its `{"error":{code,message}}` body, else its status). */
export async function errorFrom(res: Response): Promise<TidingsError> {
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {
    // not JSON
  }
  const err = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  const code = typeof err?.code === "string" ? err.code : (STATUS_CODES[res.status] ?? "internal");
  const message = typeof err?.message === "string" ? err.message : `HTTP ${res.status}`;
  return new TidingsError(code, message, res.status);
}

/** A request body that is already JSON text (sent as is, not serialized again). */
export class RawJson {
  constructor(readonly text: string) {}
}

export class HttpApi {
  constructor(
    readonly baseUrl: string,
    private readonly fetchFn: FetchLike | undefined,
    private readonly tokens: TokenSource,
  ) {}

  /** Sends one request; resolves with the parsed JSON body. */
  async request<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    let res = await this.send(method, path, body, await this.tokens.current());
    if (res.status === 401 && this.tokens.renew) {
      res = await this.send(method, path, body, await this.tokens.renew());
    }
    if (!res.ok) throw await errorFrom(res);
    const text = await res.text();
    return (text ? JSON.parse(text) : {}) as T;
  }

  private async send(method: string, path: string, body: unknown, token: string | undefined): Promise<Response> {
    const f = this.fetchFn;
    if (!f) throw new TidingsError("network", "no fetch available: pass options.fetch");
    const headers: Record<string, string> = { Accept: "application/json" };
    if (token !== undefined) headers.Authorization = `Bearer ${token}`;
    const init: RequestInit = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = body instanceof RawJson ? body.text : JSON.stringify(body);
    }
    try {
      return await f(`${this.baseUrl}${path}`, init);
    } catch (e) {
      throw new TidingsError("network", `request failed: ${String(e)}`, undefined, { cause: e });
    }
  }

  history(channel: string, opts: HistoryOptions = {}): Promise<HistoryResult> {
    const q = new URLSearchParams();
    const since = opts.since;
    if (typeof since === "number") q.set("since", String(since));
    else if (since) {
      q.set("since", String(since.seq));
      if (since.epoch !== undefined) q.set("epoch", since.epoch);
    }
    if (opts.limit !== undefined) q.set("limit", String(opts.limit));
    return this.request("GET", `/api/v1/channels/${segment(channel)}/history${query(q)}`);
  }

  presence(channel: string): Promise<PresenceResult> {
    return this.request("GET", `/api/v1/channels/${segment(channel)}/presence`);
  }

  inbox(user: string, opts: InboxOptions = {}): Promise<InboxResult> {
    const q = new URLSearchParams();
    if (opts.unread !== undefined) q.set("unread", String(opts.unread));
    if (opts.limit !== undefined) q.set("limit", String(opts.limit));
    if (opts.before !== undefined) q.set("before", opts.before);
    return this.request("GET", `/api/v1/users/${segment(user)}/inbox${query(q)}`);
  }

  markRead(user: string, id: string): Promise<InboxItem> {
    return this.request("POST", `/api/v1/users/${segment(user)}/inbox/${segment(id)}/read`);
  }

  /** `POST /api/v1/publish`: always durable; `id` is the idempotency key; `dataJson` is `data` serialized. */
  publish(channel: string, event: string, dataJson: string, msgId: string): Promise<PublishResult> {
    const q = JSON.stringify;
    const body = new RawJson(`{"channel":${q(channel)},"event":${q(event)},"data":${dataJson},"id":${q(msgId)}}`);
    return this.request("POST", "/api/v1/publish", body);
  }
}

function query(q: URLSearchParams): string {
  const s = q.toString();
  return s ? `?${s}` : "";
}
