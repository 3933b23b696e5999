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

/**
 * When to refresh a token, as an absolute time in ms: at 90 % of its lifetime or 60 s before
 * `exp`, whichever is earlier, but never in the past. `receivedAt` stands in for `iat` when
 * the token has none. `null` when the token has no `exp` (nothing to refresh).
 */
export function refreshAt(claims: TokenClaims | null, receivedAt: number, now: number): number | null {
  if (!claims || claims.exp === undefined) return null;
  const exp = claims.exp * 1000;
  const issued = claims.iat !== undefined ? claims.iat * 1000 : receivedAt;
  const lifetime = Math.max(0, exp - issued);
  const at = Math.min(issued + lifetime * 0.9, exp - REFRESH_MARGIN_MS);
  return Math.max(now, at);
}

/** Whether the token's `exp` has passed (a token without `exp` never expires here). */
export function isExpired(claims: TokenClaims | null, now: number): boolean {
  return claims?.exp !== undefined && claims.exp * 1000 <= now;
}
