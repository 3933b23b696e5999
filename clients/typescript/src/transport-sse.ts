/**
 * The Server-Sent Events fallback (CONTRACT.md §5), for networks where WebSockets do not
 * get through. One EventSource carries every subscribed channel: `GET {httpUrl}/sse?
 * channels=a,b&token=…`. Every durable event has an `id:` cursor; the client keeps the
 * cursor of the last message it accepted and, whenever it opens a new EventSource (the
 * channel set changed, the stream dropped, a gap was seen, the token was renewed), passes a
 * cursor built from it and its positions (sse-cursor.ts) as `last_event_id=`, because a new
 * EventSource cannot set the `Last-Event-ID` header.
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
