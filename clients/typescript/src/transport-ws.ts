/**
 * One WebSocket connection to a gateway: opens it with the `tidings.v1.json` subprotocol,
 * authenticates with an `auth` frame as the very first frame (so the token never appears in
 * a URL, a proxy log or the browser's history), parses server frames and reports the close.
 *
 * It knows nothing of subscriptions or reconnects; `TidingsClient` drives it. A connection
 * the client closes itself is detached first, so its (possibly much later) close event
 * never reaches the client: after a heartbeat timeout the browser may take a minute to give
 * up on a dead TCP connection, and the client must not wait for it.
 */
import { listen } from "./listen.js";
import type { ClientFrame, ServerFrame, WebSocketConstructor, WebSocketLike } from "./types.js";

export const SUBPROTOCOL = "tidings.v1.json";

export interface WsHandlers {
  /** The socket is open and the `auth` frame is sent. */
  open(): void;
  frame(frame: ServerFrame): void;
  /** The socket closed (or failed to open); never called after `close()`. */
  close(code: number, reason: string): void;
}

/** Parses a text frame; `null` for anything that is not a JSON object with a string `type`. */
export function parseFrame(data: unknown): ServerFrame | null {
  if (typeof data !== "string") return null;
  try {
    const v: unknown = JSON.parse(data);
    if (typeof v === "object" && v !== null && typeof (v as { type?: unknown }).type === "string") {
      return v as ServerFrame;
    }
  } catch {
    // fall through
  }
  return null;
}

export class WsTransport {
  private socket: WebSocketLike | null = null;
  private detachers: Array<() => void> = [];
  private opened = false;

  constructor(
    private readonly Ctor: WebSocketConstructor,
    private readonly handlers: WsHandlers,
    private readonly log: (...args: unknown[]) => void,
  ) {}

  get isOpen(): boolean {
    return this.opened;
  }

  /** Opens the socket; throws if the constructor does (bad URL, blocked by policy). */
  open(url: string, token: string | undefined): void {
    const ws = new this.Ctor(url, SUBPROTOCOL);
    this.socket = ws;
    this.detachers = [
      listen(ws, "open", () => {
        this.opened = true;
        if (token !== undefined) this.sendRaw({ type: "auth", token });
        this.handlers.open();
      }),
      listen(ws, "message", (ev) => {
        const frame = parseFrame((ev as { data?: unknown } | null)?.data);
        if (frame) this.handlers.frame(frame);
        else this.log("ignored a frame that is not JSON", ev);
      }),
      listen(ws, "close", (ev) => {
        const e = (ev ?? {}) as { code?: number; reason?: string };
        this.finish(typeof e.code === "number" ? e.code : 1006, typeof e.reason === "string" ? e.reason : "");
      }),
      // Browsers follow every `error` with a `close`; some implementations do not, so an
      // error before the socket opened is a close too.
      listen(ws, "error", () => {
        if (!this.opened) this.finish(1006, "connection failed");
      }),
    ];
  }

  /** Sends a frame; `false` when the socket is not open. */
  send(frame: ClientFrame): boolean {
    if (!this.opened || !this.socket) return false;
    return this.sendRaw(frame);
  }

  /** Sends a frame already serialized to JSON text; `false` when the socket is not open. */
  sendText(text: string): boolean {
    if (!this.opened || !this.socket) return false;
    return this.write(text);
  }

  /** Closes without reporting the close back (see the module comment). */
  close(code = 1000, reason = ""): void {
    const ws = this.socket;
    this.detach();
    if (!ws) return;
    try {
      ws.close(code, reason);
    } catch (e) {
      this.log("close failed", e);
    }
  }

  private sendRaw(frame: ClientFrame): boolean {
    return this.socket !== null && this.write(JSON.stringify(frame));
  }

  private write(text: string): boolean {
    try {
      this.socket?.send(text);
      return true;
    } catch (e) {
      this.log("send failed", e);
      return false;
    }
  }

  private finish(code: number, reason: string): void {
    if (!this.socket) return;
    this.detach();
    this.handlers.close(code, reason);
  }

  private detach(): void {
    for (const d of this.detachers) d();
    this.detachers = [];
    this.socket = null;
    this.opened = false;
  }
}
