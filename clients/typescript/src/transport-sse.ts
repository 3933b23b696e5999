/**
 * The Server-Sent Events fallback (CONTRACT.md §5), for networks where WebSockets do not
 * get through. One EventSource carries every subscribed channel: `GET {httpUrl}/sse?
 * channels=a,b&token=…`. Every durable event has an `id:` cursor; the client keeps the
 * cursor of the last message it accepted and, whenever it opens a new EventSource (the
 * channel set changed, the stream dropped, a gap was seen, the token was renewed), passes a
 * cursor built from it and its positions (sse-cursor.ts) as `last_event_id=`, because a new
 * EventSource cannot set the `Last-Event-ID` header.
 *
 * The gateway can end one channel of the stream (an operator's unsubscribe) with an
 * `event: unsubscribed` whose `data` is `{"channel","reason"}`; the stream goes on for the
 * others.
 *
 * The EventSource's own automatic reconnect is cut short (closed on the first `error`): it
 * would reuse a URL with an old token and an old cursor, and could resume after a message
 * the client refused as a gap. The client reconnects itself, with backoff.
 */
import { listen } from "./listen.js";
import type { EventSourceConstructor, EventSourceLike, MessageFrame } from "./types.js";

export interface SseHandlers {
  open(): void;
  message(frame: MessageFrame, cursor: string | null): void;
  /** An `event: unsubscribed` (`data: {"channel","reason"}`): the gateway ended that channel; the stream goes on. */
  unsubscribed(channel: string, reason: string): void;
  /** An `event: revoked`: an operator disconnected the user or revoked the token; the stream ends. */
  revoked(reason: string): void;
  /** The stream failed or ended; `beforeOpen` when it never opened. Never called after `close()`. */
  error(beforeOpen: boolean): void;
}

/** Percent-encodes a query value but keeps `: ; = ,`, which are unambiguous there (readable URLs, readable logs). */
const queryValue = (s: string): string =>
  encodeURIComponent(s).replace(/%(3A|3B|3D|2C)/gi, (m) => decodeURIComponent(m));

export function sseUrl(httpUrl: string, channels: string[], token: string | undefined, cursor: string | null): string {
  let url = `${httpUrl}/sse?channels=${channels.map(queryValue).join(",")}`;
  if (token !== undefined) url += `&token=${queryValue(token)}`;
  if (cursor !== null) url += `&last_event_id=${queryValue(cursor)}`;
  return url;
}

/** The epoch in a Tidings cursor (`e<epoch>;w<pos>;…`), or `null` for a cursor of another shape. */
export function cursorEpoch(cursor: string): string | null {
  const m = /^e([^;]+);w\d+(;|$)/.exec(cursor);
  return m ? (m[1] ?? null) : null;
}

export class SseTransport {
  private source: EventSourceLike | null = null;
  private detachers: Array<() => void> = [];
  private opened = false;

  constructor(
    private readonly Ctor: EventSourceConstructor,
    private readonly handlers: SseHandlers,
    private readonly log: (...args: unknown[]) => void,
  ) {}

  get isOpen(): boolean {
    return this.opened;
  }

  /** Opens the stream; throws if the constructor does. */
  open(url: string): void {
    const es = new this.Ctor(url);
    this.source = es;
    this.detachers = [
      listen(es, "open", () => {
        this.opened = true;
        this.handlers.open();
      }),
      listen(es, "message", (ev) => this.onMessage(ev)),
      listen(es, "unsubscribed", (ev) => this.onUnsubscribed(ev)),
      listen(es, "revoked", (ev) => this.onRevoked(ev)),
      listen(es, "error", () => {
        const beforeOpen = !this.opened;
        this.close();
        this.handlers.error(beforeOpen);
      }),
    ];
  }

  close(): void {
    const es = this.source;
    for (const d of this.detachers) d();
    this.detachers = [];
    this.source = null;
    this.opened = false;
    try {
      es?.close();
    } catch (e) {
      this.log("EventSource close failed", e);
    }
  }

  private onRevoked(ev: unknown): void {
    const data = (ev ?? {}) as { data?: unknown };
    let reason = "revoked";
    try {
      const body = typeof data.data === "string" ? (JSON.parse(data.data) as { reason?: unknown }) : null;
      if (typeof body?.reason === "string") reason = body.reason;
    } catch {
      // a reason-less event is still a revocation
    }
    // Closed before the server ends the stream: its end is not reported as a failure too.
    this.close();
    this.handlers.revoked(reason);
  }

  private onUnsubscribed(ev: unknown): void {
    const data = (ev ?? {}) as { data?: unknown };
    let body: unknown = null;
    try {
      body = typeof data.data === "string" ? JSON.parse(data.data) : null;
    } catch {
      body = null;
    }
    const b = (body ?? {}) as { channel?: unknown; reason?: unknown };
    if (typeof b.channel !== "string") {
      this.log("ignored an unsubscribed event without a channel", ev);
      return;
    }
    this.handlers.unsubscribed(b.channel, typeof b.reason === "string" ? b.reason : "");
  }

  private onMessage(ev: unknown): void {
    const e = (ev ?? {}) as { data?: unknown; lastEventId?: unknown };
    let frame: unknown;
    try {
      frame = typeof e.data === "string" ? JSON.parse(e.data) : null;
    } catch {
      frame = null;
    }
    if (typeof frame !== "object" || frame === null || typeof (frame as { channel?: unknown }).channel !== "string") {
      this.log("ignored an SSE event that is not a message", ev);
      return;
    }
    const msg = { type: "message", ...(frame as object) } as MessageFrame;
    const cursor = typeof e.lastEventId === "string" && e.lastEventId !== "" ? e.lastEventId : null;
    this.handlers.message(msg, cursor);
  }
}
