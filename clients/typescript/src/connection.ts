/**
 * The connection engine behind `TidingsClient`: the state machine, the transports, the
 * reconnect policy and the protocol. `TidingsClient` (client.ts) adds the application-facing
 * API on top; the split only keeps each file readable.
 *
 * States: `disconnected` → `connecting` (a transport is opening) → `connected` (WebSocket:
 * `welcome` received; SSE: the EventSource opened) → on an unrequested close `disconnected`
 * with `reconnectAttempts` > 0 while the backoff runs → `connecting` … ; `error` when the
 * client gives up (authentication cannot succeed); `disconnected` with 0 attempts after
 * `disconnect()`.
 *
 * Reconnect policy:
 * - any abnormal close (1006, 4008, 4009, 1012, 1001, a dead heartbeat, no `welcome` in time…):
 *   exponential backoff with full jitter, then resume every channel from its position;
 * - a `reconnect` frame (node draining): wait its `retry_ms` plus a little jitter instead;
 * - 4001: call `getToken()` once and reconnect at once; without `getToken`, if it throws, or
 *   if the next connection is closed with 4001 again before `welcome`: state `error`;
 * - the browser's `online` event cuts a running backoff short.
 */
import { backoffDelay } from "./backoff.js";
import { PendingCommands } from "./commands.js";
import { Emitter } from "./emitter.js";
import { TidingsError } from "./errors.js";
import { deriveHttpUrl, HttpApi } from "./http.js";
import { PositionTracker } from "./positions.js";
import { Publisher } from "./publisher.js";
import { Outbox } from "./queue.js";
import { SseSession } from "./sse-session.js";
import type { Subscription } from "./subscription.js";
import { TokenManager } from "./token.js";
import { WsSession } from "./ws-session.js";
import type {
  ConnectionState,
  DiscontinuityInfo,
  ErrorCode,
  EventSourceConstructor,
  MessageFrame,
  TidingsClientOptions,
  TransportName,
  WebSocketConstructor,
  WelcomeFrame,
} from "./types.js";

export interface ClientEvents {
  /** Every change of `client.state`. */
  state: [ConnectionState];
  /** Every message delivered on any subscribed channel (durable ones once and in order). */
  message: [MessageFrame];
  /** Refused commands, `error` frames, failed token refreshes, the reason of an `error` state. */
  error: [TidingsError];
  /** A channel's history could not be completed (also passed to the subscription's `onDiscontinuity`). */
  discontinuity: [DiscontinuityInfo];
  /** Each WebSocket `welcome`. */
  welcome: [WelcomeFrame];
}

/** Consecutive failures to connect (never having worked) before trying the next transport. */
export const FALLBACK_AFTER = 2;
export abstract class Connection {
  readonly url: string;
  readonly httpUrl: string;
  protected readonly events: Emitter<ClientEvents>;
  protected readonly positions = new PositionTracker();
  protected readonly subs = new Map<string, Subscription<never>>();
  protected readonly outbox: Outbox;
  protected readonly tokens: TokenManager;
  protected readonly http: HttpApi;
  protected readonly cfg: { min: number; max: number; timeout: number; autoAck: boolean; debug: boolean };
  private readonly transports: TransportName[];
  private readonly pending = new PendingCommands();

  private _state: ConnectionState = { status: "disconnected", reconnectAttempts: 0 };
  protected welcomeUser: string | null = null;
  protected mode: TransportName | null = null;
  protected live = false;
  protected wanted = false;
  private readonly ws: WsSession;
  private readonly sse: SseSession;
  protected readonly publisher: Publisher;
  private generation = 0;
  private nextId = 1;
  private failures = 0;
  private readonly everUp: Record<TransportName, boolean> = { websocket: false, sse: false };
  private authRetried = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private removeOnline: (() => void) | null = null;

  constructor(protected readonly options: TidingsClientOptions) {
    this.url = options.url;
    this.httpUrl = (options.httpUrl ?? deriveHttpUrl(options.url)).replace(/\/+$/, "");
    this.transports = options.transports?.length ? [...options.transports] : ["websocket", "sse"];
    this.cfg = {
      min: options.minReconnectDelay ?? 500,
      max: options.maxReconnectDelay ?? 20_000,
      timeout: options.timeout ?? 10_000,
      autoAck: options.autoAck ?? false,
      debug: options.debug ?? false,
    };
    this.outbox = new Outbox(options.maxQueue ?? 1000);
    this.events = new Emitter<ClientEvents>((e) => console.error("[tidings] a listener threw", e));
    this.tokens = new TokenManager({
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.getToken ? { getToken: options.getToken } : {}),
      apply: (t) => this.applyToken(t),
      onError: (e) => this.events.emit("error", e),
      log: this.log,
    });
    const fetchFn = options.fetch ?? (typeof fetch === "function" ? fetch.bind(globalThis) : undefined);
    this.http = new HttpApi(this.httpUrl, fetchFn, {
      current: async () => {
        if (this.tokens.needsRenewal()) await this.tokens.renew();
        return this.tokens.token;
      },
      renew: this.tokens.canRenew ? () => this.tokens.renew() : null,
    });
    this.publisher = new Publisher({
      outbox: this.outbox,
      pending: this.pending,
      http: this.http,
      transport: () => (this.live ? this.mode : null),
      send: (f) => this.ws.send(f),
      nextId: () => this.nextId++,
      timeout: this.cfg.timeout,
      minDelay: this.cfg.min,
      maxDelay: this.cfg.max,
    });
    this.sse = this.createSse();
    this.ws = this.createWs();
  }

  private createSse(): SseSession {
    return new SseSession({
      EventSource: () => this.EventSourceCtor,
      httpUrl: this.httpUrl,
      token: () => this.tokens.token,
      positions: this.positions,
      subs: this.subs,
      opened: () => {
        this.positions.endAllResyncs();
        for (const s of this.subs.values()) s._setState("subscribed");
        this.up("sse", this.tokens.claims?.sub ?? null);
      },
      message: (m, cursor) => this.receive(m, cursor),
      discontinuity: (sub, info) => this.discontinuity(sub, info),
      lost: (reason) => this.lost(1006, reason),
      reopenWanted: () => this.wanted && this.mode === "sse" && (this.live || this.sse.isOpening),
      log: this.log,
    });
  }

  private createWs(): WsSession {
    return new WsSession({
      WebSocket: () => this.WebSocketCtor,
      url: this.url,
      token: () => this.tokens.token,
      positions: this.positions,
      subs: this.subs,
      pending: this.pending,
      nextId: () => this.nextId++,
      timeout: this.cfg.timeout,
      minDelay: this.cfg.min,
      maxDelay: this.cfg.max,
      welcome: (w) => {
        this.events.emit("welcome", w);
        this.up("websocket", w.user);
      },
      message: (m) => this.receive(m, null),
      discontinuity: (sub, info) => this.discontinuity(sub, info),
      error: (e) => this.events.emit("error", e),
      lost: (code, reason, retryMs) => this.lost(code, reason, retryMs),
      log: this.log,
    });
  }

  /** The connection state (a new object on each change). */
  get state(): ConnectionState {
    return this._state;
  }

  protected readonly log = (...args: unknown[]): void => {
    if (this.cfg.debug) console.debug("[tidings]", ...args);
  };

  private get WebSocketCtor(): WebSocketConstructor | undefined {
    return this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  private get EventSourceCtor(): EventSourceConstructor | undefined {
    return this.options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  }

  private available(t: TransportName): boolean {
    return t === "websocket" ? this.WebSocketCtor !== undefined : this.EventSourceCtor !== undefined;
  }

  protected setState(status: ConnectionState["status"], reconnectAttempts: number, error?: string): void {
    const s = this._state;
    if (s.status === status && s.reconnectAttempts === reconnectAttempts && s.error === error) return;
    this._state = error === undefined ? { status, reconnectAttempts } : { status, error, reconnectAttempts };
    this.log("state", this._state);
    this.events.emit("state", this._state);
  }

  // ---- lifecycle ------------------------------------------------------------------------

  /** Starts connecting (no-op while connecting or connected). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.authRetried = false;
    this.failures = 0;
    this.mode = this.transports.find((t) => this.available(t)) ?? null;
    this.watchOnline();
    void this.open();
  }

  /** Closes the connection for good: no reconnect; queued and unanswered publishes are rejected (`disconnected`). */
  disconnect(): void {
    this.wanted = false;
    this.generation++;
    this.clearReconnect();
    this.unwatchOnline();
    this.tokens.cancel();
    this.closeTransports("client disconnect");
    this.teardown();
    this.outbox.rejectAll(new TidingsError("disconnected", "the client was disconnected before this publish was answered"));
    this.mode = null;
    this.setState("disconnected", 0);
  }

  private async open(): Promise<void> {
    this.clearReconnect();
    const gen = ++this.generation;
    if (!this.mode) return this.fail("no transport available (pass options.WebSocket or options.EventSource)", "unavailable");
    this.setState("connecting", this._state.reconnectAttempts);
    if (this.tokens.needsRenewal()) {
      try {
        await this.tokens.renew();
      } catch (e) {
        if (gen === this.generation && this.wanted) this.fail(`getToken failed: ${String(e)}`);
        return;
      }
      if (gen !== this.generation || !this.wanted) return;
    }
    if (this.mode === "websocket") this.ws.open();
    else this.sse.open();
  }

  /** Gives up: state `error`, no reconnect until `connect()` is called again. */
  private fail(message: string, code: ErrorCode = "unauthorized"): void {
    this.wanted = false;
    this.clearReconnect();
    this.unwatchOnline();
    this.tokens.cancel();
    this.closeTransports(message);
    this.teardown();
    this.setState("error", this._state.reconnectAttempts, message);
    this.events.emit("error", new TidingsError(code, message));
  }

  private closeTransports(reason: string): void {
    this.ws.close(reason);
    this.sse.close();
  }

  /** Everything tied to one connection ends with it. */
  private teardown(): void {
    this.live = false;
    this.publisher.stop();
    this.pending.clear();
    this.positions.endAllResyncs();
    for (const s of this.subs.values()) s._setState("subscribing");
  }

  /** The connection ended without our asking (`retryMs`: the gateway said when to come back). */
  private lost(code: number, reason: string, retryMs?: number): void {
    const wasLive = this.live;
    this.log("connection lost", code, reason);
    this.teardown();
    const sent = this.outbox.requeueSent();
    // A frame over the gateway's limit closes with 1009: resending it would loop.
    if (code === 1009) this.outbox.rejectAll(new TidingsError("too_large", `connection closed: ${reason || "frame too large"}`), sent);
    if (!this.wanted) return;
    if (code === 4001) return this.unauthorized(reason);
    if (!wasLive) this.countFailure();
    this.scheduleReconnect(retryMs ?? backoffDelay(this._state.reconnectAttempts, this.cfg.min, this.cfg.max));
  }

  private unauthorized(reason: string): void {
    const why = reason || "token refused";
    if (!this.tokens.canRenew) return this.fail(`unauthorized (4001): ${why}`);
    if (this.authRetried) return this.fail(`unauthorized (4001) again with a fresh token: ${why}`);
    this.authRetried = true;
    const gen = this.generation;
    this.setState("disconnected", this._state.reconnectAttempts + 1);
    this.tokens.renew().then(
      () => {
        if (gen === this.generation && this.wanted) void this.open();
      },
      (e: unknown) => {
        if (gen === this.generation && this.wanted) this.fail(`getToken failed after a 4001 close: ${String(e)}`);
      },
    );
  }

  /** A transport that never worked failed again: after FALLBACK_AFTER in a row, try the next one. */
  private countFailure(): void {
    const mode = this.mode;
    if (!mode) return;
    this.failures++;
    if (this.failures < FALLBACK_AFTER || this.everUp[mode]) return;
    const next = this.transports.find((t) => t !== mode && this.available(t));
    if (next) {
      this.log(`${mode} failed ${this.failures} times; switching to ${next}`);
      this.mode = next;
      this.failures = 0;
    }
  }

  private scheduleReconnect(delay: number): void {
    this.setState("disconnected", this._state.reconnectAttempts + 1);
    this.log(`reconnecting in ${delay} ms`);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private watchOnline(): void {
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void; removeEventListener?: (t: string, f: () => void) => void };
    if (this.removeOnline || typeof g.addEventListener !== "function") return;
    const onOnline = (): void => {
      if (this.wanted && this.reconnectTimer !== null) void this.open();
    };
    g.addEventListener("online", onOnline);
    this.removeOnline = () => g.removeEventListener?.("online", onOnline);
  }

  private unwatchOnline(): void {
    this.removeOnline?.();
    this.removeOnline = null;
  }

  /** Connected: send what waited, arm the token refresh, tell the application. */
  private up(transport: TransportName, user: string | null): void {
    this.live = true;
    this.failures = 0;
    this.everUp[transport] = true;
    this.authRetried = false;
    this.welcomeUser = user ?? this.welcomeUser;
    this.publisher.flush();
    this.tokens.schedule();
    this.setState("connected", 0);
  }

  // ---- transport-specific commands --------------------------------------------------------

  /** Sends an `ack`; `false` when there is no live WebSocket (acks are not queued). */
  protected sendAck(channel: string, seq: number): boolean {
    if (this.mode !== "websocket" || !this.live) return false;
    return this.ws.send({ type: "ack", channel, seq });
  }

  /** Hands a refreshed token to the live connection (WebSocket: an `auth` frame; SSE: reopen). */
  private applyToken(token: string): Promise<void> {
    if (!this.live) return Promise.resolve();
    if (this.mode === "sse") {
      this.sse.reopen();
      return Promise.resolve();
    }
    return this.ws.refresh(token);
  }

  // ---- delivery (both transports) ------------------------------------------------------

  /** Dedupe and gap check, then delivery to the subscription and the client's listeners. */
  private receive(m: MessageFrame, cursor: string | null): void {
    const sub = this.subs.get(m.channel);
    if (!sub) return;
    const verdict = this.positions.classify(m);
    if (verdict === "duplicate") return this.log("duplicate dropped", m.channel, m.seq);
    if (verdict === "gap") {
      this.log("gap", m.channel, "prev", m.prev, "seq", m.seq);
      if (this.positions.startResync(m.channel)) {
        if (this.mode === "sse") this.sse.reopen();
        else this.ws.subscribe(m.channel);
      }
      return;
    }
    if (typeof verdict === "object") this.discontinuity(sub, verdict.discontinuity);
    if (cursor !== null && typeof m.seq === "number") this.sse.accepted(cursor);
    sub._deliver(m as MessageFrame<never>);
    this.events.emit("message", m);
    if (this.cfg.autoAck && m.event === "notification" && typeof m.seq === "number") this.sendAck(m.channel, m.seq);
  }

  /** Reports a discontinuity; never silently (a warning when nobody listens). */
  private discontinuity(sub: Subscription<never>, info: DiscontinuityInfo): void {
    const heard = sub._discontinuity(info) || this.events.listenerCount("discontinuity") > 0;
    this.events.emit("discontinuity", info);
    if (!heard) console.warn(`[tidings] ${info.channel}: history could not be completed (${info.reason}); reload its state`);
  }

  /** Subscribes a channel on the live connection (called when the application adds one). */
  protected channelAdded(channel: string): void {
    if (this.mode === "sse") this.sse.reopen();
    else this.ws.subscribe(channel);
  }

  protected channelRemoved(channel: string): void {
    if (this.mode === "sse") this.sse.reopen();
    else this.ws.unsubscribe(channel);
  }
}
