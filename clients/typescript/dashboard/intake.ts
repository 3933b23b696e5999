/**
 * Message intake: every received message (and every `window.tidings.ingest(frame)`) is
 * counted, queued and drawn once per animation frame (a 100 ms timer stands in when frames
 * stop in a hidden tab), so one message reaches the DOM within a frame and a thousand a
 * second cost one DOM update per frame.
 *
 * Duplicates: the SDK delivers each durable message once (it resumes after the last position
 * it delivered), so the check here is only a safety net. A repeat (same channel, seq and id)
 * is dropped but never silently: `stats.duplicates` counts it (tests assert 0), the log's
 * header shows the count and the console names the message.
 */
import { isObject } from "./format.js";
import { ackNotifications, onNotification, renderInboxIfDirty } from "./inbox.js";
import { appendEvents, showDuplicates } from "./log.js";
import { onPullRequest, onValidation, renderGithub } from "./github.js";
import { onRunProgress, renderRuns } from "./runs.js";
import { inboxChannel, stats, type Message } from "./state.js";

const SEEN_MAX = 20000;
/** Duplicates named in the console; later ones are only counted. */
const WARN_MAX = 20;

let queue: Message[] = [];
let rafHandle = 0;
let timerHandle: ReturnType<typeof setTimeout> | 0 = 0;
/** Durable messages received, by channel + seq + id, the latest SEEN_MAX. */
const seen = new Set<string>();

function toMessage(frame: unknown): Message | null {
  if (!isObject(frame)) return null;
  if (typeof frame.channel !== "string" || typeof frame.event !== "string") return null;
  return frame as unknown as Message;
}

/** Feeds a §4 message frame through the same path as a received one. */
export function ingest(frame: unknown): void {
  const m = toMessage(frame);
  if (m) receive(m);
}

/** Whether `m` repeats a durable message already received (then it is counted and reported). */
function isDuplicate(m: Message): boolean {
  if (typeof m.seq !== "number") return false;
  // A recreated stream's messages reuse sequences but not ids, so they are not repeats.
  const key = `${m.channel}\u0000${m.seq}\u0000${m.id ?? ""}`;
  if (!seen.has(key)) {
    seen.add(key);
    if (seen.size > SEEN_MAX) {
      const oldest = seen.values().next();
      if (!oldest.done) seen.delete(oldest.value);
    }
    return false;
  }
  stats.duplicates++;
  if (stats.duplicates <= WARN_MAX) {
    console.warn(`dashboard: duplicate ${m.channel} #${m.seq} (id ${m.id ?? "none"}) dropped`, m);
  }
  showDuplicates(stats.duplicates);
  return true;
}

export function receive(m: Message): void {
  if (isDuplicate(m)) return;
  stats.messages++;
  stats.byChannel[m.channel] = (stats.byChannel[m.channel] ?? 0) + 1;
  queue.push(m);
  schedule();
}

function schedule(): void {
  if (rafHandle || timerHandle) return;
  rafHandle = requestAnimationFrame(flush);
  // Animation frames stop in hidden tabs; the timer keeps the page current there.
  timerHandle = setTimeout(flush, 100);
}

/** Draws everything queued since the last frame: log rows, then the panels that changed. */
function flush(): void {
  if (rafHandle) cancelAnimationFrame(rafHandle);
  if (timerHandle) clearTimeout(timerHandle);
  rafHandle = 0;
  timerHandle = 0;
  const batch = queue;
  queue = [];
  if (batch.length === 0) return;
  const t0 = performance.now();
  try {
    appendEvents(batch);
    for (const m of batch) {
      try {
        dispatch(m);
      } catch (e) {
        console.warn("dashboard: message not shown", m, e);
      }
    }
    renderRuns();
    renderGithub();
    renderInboxIfDirty();
    ackNotifications();
  } finally {
    stats.rendered += batch.length;
    stats.flushes++;
    stats.lastFlushMs = performance.now() - t0;
    if (stats.lastFlushMs > stats.maxFlushMs) stats.maxFlushMs = stats.lastFlushMs;
  }
}

function dispatch(m: Message): void {
  switch (m.event) {
    case "agent_run_progress":
      onRunProgress(m);
      break;
    case "pr_notification":
      onPullRequest(m);
      break;
    case "validation_update":
      onValidation(m);
      break;
    case "notification":
      if (m.channel === inboxChannel()) onNotification(m);
      break;
    default:
      break;
  }
}
