/**
 * The publish outbox: every publish not yet answered, in the order the application made
 * them, whether it waits for a connection or for its reply. It holds at most `maxQueue`
 * entries, queued and in flight together; beyond that a publish is refused at once with
 * `queue_full` rather than growing without bound. Waiting entries go out in order after the
 * next `welcome` (or SSE open).
 *
 * `data` is serialized when `publish()` is called: a value that cannot be serialized is
 * refused at once (`bad_request`), a frame over `maxFrameBytes` too (`too_large`, the
 * gateway would close the connection with 1009), and what is sent is the value as it was at
 * that moment, even if the application mutates it while the publish waits.
 *
 * A publish that was sent but not answered when the connection dropped has an unclear
 * outcome: the gateway may have published it. Only a DURABLE publish is sent again (with the
 * SAME `msg_id`: JetStream's duplicate window turns the resend into a no-op that answers the
 * original `seq`); the gateway ignores `msg_id` for an ephemeral publish, so resending one
 * could deliver it twice: it is rejected with `unknown_outcome` instead (see publisher.ts).
 * Publishes still waiting, never sent, are sent whatever their kind.
 */
import { TidingsError } from "./errors.js";
import type { PublishResult, TransportName } from "./types.js";

export interface OutboxEntry {
  readonly msgId: string;
  readonly channel: string;
  readonly event: string;
  /** `data` as JSON text, serialized by `publish()`. */
  readonly dataJson: string;
  readonly durable: boolean;
  /** Size in bytes of the publish frame, at most (counted with the largest command id). */
  readonly frameBytes: number;
  readonly resolve: (r: PublishResult) => void;
  readonly reject: (e: unknown) => void;
  /** How it was sent on the current connection (`sse`: over the HTTP route), awaiting its reply; `null` while it waits. */
  sent: TransportName | null;
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

/** `data` as JSON; `undefined` is `null` (the gateway's default). Throws `bad_request` for what JSON cannot carry. */
export function serializeData(data: unknown): string {
  if (data === undefined) return "null";
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (e) {
    throw new TidingsError("bad_request", `publish data cannot be serialized to JSON: ${String(e)}`, undefined, { cause: e });
  }
  if (json === undefined) throw new TidingsError("bad_request", `publish data cannot be serialized to JSON (${typeof data})`);
  return json;
}

type FrameFields = Pick<OutboxEntry, "channel" | "event" | "dataJson" | "durable" | "msgId">;

/** The text of a `publish` frame (CONTRACT §4), with `data` already serialized. */
export function publishFrameText(id: number, e: FrameFields): string {
  const q = JSON.stringify;
  return `{"type":"publish","id":${id},"channel":${q(e.channel)},"event":${q(e.event)},"data":${e.dataJson},"durable":${e.durable},"msg_id":${q(e.msgId)}}`;
}

/** UTF-8 length of `s` (what goes on the wire), counted without encoding it. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4; // a surrogate pair
      i++;
    } else n += 3;
  }
  return n;
}

export interface NewEntry {
  msgId: string;
  channel: string;
  event: string;
  data: unknown;
  durable: boolean;
  resolve: (r: PublishResult) => void;
  reject: (e: unknown) => void;
}

/** Serializes and size-checks a publish; throws `bad_request` or `too_large`. */
export function createEntry(p: NewEntry, maxFrameBytes: number): OutboxEntry {
  const { msgId, channel, event, durable, resolve, reject } = p;
  const fields = { msgId, channel, event, durable, dataJson: serializeData(p.data) };
  const text = publishFrameText(Number.MAX_SAFE_INTEGER, fields);
  const bytes = utf8Length(text);
  if (bytes > maxFrameBytes) {
    throw new TidingsError("too_large", `publish frame of ${bytes} bytes exceeds maxFrameBytes (${maxFrameBytes})`);
  }
  return { ...fields, frameBytes: bytes, resolve, reject, sent: null, failures: 0 };
}

export class Outbox {
  private entries: OutboxEntry[] = [];

  constructor(private readonly max: number) {}

  get size(): number {
    return this.entries.length;
  }

  /** Adds an entry; throws `queue_full` when `max` publishes are already queued or in flight. */
  add(entry: OutboxEntry): void {
    if (this.entries.length >= this.max) {
      throw new TidingsError("queue_full", `publish queue is full (${this.max} publishes wait for a connection or a reply)`);
    }
    this.entries.push(entry);
  }

  /** Entries not sent on the current connection, in publish order. */
  unsent(): OutboxEntry[] {
    return this.entries.filter((e) => e.sent === null);
  }

  /** Entries sent on the current connection and not answered yet. */
  inFlight(): OutboxEntry[] {
    return this.entries.filter((e) => e.sent !== null);
  }

  has(entry: OutboxEntry): boolean {
    return this.entries.includes(entry);
  }

  remove(entry: OutboxEntry): void {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
  }

  /** Rejects and removes the given entries (or all). */
  rejectAll(error: TidingsError, which: OutboxEntry[] = [...this.entries]): void {
    for (const e of which) {
      this.remove(e);
      e.reject(error);
    }
  }
}
