/**
 * GitHub activity, as the gateway's webhook route publishes it (CONTRACT §6):
 * - pull requests (`pr_notification`, data-testid="pr-item"): one item per repository +
 *   number, the latest wins and moves to the top;
 * - checks (`validation_update`, data-testid="validation-item"): one item per channel +
 *   name + head_sha, the latest wins and moves to the top.
 * Both draw their title, badges and meta line with the same builders below.
 */
import { $, h } from "./dom.js";
import { clock, cssToken, isObject, projectOf, safeUrl, shortSha, str } from "./format.js";
import type { Message } from "./state.js";

const MAX_PRS = 300;
const MAX_CHECKS = 300;

/** A PR or a check: its latest data and its row. */
interface Item {
  key: string;
  data: Record<string, unknown>;
  ts: string | undefined;
  el: HTMLLIElement | null;
}

const prs = new Map<string, Item>();
const dirtyPrs = new Set<Item>();
const checks = new Map<string, Item>();
const dirtyChecks = new Set<Item>();

/** Records the latest data of the item `key` of `all`, to be drawn in the next frame. */
function update(all: Map<string, Item>, dirty: Set<Item>, key: string, m: Message, d: Record<string, unknown>): void {
  let item = all.get(key);
  if (!item) {
    item = { key, data: d, ts: m.ts, el: null };
    all.set(key, item);
  }
  item.data = d;
  item.ts = m.ts;
  dirty.add(item);
}

export function onPullRequest(m: Message): void {
  const d = m.data;
  if (!isObject(d)) return;
  const number = str(d.number);
  const repo = str(d.repository) ?? projectOf(m.channel);
  const key = number !== null ? `${repo}#${number}` : `${m.channel}\u0000${m.id ?? ""}`;
  update(prs, dirtyPrs, key, m, d);
}

export function onValidation(m: Message): void {
  const d = m.data;
  if (!isObject(d)) return;
  const name = str(d.name) ?? "";
  const sha = str(d.head_sha) ?? "";
  const key = name || sha ? `${m.channel}\u0000${name}\u0000${sha}` : `${m.channel}\u0000${m.id ?? ""}`;
  update(checks, dirtyChecks, key, m, d);
}

/** Draws the PRs and checks that changed since the last frame. */
export function renderGithub(): void {
  if (dirtyPrs.size) {
    renderMoved($("prs"), dirtyPrs, renderPr, prs, MAX_PRS);
    $("prs-count").textContent = String(prs.size);
  }
  if (dirtyChecks.size) {
    renderMoved($("checks"), dirtyChecks, renderCheck, checks, MAX_CHECKS);
    $("checks-count").textContent = String(checks.size);
  }
}

/** Renders updated items and moves them to the top of their list, latest first. */
function renderMoved(list: HTMLElement, dirty: Set<Item>, render: (item: Item) => void, all: Map<string, Item>, max: number): void {
  for (const item of dirty) {
    if (all.get(item.key) !== item) continue;
    render(item);
    if (item.el) list.prepend(item.el);
  }
  dirty.clear();
  while (list.childElementCount > max) {
    const last = list.lastElementChild;
    if (!last) break;
    for (const [k, v] of all) if (v.el === last) all.delete(k);
    last.remove();
  }
}

// ---------------------------------------------------------------------------------------
// Shared builders: title (a link when the payload has an http(s) URL), badge, meta line

/** The title: a link opening GitHub in a new tab for an http(s) `url`, else plain text. */
function title(cls: string, text: string, url: unknown): HTMLElement {
  const href = safeUrl(url);
  if (!href) return h("span", cls, text);
  const a = h("a", cls, text);
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

function badge(cls: string, text: string): HTMLSpanElement {
  return h("span", `badge ${cls}`, text);
}

/** The meta line: `[class, text]` spans in order (empty ones left out), then the time. */
function metaLine(ts: string | undefined, parts: [cls: string, text: string | null][]): HTMLDivElement {
  const meta = h("div", "meta");
  for (const [cls, text] of parts) if (text) meta.append(h("span", cls, text));
  meta.append(h("span", "time", clock(ts)));
  return meta;
}

// ---------------------------------------------------------------------------------------
// Rows

function renderPr(pr: Item): void {
  const d = pr.data;
  const li = pr.el ?? h("li", "pr");
  pr.el = li;
  const number = str(d.number);
  const state = str(d.state);
  const merged = d.merged === true;
  const action = str(d.action);
  li.dataset.testid = "pr-item";
  li.dataset.repository = str(d.repository) ?? "";
  li.dataset.number = number ?? "";
  li.dataset.action = action ?? "";
  li.dataset.state = state ?? "";
  li.dataset.merged = String(merged);
  li.className = `pr pr-${merged ? "merged" : cssToken(state)}`;

  const badges = h("div", "badges");
  if (action && action !== state && !(merged && action === "closed")) badges.append(badge("action", action));
  if (merged) badges.append(badge("merged", "merged"));
  else if (state) badges.append(badge(`state-${cssToken(state)}`, state));

  const top = h("div", "pr-top");
  top.append(title("pr-title", `${number !== null ? `#${number} ` : ""}${str(d.title) ?? ""}`, d.url), badges);
  const author = str(d.author);
  const meta = metaLine(pr.ts, [
    ["repo", str(d.repository)],
    ["author", author ? `@${author}` : null],
    ["sha mono", shortSha(str(d.head_sha))],
  ]);
  li.replaceChildren(top, meta);
}

function conclusionClass(status: string | null, conclusion: string | null): string {
  const c = (conclusion ?? "").toLowerCase();
  if (c === "success") return "good";
  if (c === "failure" || c === "timed_out" || c === "action_required" || c === "startup_failure") return "bad";
  if (c === "cancelled" || c === "skipped" || c === "neutral" || c === "stale") return "idle";
  if (c) return "idle";
  const s = (status ?? "").toLowerCase();
  if (s === "completed") return "idle";
  return "busy"; // queued, in_progress, requested, waiting, pending
}

function renderCheck(check: Item): void {
  const d = check.data;
  const li = check.el ?? h("li", "check");
  check.el = li;
  const status = str(d.status);
  const conclusion = str(d.conclusion);
  li.dataset.testid = "validation-item";
  li.dataset.name = str(d.name) ?? "";
  li.dataset.headSha = str(d.head_sha) ?? "";
  li.dataset.status = status ?? "";
  li.dataset.conclusion = conclusion ?? "";
  li.className = `check st-${conclusionClass(status, conclusion)}`;
  li.title = [str(d.action), status, conclusion].filter(Boolean).join(" · ");

  const top = h("div", "check-top");
  top.append(
    h("span", "icon", ""),
    title("check-name", str(d.name) ?? "(unnamed check)", d.url),
    badge("result", conclusion ?? status ?? "unknown"),
  );
  const meta = metaLine(check.ts, [
    ["repo", str(d.repository)],
    ["sha mono", shortSha(str(d.head_sha))],
    ["app", str(d.app)],
  ]);
  li.replaceChildren(top, meta);
}
