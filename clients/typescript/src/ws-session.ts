/**
 * WebSocket mode of the client: the protocol on one live WebSocket. It opens the socket,
 * waits for `welcome` (at most the client's `timeout`), keeps it alive with app-level pings,
 * subscribes every channel with its position, repairs gaps by re-subscribing, refreshes the
 * token in place, and reports the end of the connection to the client, which decides what
 * comes next (see connection.ts).
 */
import { backoffDelay, retryDelay } from "./backoff.js";
import type { PendingCommands } from "./commands.js";
import { TidingsError } from "./errors.js";
import { Heartbeat } from "./heartbeat.js";
import type { PositionTracker } from "./positions.js";
import { replyError } from "./publisher.js";
import type { Subscription } from "./subscription.js";
import { WsTransport } from "./transport-ws.js";
import type {
  ClientFrame,
  DiscontinuityInfo,
  MessageFrame,
  Position,
  ReplyFrame,
  ServerFrame,
  SubscribeFrame,
  WebSocketConstructor,
  WelcomeFrame,
} from "./types.js";

/** Subscribe errors worth retrying on the same connection. */
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal"]);

export interface WsSessionDeps {
  WebSocket(): WebSocketConstructor | undefined;
  url: string;
  token(): string | undefined;
  positions: PositionTracker;
  subs: Map<string, Subscription<never>>;
  pending: PendingCommands;
  nextId(): number;
  timeout: number;
  minDelay: number;
  maxDelay: number;
  /** `welcome` arrived; every channel's subscribe is already sent. */
  welcome(w: WelcomeFrame): void;
  message(m: MessageFrame): void;
  discontinuity(sub: Subscription<never>, info: DiscontinuityInfo): void;
  error(e: TidingsError): void;
  /** The gateway ended the subscription to `channel` (an `unsubscribed` frame). */
  unsubscribed(channel: string, reason: string): void;
  /** The connection ended; `retryMs` when the gateway asked to come back after that long. */
  lost(code: number, reason: string, retryMs?: number): void;
  log(...args: unknown[]): void;
}

export class WsSession {
  private ws: WsTransport | null = null;
  private welcomed = false;
  private welcomeTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly retryTimers = new Map<string, ReturnType<typeof setTimeout>>();
  /** Consecutive retryable refusals per channel (reset by a successful subscribe). */
  private readonly retryAttempts = new Map<string, number>();
  /** Channels the gateway ended on this socket that the client has not subscribed since. */
  private readonly endedByServer = new Set<string>();
  private readonly heartbeat: Heartbeat;

  constructor(private readonly d: WsSessionDeps) {
    this.heartbeat = new Heartbeat(
      () => this.send({ type: "ping", id: this.d.nextId() }),
      () => this.drop("no frame for two heartbeat intervals"),
    );
  }

  /** Whether `welcome` was received on the current socket. */
  get isLive(): boolean {
    return this.ws !== null && this.welcomed;
  }

  open(): void {
    const Ctor = this.d.WebSocket();
    if (!Ctor) return this.d.lost(1006, "no WebSocket");
    const ws: WsTransport = new WsTransport(
      Ctor,
      {
        open: () => this.d.log("WebSocket open; auth sent"),
        frame: (f) => {
          if (this.ws === ws) this.onFrame(f);
        },
        close: (code, reason) => {
          if (this.ws !== ws) return;
          this.stop();
          this.d.lost(code, reason);
        },
      },
      this.d.log,
    );
    this.ws = ws;
    this.welcomed = false;
    this.welcomeTimer = setTimeout(() => this.drop(`no welcome within ${this.d.timeout} ms`), this.d.timeout);
    try {
      ws.open(this.d.url, this.d.token());
    } catch (e) {
      this.stop();
      this.d.lost(1006, `cannot open a WebSocket: ${String(e)}`);
    }
  }

  /** Closes the socket without reporting it (the client asked). */
  close(reason: string): void {
    this.ws?.close(1000, reason.slice(0, 120));
    this.stop();
  }

  send(frame: ClientFrame): boolean {
    return this.ws?.send(frame) ?? false;
  }

  sendText(text: string): boolean {
    return this.ws?.sendText(text) ?? false;
  }

  /** Subscribes (or re-subscribes, to repair a gap) with `since`/`epoch` when a position is known. */
  subscribe(channel: string): void {
    if (!this.isLive) return;
    this.endedByServer.delete(channel);
    const sub = this.d.subs.get(channel);
    if (sub?.state === "error") sub._setState("subscribing"); // asked again
    const id = this.d.nextId();
    const since = this.d.positions.resumeFrom(channel);
    const frame: SubscribeFrame = { type: "subscribe", id, channel };
    if (since) {
      frame.since = since.seq;
      if (since.epoch !== undefined) frame.epoch = since.epoch;
    }
    // No timeout: the reply may take long (a big replay is read first), and it must be seen
    // whenever it comes (its epoch, its `recovered`). A dead connection is the heartbeat's job.
    this.d.pending.add(id, { reply: (r) => this.onSubscribed(channel, r, since) }, null);
    this.send(frame);
  }

  unsubscribe(channel: string): void {
    this.clearRetry(channel);
    if (!this.isLive) return;
    const id = this.d.nextId();
    this.d.pending.add(id, { reply: () => undefined }, null);
    this.send({ type: "unsubscribe", id, channel });
  }

  /** The gateway ended the subscription to `channel`: drop its retry, send nothing (it already let go). */
  forget(channel: string): void {
    this.clearRetry(channel);
    if (this.isLive) this.endedByServer.add(channel);
  }

  private clearRetry(channel: string): void {
    const t = this.retryTimers.get(channel);
    if (t !== undefined) clearTimeout(t);
    this.retryTimers.delete(channel);
    this.retryAttempts.delete(channel);
  }

  /** Sends a refreshed token with `auth`; resolves on `ok`, rejects when the gateway refuses it. */
  refresh(token: string): Promise<void> {
    if (!this.isLive) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const id = this.d.nextId();
      this.d.pending.add(
        id,
        {
          reply: (r) => (r.ok ? resolve() : reject(replyError(r, "token refresh"))),
          timeout: () => reject(new TidingsError("timeout", "the token refresh was not answered")),
          lost: () => resolve(), // the next connection authenticates with the new token
        },
        this.d.timeout,
      );
      this.send({ type: "auth", id, token });
    });
  }

  /** Ends everything tied to the current socket (timers); the socket is forgotten. */
  private stop(): void {
    this.ws = null;
    this.welcomed = false;
    this.heartbeat.stop();
    if (this.welcomeTimer !== null) clearTimeout(this.welcomeTimer);
    this.welcomeTimer = null;
    for (const t of this.retryTimers.values()) clearTimeout(t);
    this.retryTimers.clear();
    this.endedByServer.clear();
  }

  /** Closes a socket that is dead, unresponsive or asked to go, and reports it lost. */
  private drop(reason: string, retryMs?: number): void {
    this.close(reason);
    this.d.lost(1006, reason, retryMs);
  }

  private onFrame(f: ServerFrame): void {
    this.heartbeat.seen();
    switch (f.type) {
      case "welcome":
        return this.onWelcome(f);
      case "message":
        return this.d.message(f);
      case "reply":
        if (!this.d.pending.settle(f)) this.d.log("reply to no pending command", f);
        return;
      case "error":
        return this.d.error(TidingsError.from(f.error));
      case "reconnect":
        return this.drop(`the gateway asked to reconnect (${f.reason})`, retryDelay(f.retry_ms));
      case "unsubscribed":
        if (typeof f.channel !== "string") return this.d.log("ignored an unsubscribed frame without a channel", f);
        return this.d.unsubscribed(f.channel, typeof f.reason === "string" ? f.reason : "");
      default:
        return; // pong (it counted as a sign of life) or a frame type this client does not know
    }
  }

  private onWelcome(w: WelcomeFrame): void {
    if (this.welcomeTimer !== null) clearTimeout(this.welcomeTimer);
    this.welcomeTimer = null;
    this.welcomed = true;
    this.heartbeat.start(w.heartbeat_ms);
    for (const channel of this.d.subs.keys()) this.subscribe(channel);
    this.d.welcome(w);
  }

  private onSubscribed(channel: string, r: ReplyFrame, since: Position | null): void {
    const sub = this.d.subs.get(channel);
    if (!r.ok) {
      this.d.positions.endResync(channel);
      const err = replyError(r, `subscribe ${channel}`);
      const retryable = RETRYABLE.has(err.code);
      if (sub && retryable) this.retry(channel);
      sub?._fail(err, !retryable);
      this.d.error(err);
      return;
    }
    this.retryAttempts.delete(channel);
    const info = this.d.positions.subscribed(channel, r, since);
    if (!sub) {
      // The gateway ended it while this subscribe (a gap repair) was on its way, and then
      // took the subscribe: let go again. (After the application's own unsubscribe, its
      // `unsubscribe` frame follows this reply: nothing to do.)
      if (this.endedByServer.delete(channel)) {
        this.d.log("a subscribe crossed the gateway's unsubscribe; unsubscribing", channel);
        this.unsubscribe(channel);
      }
      return;
    }
    sub._setState("subscribed");
    if (info) this.d.discontinuity(sub, info);
  }

  /**
   * Asks again after a full-jitter backoff that grows with each consecutive refusal of this
   * channel (`[0, min(maxDelay, minDelay·2^n)]`), so that a gateway short of NATS or rate
   * limiting is not asked once a second by every client forever.
   */
  private retry(channel: string): void {
    if (this.retryTimers.has(channel)) return;
    const attempt = this.retryAttempts.get(channel) ?? 0;
    this.retryAttempts.set(channel, attempt + 1);
    const timer = setTimeout(() => {
      this.retryTimers.delete(channel);
      if (this.d.subs.has(channel)) this.subscribe(channel);
    }, backoffDelay(attempt, this.d.minDelay, this.d.maxDelay));
    this.retryTimers.set(channel, timer);
  }
}
