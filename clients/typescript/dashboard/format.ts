/**
 * Reading untrusted message fields and formatting them for display: pure functions, no DOM.
 */

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A displayable string from a scalar field (strings, numbers, booleans); else null. */
export function str(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  if (typeof v === "boolean") return String(v);
  return null;
}

/** A URL usable as a link: http(s) only (no javascript:, data:, …). */
export function safeUrl(v: unknown): string | null {
  if (typeof v !== "string" || v === "") return null;
  try {
    const u = new URL(v, location.href);
    return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
  } catch {
    return null;
  }
}

/** A CSS-class-safe token for a status-like value. */
export function cssToken(v: string | null): string {
  return (v ?? "none").toLowerCase().replace(/[^a-z0-9_-]/g, "_").slice(0, 40) || "none";
}

export function shortSha(v: string | null): string {
  return v ? v.slice(0, 7) : "";
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, "0");
}

/** Local wall-clock time of an RFC 3339 stamp, `HH:MM:SS.mmm` (now, without one). */
export function clock(ts: string | undefined): string {
  const d = ts ? new Date(ts) : new Date();
  if (Number.isNaN(d.getTime())) return ts ?? "";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** "just now", "5 min ago", "3 h ago", else the local date. */
export function relTime(ts: string): string {
  const t = Date.parse(ts);
  if (Number.isNaN(t)) return ts;
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

export function errorText(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (isObject(e) && typeof e.message === "string") return e.message;
  return String(e);
}

/** The project id of a `project:<id>` channel; any other channel as is. */
export function projectOf(channel: string): string {
  return channel.startsWith("project:") ? channel.slice(8) : channel;
}
