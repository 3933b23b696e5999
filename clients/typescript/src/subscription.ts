/**
 * A subscription to one channel, as the application holds it. The bookkeeping that makes
 * delivery exactly-once and in order lives in the client's `PositionTracker` (it must
 * outlive this object: unsubscribing and subscribing again resumes from the same position);
 * this object is the application's handle: its listeners, its state, its `position`.
 *
 * One client holds at most one Subscription per channel: `client.subscribe()` on a channel
 * already subscribed returns the same object and adds the new handlers to it, so no
 * listener is silently lost and only one `subscribe` frame goes out.
 */
import { Emitter } from "./emitter.js";
import type { TidingsError } from "./errors.js";
import type { DiscontinuityInfo, MessageFrame, Position, SubscribeOptions, UnsubscribedInfo } from "./types.js";

/**
 * `subscribing` until the gateway confirms (again after every reconnect), then `subscribed`;
 * `error` when the gateway refused the channel for good (`forbidden`, …: see `onError`): over
 * WebSockets it is asked again on the next connect, over SSE the channel is left out of the
 * stream (so that the others keep working) until it is subscribed again or the token changes;
 * `unsubscribed` for good once it ended, by `unsubscribe()` or by the gateway (see
 * `sub.unsubscribed` and the `unsubscribed` event). An ended subscription is never
 * resubscribed: `client.subscribe()` on its channel makes a new one, resuming from the
 * channel's position.
 */
export type SubscriptionState = "subscribing" | "subscribed" | "error" | "unsubscribed";

export interface SubscriptionEvents<T> {
  message: [MessageFrame<T>];
  discontinuity: [DiscontinuityInfo];
  error: [TidingsError];
  state: [SubscriptionState];
  /** Once, when the subscription ends: `byServer` false after `unsubscribe()`, true when the gateway ended it. */
  unsubscribed: [UnsubscribedInfo];
}

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  positionOf(channel: string): Position | null;
  release(sub: Subscription<never>): void;
}

export class Subscription<T = unknown> {
  readonly channel: string;
  private _state: SubscriptionState = "subscribing";
  private _unsubscribed: UnsubscribedInfo | null = null;
  private readonly events = new Emitter<SubscriptionEvents<T>>();
  /** @internal How many `client.subscribe()` calls returned this object. */
  _holders = 0;

  /** @internal Created by `TidingsClient.subscribe`. */
  constructor(channel: string, private readonly host: SubscriptionHost) {
    this.channel = channel;
  }

  /** `{ seq, epoch }` of the last durable message delivered on this channel, or `null`. */
  get position(): Position | null {
    return this.host.positionOf(this.channel);
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /**
   * How the subscription ended (`{ channel, reason, byServer }`), or `null` while it is
   * active. `byServer: true` means the gateway ended it (an operator unsubscribed the
   * channel, `reason` is the gateway's, e.g. `"server"`); `reason: "client"` means
   * `unsubscribe()` was called.
   */
  get unsubscribed(): UnsubscribedInfo | null {
    return this._unsubscribed;
  }

  on<K extends keyof SubscriptionEvents<T>>(event: K, fn: (...args: SubscriptionEvents<T>[K]) => void): () => void {
    return this.events.on(event, fn);
  }

  off<K extends keyof SubscriptionEvents<T>>(event: K, fn: (...args: SubscriptionEvents<T>[K]) => void): void {
    this.events.off(event, fn);
  }

  /**
   * Stops receiving the channel; emits `unsubscribed` with `{ reason: "client", byServer:
   * false }`. The client keeps its position for a later `subscribe`.
   */
  unsubscribe(): void {
    if (this._state === "unsubscribed") return;
    this.host.release(this as unknown as Subscription<never>);
  }

  /** @internal Adds the handlers of a `subscribe()` call. */
  _attach(opts: SubscribeOptions<T>): void {
    this._holders++;
    if (opts.onMessage) this.events.on("message", opts.onMessage);
    if (opts.onDiscontinuity) this.events.on("discontinuity", opts.onDiscontinuity);
    if (opts.onError) this.events.on("error", opts.onError);
    if (opts.onUnsubscribed) this.events.on("unsubscribed", opts.onUnsubscribed);
  }

  /** @internal Not for `unsubscribed`: see `_end`. */
  _setState(state: SubscriptionState): void {
    if (this._state === state || this._state === "unsubscribed" || state === "unsubscribed") return;
    this._state = state;
    this.events.emit("state", state);
  }

  /**
   * @internal The end (the client already let go of the channel): state `unsubscribed`, then
   * the `unsubscribed` event; the listeners are dropped after it. Only the first end counts.
   */
  _end(info: UnsubscribedInfo): void {
    if (this._state === "unsubscribed") return;
    this._unsubscribed = info;
    this._state = "unsubscribed";
    this.events.emit("state", "unsubscribed");
    this.events.emit("unsubscribed", info);
    this.events.clear();
  }

  /** @internal */
  _deliver(message: MessageFrame<T>): void {
    this.events.emit("message", message);
  }

  /** @internal Returns whether anyone listened. */
  _discontinuity(info: DiscontinuityInfo): boolean {
    const heard = this.events.listenerCount("discontinuity") > 0;
    this.events.emit("discontinuity", info);
    return heard;
  }

  /** @internal A refusal; `final`: not retried on this connection (state `error`). */
  _fail(error: TidingsError, final: boolean): void {
    if (this._state === "unsubscribed") return;
    if (final) this._setState("error");
    this.events.emit("error", error);
  }
}
