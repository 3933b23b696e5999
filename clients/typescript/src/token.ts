/**
 * The client's token and its refresh. A WebSocket session ends with 4001 when its token
 * expires, so the client gets a new token from `getToken()` BEFORE `exp` — at 90 % of the
 * token's lifetime or 60 s before `exp`, whichever is earlier — and hands it to the live
 * connection with an `auth` frame: no reconnect, no lost message. A failed refresh is retried
 * a couple of times with backoff while the token is still valid; after that the session runs
 * until the gateway closes it with 4001, and the reconnect path asks `getToken()` again.
 */
import { TidingsError } from "./errors.js";
import { decodeJwt, isExpired, refreshAt, type TokenClaims } from "./jwt.js";

/** Refresh attempts per due refresh (the first one included). */
export const REFRESH_ATTEMPTS = 3;

export interface TokenManagerOptions {
  token?: string;
  getToken?: () => Promise<string>;
  /** Hands a refreshed token to the live connection; rejects if the gateway refuses it. */
  apply: (token: string) => Promise<void>;
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

  /** Calls `getToken()` (one call at a time) and adopts its token. */
  renew(): Promise<string> {
    const get = this.opts.getToken;
    if (!get) return Promise.reject(new TidingsError("unauthorized", "no getToken to renew the token with"));
    if (!this.inflight) {
      this.inflight = get()
        .then((t) => {
          if (typeof t !== "string" || t === "") throw new TidingsError("unauthorized", "getToken returned no token");
          this.set(t);
          return t;
        })
        .finally(() => {
          this.inflight = null;
        });
    }
    return this.inflight;
  }

  /** Arms the refresh for the current token (no-op without `getToken` or `exp`). */
  schedule(): void {
    this.clearTimer();
    if (!this.canRenew) return;
    const now = Date.now();
    const at = refreshAt(this._claims, this.receivedAt, now);
    if (at === null) return;
    const gen = this.generation;
    this.timer = setTimeout(() => void this.refresh(0, gen), at - now);
  }

  cancel(): void {
    this.generation++;
    this.clearTimer();
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private async refresh(attempt: number, gen: number): Promise<void> {
    this.timer = null;
    const oldExp = this._claims?.exp;
    try {
      const token = await this.renew();
      const exp = decodeJwt(token)?.exp;
      if (oldExp !== undefined && exp !== undefined && exp <= oldExp) {
        throw new TidingsError("unauthorized", "getToken returned a token that expires no later than the current one");
      }
      if (gen !== this.generation) return;
      await this.opts.apply(token);
      if (gen === this.generation) this.schedule();
    } catch (e) {
      if (gen !== this.generation) return;
      this.retry(attempt, gen, oldExp, e);
    }
  }

  private retry(attempt: number, gen: number, exp: number | undefined, cause: unknown): void {
    const left = exp === undefined ? Infinity : exp * 1000 - Date.now();
    this.opts.log("token refresh failed", cause);
    if (attempt + 1 >= REFRESH_ATTEMPTS || left <= 0) {
      this.opts.onError(new TidingsError("unauthorized", `token refresh failed: ${String(cause)}`, undefined, { cause }));
      return;
    }
    // 1 s, 2 s, … but always before `exp`.
    const delay = Math.min(1000 * 2 ** attempt, left / 2);
    this.timer = setTimeout(() => void this.refresh(attempt + 1, gen), delay);
  }
}
