/**
 * The wire frames of the Tidings WebSocket protocol (CONTRACT.md §4) and the public types
 * of the client. Field names are the server's, unchanged, so that a frame can be logged,
 * stored or compared without translation.
 */
import type { TidingsError } from "./errors.js";

/** The error codes a Tidings gateway sends, plus the ones this client raises itself. */
export type ErrorCode =
  | "unauthorized"
  | "forbidden"
  | "bad_request"
  | "bad_channel"
  | "rate_limited"
  | "too_large"
  | "not_found"
  | "unavailable"
  | "internal"
  // Raised by the client, never sent by a gateway:
  | "queue_full"
  | "timeout"
  | "disconnected"
  | "network"
  | "unknown_outcome";

/** The events of `client.on(…)`. */
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
  /** A subscription ended: by `sub.unsubscribe()` (`byServer: false`) or by the gateway (also the subscription's own `unsubscribed` event). */
  unsubscribed: [UnsubscribedInfo];
}

/** `{"code","message"}` in replies, `error` frames and HTTP error bodies. */
export interface ErrorBody {
  code: ErrorCode | (string & {});
  message: string;
}

/** A channel message. `seq`/`prev` are present on durable messages only. */
export interface MessageFrame<T = unknown> {
  type: "message";
  channel: string;
  event: string;
  data: T;
  id: string;
  ts: string;
  seq?: number;
  prev?: number;
}

export interface WelcomeFrame {
  type: "welcome";
  session: string;
  node: string;
  user: string;
  heartbeat_ms: number;
}

/** Answer to a command carrying an `id`; only the fields relevant to the command are set. */
export interface ReplyFrame {
  type: "reply";
  id?: number;
  ok: boolean;
  error?: ErrorBody;
  channel?: string;
  epoch?: string;
  recovered?: boolean;
  missed?: number;
  seq?: number;
  exp?: number;
  users?: string[];
}

export interface PongFrame {
  type: "pong";
  id?: number;
}

export interface ErrorFrame {
  type: "error";
  error: ErrorBody;
}

export interface ReconnectFrame {
  type: "reconnect";
  reason: string;
  retry_ms: number;
}

/** The gateway ended a subscription (an operator's `POST /api/v1/channels/{channel}/unsubscribe`). */
export interface UnsubscribedFrame {
  type: "unsubscribed";
  channel: string;
  reason: string;
}

export type ServerFrame = WelcomeFrame | MessageFrame | ReplyFrame | PongFrame | ErrorFrame | ReconnectFrame | UnsubscribedFrame;

export interface SubscribeFrame {
  type: "subscribe";
  id: number;
  channel: string;
  since?: number;
  epoch?: string;
}
export interface UnsubscribeFrame {
  type: "unsubscribe";
  id: number;
  channel: string;
}
export interface PublishFrame {
  type: "publish";
  id: number;
  channel: string;
  event: string;
  data: unknown;
  durable: boolean;
  msg_id: string;
}
export interface AckFrame {
  type: "ack";
  channel: string;
  seq: number;
}
export interface PingFrame {
  type: "ping";
  id: number;
}
export interface AuthFrame {
  type: "auth";
  id?: number;
  token: string;
}

export type ClientFrame = SubscribeFrame | UnsubscribeFrame | PublishFrame | AckFrame | PingFrame | AuthFrame;

/** Where a client stands on a channel: the last durable `seq` and the stream `epoch` it came with. */
export interface Position {
  seq: number;
  /** Absent only while the gateway has not yet said which epoch the channel is in. */
  epoch?: string;
}

export type ConnectionStatus = "connecting" | "connected" | "disconnected" | "error";

/** Immutable snapshot: a new object on every change, so it can feed `useSyncExternalStore`. */
export interface ConnectionState {
  status: ConnectionStatus;
  /** Why the client gave up (status `error` only). */
  error?: string;
  /** Reconnects scheduled since the last successful connection (reset by `welcome`). */
  reconnectAttempts: number;
}

export type TransportName = "websocket" | "sse";

/** Passed to `onDiscontinuity` when the gateway cannot complete a channel's history. */
export interface DiscontinuityInfo {
  channel: string;
  /** The `seq` the client asked to resume after. */
  since: number;
  /** The epoch the client held with `since` (absent if it had none). */
  epoch?: string;
  /** The stream's current epoch, as the gateway answered. */
  newEpoch?: string;
  /** `epoch_changed`: the stream was recreated; `history_incomplete`: retention or the replay limit dropped messages. */
  reason: "epoch_changed" | "history_incomplete";
  /** How many messages the gateway still replays after this notice. */
  missed?: number;
}

/**
 * How a subscription ended: `sub.unsubscribed` afterwards, and the argument of the
 * `unsubscribed` events of the subscription and of the client.
 */
export interface UnsubscribedInfo {
  channel: string;
  /** `"client"` after `sub.unsubscribe()`; else the gateway's reason (`"server"`: an operator unsubscribed it). */
  reason: string;
  /** `true` when the gateway ended the subscription (an `unsubscribed` frame or SSE event), `false` for `sub.unsubscribe()`. */
  byServer: boolean;
}

/** The minimum of the WebSocket API this client uses (browsers', Node ≥ 22's, `ws`, fakes). */
export interface WebSocketLike {
  readonly readyState?: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The minimum of the EventSource API this client uses. */
export interface EventSourceLike {
  readonly readyState?: number;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface TidingsClientOptions {
  /** The gateway's WebSocket URL, e.g. `ws://host:8080/ws`. */
  url: string;
  /** A JWT. Without it, `getToken` is called before the first connect. */
  token?: string | undefined;
  /** Returns a fresh JWT: called before the token expires, and once after a 4001 close. */
  getToken?: (() => Promise<string>) | undefined;
  /** Transports in order of preference; default `["websocket", "sse"]`. */
  transports?: TransportName[] | undefined;
  /** Base URL of the HTTP API and `/sse`; default derived from `url` (ws→http, wss→https, `/ws` stripped). */
  httpUrl?: string | undefined;
  WebSocket?: WebSocketConstructor | undefined;
  EventSource?: EventSourceConstructor | undefined;
  fetch?: FetchLike | undefined;
  /** Backoff floor, ms (default 500). */
  minReconnectDelay?: number | undefined;
  /** Backoff ceiling, ms (default 20000). */
  maxReconnectDelay?: number | undefined;
  /** Most publishes held at once, queued and awaiting their reply together (default 1000). */
  maxQueue?: number | undefined;
  /**
   * Largest publish frame, in bytes of JSON (default 65536, the gateway's default
   * `max_frame_bytes`); a larger publish rejects at once with `too_large`.
   */
  maxFrameBytes?: number | undefined;
  /** Ack every delivered durable `notification` message automatically (default false). */
  autoAck?: boolean | undefined;
  /** Per-command reply timeout, ms (default 10000); also the time a WebSocket has to reach `welcome` and an EventSource to open. */
  timeout?: number | undefined;
  /** Log protocol activity with `console.debug`. */
  debug?: boolean | undefined;
}

export interface SubscribeOptions<T = unknown> {
  onMessage?: ((message: MessageFrame<T>) => void) | undefined;
  onDiscontinuity?: ((info: DiscontinuityInfo) => void) | undefined;
  /** Called when the gateway refuses the subscription (`forbidden`, `bad_channel`, …; the subscription's state becomes `error`). */
  onError?: ((error: Error) => void) | undefined;
  /** Called once when the subscription ends, by `sub.unsubscribe()` or by the gateway (see `UnsubscribedInfo`). */
  onUnsubscribed?: ((info: UnsubscribedInfo) => void) | undefined;
  /** A position the application persisted: resume after it (used when the client knows none). */
  since?: Position | undefined;
}

export interface PublishOptions {
  /**
   * Store the message in the stream (replayable, gets a `seq`). Default `false`, the
   * gateway's own default for a `publish` frame. Over SSE every publish is durable (the
   * HTTP publish route only stores).
   */
  durable?: boolean | undefined;
  /** Idempotency key; generated when absent. Reuse it to retry a publish safely. */
  msgId?: string | undefined;
}

/** What a publish resolves with: the reply's fields, i.e. `{ seq }` for a durable publish, `{}` otherwise. */
export interface PublishResult {
  seq?: number;
}

export interface HistoryOptions {
  /** A `seq`, or a position (then its epoch is sent too). */
  since?: number | Position | undefined;
  limit?: number | undefined;
}
export interface HistoryResult {
  messages: MessageFrame[];
  recovered: boolean;
  more?: boolean;
  epoch?: string;
}
export interface PresenceResult {
  users: string[];
  connections: number;
}
export interface InboxItem {
  id: string;
  title: string;
  body: string;
  project?: string;
  priority: string;
  created_at: string;
  read: boolean;
}
export interface InboxResult {
  items: InboxItem[];
  unread: number;
  /** Cursor of the next page (pass it as `before`); `null` on the last page; absent from gateways without paging. */
  next?: string | null;
}
export interface InboxOptions {
  unread?: boolean | undefined;
  limit?: number | undefined;
  /** Only entries older than this cursor: the `next` of the previous page. */
  before?: string | undefined;
}
