/**
 * The user's inbox (data-testid="inbox-unread", "inbox-item", "mark-read"): loaded
 * (`limit: 50`) on every connect and after a history gap; live `notification` messages on
 * `user:<sub>` are added (deduplicated by id), raise the unread count and are acked;
 * mark-read is optimistic and undone if the request fails.
 */
import { $, h, setNote } from "./dom.js";
import { cssToken, errorText, isObject, relTime, str } from "./format.js";
import { inboxChannel, session, type Message } from "./state.js";

const MAX_INBOX = 300;

interface InboxEntry {
  id: string;
  title: string;
  body: string;
  project: string | null;
  priority: string;
  created_at: string;
  read: boolean;
}

const inbox = {
  items: new Map<string, InboxEntry>(),
  unread: 0,
  loaded: false,
  gen: 0,
  /** Live notifications that arrived while a load was in flight, merged into its result. */
  duringLoad: null as Map<string, InboxEntry> | null,
  /** Items marked read locally whose request has not been answered yet. */
  pendingRead: new Set<string>(),
  dirty: false,
  toAck: [] as number[],
};

function toEntry(v: unknown, fallbackId?: string): InboxEntry | null {
  if (!isObject(v)) return null;
  const id = str(v.id) ?? fallbackId ?? null;
  if (!id) return null;
  return {
    id,
    title: str(v.title) ?? "",
    body: str(v.body) ?? "",
    project: str(v.project),
    priority: str(v.priority) ?? "normal",
    created_at: str(v.created_at) ?? "",
    read: v.read === true,
  };
}

/** A notification on `user:<sub>`: listed unread (once per id), its seq acked after drawing. */
export function onNotification(m: Message): void {
  const item = toEntry(m.data, m.id);
  if (!item) return;
  item.read = false;
  if (!item.created_at && m.ts) item.created_at = m.ts;
  if (typeof m.seq === "number") inbox.toAck.push(m.seq);
  inbox.duringLoad?.set(item.id, item);
  if (inbox.items.has(item.id)) return; // already listed (loaded, or a replay)
  inbox.items.set(item.id, item);
  inbox.unread++;
  inbox.dirty = true;
}

/** Acks the notifications drawn in this frame. */
export function ackNotifications(): void {
  if (inbox.toAck.length === 0) return;
  const seqs = inbox.toAck;
  inbox.toAck = [];
  const client = session.client;
  const channel = inboxChannel();
  if (!client || !channel) return;
  for (const seq of seqs) {
    try {
      client.ack(channel, seq);
    } catch (e) {
      console.warn("dashboard: ack failed", e);
    }
  }
}

export function inboxNote(text: string | null): void {
  setNote($("inbox-note"), text);
}

// ---------------------------------------------------------------------------------------
// Loading

/** The items and unread count of an inbox answer, with what changed while it was in flight. */
function merge(res: unknown): { items: Map<string, InboxEntry>; unread: number } {
  const items = new Map<string, InboxEntry>();
  let unread = 0;
  if (isObject(res) && Array.isArray(res.items)) {
    for (const raw of res.items) {
      const it = toEntry(raw);
      if (it && !items.has(it.id)) items.set(it.id, it);
    }
    unread = typeof res.unread === "number" && Number.isFinite(res.unread) ? res.unread : 0;
  }
  if (!isObject(res) || typeof res.unread !== "number") {
    for (const it of items.values()) if (!it.read) unread++;
  }
  for (const [id, it] of inbox.duringLoad ?? []) {
    if (!items.has(id)) {
      items.set(id, it);
      if (!it.read) unread++;
    }
  }
  for (const id of inbox.pendingRead) {
    const it = items.get(id);
    if (it && !it.read) {
      it.read = true;
      unread--;
    }
  }
  return { items, unread };
}

/** (Re)loads the inbox; a later load supersedes one still in flight. */
export async function loadInbox(): Promise<void> {
  const c = session.client;
  const user = session.config?.user;
  if (!c || !user) {
    inboxNote(user ? null : "No user in the token: the inbox is unavailable.");
    return;
  }
  const gen = ++inbox.gen;
  inbox.duringLoad = new Map();
  try {
    const res: unknown = await c.inbox(user, { limit: 50 });
    if (gen !== inbox.gen) return;
    const { items, unread } = merge(res);
    inbox.items = items;
    inbox.unread = Math.max(0, unread);
    inbox.loaded = true;
    inboxNote(null);
  } catch (e) {
    if (gen !== inbox.gen) return;
    inboxNote(`Inbox unavailable: ${errorText(e)}`);
  } finally {
    if (gen === inbox.gen) inbox.duringLoad = null;
  }
  inbox.dirty = true;
  renderInboxIfDirty();
}

// ---------------------------------------------------------------------------------------
// Drawing

function entryTime(it: InboxEntry): number {
  const t = Date.parse(it.created_at);
  return Number.isNaN(t) ? 0 : t;
}

interface Row {
  li: HTMLLIElement;
  /** What the row's text was drawn from, to redraw it only when that changes. */
  sig: string;
}

/** Rows by item id, kept across renders: a row (and its button) is updated in place, never
 *  replaced, so a click in progress is not lost when the list changes under it. */
const inboxRows = new Map<string, Row>();

export function renderInboxIfDirty(): void {
  if (!inbox.dirty) return;
  inbox.dirty = false;
  renderInbox();
}

/** The unread count, then the items newest first (the oldest beyond MAX_INBOX dropped). */
function renderInbox(): void {
  const count = $("inbox-unread");
  count.textContent = String(inbox.unread);
  count.dataset.count = String(inbox.unread);
  count.classList.toggle("zero", inbox.unread === 0);

  const sorted = [...inbox.items.values()].sort((a, b) => entryTime(b) - entryTime(a));
  if (sorted.length > MAX_INBOX) {
    for (const it of sorted.splice(MAX_INBOX)) inbox.items.delete(it.id);
  }
  const list = $("inbox");
  let prev: Element | null = null;
  for (const it of sorted) {
    let row = inboxRows.get(it.id);
    if (!row) {
      row = { li: h("li"), sig: "" };
      inboxRows.set(it.id, row);
    }
    fillInboxRow(row, it);
    const at: Element | null = prev ? prev.nextElementSibling : list.firstElementChild;
    if (at !== row.li) list.insertBefore(row.li, at);
    prev = row.li;
  }
  for (const [id, row] of inboxRows) {
    if (!inbox.items.has(id)) {
      row.li.remove();
      inboxRows.delete(id);
    }
  }
}

function inboxText(it: InboxEntry): HTMLDivElement {
  const text = h("div", "inbox-text");
  text.append(h("div", "inbox-title", it.title || "(no title)"));
  if (it.body) text.append(h("div", "inbox-body", it.body));
  const meta = h("div", "meta");
  if (it.priority !== "normal") meta.append(h("span", `badge prio prio-${cssToken(it.priority)}`, it.priority));
  if (it.project) meta.append(h("span", "chip", it.project));
  if (it.created_at) {
    const t = h("span", "time", relTime(it.created_at));
    t.title = it.created_at;
    t.dataset.ts = it.created_at;
    meta.append(t);
  }
  text.append(meta);
  return text;
}

function fillInboxRow(row: Row, it: InboxEntry): void {
  const li = row.li;
  li.className = `inbox-item prio-${cssToken(it.priority)} ${it.read ? "read" : "unread"}`;
  li.dataset.testid = "inbox-item";
  li.dataset.id = it.id;
  li.dataset.read = String(it.read);
  const sig = JSON.stringify([it.title, it.body, it.priority, it.project, it.created_at]);
  if (sig !== row.sig) {
    row.sig = sig;
    const text = inboxText(it);
    const old = li.querySelector(":scope > .inbox-text");
    if (old) old.replaceWith(text);
    else li.prepend(text);
  }
  let btn = li.querySelector<HTMLButtonElement>(":scope > button.mark-read");
  if (!btn) {
    btn = h("button", "mark-read");
    btn.type = "button";
    btn.dataset.testid = "mark-read";
    li.append(btn);
  }
  btn.dataset.id = it.id;
  btn.textContent = it.read ? "Read" : "Mark read";
  btn.disabled = it.read;
}

/** Keeps "5 min ago" labels current. */
export function refreshInboxTimes(): void {
  for (const t of $("inbox").querySelectorAll<HTMLElement>(".time[data-ts]")) {
    const label = relTime(t.dataset.ts ?? "");
    if (t.textContent !== label) t.textContent = label;
  }
}

// ---------------------------------------------------------------------------------------
// Mark as read

function onInboxClick(ev: Event): void {
  const btn = ev.target instanceof Element ? ev.target.closest("button.mark-read") : null;
  if (!(btn instanceof HTMLButtonElement) || btn.disabled) return;
  const id = btn.dataset.id;
  if (id) void markRead(id);
}

async function markRead(id: string): Promise<void> {
  const it = inbox.items.get(id);
  const c = session.client;
  const user = session.config?.user;
  if (!it || it.read || !c || !user) return;
  // Optimistic: count and style change now, restored if the request fails.
  it.read = true;
  inbox.unread = Math.max(0, inbox.unread - 1);
  inbox.pendingRead.add(id);
  inbox.dirty = true;
  renderInboxIfDirty();
  try {
    await c.markRead(user, id);
  } catch (e) {
    const cur = inbox.items.get(id);
    if (cur && cur.read) {
      cur.read = false;
      inbox.unread++;
    }
    inboxNote(`Could not mark as read: ${errorText(e)}`);
    inbox.dirty = true;
    renderInboxIfDirty();
  } finally {
    inbox.pendingRead.delete(id);
  }
}

export function bindInbox(): void {
  $("inbox").addEventListener("click", onInboxClick);
}
