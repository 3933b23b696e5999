/**
 * `TidingsClient`: one connection to a Tidings gateway, shared by every subscription of
 * the application (CONTRACT.md §9).
 *
 * ```ts
 * const client = new TidingsClient({ url: "wss://tidings.example.com/ws", getToken });
 * client.on("state", (s) => render(s.status));
 * const sub = client.subscribe("project:p1", { onMessage: (m) => apply(m) });
 * client.connect();
 * await client.publish("project:p1", "chat_message", { text: "hi" }, { durable: true });
 * ```
 *
 * Decisions worth knowing:
 * - `subscribe()` twice on one channel returns the SAME `Subscription`, with the second
 *   call's handlers added; `sub.unsubscribe()` ends the channel for all its handlers.
 * - The gateway can end a subscription too (an operator's unsubscribe): the subscription
 *   emits `unsubscribed` with `byServer: true` and its reason, as `sub.unsubscribe()` emits it
 *   with `byServer: false`; either way the channel leaves `subscriptions()`, is not asked
 *   again on reconnect, and keeps its position for a later `subscribe()`.
 * - `publish()` defaults to `durable: false`, as the gateway does for a `publish` frame.
 *   While not connected, publishes are queued and sent in order after the next `welcome`; at
 *   most `maxQueue` publishes are held, queued and awaiting their reply together (then
 *   `queue_full`). Each carries a `msg_id`: a DURABLE publish whose connection dropped before
 *   its reply is sent again and stored once; an ephemeral one is not (the gateway does not
 *   deduplicate those) and rejects with `unknown_outcome`. `data` is serialized at the call:
 *   unserializable data rejects at once with `bad_request`, a frame over `maxFrameBytes` with
 *   `too_large`. `disconnect()` rejects whatever is still unanswered, and so does the state
 *   `error` (with its reason), which also refuses new publishes until `connect()`.
 * - `ack()` is not queued: it returns `false` when no WebSocket is live (an SSE session has
 *   no ack route), and an ack lost that way only leaves a notification `sent` rather than
 *   `delivered`.
 */
import { isValidChannel } from "./channel.js";
import { Connection, type ClientEvents } from "./connection.js";
import { TidingsError } from "./errors.js";
import type { TokenClaims } from "./jwt.js";
import { createEntry, newMsgId } from "./queue.js";
import { Subscription, type SubscriptionHost } from "./subscription.js";
import type {
  HistoryOptions,
  HistoryResult,
  InboxItem,
  InboxOptions,
  InboxResult,
  Position,
  PresenceResult,
  PublishOptions,
  PublishResult,
  SubscribeOptions,
  TidingsClientOptions,
  TransportName,
} from "./types.js";

export type { ClientEvents } from "./connection.js";

export class TidingsClient extends Connection {
  private readonly host: SubscriptionHost = {
    positionOf: (channel) => this.positions.position(channel),
    release: (sub) => this.release(sub),
  };

  constructor(options: TidingsClientOptions) {
    super(options);
  }

  /** The user: `user` of the last `welcome`, else the token's `sub`, else `null`. */
  get user(): string | null {
    return this.welcomeUser ?? this.tokens.claims?.sub ?? null;
  }

  /** The current token's claims, decoded without verification (`projects`, `exp`, …). */
  get claims(): TokenClaims | null {
    return this.tokens.claims;
  }

  /** The transport carrying the connection while `connected`, else `null`. */
  get transport(): TransportName | null {
    return this.live ? this.mode : null;
  }

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof ClientEvents>(event: K, fn: (...args: ClientEvents[K]) => void): () => void {
    return this.events.on(event, fn);
  }

  off<K extends keyof ClientEvents>(event: K, fn: (...args: ClientEvents[K]) => void): void {
    this.events.off(event, fn);
  }

  /**
   * Subscribes to a channel (sent at once when connected, else on the next `welcome`), resuming
   * from the client's position on it if it has one, else from `opts.since`. Throws
   * `bad_channel` for a name that is not `project:<id>`, `user:<id>` or `broadcast`.
   */
  subscribe<T = unknown>(channel: string, opts: SubscribeOptions<T> = {}): Subscription<T> {
    if (!isValidChannel(channel)) {
      throw new TidingsError("bad_channel", `not a channel: ${JSON.stringify(channel)} (project:<id>, user:<id> or broadcast)`);
    }
    if (opts.since) this.positions.seed(channel, opts.since);
    const existing = this.subs.get(channel) as Subscription<T> | undefined;
    if (existing) {
      existing._attach(opts);
      return existing;
    }
    const sub = new Subscription<T>(channel, this.host);
    sub._attach(opts);
    this.subs.set(channel, sub as unknown as Subscription<never>);
    this.channelAdded(channel);
    return sub;
  }

  /** The active subscription of a channel, if any. */
  getSubscription<T = unknown>(channel: string): Subscription<T> | undefined {
    return this.subs.get(channel) as Subscription<T> | undefined;
  }

  /** Every active subscription. */
  subscriptions(): Subscription[] {
    return [...this.subs.values()] as Subscription[];
  }

  /** The last delivered position on a channel, subscribed or not (kept after unsubscribing). */
  position(channel: string): Position | null {
    return this.positions.position(channel);
  }

  private release(sub: Subscription<never>): void {
    this.endSubscription(sub, { channel: sub.channel, reason: "client", byServer: false });
  }

  /**
   * Publishes an event. Resolves with the reply (`{ seq }` for a durable publish, `{}` for an
   * ephemeral one). Rejects with a `TidingsError`: the gateway's error; at once with
   * `bad_channel`, `bad_request` (data JSON cannot carry), `too_large` (over `maxFrameBytes`),
   * `queue_full` (`maxQueue` publishes queued or awaiting their reply), or the reason of the
   * `error` state; later with `timeout` when no reply came in time (outcome unknown: retry with
   * the same `msgId`), `unknown_outcome` when the connection dropped before an ephemeral
   * publish was answered (it is not resent), or `disconnected` after `disconnect()`.
   */
  publish(channel: string, event: string, data: unknown, opts: PublishOptions = {}): Promise<PublishResult> {
    return new Promise<PublishResult>((resolve, reject) => {
      try {
        if (!isValidChannel(channel)) throw new TidingsError("bad_channel", `not a channel: ${JSON.stringify(channel)}`);
        if (this.state.status === "error") throw this.failure ?? new TidingsError("disconnected", "the client gave up");
        const durable = opts.durable ?? false;
        const msgId = opts.msgId ?? newMsgId();
        const entry = createEntry({ msgId, channel, event, data, durable, resolve, reject }, this.cfg.maxFrameBytes);
        this.outbox.add(entry);
        if (this.live) this.publisher.send(entry);
      } catch (e) {
        reject(e);
      }
    });
  }

  /**
   * Confirms delivery of a durable message (marks an in-app notification `delivered`).
   * Returns whether it was sent: acks are not queued while offline.
   */
  ack(channel: string, seq: number): boolean {
    return this.sendAck(channel, seq);
  }

  /** `GET /api/v1/channels/{channel}/history`. */
  history(channel: string, opts: HistoryOptions = {}): Promise<HistoryResult> {
    return this.http.history(channel, opts);
  }

  /** `GET /api/v1/channels/{channel}/presence`. */
  presence(channel: string): Promise<PresenceResult> {
    return this.http.presence(channel);
  }

  /** `GET /api/v1/users/{user}/inbox`. */
  inbox(user: string, opts: InboxOptions = {}): Promise<InboxResult> {
    return this.http.inbox(user, opts);
  }

  /** `POST /api/v1/users/{user}/inbox/{id}/read`; resolves with the updated item. */
  markRead(user: string, id: string): Promise<InboxItem> {
    return this.http.markRead(user, id);
  }
}
