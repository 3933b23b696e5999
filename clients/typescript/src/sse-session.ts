/**
 * SSE mode of the client: one EventSource for the whole channel set, reopened (with a cursor
 * as `last_event_id`, see sse-cursor.ts) whenever the set changes, the token is renewed, or
 * a gap is seen. Delivery itself (dedupe, gap check) is the client's, as for WebSockets.
 *
 * An EventSource that does not open within `timeout` is given up. One that fails before
 * opening is diagnosed (sse-probe.ts): 401 takes the path of a WebSocket 4001 close (one
 * `getToken()`, then `error`); 403/400 fail the channel(s) the error names (all of them
 * when it names none), which are left out of the stream so that the others keep working;
 * anything else is a lost connection (backoff, then again).
 *
 * An `event: unsubscribed` ends that channel's subscription (the client drops it from its
 * set, so the next EventSource leaves it out); the current stream is kept: the gateway
 * already stopped sending the channel on it.
 */
import type { TidingsError } from "./errors.js";
import type { PositionTracker } from "./positions.js";
import { CursorBuilder } from "./sse-cursor.js";
import { channelsNamed, probeSse } from "./sse-probe.js";
import type { Subscription } from "./subscription.js";
import { SseTransport, cursorEpoch, sseUrl } from "./transport-sse.js";
import type { DiscontinuityInfo, EventSourceConstructor, FetchLike, MessageFrame, Position } from "./types.js";

export interface SseSessionDeps {
  EventSource(): EventSourceConstructor | undefined;
  fetch: FetchLike | undefined;
  httpUrl: string;
  timeout: number;
  token(): string | undefined;
  positions: PositionTracker;
  subs: Map<string, Subscription<never>>;
  /** The stream opened with these channels (or there is nothing to stream). */
  opened(channels: string[]): void;
  message(m: MessageFrame, cursor: string | null): void;
  discontinuity(sub: Subscription<never>, info: DiscontinuityInfo): void;
  /** The stream failed or could not be created. */
  lost(reason: string): void;
  /** The gateway refused the token (HTTP 401). */
  unauthorized(reason: string): void;
  /** The gateway refused these channels (HTTP 403/400); they are left out from now on. */
  refused(channels: string[], error: TidingsError): void;
  /** The gateway ended `channel` on the open stream (`event: unsubscribed`); the stream goes on. */
  unsubscribed(channel: string, reason: string): void;
  /** Whether a reopen is still wanted when its turn comes. */
  reopenWanted(): boolean;
  log(...args: unknown[]): void;
}

export class SseSession {
  private sse: SseTransport | null = null;
  private openTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly cursors = new CursorBuilder();
  private epoch: string | null = null;
  private reopenQueued = false;
  /** Counts `close()` calls, to see whether a callback closed the session. */
  private closes = 0;
  /** Channels the gateway refused: not streamed until subscribed again or the token changes. */
  private readonly refusedChannels = new Set<string>();

  constructor(private readonly d: SseSessionDeps) {}

  get isOpening(): boolean {
    return this.sse !== null;
  }

  open(): void {
    const Ctor = this.d.EventSource();
    if (!Ctor) return this.d.lost("no EventSource");
    const channels = [...this.d.subs.keys()].filter((c) => !this.refusedChannels.has(c));
    // Nothing to stream: connected all the same (HTTP publishing works).
    if (channels.length === 0) return this.d.opened([]);
    const cursor = this.cursors.build(channels, this.d.positions, (c, pos, epoch) => this.staleEpoch(c, pos, epoch));
    if (cursor !== null) this.epoch = cursorEpoch(cursor) ?? this.epoch;
    const token = this.d.token();
    const sse: SseTransport = new SseTransport(
      Ctor,
      {
        open: () => {
          if (this.sse !== sse) return;
          this.clearOpenTimer();
          this.d.opened(channels);
        },
        message: (m, c) => {
          if (this.sse !== sse) return;
          if (c !== null) this.checkEpoch(c);
          this.d.message(m, c);
        },
        unsubscribed: (channel, reason) => {
          if (this.sse !== sse) return;
          this.d.unsubscribed(channel, reason);
        },
        revoked: (reason) => {
          if (this.sse !== sse) return;
          this.clearOpenTimer();
          this.sse = null;
          // As a WebSocket 4001 `revoked`: a new token, not a reconnect with this one.
          this.d.unauthorized(`the gateway ended the session (${reason})`);
        },
        error: (beforeOpen) => {
          if (this.sse !== sse) return;
          this.clearOpenTimer();
          if (beforeOpen) return this.diagnose(sse, sseUrl(this.d.httpUrl, channels, undefined, cursor), token, channels);
          this.sse = null;
          this.d.lost("the SSE stream ended");
        },
      },
      this.d.log,
    );
    this.sse = sse;
    try {
      sse.open(sseUrl(this.d.httpUrl, channels, token, cursor));
    } catch (e) {
      this.sse = null;
      return this.d.lost(`cannot open an EventSource: ${String(e)}`);
    }
    this.openTimer = setTimeout(() => {
      if (this.sse !== sse) return;
      this.close();
      this.d.lost(`the SSE stream did not open within ${this.d.timeout} ms`);
    }, this.d.timeout);
  }

  /** A durable message with this cursor was delivered. */
  accepted(cursor: string): void {
    this.cursors.accepted(cursor);
  }

  /** The application subscribed or unsubscribed `channel`: any refusal or floor of it is forgotten. */
  channelChanged(channel: string): void {
    this.refusedChannels.delete(channel);
    this.cursors.forget(channel);
  }

  /** A new token: channels refused under the old one are tried again; the stream reopens with it. */
  tokenChanged(): void {
    this.refusedChannels.clear();
    this.reopen();
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
    this.closes++;
    this.clearOpenTimer();
    this.sse?.close();
    this.sse = null;
  }

  private clearOpenTimer(): void {
    if (this.openTimer !== null) clearTimeout(this.openTimer);
    this.openTimer = null;
  }

  /** The stream failed before opening: ask the gateway why (the EventSource cannot tell). */
  private diagnose(sse: SseTransport, url: string, token: string | undefined, channels: string[]): void {
    const fetchFn = this.d.fetch;
    if (!fetchFn) {
      this.sse = null;
      return this.d.lost("the SSE stream did not open");
    }
    void probeSse(fetchFn, url, token, this.d.timeout).then(({ status, error }) => {
      if (this.sse !== sse) return; // closed or replaced meanwhile
      this.sse = null;
      if (status === 401) return this.d.unauthorized(`SSE refused the token (HTTP 401): ${error?.message ?? ""}`);
      if (error && (status === 403 || status === 400)) return this.refuse(channels, error);
      this.d.lost(`the SSE stream did not open${status === null ? "" : ` (HTTP ${status})`}`);
    });
  }

  /** Fails the channels the error names (all when it names none), and streams the others at once. */
  private refuse(channels: string[], error: TidingsError): void {
    const named = channelsNamed(error.message, channels);
    const failed = named.length > 0 ? named : channels;
    for (const c of failed) this.refusedChannels.add(c);
    this.d.log("SSE refused", failed, error);
    const closes = this.closes;
    this.d.refused(failed, error);
    if (closes === this.closes) this.open(); // unless a listener disconnected meanwhile
  }

  /** A position in another epoch than the cursor's: the stream was recreated since it was taken. */
  private staleEpoch(channel: string, pos: Position, epoch: string): void {
    this.d.positions.epochChanged(channel, epoch);
    const sub = this.d.subs.get(channel);
    const info: DiscontinuityInfo = { channel, since: pos.seq, newEpoch: epoch, reason: "epoch_changed" };
    if (pos.epoch !== undefined) info.epoch = pos.epoch;
    if (sub) this.d.discontinuity(sub, info);
  }

  /** SSE has no `recovered` flag: a cursor of another epoch means the stream was recreated. */
  private checkEpoch(cursor: string): void {
    const epoch = cursorEpoch(cursor);
    if (epoch === null) return;
    const old = this.epoch;
    this.epoch = epoch;
    if (old !== null && old !== epoch) this.cursors.epochChanged();
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
