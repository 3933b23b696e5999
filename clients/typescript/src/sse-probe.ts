/**
 * Why an EventSource did not open. The EventSource API hides the HTTP status of a failed
 * stream (every failure is the same `error` event), yet a 401 (the token), a 403 (a channel
 * the token may not read) and a network failure call for different answers. So after a
 * failure before `open`, the client asks the same `/sse` URL again with `fetch`, the token
 * in `Authorization: Bearer` rather than in the URL, and reads the status (and, for an
 * error, the `{"error":{code,message}}` body). A 200 means the stream would open now: the
 * request is aborted as soon as its headers arrive.
 */
import { TidingsError } from "./errors.js";
import { errorFrom } from "./http.js";
import type { FetchLike } from "./types.js";

export interface ProbeResult {
  /** The HTTP status, or `null` when the request itself failed (network, timeout). */
  status: number | null;
  /** The error body of a non-2xx answer. */
  error: TidingsError | null;
}

export async function probeSse(fetchFn: FetchLike, url: string, token: string | undefined, timeoutMs: number): Promise<ProbeResult> {
  const ctl = typeof AbortController === "function" ? new AbortController() : null;
  const timer = setTimeout(() => ctl?.abort(), timeoutMs);
  try {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (token !== undefined) headers.Authorization = `Bearer ${token}`;
    const init: RequestInit = { headers, cache: "no-store" };
    if (ctl) init.signal = ctl.signal;
    const res = await fetchFn(url, init);
    if (res.ok) {
      ctl?.abort();
      void res.body?.cancel().catch(() => undefined);
      return { status: res.status, error: null };
    }
    return { status: res.status, error: await errorFrom(res) };
  } catch {
    return { status: null, error: null };
  } finally {
    clearTimeout(timer);
  }
}

/** The channels of `channels` that an error message names (whole names only: `project:p1` is not in `project:p10`). */
export function channelsNamed(message: string, channels: string[]): string[] {
  return channels.filter((c) => {
    for (let i = message.indexOf(c); i >= 0; i = message.indexOf(c, i + 1)) {
      const next = message.charAt(i + c.length);
      const prev = i > 0 ? message.charAt(i - 1) : "";
      if (!/[A-Za-z0-9_:-]/.test(next) && !/[A-Za-z0-9_:-]/.test(prev)) return true;
    }
    return false;
  });
}
