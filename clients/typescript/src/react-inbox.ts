/**
 * `useNotifications` and `usePresence`: the HTTP-backed hooks.
 *
 * The inbox is read a page at a time: `fetchMore()` asks for the page after the last one
 * (`before` = the previous answer's `next`) and appends it, so each request stays one page
 * however far the user scrolls; `hasMore` is true while the gateway gives a `next`. (A
 * gateway without paging gives no `next`: then `fetchMore()` asks again with a larger
 * `limit`, and `hasMore` is true while a page comes back full.) Live `notification`
 * messages on `user:<user>` are merged in by id (never twice), including those that arrive
 * while a fetch is on its way.
 */
import { useCallback, useEffect, useRef, useState } from "react";
import { userChannel } from "./channel.js";
import { useHeldChannel, useTidingsClient } from "./react-core.js";
import type { InboxItem, InboxResult, MessageFrame, PresenceResult, UnsubscribedInfo } from "./types.js";

export interface UseNotificationsOptions {
  /** Items per page (default 20): the size of the first page and of each `fetchMore()`. */
  pageSize?: number | undefined;
}

export interface UseNotificationsResult {
  /** Newest first. */
  items: InboxItem[];
  unread: number;
  /** Marks an item read at once (optimistically) and on the server; undone if the server refuses. Never rejects: see `error`. */
  markRead: (id: string) => Promise<void>;
  hasMore: boolean;
  fetchMore: () => Promise<void>;
  refetch: () => Promise<void>;
  loading: boolean;
  /** The last failure: the inbox route's, a refused `markRead`, or the live channel's (`bad_channel`, `forbidden`). */
  error: Error | null;
  /** The live channel `user:<user>` ended while held (the gateway unsubscribed it): live items stop; `refetch` still works. Else `null`. */
  unsubscribed: UnsubscribedInfo | null;
}

interface View {
  user: string;
  items: InboxItem[];
  unread: number;
  hasMore: boolean;
  loading: boolean;
  error: Error | null;
}

/** The inbox item of a live `notification` message (data as the worker publishes it). */
export function notificationItem(m: MessageFrame): InboxItem | null {
  const d = (m.data ?? {}) as Record<string, unknown>;
  const id = typeof d.id === "string" ? d.id : m.id;
  if (typeof id !== "string" || id === "") return null;
  const item: InboxItem = {
    id,
    title: typeof d.title === "string" ? d.title : "",
    body: typeof d.body === "string" ? d.body : "",
    priority: typeof d.priority === "string" ? d.priority : "normal",
    created_at: typeof d.created_at === "string" ? d.created_at : m.ts,
    read: false,
  };
  if (typeof d.project === "string") item.project = d.project;
  return item;
}

const blank = (user: string): View => ({ user, items: [], unread: 0, hasMore: false, loading: true, error: null });

/** Sets an item's read flag, adjusting `unread` only if it changed. */
function setRead(v: View, id: string, read: boolean): View {
  const i = v.items.findIndex((x) => x.id === id);
  const item = v.items[i];
  if (!item || item.read === read) return v;
  const items = [...v.items];
  items[i] = { ...item, read };
  return { ...v, items, unread: Math.max(0, v.unread + (read ? -1 : 1)) };
}

/** A fetched page, with what arrived live meanwhile and the reads still on their way. */
function merge(user: string, r: InboxResult, limit: number, live: InboxItem[], reading: Set<string>): View {
  let unread = r.unread;
  const fetched = r.items.map((i) => {
    if (i.read || !reading.has(i.id)) return i;
    unread--;
    return { ...i, read: true };
  });
  const seen = new Set(fetched.map((i) => i.id));
  const extra: InboxItem[] = [];
  for (const i of [...live].reverse()) {
    if (seen.has(i.id)) continue;
    seen.add(i.id);
    extra.push(i);
    if (!i.read) unread++;
  }
  return { user, items: [...extra, ...fetched], unread: Math.max(0, unread), hasMore: more(r, limit), loading: false, error: null };
}

/** Whether there is a page after `r` (asked with `limit`). */
const more = (r: InboxResult, limit: number): boolean => (r.next === undefined ? r.items.length >= limit : r.next !== null);

/** The view with the older page `r` appended (items it shows already are kept as they are). */
function append(v: View, r: InboxResult, limit: number, reading: Set<string>): View {
  const seen = new Set(v.items.map((i) => i.id));
  const older = r.items.filter((i) => !seen.has(i.id)).map((i) => (reading.has(i.id) ? { ...i, read: true } : i));
  // `unread` counts the whole inbox, kept current by live messages and reads: unchanged by paging.
  return { ...v, items: [...v.items, ...older], hasMore: more(r, limit), loading: false, error: null };
}

export function useNotifications(user: string, opts: UseNotificationsOptions = {}): UseNotificationsResult {
  const client = useTidingsClient();
  const pageSize = Math.max(1, opts.pageSize ?? 20);
  const [view, setView] = useState<View>(() => blank(user));
  // A new user shows an empty inbox until its own page arrives.
  const current = view.user === user ? view : blank(user);
  const viewRef = useRef(current);
  viewRef.current = current;
  const limit = useRef(pageSize);
  // The cursor of the next page (`undefined`: the gateway does not page; grow `limit`).
  const cursor = useRef<string | null | undefined>(undefined);
  const request = useRef(0);
  const liveSinceRequest = useRef<InboxItem[]>([]);
  const reading = useRef(new Set<string>());

  const load = useCallback(
    async (lim: number, before?: string): Promise<void> => {
      const n = ++request.current;
      if (before === undefined) liveSinceRequest.current = [];
      setView((v) => (v.user === user ? { ...v, loading: true } : blank(user)));
      try {
        const r = await client.inbox(user, before === undefined ? { limit: lim } : { limit: lim, before });
        if (n !== request.current) return;
        cursor.current = r.next;
        if (before === undefined) {
          limit.current = lim;
          setView(merge(user, r, lim, liveSinceRequest.current, reading.current));
        } else {
          limit.current += lim;
          setView((v) => (v.user === user ? append(v, r, lim, reading.current) : v));
        }
      } catch (e) {
        if (n !== request.current) return;
        setView((v) => ({ ...(v.user === user ? v : blank(user)), loading: false, error: e as Error }));
      }
    },
    [client, user],
  );

  useEffect(() => {
    limit.current = pageSize;
    void load(pageSize);
  }, [load, pageSize]);

  const held = useHeldChannel(client, userChannel(user), (m) => {
    if (m.event !== "notification") return;
    const item = notificationItem(m);
    if (!item) return;
    liveSinceRequest.current.push(item);
    setView((v) => {
      if (v.user !== user || v.items.some((i) => i.id === item.id)) return v;
      return { ...v, items: [item, ...v.items], unread: v.unread + 1 };
    });
  });

  const markRead = useCallback(
    async (id: string): Promise<void> => {
      const wasUnread = viewRef.current.items.some((i) => i.id === id && !i.read);
      reading.current.add(id);
      setView((v) => setRead(v, id, true));
      try {
        await client.markRead(user, id);
      } catch (e) {
        if (wasUnread) setView((v) => setRead(v, id, false));
        setView((v) => ({ ...v, error: e as Error }));
      } finally {
        reading.current.delete(id);
      }
    },
    [client, user],
  );

  const fetchMore = useCallback((): Promise<void> => {
    const next = cursor.current;
    if (next === undefined) return load(limit.current + pageSize);
    if (next === null) return Promise.resolve();
    return load(pageSize, next);
  }, [load, pageSize]);
  // Everything shown so far again, in one request (the gateway caps a page at 500).
  const refetch = useCallback(() => load(Math.min(limit.current, 500)), [load]);
  const { items, unread, hasMore, loading } = current;
  // The inbox's own failure first, else the live channel's (e.g. `bad_channel` for a user id that is no channel id).
  const error = current.error ?? held.error;
  return { items, unread, markRead, hasMore, fetchMore, refetch, loading, error, unsubscribed: held.unsubscribed };
}

export interface UsePresenceOptions {
  /** Poll interval in ms (default 15000; 0 = fetch once). */
  intervalMs?: number | undefined;
}

/** Who is in a channel, cluster-wide, polled from the presence route. */
export function usePresence(
  channel: string,
  opts: UsePresenceOptions = {},
): { users: string[]; connections: number; refetch: () => Promise<void> } {
  const client = useTidingsClient();
  const intervalMs = opts.intervalMs ?? 15_000;
  const [p, setP] = useState<PresenceResult & { channel: string }>({ channel, users: [], connections: 0 });
  const request = useRef(0);
  const refetch = useCallback(async (): Promise<void> => {
    const n = ++request.current;
    try {
      const r = await client.presence(channel);
      if (n === request.current) setP({ channel, users: r.users, connections: r.connections });
    } catch {
      // Keep the last answer; the next poll tries again.
    }
  }, [client, channel]);
  useEffect(() => {
    void refetch();
    if (!(intervalMs > 0)) return;
    const t = setInterval(() => void refetch(), intervalMs);
    return () => clearInterval(t);
  }, [refetch, intervalMs]);
  const mine = p.channel === channel ? p : { users: [], connections: 0 };
  return { users: mine.users, connections: mine.connections, refetch };
}
