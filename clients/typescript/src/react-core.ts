/**
 * Internals shared by the React hooks: the context, the provider, and the per-client
 * reference counts of channels held by hooks. Public names are re-exported by react.ts.
 */
import { createContext, createElement, useContext, useEffect, useRef, type ReactNode } from "react";
import type { TidingsClient } from "./client.js";
import type { Subscription } from "./subscription.js";
import type { MessageFrame } from "./types.js";

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

/** Reference counts of hook-held channels and the last project message, per client. */
export class HookHub {
  private readonly refs = new Map<string, { sub: Subscription; count: number; owned: boolean }>();
  private last: ProjectMessage | undefined;
  private readonly lastListeners = new Set<() => void>();

  constructor(private readonly client: TidingsClient) {
    client.on("message", (m) => {
      if (!m.channel.startsWith(PROJECT_PREFIX)) return;
      this.last = toProjectMessage(m);
      for (const fn of [...this.lastListeners]) fn();
    });
  }

  acquire(channel: string): Subscription {
    let ref = this.refs.get(channel);
    if (!ref || ref.sub.state === "unsubscribed") {
      const existing = this.client.getSubscription(channel);
      ref = { sub: existing ?? this.client.subscribe(channel), count: 0, owned: !existing };
      this.refs.set(channel, ref);
    }
    ref.count++;
    return ref.sub;
  }

  release(channel: string): void {
    const ref = this.refs.get(channel);
    if (!ref || --ref.count > 0) return;
    this.refs.delete(channel);
    if (ref.owned) ref.sub.unsubscribe();
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

/** Holds `channel` while mounted; calls `onMessage` for each of its messages. */
export function useHeldChannel<T>(client: TidingsClient, channel: string | null, onMessage: (m: MessageFrame<T>) => void): void {
  const handler = useRef(onMessage);
  handler.current = onMessage;
  useEffect(() => {
    if (channel === null) return;
    const hub = hubOf(client);
    const sub = hub.acquire(channel) as Subscription<T>;
    const off = sub.on("message", (m) => handler.current(m));
    return () => {
      off();
      hub.release(channel);
    };
  }, [client, channel]);
}
