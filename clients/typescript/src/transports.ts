/**
 * Which transport the client uses. It starts with the first of `transports` the runtime
 * has, and moves to the next one after FALLBACK_AFTER consecutive failures to connect, but
 * only if the current one never worked for this client: a network drop after a working
 * session keeps retrying the same transport.
 */
import type { EventSourceConstructor, TransportName, WebSocketConstructor } from "./types.js";

/** Consecutive failures to connect (never having worked) before trying the next transport. */
export const FALLBACK_AFTER = 2;

export interface Constructors {
  WebSocket(): WebSocketConstructor | undefined;
  EventSource(): EventSourceConstructor | undefined;
}

export class TransportChooser {
  private failures = 0;
  private readonly everUp: Record<TransportName, boolean> = { websocket: false, sse: false };

  constructor(
    private readonly transports: TransportName[],
    private readonly ctors: Constructors,
    private readonly log: (...args: unknown[]) => void,
  ) {}

  available(t: TransportName): boolean {
    return t === "websocket" ? this.ctors.WebSocket() !== undefined : this.ctors.EventSource() !== undefined;
  }

  /** The transport to start with (`connect()`), or `null` when the runtime has none. */
  first(): TransportName | null {
    this.failures = 0;
    return this.transports.find((t) => this.available(t)) ?? null;
  }

  /** `mode` reached the connected state. */
  up(mode: TransportName): void {
    this.failures = 0;
    this.everUp[mode] = true;
  }

  /** `mode` failed before connecting; returns the transport to try next. */
  failed(mode: TransportName): TransportName {
    this.failures++;
    if (this.failures < FALLBACK_AFTER || this.everUp[mode]) return mode;
    const next = this.transports.find((t) => t !== mode && this.available(t));
    if (!next) return mode;
    this.log(`${mode} failed ${this.failures} times; switching to ${next}`);
    this.failures = 0;
    return next;
  }
}
