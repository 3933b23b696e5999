/**
 * SSE mode of the client: one EventSource for the whole channel set, reopened (with the
 * last accepted cursor as `last_event_id`) whenever the set changes, the token is renewed,
 * or a gap is seen. Delivery itself (dedupe, gap check) is the client's, as for WebSockets.
 */
import type { PositionTracker } from "./positions.js";
import type { Subscription } from "./subscription.js";
import { SseTransport, cursorEpoch, sseUrl, synthesizeCursor } from "./transport-sse.js";
import type { DiscontinuityInfo, EventSourceConstructor, MessageFrame } from "./types.js";

export interface SseSessionDeps {
  EventSource(): EventSourceConstructor | undefined;
  httpUrl: string;
  token(): string | undefined;
  positions: PositionTracker;
  subs: Map<string, Subscription<never>>;
  /** The stream opened (or there is nothing to stream). */
  opened(): void;
  message(m: MessageFrame, cursor: string | null): void;
  discontinuity(sub: Subscription<never>, info: DiscontinuityInfo): void;
  /** The stream failed (`beforeOpen`: it never opened) or could not be created. */
  lost(reason: string): void;
  /** Whether a reopen is still wanted when its turn comes. */
  reopenWanted(): boolean;
  log(...args: unknown[]): void;
}

export class SseSession {
  private sse: SseTransport | null = null;
  /** Cursor of the last durable message accepted: where the next EventSource resumes. */
  private cursor: string | null = null;
  private epoch: string | null = null;
  private reopenQueued = false;

  constructor(private readonly d: SseSessionDeps) {}

  get isOpening(): boolean {
    return this.sse !== null;
  }

  open(): void {
    const Ctor = this.d.EventSource();
    if (!Ctor) return this.d.lost("no EventSource");
    const channels = [...this.d.subs.keys()];
    // Nothing to stream: connected all the same (HTTP publishing works).
    if (channels.length === 0) return this.d.opened();
    const { positions } = this.d;
    // No cursor yet but positions from a WebSocket session: resume them all.
    const cursor = this.cursor ?? synthesizeCursor(channels.map((c) => positions.resumeFrom(c)), channels);
    if (cursor !== null) this.epoch = cursorEpoch(cursor) ?? this.epoch;
    const sse: SseTransport = new SseTransport(
      Ctor,
      {
        open: () => {
          if (this.sse === sse) this.d.opened();
        },
        message: (m, c) => {
          if (this.sse !== sse) return;
          if (c !== null) this.checkEpoch(c);
          this.d.message(m, c);
        },
        error: (beforeOpen) => {
          if (this.sse !== sse) return;
          this.sse = null;
          this.d.lost(beforeOpen ? "the SSE stream did not open" : "the SSE stream ended");
        },
      },
      this.d.log,
    );
    this.sse = sse;
    try {
      sse.open(sseUrl(this.d.httpUrl, channels, this.d.token(), cursor));
    } catch (e) {
      this.sse = null;
      this.d.lost(`cannot open an EventSource: ${String(e)}`);
    }
  }

  /** A durable message with this cursor was delivered. */
  accepted(cursor: string): void {
    this.cursor = cursor;
  }

  /** Opens a new EventSource in place of the current one; batched per turn. */
  reopen(): void {
    if (this.reopenQueued) return;
    this.reopenQueued = true;
    void Promise.resolve().then(() => {
      this.reopenQueued = false;
      if (!this.d.reopenWanted()) return;
      this.close();
      this.open();
    });
  }

  close(): void {
    this.sse?.close();
    this.sse = null;
  }

  /** SSE has no `recovered` flag: a cursor of another epoch means the stream was recreated. */
  private checkEpoch(cursor: string): void {
    const epoch = cursorEpoch(cursor);
    if (epoch === null) return;
    const old = this.epoch;
    this.epoch = epoch;
    const { positions } = this.d;
    for (const [channel, sub] of this.d.subs) {
      const pos = positions.resumeFrom(channel);
      if (old !== null && old !== epoch && pos) {
        positions.epochChanged(channel, epoch);
        this.d.discontinuity(sub, { channel, since: pos.seq, epoch: old, newEpoch: epoch, reason: "epoch_changed" });
      } else if (positions.epochOf(channel) === undefined) {
        positions.setEpoch(channel, epoch);
      }
    }
  }
}
