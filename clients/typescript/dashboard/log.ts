/**
 * The event log (data-testid="event"): one row per message received, oldest first (arrival
 * order), the DOM keeping the latest MAX_EVENTS rows. Clicking a row shows the whole message.
 *
 * Rows live in blocks of CHUNK (`<ol class="chunk">`), each with `content-visibility: auto`:
 * the browser then lays out and paints only the blocks in view, and tracks 100 blocks rather
 * than 2,000 rows for visibility. Measured at 1,000 messages/s in Chromium, per-row
 * visibility alone kept the page's main thread busy enough to delay messages by ~100 ms.
 */
import { $, h } from "./dom.js";
import { clock } from "./format.js";
import type { Message } from "./state.js";

const MAX_EVENTS = 2000;
const CHUNK = 20;
const PREVIEW_CHARS = 240;

/** Each row's message, for the click that shows it in full. */
const rowData = new WeakMap<HTMLElement, Message>();
let eventsTotal = 0;
/** A scroll to the log's end is due in the next frame. */
let scrollPending = false;

function preview(data: unknown): string {
  let s: string;
  try {
    s = data === undefined ? "" : JSON.stringify(data) ?? "";
  } catch {
    s = String(data);
  }
  return s.length > PREVIEW_CHARS ? `${s.slice(0, PREVIEW_CHARS)}…` : s;
}

function eventRow(m: Message): HTMLLIElement {
  const li = h("li", "event");
  li.dataset.testid = "event";
  li.dataset.channel = m.channel;
  li.dataset.event = m.event;
  if (typeof m.seq === "number") li.dataset.seq = String(m.seq);
  if (typeof m.id === "string") li.dataset.id = m.id;
  const kind = m.channel.startsWith("user:") ? "user" : m.channel.startsWith("project:") ? "project" : "other";
  li.append(
    h("span", "ev-time", clock(m.ts)),
    h("span", `ev-channel ch-${kind}`, m.channel),
    h("span", "ev-name", m.event),
    h("span", "ev-seq", typeof m.seq === "number" ? `#${m.seq}` : "live"),
    h("span", "ev-data", preview(m.data)),
  );
  rowData.set(li, m);
  return li;
}

/** Rows in the DOM. */
let rows = 0;

/** The block new rows go to: the last one, or a new one when it is full. */
function tailChunk(list: HTMLElement): HTMLElement {
  const last = list.lastElementChild;
  if (last instanceof HTMLElement && last.childElementCount < CHUNK) return last;
  const chunk = h("ol", "chunk");
  list.append(chunk);
  return chunk;
}

/** Removes the oldest rows beyond MAX_EVENTS (an emptied block goes too). */
function trim(list: HTMLElement): void {
  while (rows > MAX_EVENTS) {
    const first = list.firstElementChild;
    if (!(first instanceof HTMLElement)) return;
    const excess = rows - MAX_EVENTS;
    if (first.childElementCount <= excess) {
      rows -= first.childElementCount;
      first.remove();
    } else {
      for (let i = 0; i < excess; i++) first.firstElementChild?.remove();
      rows -= excess;
    }
  }
}

/** Appends a batch's rows (one DOM update), drops the oldest beyond MAX_EVENTS, follows the end. */
export function appendEvents(batch: Message[]): void {
  const list = $("events");
  const scroller = $("log-scroll");
  // Follow new rows only while the log is scrolled to its end. Read before changing the DOM:
  // in an animation frame the layout is still clean then, so this costs no forced layout.
  const follow = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
  let chunk = tailChunk(list);
  let frag = document.createDocumentFragment();
  let room = CHUNK - chunk.childElementCount;
  for (let i = Math.max(0, batch.length - MAX_EVENTS); i < batch.length; i++) {
    const m = batch[i];
    if (!m) continue;
    if (room === 0) {
      chunk.append(frag);
      chunk = tailChunk(list);
      frag = document.createDocumentFragment();
      room = CHUNK;
    }
    frag.append(eventRow(m));
    room--;
    rows++;
  }
  chunk.append(frag);
  trim(list);
  eventsTotal += batch.length;
  $("log-count").textContent = eventsTotal.toLocaleString();
  if (follow && !scrollPending) {
    // Scrolled at the start of the next frame, when layout is clean again (before the next
    // update, whose frame callback is registered later): scrolling now would force a
    // synchronous layout of the whole log on every update.
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      scroller.scrollTop = scroller.scrollHeight;
    });
  }
}

/** The log header's "N duplicates dropped" badge, hidden while there are none. */
export function showDuplicates(count: number): void {
  const el = $("log-duplicates");
  el.textContent = `${count.toLocaleString()} duplicate${count === 1 ? "" : "s"} dropped`;
  el.dataset.count = String(count);
  el.hidden = count === 0;
}

function onEventClick(ev: Event): void {
  const target = ev.target instanceof Element ? ev.target.closest("li.event") : null;
  if (!(target instanceof HTMLElement)) return;
  const open = target.querySelector(":scope > pre.ev-full");
  if (open) {
    open.remove();
    target.classList.remove("open");
    return;
  }
  const m = rowData.get(target);
  if (!m) return;
  let text: string;
  try {
    text = JSON.stringify(m, null, 2);
  } catch {
    text = String(m.data);
  }
  target.classList.add("open");
  target.append(h("pre", "ev-full", text));
}

export function bindLog(): void {
  $("events").addEventListener("click", onEventClick);
}
