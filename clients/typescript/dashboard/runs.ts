/**
 * Agent runs (data-testid="agent-run"): one bar per run, keyed by channel + `run_id`, the
 * latest value wins. An `agent_run_progress` event's data is
 * `{"run_id", "progress" (0–100), "status"?, "step"?}`. The newest run is on top; updates
 * stay in place.
 */
import { $, h } from "./dom.js";
import { clock, isObject, projectOf, str } from "./format.js";
import type { Message } from "./state.js";

const MAX_RUNS = 300;

interface Run {
  key: string;
  runId: string;
  project: string;
  progress: number;
  status: string | null;
  step: string | null;
  updated: string | undefined;
  el: HTMLLIElement | null;
}

const runs = new Map<string, Run>();
const dirtyRuns = new Set<Run>();

/** 0–100 (clamped, two decimals) from a number or numeric string; else null. */
function parseProgress(v: unknown): number | null {
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n)) return null;
  return Math.round(Math.min(100, Math.max(0, n)) * 100) / 100;
}

export function onRunProgress(m: Message): void {
  const d = m.data;
  if (!isObject(d)) return;
  const runId = str(d.run_id);
  if (runId === null || runId === "") return;
  const key = `${m.channel}\u0000${runId}`;
  let run = runs.get(key);
  if (!run) {
    run = { key, runId, project: projectOf(m.channel), progress: 0, status: null, step: null, updated: m.ts, el: null };
    runs.set(key, run);
  }
  const progress = parseProgress(d.progress);
  if (progress !== null) run.progress = progress;
  if (d.status !== undefined) run.status = str(d.status);
  if (d.step !== undefined) run.step = str(d.step);
  run.updated = m.ts;
  dirtyRuns.add(run);
}

/** Draws the runs that changed since the last frame. */
export function renderRuns(): void {
  if (dirtyRuns.size === 0) return;
  for (const run of dirtyRuns) if (runs.get(run.key) === run) renderRun(run);
  dirtyRuns.clear();
  $("runs-count").textContent = String(runs.size);
}

/** A new run's row, put on top of the list (the oldest beyond MAX_RUNS are dropped). */
function newRunRow(run: Run): HTMLLIElement {
  const li = h("li", "run");
  li.dataset.testid = "agent-run";
  li.dataset.runId = run.runId;
  const head = h("div", "run-head");
  head.append(h("span", "run-id", run.runId), h("span", "chip", run.project), h("span", "badge run-status"), h("span", "run-pct"));
  const bar = h("div", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-label", `run ${run.runId}`);
  bar.append(h("div", "fill"));
  li.append(head, bar, h("div", "run-step"));
  const list = $("runs");
  list.prepend(li);
  while (list.childElementCount > MAX_RUNS) {
    const last = list.lastElementChild;
    if (!(last instanceof HTMLElement)) break;
    for (const [k, r] of runs) if (r.el === last) runs.delete(k);
    last.remove();
  }
  return li;
}

function renderRun(run: Run): void {
  const li = run.el ?? newRunRow(run);
  run.el = li;
  const pct = String(run.progress);
  li.dataset.progress = pct;
  li.dataset.status = run.status ?? "";
  li.className = `run st-${statusClass(run.status, run.progress)}`;
  const badge = li.querySelector<HTMLElement>(".run-status");
  if (badge) {
    badge.textContent = run.status ?? "";
    badge.hidden = run.status === null || run.status === "";
  }
  const pctEl = li.querySelector<HTMLElement>(".run-pct");
  if (pctEl) pctEl.textContent = `${pct}%`;
  li.querySelector<HTMLElement>(".bar")?.setAttribute("aria-valuenow", pct);
  const fill = li.querySelector<HTMLElement>(".fill");
  if (fill) fill.style.width = `${run.progress}%`;
  const step = li.querySelector<HTMLElement>(".run-step");
  if (step) {
    step.textContent = run.step ?? "";
    step.hidden = !run.step;
  }
  li.title = run.updated ? `updated ${clock(run.updated)}` : "";
}

function statusClass(status: string | null, progress: number): string {
  const s = (status ?? "").toLowerCase();
  if (/fail|error|cancel|abort|timed_out|timeout/.test(s)) return "bad";
  if (/succe|complete|done|finish|pass|ok/.test(s)) return "good";
  if (/queue|pend|wait/.test(s)) return "idle";
  if (s === "" && progress >= 100) return "good";
  return "busy";
}
