/**
 * React bindings: `@tidings/client/react` (CONTRACT.md §9). Imports only from "react"
 * (an optional peer dependency of the package).
 *
 * Every hook below a `<TidingsProvider>` shares its one `TidingsClient`, hence one socket.
 * Channels opened by hooks are reference-counted per client: two components on the same
 * channel share one subscription, and the channel is unsubscribed when the last of them
 * lets go. A channel the application subscribed itself (with `client.subscribe`, before or
 * after the hooks) is used but never unsubscribed by the hooks. A channel name that cannot
 * be subscribed never throws out of a hook: `useChannel` reports it as `state: "error"`
 * with `error`, `useNotifications` in `error`.
 *
 * The provider does not own the client: it calls `connect()` on mount when the client is
 * `disconnected` (pass `connect={false}` to opt out) and never disconnects it.
 */
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { projectChannel } from "./channel.js";
import { hubOf, useHeldChannel, useTidingsClient, type ProjectMessage } from "./react-core.js";
import type { SubscriptionState } from "./subscription.js";
import type { ConnectionState, MessageFrame, Position, PublishOptions, PublishResult, UnsubscribedInfo } from "./types.js";

export { TidingsProvider, useTidingsClient, toProjectMessage } from "./react-core.js";
export type { HeldChannel, ProjectMessage, TidingsProviderProps } from "./react-core.js";

// ---- hooks ------------------------------------------------------------------------------------

/** The client's connection state, re-rendering on every change. */
export function useConnectionState(): ConnectionState {
  const client = useTidingsClient();
  const subscribe = useCallback((fn: () => void) => client.on("state", fn), [client]);
  const get = useCallback(() => client.state, [client]);
  return useSyncExternalStore(subscribe, get, get);
}

export interface WebSocketState extends ConnectionState {
  lastMessage?: ProjectMessage;
}

export interface SendMessageInput<T = unknown> {
  type: string;
  projectId: string;
  data: T;
}

export interface UseWebSocketResult {
  state: WebSocketState;
  sendMessage: <T>(message: SendMessageInput<T>, options?: PublishOptions) => Promise<PublishResult>;
  subscribe: (projectId: string) => void;
  unsubscribe: (projectId: string) => void;
}

/**
 * The connection, project-style: `subscribe(projectId)`/`unsubscribe(projectId)` hold
 * `project:<projectId>` for this component (released on unmount), `state.lastMessage` is the
 * last project message the client received, `sendMessage` publishes `type` on the project.
 * A project the gateway unsubscribed (an operator's unsubscribe) is let go: no longer held,
 * so a later `subscribe(projectId)` subscribes it again.
 */
export function useWebSocket(): UseWebSocketResult {
  const client = useTidingsClient();
  const hub = hubOf(client);
  const conn = useConnectionState();
  const lastMessage = useSyncExternalStore(hub.subscribeLast, hub.getLast, hub.getLast);
  const held = useRef(new Set<string>());
  useEffect(() => {
    const mine = held.current;
    return () => {
      for (const p of mine) hub.release(projectChannel(p));
      mine.clear();
    };
  }, [hub]);
  useEffect(
    () =>
      client.on("unsubscribed", (info) => {
        if (!info.byServer || !info.channel.startsWith("project:")) return;
        const projectId = info.channel.slice("project:".length);
        if (held.current.delete(projectId)) hub.release(info.channel);
      }),
    [client, hub],
  );
  const subscribe = useCallback(
    (projectId: string) => {
      if (held.current.has(projectId)) return;
      hub.acquire(projectChannel(projectId));
      held.current.add(projectId);
    },
    [hub],
  );
  const unsubscribe = useCallback(
    (projectId: string) => {
      if (held.current.delete(projectId)) hub.release(projectChannel(projectId));
    },
    [hub],
  );
  const sendMessage = useCallback(
    <T,>({ type, projectId, data }: SendMessageInput<T>, options?: PublishOptions) =>
      client.publish(projectChannel(projectId), type, data, options),
    [client],
  );
  const state = useMemo(() => {
    const s: WebSocketState = { ...conn };
    if (lastMessage !== undefined) s.lastMessage = lastMessage;
    return s;
  }, [conn, lastMessage]);
  return { state, sendMessage, subscribe, unsubscribe };
}

export interface UseChannelOptions<T> {
  /** How many recent messages to keep (default 100). */
  limit?: number | undefined;
  onMessage?: ((m: MessageFrame<T>) => void) | undefined;
}

export interface UseChannelResult<T> {
  messages: MessageFrame<T>[];
  lastMessage: MessageFrame<T> | undefined;
  position: Position | null;
  /** The subscription's state: `error` when the channel cannot be subscribed (a bad name, refused by the gateway). */
  state: SubscriptionState;
  /** Why the channel is in `error` (or the last transient refusal), else `null`. */
  error: Error | null;
  /**
   * How the subscription ended while this hook held it (state `unsubscribed`): `{ channel,
   * reason, byServer }`, `byServer: true` when the gateway ended it (an operator's
   * unsubscribe). Else `null`. Messages already received stay in `messages`.
   */
  unsubscribed: UnsubscribedInfo | null;
}

/** Subscribes to a channel while mounted; keeps its last `limit` messages. */
export function useChannel<T = unknown>(channel: string, opts: UseChannelOptions<T> = {}): UseChannelResult<T> {
  const client = useTidingsClient();
  const limit = Math.max(1, opts.limit ?? 100);
  const [state, setState] = useState<{ channel: string; messages: MessageFrame<T>[] }>({ channel, messages: [] });
  const onMessage = opts.onMessage;
  const held = useHeldChannel<T>(client, channel, (m) => {
    setState((prev) => {
      const base = prev.channel === channel ? prev.messages : [];
      return { channel, messages: [...base, m].slice(-limit) };
    });
    onMessage?.(m);
  });
  const messages = state.channel === channel ? state.messages : [];
  const { state: subState, error, unsubscribed } = held;
  return { messages, lastMessage: messages[messages.length - 1], position: client.position(channel), state: subState, error, unsubscribed };
}

export { useNotifications, usePresence } from "./react-inbox.js";
export type { UseNotificationsOptions, UseNotificationsResult } from "./react-inbox.js";
export type { InboxItem, PresenceResult, UnsubscribedInfo } from "./types.js";
