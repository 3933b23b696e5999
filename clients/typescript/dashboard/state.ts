/**
 * What the modules share: the message shape, the page's session (its configuration and
 * client) and the counters exposed to tests and benchmarks as `window.tidings.stats`.
 */
import type { TidingsClient, TokenClaims } from "/client/tidings.mjs";

/** The §4 `message` frame, as much of it as the dashboard reads. */
export interface Message {
  channel: string;
  event: string;
  data?: unknown;
  id?: string | undefined;
  ts?: string | undefined;
  seq?: number | null | undefined;
  prev?: number | null | undefined;
}

/** What the page runs with: the token, and the user and projects derived from it. */
export interface Config {
  token: string;
  /** The token's `sub`, when it is a valid id. */
  user: string | null;
  projects: string[];
  /** The token's claims, decoded without verification (the gateway verifies); null when unreadable. */
  claims: TokenClaims | null;
}

export interface Stats {
  /** Messages received (after dropping exact duplicates). */
  messages: number;
  /** Messages whose event row reached the DOM (or was skipped as older than the latest 2,000). */
  rendered: number;
  /**
   * Durable messages seen twice (same channel, seq and id) and dropped. The SDK delivers each
   * durable message once, so this stays 0; a non-zero count is a bug made visible (the log's
   * header shows it and the console says which message).
   */
  duplicates: number;
  /** DOM updates (one per animation frame with news). */
  flushes: number;
  /** Duration of the last and the longest DOM update, in ms. */
  lastFlushMs: number;
  maxFlushMs: number;
  /** Messages received per channel. */
  byChannel: Record<string, number>;
  /** History gaps reported by the SDK. */
  discontinuities: number;
}

/** `window.tidings`, for tests, benchmarks and the browser console. */
export interface Exposed {
  client: TidingsClient | null;
  stats: Stats;
  ingest: (frame: unknown) => void;
  config: { user: string | null; projects: string[]; channels: string[] } | null;
}

declare global {
  interface Window {
    tidings: Exposed;
  }
}

export const stats: Stats = {
  messages: 0,
  rendered: 0,
  duplicates: 0,
  flushes: 0,
  lastFlushMs: 0,
  maxFlushMs: 0,
  byChannel: {},
  discontinuities: 0,
};

/** Set once, when the page starts with a token. */
export const session: { config: Config | null; client: TidingsClient | null } = {
  config: null,
  client: null,
};

/** `user:<sub>`, the inbox's channel, or null without a user. */
export function inboxChannel(): string | null {
  const user = session.config?.user;
  return user ? `user:${user}` : null;
}
