/**
 * Reads a JWT's claims WITHOUT verifying it. The client never trusts these values for
 * access decisions (the gateway does that); it only needs `exp` to refresh the token in
 * time, and `sub`/`projects` to know the user and the projects before the first `welcome`
 * (the dashboard opens its project channels from them).
 */
export interface TokenClaims {
  sub?: string;
  exp?: number;
  iat?: number;
  nbf?: number;
  projects?: string[];
  publish?: string[];
  role?: string;
}

function base64UrlDecode(part: string): string {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === "string");

/** The claims of `token`, or `null` when it is not a readable JWT. */
export function decodeJwt(token: string): TokenClaims | null {
  const payload = token.split(".")[1];
  if (payload === undefined) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(base64UrlDecode(payload));
  } catch {
    return null;
  }
  if (typeof raw !== "object" || raw === null) return null;
  const r = raw as Record<string, unknown>;
  const claims: TokenClaims = {};
  if (typeof r.sub === "string") claims.sub = r.sub;
  if (typeof r.exp === "number") claims.exp = r.exp;
  if (typeof r.iat === "number") claims.iat = r.iat;
  if (typeof r.nbf === "number") claims.nbf = r.nbf;
  if (typeof r.role === "string") claims.role = r.role;
  if (isStringArray(r.projects)) claims.projects = r.projects;
  if (isStringArray(r.publish)) claims.publish = r.publish;
  return claims;
}

/** How long before `exp` a refresh starts at the latest. */
export const REFRESH_MARGIN_MS = 60_000;

/** The shortest wait before refreshing a token, whatever its claims say. */
export const MIN_REFRESH_MS = 5_000;

/**
 * How long after receiving a token to refresh it, in ms, or `null` when it has no `exp`
 * (nothing to refresh). With L the token's lifetime (`exp − iat`; `exp −` the local receive
 * time when it has no `iat`): `min(0.9·L, L − 60 s)`, floored at `max(L/2, 5 s)`.
 *
 * The delay is counted from the LOCAL time the token was received and L comes from the
 * token's own claims, so a client clock ahead of the gateway's cannot make a refresh due at
 * once (a token "already expired" by the local clock still waits 90 % of its lifetime), and a
 * short token (L ≤ 60 s, where `L − 60 s` is not positive) waits half its lifetime instead of
 * being refreshed again right after each refresh.
 */
export function refreshDelay(claims: TokenClaims | null, receivedAt: number): number | null {
  if (!claims || claims.exp === undefined) return null;
  const lifetime = claims.iat !== undefined ? (claims.exp - claims.iat) * 1000 : claims.exp * 1000 - receivedAt;
  const due = Math.min(lifetime * 0.9, lifetime - REFRESH_MARGIN_MS);
  return Math.max(due, lifetime / 2, MIN_REFRESH_MS);
}

/** When to refresh, as an absolute local time in ms: `receivedAt + refreshDelay(…)`. */
export function refreshAt(claims: TokenClaims | null, receivedAt: number): number | null {
  const delay = refreshDelay(claims, receivedAt);
  return delay === null ? null : receivedAt + delay;
}

/**
 * The local time (ms) the token stops working, estimated as `receivedAt + L` (see
 * `refreshDelay`) so that it does not depend on the local clock agreeing with the gateway's;
 * `null` without `exp`.
 */
export function localExpiry(claims: TokenClaims | null, receivedAt: number): number | null {
  if (!claims || claims.exp === undefined) return null;
  return claims.iat !== undefined ? receivedAt + (claims.exp - claims.iat) * 1000 : claims.exp * 1000;
}

/** Whether the token's `exp` has passed (a token without `exp` never expires here). */
export function isExpired(claims: TokenClaims | null, now: number): boolean {
  return claims?.exp !== undefined && claims.exp * 1000 <= now;
}
