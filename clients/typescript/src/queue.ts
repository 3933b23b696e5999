/**
 * The publish outbox: every publish not yet answered, in the order the application made
 * them. While the client is offline, publishes wait here (at most `maxQueue`; beyond that
 * the publish is refused with `queue_full` rather than growing without bound) and go out
 * in order after the next `welcome` (or SSE open).
 *
 * A publish that was sent but not answered when the connection dropped has an unclear
 * outcome: the gateway may have stored it. It goes back to "unsent" and is sent again with
 * the SAME `msg_id`; the gateway's idempotency (JetStream's duplicate window) turns the
 * resend into a no-op that answers the original `seq`.
 */
import { TidingsError } from "./errors.js";
import type { PublishResult } from "./types.js";

export interface OutboxEntry {
  readonly msgId: string;
  readonly channel: string;
  readonly event: string;
  readonly data: unknown;
  readonly durable: boolean;
  readonly resolve: (r: PublishResult) => void;
  readonly reject: (e: unknown) => void;
  /** Sent on the current connection and awaiting its reply. */
  sent: boolean;
  /** Consecutive failed HTTP sends (SSE mode), for the retry delay. */
  failures: number;
}

/** UUID v4 for `msg_id`: `crypto.randomUUID` when present, else a Math.random fallback. */
export function newMsgId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (ch) => {
    const r = Math.floor(Math.random() * 16);
    return (ch === "x" ? r : (r & 0x3) | 0x8).toString(16);
  });
}

export class Outbox {
  private entries: OutboxEntry[] = [];

  constructor(private readonly max: number) {}

  get size(): number {
    return this.entries.length;
  }

  /** Adds an entry; when `bounded` (offline) and full, throws `queue_full`. */
  add(entry: OutboxEntry, bounded: boolean): void {
    if (bounded && this.entries.length >= this.max) {
      throw new TidingsError("queue_full", `publish queue is full (${this.max} publishes wait for a connection)`);
    }
    this.entries.push(entry);
  }

  /** Entries not sent on the current connection, in publish order. */
  unsent(): OutboxEntry[] {
    return this.entries.filter((e) => !e.sent);
  }

  has(entry: OutboxEntry): boolean {
    return this.entries.includes(entry);
  }

  remove(entry: OutboxEntry): void {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
  }

  /** The connection ended: every sent entry is unsent again (resent on the next one). Returns those. */
  requeueSent(): OutboxEntry[] {
    const sent = this.entries.filter((e) => e.sent);
    for (const e of sent) e.sent = false;
    return sent;
  }

  /** Rejects and removes the given entries (or all). */
  rejectAll(error: TidingsError, which: OutboxEntry[] = [...this.entries]): void {
    for (const e of which) {
      this.remove(e);
      e.reject(error);
    }
  }
}
