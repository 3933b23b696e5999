/**
 * Internals shared by the React hooks: the context, the provider, and the per-client
 * reference counts of channels held by hooks. Public names are re-exported by react.ts.
 */
import { createContext, createElement, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import type { TidingsClient } from "./client.js";
import type { Subscription, SubscriptionState } from "./subscription.js";
import type { MessageFrame, UnsubscribedInfo } from "./types.js";

const TidingsContext = createContext<TidingsClient | null>(null);

export interface TidingsProviderProps {
  client: TidingsClient;
  /** Call `client.connect()` on mount when disconnected (default true). */
  connect?: boolean | undefined;
  children?: ReactNode;
}

export function TidingsProvider({ client, connect = true, children }: TidingsProviderProps): ReactNode {
  useEffect(() => {
    if (connect && client.state.status === "disconnected") client.connect();
  }, [client, connect]);
  return createElement(TidingsContext.Provider, { value: client }, children);
}

/** The provider's client; throws outside a `<TidingsProvider>`. */
export function useTidingsClient(): TidingsClient {
  const client = useContext(TidingsContext);
  if (!client) throw new Error("Tidings hooks must be used inside <TidingsProvider client={…}>");
  return client;
}

// ---- shared per-client state --------------------------------------------------------------

/** A message of a project channel, as `useWebSocket` presents it. */
export interface ProjectMessage<T = unknown> {
  type: string;
  projectId: string;
  data: T;
  timestamp: string;
  messageId: string;
}

const PROJECT_PREFIX = "project:";

export function toProjectMessage<T>(m: MessageFrame<T>): ProjectMessage<T> {
  return { type: m.event, projectId: m.channel.slice(PROJECT_PREFIX.length), data: m.data, timestamp: m.ts, messageId: m.id };
}

interface HeldRef {
  sub: Subscription;
  /** Hook holders of the channel, across replacements of `sub`. */
  count: number;
  /** The hub created `sub` (else the application had subscribed the channel first). */
  owned: boolean;
  /** `sub._holders` when the hub took it: more later means the application subscribed it too. */
  holders: number;
}

/**
 * Reference counts of hook-held channels and the last project message, per client.
 *
 * A channel is unsubscribed by the hub only when the last hook lets go AND the hub created
 * the subscription AND it is still the channel's subscription AND the application did not
 * `client.subscribe()` it meanwhile (which returns the same object): an application's
 * subscription is never ended by hooks. When the subscription is replaced or ended from
 * outside while hooks hold the channel, the next acquire takes the current one (or
 * subscribes anew) and the count of holders carries over.
 */
export class HookHub {
  private readonly refs = new Map<string, HeldRef>();
  private last: ProjectMessage | undefined;
  private readonly lastListeners = new Set<() => void>();

  constructor(private readonly client: TidingsClient) {
    client.on("message", (m) => {
      if (!m.channel.startsWith(PROJECT_PREFIX)) return;
      this.last = toProjectMessage(m);
      for (const fn of [...this.lastListeners]) fn();
    });
  }

  /** Holds `channel`; throws `bad_channel` (from `client.subscribe`) for an invalid name. */
  acquire(channel: string): Subscription {
    let ref = this.refs.get(channel);
    const current = this.client.getSubscription(channel);
    if (!ref || ref.sub !== current) {
      const sub = current ?? this.client.subscribe(channel);
      ref = { sub, count: ref?.count ?? 0, owned: !current, holders: sub._holders };
      this.refs.set(channel, ref);
    }
    ref.count++;
    return ref.sub;
  }

  release(channel: string): void {
    const ref = this.refs.get(channel);
    if (!ref || --ref.count > 0) return;
    this.refs.delete(channel);
    const stillOurs = this.client.getSubscription(channel) === ref.sub && ref.sub._holders === ref.holders;
    if (ref.owned && stillOurs) ref.sub.unsubscribe();
  }

  readonly subscribeLast = (fn: () => void): (() => void) => {
    this.lastListeners.add(fn);
    return () => this.lastListeners.delete(fn);
  };

  readonly getLast = (): ProjectMessage | undefined => this.last;
}

const hubs = new WeakMap<TidingsClient, HookHub>();

export function hubOf(client: TidingsClient): HookHub {
  let hub = hubs.get(client);
  if (!hub) {
    hub = new HookHub(client);
    hubs.set(client, hub);
  }
  return hub;
}

/** A hook's view of a channel it holds. */
export interface HeldChannel {
  /**
   * The subscription's state; `error` when the channel cannot be subscribed (see `error`);
   * `unsubscribed` when the subscription ended while the hook held it (see `unsubscribed`).
   */
  state: SubscriptionState;
  /** Why: a `bad_channel` name, a refusal by the gateway (`forbidden`, …). Cleared when it subscribes. */
  error: Error | null;
  /**
   * How the subscription ended while held (`byServer: true`: the gateway ended it, e.g. an
   * operator's unsubscribe), else `null`. The hook does not subscribe again by itself: nothing
   * more of the channel arrives until it mounts again (or its channel changes).
   */
  unsubscribed: UnsubscribedInfo | null;
}

interface HeldView extends HeldChannel {
  channel: string | null;
}

const sameView = (a: HeldView, b: HeldView): boolean =>
  a.channel === b.channel && a.state === b.state && a.error === b.error && a.unsubscribed === b.unsubscribed;

/**
 * Holds `channel` while mounted; calls `onMessage` for each of its messages. A channel that
 * cannot be subscribed (`client.subscribe` throws `bad_channel`) does not throw out of the
 * effect (it would take the whole tree down): it is returned as state `error`.
 */
export function useHeldChannel<T>(client: TidingsClient, channel: string | null, onMessage: (m: MessageFrame<T>) => void): HeldChannel {
  const handler = useRef(onMessage);
  handler.current = onMessage;
  const [view, setView] = useState<HeldView>({ channel, state: "subscribing", error: null, unsubscribed: null });
  useEffect(() => {
    if (channel === null) return;
    let sub: Subscription<T> | null = null;
    const show = (state: SubscriptionState, error: Error | null): void => {
      const next = { channel, state, error, unsubscribed: sub?.unsubscribed ?? null };
      setView((v) => (sameView(v, next) ? v : next));
    };
    const hub = hubOf(client);
    let held: Subscription<T>;
    try {
      held = sub = hub.acquire(channel) as Subscription<T>;
    } catch (e) {
      show("error", e instanceof Error ? e : new Error(String(e)));
      return;
    }
    let error: Error | null = null;
    // `state` "unsubscribed" comes with `sub.unsubscribed` already set (see Subscription._end).
    const offs = [
      held.on("message", (m) => handler.current(m)),
      held.on("state", (s) => show(s, s === "subscribed" ? (error = null) : error)),
      held.on("error", (e) => show(held.state, (error = e))),
    ];
    show(held.state, null);
    return () => {
      for (const off of offs) off();
      hub.release(channel);
    };
  }, [client, channel]);
  return view.channel === channel
    ? { state: view.state, error: view.error, unsubscribed: view.unsubscribed }
    : { state: "subscribing", error: null, unsubscribed: null };
}
