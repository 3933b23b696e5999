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
 *   if the next connection is closed with 4001 again before `welcome`: state `error` (an SSE
 *   stream refused with HTTP 401 takes the same path);
 * - the browser's `online` event cuts a running backoff short.
 *
 * A 4001 whose reason is `revoked` (an operator's disconnect or revoke) takes the 4001 path
 * like any other. `error` stops everything: no reconnect, no token refresh, no `online`
 * wake-up, until `connect()`. Over SSE a cut stream shows no code: the client reconnects, and
 * a revoked token is then refused with HTTP 401 (the 4001 path).
 *
 * Subscriptions end by `sub.unsubscribe()` or by the gateway (`unsubscribed` frame or SSE
 * event): `endSubscription` below, one path for both.
 */
import { backoffDelay } from "./backoff.js";
import { PendingCommands } from "./commands.js";
import { Emitter } from "./emitter.js";
import { TidingsError } from "./errors.js";
import { deriveHttpUrl, HttpApi } from "./http.js";
import { PositionTracker } from "./positions.js";
import { ReconnectTimer } from "./reconnect.js";
import { Publisher } from "./publisher.js";
import { Outbox } from "./queue.js";
import { SseSession } from "./sse-session.js";
import type { Subscription } from "./subscription.js";
import { TokenManager } from "./token.js";
import { TransportChooser } from "./transports.js";
import { WsSession } from "./ws-session.js";
import type {
  ClientEvents,
  ConnectionState,
  DiscontinuityInfo,
  ErrorCode,
  EventSourceConstructor,
  FetchLike,
  MessageFrame,
  TidingsClientOptions,
  TransportName,
  UnsubscribedInfo,
  WebSocketConstructor,
} from "./types.js";

export type { ClientEvents } from "./types.js";

export { FALLBACK_AFTER } from "./transports.js";

export abstract class Connection {
  readonly url: string;
  readonly httpUrl: string;
  protected readonly events: Emitter<ClientEvents>;
  protected readonly positions = new PositionTracker();
  protected readonly subs = new Map<string, Subscription<never>>();
  protected readonly outbox: Outbox;
  protected readonly tokens: TokenManager;
  protected readonly http: HttpApi;
  protected readonly cfg: { min: number; max: number; timeout: number; maxFrameBytes: number; autoAck: boolean; debug: boolean };
  private readonly chooser: TransportChooser;
  private readonly pending = new PendingCommands();
  private readonly fetchFn: FetchLike | undefined;

  private _state: ConnectionState = { status: "disconnected", reconnectAttempts: 0 };
  protected welcomeUser: string | null = null;
  protected mode: TransportName | null = null;
  protected live = false;
  protected wanted = false;
  /** Why the client gave up (state `error`), until `connect()`. */
  protected failure: TidingsError | null = null;
  private readonly ws: WsSession;
  private readonly sse: SseSession;
  protected readonly publisher: Publisher;
  private generation = 0;
  private nextId = 1;
  private authRetried = false;
  private readonly reconnect = new ReconnectTimer(() => void this.open());

  constructor(protected readonly options: TidingsClientOptions) {
    this.url = options.url;
    this.httpUrl = (options.httpUrl ?? deriveHttpUrl(options.url)).replace(/\/+$/, "");
    const transports: TransportName[] = options.transports?.length ? [...options.transports] : ["websocket", "sse"];
    this.chooser = new TransportChooser(transports, { WebSocket: () => this.WebSocketCtor, EventSource: () => this.EventSourceCtor }, this.log);
    this.cfg = {
      min: options.minReconnectDelay ?? 500,
      max: options.maxReconnectDelay ?? 20_000,
      timeout: options.timeout ?? 10_000,
      maxFrameBytes: options.maxFrameBytes ?? 65_536,
      autoAck: options.autoAck ?? false,
      debug: options.debug ?? false,
    };
    this.outbox = new Outbox(options.maxQueue ?? 1000);
    this.events = new Emitter<ClientEvents>((e) => console.error("[tidings] a listener threw", e));
    this.tokens = new TokenManager({
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.getToken ? { getToken: options.getToken } : {}),
      apply: (t) => this.applyToken(t),
      adopted: () => {
        if (this.live && this.mode === "sse") this.sse.tokenChanged();
      },
      onError: (e) => this.events.emit("error", e),
      log: this.log,
    });
    this.fetchFn = options.fetch ?? (typeof fetch === "function" ? fetch.bind(globalThis) : undefined);
    this.http = new HttpApi(this.httpUrl, this.fetchFn, {
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
      sendText: (t) => this.ws.sendText(t),
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
      fetch: this.fetchFn,
      httpUrl: this.httpUrl,
      timeout: this.cfg.timeout,
      token: () => this.tokens.token,
      positions: this.positions,
      subs: this.subs,
      opened: (channels) => {
        this.positions.endAllResyncs();
        for (const c of channels) this.subs.get(c)?._setState("subscribed");
        this.up("sse", this.tokens.claims?.sub ?? null);
      },
      message: (m, cursor) => this.receive(m, cursor),
      discontinuity: (sub, info) => this.discontinuity(sub, info),
      lost: (reason) => this.lost(1006, reason),
      unauthorized: (reason) => this.lost(4001, reason),
      refused: (channels, error) => this.refused(channels, error),
      unsubscribed: (channel, reason) => this.serverUnsubscribed(channel, reason),
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
      unsubscribed: (channel, reason) => this.serverUnsubscribed(channel, reason),
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
    this.failure = null;
    this.authRetried = false;
    this.mode = this.chooser.first();
    this.reconnect.watchOnline();
    void this.open();
  }

  /** Closes the connection for good: no reconnect; queued and unanswered publishes are rejected (`disconnected`). */
  disconnect(): void {
    this.wanted = false;
    this.generation++;
    this.reconnect.clear();
    this.reconnect.unwatchOnline();
    this.tokens.cancel();
    this.closeTransports("client disconnect");
    this.teardown();
    this.outbox.rejectAll(new TidingsError("disconnected", "the client was disconnected before this publish was answered"));
    this.mode = null;
    this.setState("disconnected", 0);
  }

  private async open(): Promise<void> {
    this.reconnect.clear();
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

  /**
   * Gives up: state `error`, no reconnect until `connect()` is called again. Publishes still
   * waiting or unanswered reject with the same error (and new ones, until `connect()`).
   */
  private fail(message: string, code: ErrorCode = "unauthorized"): void {
    const error = new TidingsError(code, message);
    this.wanted = false;
    this.failure = error;
    this.reconnect.clear();
    this.reconnect.unwatchOnline();
    this.tokens.cancel();
    this.closeTransports(message);
    this.teardown();
    this.outbox.rejectAll(error);
    this.setState("error", this._state.reconnectAttempts, message);
    this.events.emit("error", error);
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
    for (const s of this.subs.values()) if (s.state !== "error") s._setState("subscribing");
  }

  /** The connection ended without our asking (`retryMs`: the gateway said when to come back). */
  private lost(code: number, reason: string, retryMs?: number): void {
    const wasLive = this.live;
    this.log("connection lost", code, reason);
    this.teardown();
    this.publisher.connectionLost(code, reason); // resend, or reject what cannot be resent
    if (!this.wanted) return;
    if (code === 4001) return this.unauthorized(reason);
    if (!wasLive && this.mode) this.mode = this.chooser.failed(this.mode);
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

  private scheduleReconnect(delay: number): void {
    this.setState("disconnected", this._state.reconnectAttempts + 1);
    this.log(`reconnecting in ${delay} ms`);
    this.reconnect.schedule(delay);
  }

  /** Connected: send what waited, arm the token refresh, tell the application. */
  private up(transport: TransportName, user: string | null): void {
    this.live = true;
    this.chooser.up(transport);
    this.authRetried = false;
    this.welcomeUser = user ?? this.welcomeUser;
    this.publisher.start();
    this.tokens.schedule();
    this.setState("connected", 0);
  }

  // ---- transport-specific commands --------------------------------------------------------

  /** Sends an `ack`; `false` when there is no live WebSocket (acks are not queued). */
  protected sendAck(channel: string, seq: number): boolean {
    if (this.mode !== "websocket" || !this.live) return false;
    return this.ws.send({ type: "ack", channel, seq });
  }

  /**
   * Hands a refreshed token to the live WebSocket with an `auth` frame; resolves when the
   * gateway accepted it. SSE cannot change the token of an open stream: the stream reopens
   * with the token once it is adopted (`adopted` above).
   */
  private applyToken(token: string): Promise<void> {
    if (!this.live || this.mode !== "websocket") return Promise.resolve();
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

  /** The gateway refused these channels for good (SSE): their subscriptions fail. */
  private refused(channels: string[], error: TidingsError): void {
    for (const c of channels) this.subs.get(c)?._fail(error, true);
    this.events.emit("error", error);
  }

  /** Reports a discontinuity; never silently (a warning when nobody listens). */
  private discontinuity(sub: Subscription<never>, info: DiscontinuityInfo): void {
    const heard = sub._discontinuity(info) || this.events.listenerCount("discontinuity") > 0;
    this.events.emit("discontinuity", info);
    if (!heard) console.warn(`[tidings] ${info.channel}: history could not be completed (${info.reason}); reload its state`);
  }

  /** Subscribes a channel on the live connection (called when the application adds one). */
  protected channelAdded(channel: string): void {
    this.sse.channelChanged(channel);
    if (this.mode === "sse") this.sse.reopen();
    else this.ws.subscribe(channel);
  }

  /**
   * Ends a subscription, whoever asked: the channel leaves the client's set (so no reconnect
   * or SSE reopen asks for it again), its position stays (a later `subscribe` resumes from
   * it), then the subscription and the client emit `unsubscribed`. When the application ends
   * it, the gateway is told (`unsubscribe` frame, or an SSE stream without it); when the
   * gateway ended it, it already let go: nothing is sent, and an SSE stream goes on as it is.
   */
  protected endSubscription(sub: Subscription<never>, info: UnsubscribedInfo): void {
    const { channel } = info;
    if (this.subs.get(channel) !== sub) return;
    this.subs.delete(channel);
    this.positions.endResync(channel);
    this.sse.channelChanged(channel);
    if (info.byServer) this.ws.forget(channel);
    else if (this.mode === "sse") this.sse.reopen();
    else this.ws.unsubscribe(channel);
    sub._end(info);
    this.events.emit("unsubscribed", info);
  }

  /** The gateway ended a subscription (`unsubscribed` frame or SSE event). */
  private serverUnsubscribed(channel: string, reason: string): void {
    const sub = this.subs.get(channel);
    if (!sub) return this.log("unsubscribed by the gateway from a channel not held; ignored", channel, reason);
    this.log("unsubscribed by the gateway", channel, reason);
    this.endSubscription(sub, { channel, reason: reason || "server", byServer: true });
  }
}
