/**
 * Sends the outbox's publishes over whichever transport is up: a `publish` frame on the
 * WebSocket (answered by a `reply` with the command's id), or `POST /api/v1/publish` in SSE
 * mode. Either way the idempotency key is the entry's `msgId`, the same on every resend.
 *
 * When a connection ends, what it left unanswered is settled here (`connectionLost`):
 * - durable publishes, and anything sent over HTTP (the route only stores, with the id as
 *   idempotency key), are sent again after the next connect: stored once whatever happened;
 * - an ephemeral WebSocket publish is NOT sent again: the gateway ignores `msg_id` for it,
 *   so a resend of one that did get through would be delivered twice. It is rejected with
 *   `unknown_outcome` (it may or may not have been delivered);
 * - after a 1009 close (a frame over the gateway's limit), the publishes in flight that can
 *   have caused it are rejected with `too_large` instead of being resent into the same close:
 *   those larger than every publish frame the gateway answered on that connection (its limit
 *   is at least that). `publish()` already refuses frames over `maxFrameBytes`, so this only
 *   happens against a gateway configured below that.
 */
import { backoffDelay } from "./backoff.js";
import type { PendingCommands } from "./commands.js";
import { TidingsError } from "./errors.js";
import type { HttpApi } from "./http.js";
import { publishFrameText, type Outbox, type OutboxEntry } from "./queue.js";
import type { PublishResult, ReplyFrame, TransportName } from "./types.js";

export interface PublisherDeps {
  outbox: Outbox;
  pending: PendingCommands;
  http: HttpApi;
  /** The transport in use when connected, else `null`. */
  transport(): TransportName | null;
  /** Sends a frame's text on the live WebSocket. */
  sendText(text: string): boolean;
  nextId(): number;
  timeout: number;
  minDelay: number;
  maxDelay: number;
}

export const replyError = (r: ReplyFrame, what: string): TidingsError =>
  TidingsError.from(r.error ?? { code: "internal", message: `${what} refused` });

const result = (seq: unknown): PublishResult => (typeof seq === "number" ? { seq } : {});

export class Publisher {
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** The largest publish frame the gateway answered on the current connection, in bytes. */
  private largestAnswered = 0;

  constructor(private readonly d: PublisherDeps) {}

  /** A connection is up: send what waits. */
  start(): void {
    this.largestAnswered = 0;
    this.flush();
  }

  /** Sends every publish that waits, in publish order. */
  flush(): void {
    for (const e of this.d.outbox.unsent()) this.send(e);
  }

  /** Sends one entry on the current transport (no-op when offline: it waits in the outbox). */
  send(entry: OutboxEntry): void {
    const t = this.d.transport();
    if (t === "sse") this.sendHttp(entry);
    else if (t === "websocket") this.sendFrame(entry);
  }

  /** The connection ended: the retry timer belongs to it. */
  stop(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** Settles what the ended connection left unanswered (see the module comment). */
  connectionLost(code: number, reason: string): void {
    const { outbox } = this.d;
    const inFlight = outbox.inFlight();
    const tooLarge = code === 1009 ? inFlight.filter((e) => e.sent === "websocket" && e.frameBytes > this.largestAnswered) : [];
    const unknown = inFlight.filter((e) => e.sent === "websocket" && !e.durable && !tooLarge.includes(e));
    for (const e of inFlight) e.sent = null;
    outbox.rejectAll(new TidingsError("too_large", `connection closed: ${reason || "frame too large"} (1009)`), tooLarge);
    const msg = "the connection dropped before this ephemeral publish was answered; it may or may not have been delivered (not resent: ephemeral publishes are not idempotent)";
    outbox.rejectAll(new TidingsError("unknown_outcome", msg), unknown);
  }

  private sendFrame(entry: OutboxEntry): void {
    const { outbox, pending, timeout } = this.d;
    const id = this.d.nextId();
    entry.sent = "websocket";
    pending.add(
      id,
      {
        reply: (r) => {
          outbox.remove(entry);
          this.largestAnswered = Math.max(this.largestAnswered, entry.frameBytes);
          if (r.ok) entry.resolve(result(r.seq));
          else entry.reject(replyError(r, "publish"));
        },
        timeout: () => {
          outbox.remove(entry);
          const msg = `publish not answered within ${timeout} ms; outcome unknown (retry with msgId ${entry.msgId})`;
          entry.reject(new TidingsError("timeout", msg));
        },
      },
      timeout,
    );
    this.d.sendText(publishFrameText(id, entry));
  }

  private sendHttp(entry: OutboxEntry): void {
    const { outbox } = this.d;
    entry.sent = "sse";
    this.d.http.publish(entry.channel, entry.event, entry.dataJson, entry.msgId).then(
      (r) => {
        outbox.remove(entry);
        entry.resolve(result(r.seq));
      },
      (e: unknown) => {
        const status = e instanceof TidingsError ? e.status : undefined;
        const retry = status === undefined || status === 429 || status === 503;
        if (!retry || !outbox.has(entry)) {
          outbox.remove(entry);
          entry.reject(e);
          return;
        }
        // Unclear (network) or temporary: send again later with the same id.
        entry.sent = null;
        entry.failures++;
        this.retryLater(backoffDelay(entry.failures - 1, this.d.minDelay, this.d.maxDelay));
      },
    );
  }

  private retryLater(delay: number): void {
    if (this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.flush();
    }, delay);
  }
}
