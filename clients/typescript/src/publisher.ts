/**
 * Sends the outbox's publishes over whichever transport is up: a `publish` frame on the
 * WebSocket (answered by a `reply` with the command's id), or `POST /api/v1/publish` in SSE
 * mode. Either way the idempotency key is the entry's `msgId`, the same on every resend, so
 * a publish whose first send had an unclear outcome is stored once.
 */
import { backoffDelay } from "./backoff.js";
import type { PendingCommands } from "./commands.js";
import { TidingsError } from "./errors.js";
import type { HttpApi } from "./http.js";
import type { Outbox, OutboxEntry } from "./queue.js";
import type { ClientFrame, PublishResult, ReplyFrame, TransportName } from "./types.js";

export interface PublisherDeps {
  outbox: Outbox;
  pending: PendingCommands;
  http: HttpApi;
  /** The transport in use when connected, else `null`. */
  transport(): TransportName | null;
  /** Sends a frame on the live WebSocket. */
  send(frame: ClientFrame): boolean;
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

  constructor(private readonly d: PublisherDeps) {}

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

  private sendFrame(entry: OutboxEntry): void {
    const { outbox, pending, timeout } = this.d;
    const id = this.d.nextId();
    entry.sent = true;
    pending.add(
      id,
      {
        reply: (r) => {
          outbox.remove(entry);
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
    const { channel, event, data, durable, msgId } = entry;
    this.d.send({ type: "publish", id, channel, event, data, durable, msg_id: msgId });
  }

  private sendHttp(entry: OutboxEntry): void {
    const { outbox } = this.d;
    entry.sent = true;
    this.d.http.publish(entry.channel, entry.event, entry.data, entry.msgId).then(
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
        entry.sent = false;
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
