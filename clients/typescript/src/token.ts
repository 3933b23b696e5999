/**
 * The client's token and its refresh. A WebSocket session ends with 4001 when its token
 * expires, so the client gets a new token from `getToken()` BEFORE `exp` (see `refreshDelay`
 * in jwt.ts: 90 % of the lifetime or 60 s before `exp`, whichever is earlier, never sooner
 * than half the lifetime, counted from the local time the token was received) and hands it to
 * the live connection with an `auth` frame: no reconnect, no lost message.
 *
 * A refreshed token is adopted only once it has been checked: it must expire later than the
 * current one and, on a live WebSocket, the gateway must have answered its `auth` frame with
 * `ok`. A refused token never replaces the working one. A failed refresh is retried a couple
 * of times with backoff while the token is still valid; after that the session runs until
 * the gateway closes it with 4001, and the reconnect path asks `getToken()` again.
 */
import { TidingsError } from "./errors.js";
import { decodeJwt, isExpired, localExpiry, refreshAt, type TokenClaims } from "./jwt.js";

/** Refresh attempts per due refresh (the first one included). */
export const REFRESH_ATTEMPTS = 3;

export interface TokenManagerOptions {
  token?: string;
  getToken?: () => Promise<string>;
  /** Hands a refreshed token to the live connection; rejects if the gateway refuses it. */
  apply: (token: string) => Promise<void>;
  /** A refreshed token was adopted (after `apply` succeeded). */
  adopted?: (token: string) => void;
  /** A refresh failed for good (all attempts). */
  onError: (error: TidingsError) => void;
  log: (...args: unknown[]) => void;
}

export class TokenManager {
  private _token: string | undefined;
  private _claims: TokenClaims | null = null;
  private receivedAt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inflight: Promise<string> | null = null;
  /** Bumped by `cancel()`, so a refresh already running does not re-arm a cancelled manager. */
  private generation = 0;

  constructor(private readonly opts: TokenManagerOptions) {
    if (opts.token !== undefined) this.set(opts.token);
  }

  get token(): string | undefined {
    return this._token;
  }

  get claims(): TokenClaims | null {
    return this._claims;
  }

  get canRenew(): boolean {
    return this.opts.getToken !== undefined;
  }

  /** Whether a token is needed before connecting: none yet, or an expired one. */
  needsRenewal(now = Date.now()): boolean {
    return this.canRenew && (this._token === undefined || isExpired(this._claims, now));
  }

  set(token: string): void {
    this._token = token;
    this._claims = decodeJwt(token);
    this.receivedAt = Date.now();
  }

  /**
   * Calls `getToken()` and adopts its token at once: for a connection about to be opened (the
   * gateway checks it there), after a 4001 close, or after an HTTP 401.
   */
  async renew(): Promise<string> {
    // A fresh call: one already in flight (a scheduled refresh) may have started before the
    // token was revoked, and could return a token issued before the revocation.
    const token = await this.fetch(true);
    this.set(token);
    return token;
  }

  /** Arms the refresh for the current token (no-op without `getToken` or `exp`). */
  schedule(): void {
    this.clearTimer();
    if (!this.canRenew) return;
    const at = refreshAt(this._claims, this.receivedAt);
    if (at === null) return;
    const gen = this.generation;
    this.timer = setTimeout(() => void this.refresh(0, gen), Math.max(0, at - Date.now()));
  }

  cancel(): void {
    this.generation++;
    this.clearTimer();
  }

  /** Calls `getToken()`, one call at a time unless `fresh`; the token is NOT adopted here. */
  private fetch(fresh = false): Promise<string> {
    const get = this.opts.getToken;
    if (!get) return Promise.reject(new TidingsError("unauthorized", "no getToken to renew the token with"));
    if (!this.inflight || fresh) {
      const call: Promise<string> = get()
        .then((t) => {
          if (typeof t !== "string" || t === "") throw new TidingsError("unauthorized", "getToken returned no token");
          return t;
        })
        .finally(() => {
          if (this.inflight === call) this.inflight = null;
        });
      this.inflight = call;
    }
    return this.inflight;
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Fetch, check, hand to the connection, and only then adopt. */
  private async refresh(attempt: number, gen: number): Promise<void> {
    this.timer = null;
    const oldExp = this._claims?.exp;
    const expiresAt = localExpiry(this._claims, this.receivedAt);
    try {
      const token = await this.fetch();
      const exp = decodeJwt(token)?.exp;
      if (oldExp !== undefined && exp !== undefined && exp <= oldExp) {
        throw new TidingsError("unauthorized", "getToken returned a token that expires no later than the current one");
      }
      if (gen !== this.generation) return;
      await this.opts.apply(token);
      if (gen !== this.generation) return;
      this.set(token);
      this.opts.adopted?.(token);
      this.schedule();
    } catch (e) {
      if (gen !== this.generation) return;
      this.retry(attempt, gen, expiresAt, e);
    }
  }

  private retry(attempt: number, gen: number, expiresAt: number | null, cause: unknown): void {
    const left = expiresAt === null ? Infinity : expiresAt - Date.now();
    this.opts.log("token refresh failed", cause);
    if (attempt + 1 >= REFRESH_ATTEMPTS || left <= 0) {
      this.opts.onError(new TidingsError("unauthorized", `token refresh failed: ${String(cause)}`, undefined, { cause }));
      return;
    }
    // 1 s, 2 s, … but always before the token ends.
    const delay = Math.min(1000 * 2 ** attempt, left / 2);
    this.timer = setTimeout(() => void this.refresh(attempt + 1, gen), delay);
  }
}
