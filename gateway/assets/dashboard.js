/* Tidings dashboard (@tidings/client 0.1.0); source: clients/typescript/dashboard/ */

// dashboard/main.ts
import { TidingsClient } from "/client/tidings.mjs";

// dashboard/config.ts
import { decodeJwt } from "/client/tidings.mjs";

// dashboard/dom.ts
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`dashboard: missing #${id}`);
  return el;
}
function h(tag, cls, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== void 0) el.textContent = text;
  return el;
}
function setNote(el, text) {
  el.textContent = text ?? "";
  el.hidden = !text;
}

// dashboard/config.ts
var ID_RE = /^[A-Za-z0-9_-]{1,128}$/;
var STORAGE_KEY = "tidings.dashboard.token";
function splitList(s) {
  const out = [];
  for (const part of s.split(",")) {
    const p = part.trim();
    if (p && ID_RE.test(p) && !out.includes(p)) out.push(p);
  }
  return out;
}
function readFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const t = params.get("token")?.trim() || null;
  const p = params.get("projects");
  return { token: t, projects: p === null ? null : splitList(p) };
}
function claimedProjects(claims) {
  const list = [];
  for (const p of claims?.projects ?? []) {
    if (p !== "*" && ID_RE.test(p) && !list.includes(p)) list.push(p);
  }
  return list;
}
function makeConfig(token, projects) {
  const claims = decodeJwt(token);
  const sub = claims?.sub !== void 0 && ID_RE.test(claims.sub) ? claims.sub : null;
  const list = projects !== null && projects.length > 0 ? projects : claimedProjects(claims);
  return { token, user: sub, projects: list, claims };
}
function isExpired(cfg) {
  const exp = cfg.claims?.exp;
  return exp !== void 0 && exp * 1e3 < Date.now();
}
function savedToken() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}
function saveToken(token) {
  try {
    sessionStorage.setItem(STORAGE_KEY, token);
  } catch {
  }
}
function forgetToken() {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
  }
}
var address = "";
function setAddress(projects) {
  const list = projects?.join(",") ?? "";
  history.replaceState(null, "", location.pathname + (list ? `#projects=${list}` : ""));
  address = location.hash;
}
function watchFragment() {
  address = location.hash;
  window.addEventListener("hashchange", () => {
    if (location.hash !== address) location.reload();
  });
}
function initialConfig() {
  const frag = readFragment();
  if (frag.token) {
    saveToken(frag.token);
    setAddress(frag.projects);
    return { config: makeConfig(frag.token, frag.projects) };
  }
  const saved = savedToken();
  if (saved) {
    const config = makeConfig(saved, frag.projects);
    if (!isExpired(config)) return { config };
    forgetToken();
    return { config: null, note: "The token saved for this tab has expired: paste a new one.", projects: frag.projects };
  }
  return { config: null, note: null, projects: frag.projects };
}
function showLogin(message, projects) {
  $("login").hidden = false;
  $("panels").hidden = true;
  $("login-error").textContent = message ?? "";
  const projectsInput = $("projects-input");
  if (projectsInput instanceof HTMLInputElement && !projectsInput.value && projects?.length) {
    projectsInput.value = projects.join(",");
  }
  const input = $("token-input");
  if (input instanceof HTMLTextAreaElement) input.focus();
}
function hideLogin() {
  $("login").hidden = true;
  $("panels").hidden = false;
}
function bindLoginForm(start2) {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    const p = $("projects-input").value;
    if (!t) {
      showLogin("Paste a token first.");
      return;
    }
    const projects = p.trim() ? splitList(p) : null;
    saveToken(t);
    setAddress(projects);
    start2(makeConfig(t, projects));
  });
}

// dashboard/format.ts
function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function str(v) {
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  if (typeof v === "boolean") return String(v);
  return null;
}
function safeUrl(v) {
  if (typeof v !== "string" || v === "") return null;
  try {
    const u = new URL(v, location.href);
    return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
  } catch {
    return null;
  }
}
function cssToken(v) {
  return (v ?? "none").toLowerCase().replace(/[^a-z0-9_-]/g, "_").slice(0, 40) || "none";
}
function shortSha(v) {
  return v ? v.slice(0, 7) : "";
}
function pad(n, w = 2) {
  return String(n).padStart(w, "0");
}
function clock(ts) {
  const d = ts ? new Date(ts) : /* @__PURE__ */ new Date();
  if (Number.isNaN(d.getTime())) return ts ?? "";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function relTime(ts) {
  const t = Date.parse(ts);
  if (Number.isNaN(t)) return ts;
  const s = Math.round((Date.now() - t) / 1e3);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}
function errorText(e) {
  if (e instanceof Error) return e.message;
  if (isObject(e) && typeof e.message === "string") return e.message;
  return String(e);
}
function projectOf(channel) {
  return channel.startsWith("project:") ? channel.slice(8) : channel;
}

// dashboard/state.ts
var stats = {
  messages: 0,
  rendered: 0,
  duplicates: 0,
  flushes: 0,
  lastFlushMs: 0,
  maxFlushMs: 0,
  byChannel: {},
  discontinuities: 0
};
var session = {
  config: null,
  client: null
};
function inboxChannel() {
  const user = session.config?.user;
  return user ? `user:${user}` : null;
}

// dashboard/header.ts
var shown = { status: "disconnected", reconnectAttempts: 0 };
var lastError = null;
function renderState(s) {
  const status = typeof s.status === "string" ? s.status : "error";
  if (s.error) lastError = s.error;
  else if (status === "connected" && shown.status !== "connected") lastError = null;
  shown = s;
  const el = $("connection-state");
  el.textContent = status;
  el.dataset.status = status;
  $("connection-dot").dataset.status = status;
  const parts = [];
  const attempts = typeof s.reconnectAttempts === "number" ? s.reconnectAttempts : 0;
  if (attempts > 0) parts.push(`reconnect attempt ${attempts}`);
  if (lastError) parts.push(lastError);
  const detail = $("connection-detail");
  detail.textContent = parts.join(" · ");
  detail.title = parts.join("\n");
  detail.dataset.reconnectAttempts = String(attempts);
}
function noteError(e) {
  lastError = errorText(e);
  renderState(shown);
}
function renderWho(cfg) {
  const who = $("who");
  who.replaceChildren();
  const user = h("span", "user", cfg.user ?? "unknown user");
  user.title = "user (the token's sub)";
  who.append(user);
  if (cfg.projects.length === 0) {
    who.append(h("span", "chip muted", "no projects"));
  }
  for (const p of cfg.projects) {
    const chip = h("span", "chip", p);
    chip.title = `project:${p}`;
    chip.dataset.channel = `project:${p}`;
    who.append(chip);
  }
}
function markRefused(channel, e) {
  console.warn(`dashboard: subscription to ${channel} refused`, e);
  for (const chip of $("who").querySelectorAll(".chip")) {
    if (chip.dataset.channel === channel) {
      chip.classList.add("refused");
      chip.title = `${channel}: ${errorText(e)}`;
    }
  }
}
function startRate(tick) {
  let lastCount = 0;
  let seconds = 0;
  setInterval(() => {
    const n = stats.messages;
    $("rate").textContent = `${(n - lastCount).toLocaleString()} msg/s`;
    lastCount = n;
    tick(++seconds);
  }, 1e3);
}
var bannerTimer = 0;
function showGap(channel, info) {
  stats.discontinuities++;
  const banner = $("banner");
  const why = isObject(info) && typeof info.reason === "string" ? ` (${info.reason})` : "";
  $("banner-detail").textContent = `${channel}${why}`;
  banner.dataset.channel = channel;
  banner.hidden = false;
  if (bannerTimer) clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => {
    banner.hidden = true;
  }, 15e3);
}
function bindBanner() {
  $("banner-close").addEventListener("click", () => {
    $("banner").hidden = true;
  });
}

// dashboard/inbox.ts
var MAX_INBOX = 300;
var inbox = {
  items: /* @__PURE__ */ new Map(),
  unread: 0,
  loaded: false,
  gen: 0,
  /** Live notifications that arrived while a load was in flight, merged into its result. */
  duringLoad: null,
  /** Items marked read locally whose request has not been answered yet. */
  pendingRead: /* @__PURE__ */ new Set(),
  dirty: false,
  toAck: []
};
function toEntry(v, fallbackId) {
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
    read: v.read === true
  };
}
function onNotification(m) {
  const item = toEntry(m.data, m.id);
  if (!item) return;
  item.read = false;
  if (!item.created_at && m.ts) item.created_at = m.ts;
  if (typeof m.seq === "number") inbox.toAck.push(m.seq);
  inbox.duringLoad?.set(item.id, item);
  if (inbox.items.has(item.id)) return;
  inbox.items.set(item.id, item);
  inbox.unread++;
  inbox.dirty = true;
}
function ackNotifications() {
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
function inboxNote(text) {
  setNote($("inbox-note"), text);
}
function merge(res) {
  const items = /* @__PURE__ */ new Map();
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
async function loadInbox() {
  const c = session.client;
  const user = session.config?.user;
  if (!c || !user) {
    inboxNote(user ? null : "No user in the token: the inbox is unavailable.");
    return;
  }
  const gen = ++inbox.gen;
  inbox.duringLoad = /* @__PURE__ */ new Map();
  try {
    const res = await c.inbox(user, { limit: 50 });
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
function entryTime(it) {
  const t = Date.parse(it.created_at);
  return Number.isNaN(t) ? 0 : t;
}
var inboxRows = /* @__PURE__ */ new Map();
function renderInboxIfDirty() {
  if (!inbox.dirty) return;
  inbox.dirty = false;
  renderInbox();
}
function renderInbox() {
  const count = $("inbox-unread");
  count.textContent = String(inbox.unread);
  count.dataset.count = String(inbox.unread);
  count.classList.toggle("zero", inbox.unread === 0);
  const sorted = [...inbox.items.values()].sort((a, b) => entryTime(b) - entryTime(a));
  if (sorted.length > MAX_INBOX) {
    for (const it of sorted.splice(MAX_INBOX)) inbox.items.delete(it.id);
  }
  const list = $("inbox");
  let prev = null;
  for (const it of sorted) {
    let row = inboxRows.get(it.id);
    if (!row) {
      row = { li: h("li"), sig: "" };
      inboxRows.set(it.id, row);
    }
    fillInboxRow(row, it);
    const at = prev ? prev.nextElementSibling : list.firstElementChild;
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
function inboxText(it) {
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
function fillInboxRow(row, it) {
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
  let btn = li.querySelector(":scope > button.mark-read");
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
function refreshInboxTimes() {
  for (const t of $("inbox").querySelectorAll(".time[data-ts]")) {
    const label = relTime(t.dataset.ts ?? "");
    if (t.textContent !== label) t.textContent = label;
  }
}
function onInboxClick(ev) {
  const btn = ev.target instanceof Element ? ev.target.closest("button.mark-read") : null;
  if (!(btn instanceof HTMLButtonElement) || btn.disabled) return;
  const id = btn.dataset.id;
  if (id) void markRead(id);
}
async function markRead(id) {
  const it = inbox.items.get(id);
  const c = session.client;
  const user = session.config?.user;
  if (!it || it.read || !c || !user) return;
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
function bindInbox() {
  $("inbox").addEventListener("click", onInboxClick);
}

// dashboard/log.ts
var MAX_EVENTS = 2e3;
var CHUNK = 20;
var PREVIEW_CHARS = 240;
var rowData = /* @__PURE__ */ new WeakMap();
var eventsTotal = 0;
var scrollPending = false;
function preview(data) {
  let s;
  try {
    s = data === void 0 ? "" : JSON.stringify(data) ?? "";
  } catch {
    s = String(data);
  }
  return s.length > PREVIEW_CHARS ? `${s.slice(0, PREVIEW_CHARS)}…` : s;
}
function eventRow(m) {
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
    h("span", "ev-data", preview(m.data))
  );
  rowData.set(li, m);
  return li;
}
var rows = 0;
function tailChunk(list) {
  const last = list.lastElementChild;
  if (last instanceof HTMLElement && last.childElementCount < CHUNK) return last;
  const chunk = h("ol", "chunk");
  list.append(chunk);
  return chunk;
}
function trim(list) {
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
function appendEvents(batch) {
  const list = $("events");
  const scroller = $("log-scroll");
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
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      scroller.scrollTop = scroller.scrollHeight;
    });
  }
}
function showDuplicates(count) {
  const el = $("log-duplicates");
  el.textContent = `${count.toLocaleString()} duplicate${count === 1 ? "" : "s"} dropped`;
  el.dataset.count = String(count);
  el.hidden = count === 0;
}
function onEventClick(ev) {
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
  let text;
  try {
    text = JSON.stringify(m, null, 2);
  } catch {
    text = String(m.data);
  }
  target.classList.add("open");
  target.append(h("pre", "ev-full", text));
}
function bindLog() {
  $("events").addEventListener("click", onEventClick);
}

// dashboard/github.ts
var MAX_PRS = 300;
var MAX_CHECKS = 300;
var prs = /* @__PURE__ */ new Map();
var dirtyPrs = /* @__PURE__ */ new Set();
var checks = /* @__PURE__ */ new Map();
var dirtyChecks = /* @__PURE__ */ new Set();
function update(all, dirty, key, m, d) {
  let item = all.get(key);
  if (!item) {
    item = { key, data: d, ts: m.ts, el: null };
    all.set(key, item);
  }
  item.data = d;
  item.ts = m.ts;
  dirty.add(item);
}
function onPullRequest(m) {
  const d = m.data;
  if (!isObject(d)) return;
  const number = str(d.number);
  const repo = str(d.repository) ?? projectOf(m.channel);
  const key = number !== null ? `${repo}#${number}` : `${m.channel}\0${m.id ?? ""}`;
  update(prs, dirtyPrs, key, m, d);
}
function onValidation(m) {
  const d = m.data;
  if (!isObject(d)) return;
  const name = str(d.name) ?? "";
  const sha = str(d.head_sha) ?? "";
  const key = name || sha ? `${m.channel}\0${name}\0${sha}` : `${m.channel}\0${m.id ?? ""}`;
  update(checks, dirtyChecks, key, m, d);
}
function renderGithub() {
  if (dirtyPrs.size) {
    renderMoved($("prs"), dirtyPrs, renderPr, prs, MAX_PRS);
    $("prs-count").textContent = String(prs.size);
  }
  if (dirtyChecks.size) {
    renderMoved($("checks"), dirtyChecks, renderCheck, checks, MAX_CHECKS);
    $("checks-count").textContent = String(checks.size);
  }
}
function renderMoved(list, dirty, render, all, max) {
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
function title(cls, text, url) {
  const href = safeUrl(url);
  if (!href) return h("span", cls, text);
  const a = h("a", cls, text);
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}
function badge(cls, text) {
  return h("span", `badge ${cls}`, text);
}
function metaLine(ts, parts) {
  const meta = h("div", "meta");
  for (const [cls, text] of parts) if (text) meta.append(h("span", cls, text));
  meta.append(h("span", "time", clock(ts)));
  return meta;
}
function renderPr(pr) {
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
    ["sha mono", shortSha(str(d.head_sha))]
  ]);
  li.replaceChildren(top, meta);
}
function conclusionClass(status, conclusion) {
  const c = (conclusion ?? "").toLowerCase();
  if (c === "success") return "good";
  if (c === "failure" || c === "timed_out" || c === "action_required" || c === "startup_failure") return "bad";
  if (c === "cancelled" || c === "skipped" || c === "neutral" || c === "stale") return "idle";
  if (c) return "idle";
  const s = (status ?? "").toLowerCase();
  if (s === "completed") return "idle";
  return "busy";
}
function renderCheck(check) {
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
    badge("result", conclusion ?? status ?? "unknown")
  );
  const meta = metaLine(check.ts, [
    ["repo", str(d.repository)],
    ["sha mono", shortSha(str(d.head_sha))],
    ["app", str(d.app)]
  ]);
  li.replaceChildren(top, meta);
}

// dashboard/runs.ts
var MAX_RUNS = 300;
var runs = /* @__PURE__ */ new Map();
var dirtyRuns = /* @__PURE__ */ new Set();
function parseProgress(v) {
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n)) return null;
  return Math.round(Math.min(100, Math.max(0, n)) * 100) / 100;
}
function onRunProgress(m) {
  const d = m.data;
  if (!isObject(d)) return;
  const runId = str(d.run_id);
  if (runId === null || runId === "") return;
  const key = `${m.channel}\0${runId}`;
  let run = runs.get(key);
  if (!run) {
    run = { key, runId, project: projectOf(m.channel), progress: 0, status: null, step: null, updated: m.ts, el: null };
    runs.set(key, run);
  }
  const progress = parseProgress(d.progress);
  if (progress !== null) run.progress = progress;
  if (d.status !== void 0) run.status = str(d.status);
  if (d.step !== void 0) run.step = str(d.step);
  run.updated = m.ts;
  dirtyRuns.add(run);
}
function renderRuns() {
  if (dirtyRuns.size === 0) return;
  for (const run of dirtyRuns) if (runs.get(run.key) === run) renderRun(run);
  dirtyRuns.clear();
  $("runs-count").textContent = String(runs.size);
}
function newRunRow(run) {
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
function renderRun(run) {
  const li = run.el ?? newRunRow(run);
  run.el = li;
  const pct = String(run.progress);
  li.dataset.progress = pct;
  li.dataset.status = run.status ?? "";
  li.className = `run st-${statusClass(run.status, run.progress)}`;
  const badge2 = li.querySelector(".run-status");
  if (badge2) {
    badge2.textContent = run.status ?? "";
    badge2.hidden = run.status === null || run.status === "";
  }
  const pctEl = li.querySelector(".run-pct");
  if (pctEl) pctEl.textContent = `${pct}%`;
  li.querySelector(".bar")?.setAttribute("aria-valuenow", pct);
  const fill = li.querySelector(".fill");
  if (fill) fill.style.width = `${run.progress}%`;
  const step = li.querySelector(".run-step");
  if (step) {
    step.textContent = run.step ?? "";
    step.hidden = !run.step;
  }
  li.title = run.updated ? `updated ${clock(run.updated)}` : "";
}
function statusClass(status, progress) {
  const s = (status ?? "").toLowerCase();
  if (/fail|error|cancel|abort|timed_out|timeout/.test(s)) return "bad";
  if (/succe|complete|done|finish|pass|ok/.test(s)) return "good";
  if (/queue|pend|wait/.test(s)) return "idle";
  if (s === "" && progress >= 100) return "good";
  return "busy";
}

// dashboard/intake.ts
var SEEN_MAX = 2e4;
var WARN_MAX = 20;
var queue = [];
var rafHandle = 0;
var timerHandle = 0;
var seen = /* @__PURE__ */ new Set();
function toMessage(frame) {
  if (!isObject(frame)) return null;
  if (typeof frame.channel !== "string" || typeof frame.event !== "string") return null;
  return frame;
}
function ingest(frame) {
  const m = toMessage(frame);
  if (m) receive(m);
}
function isDuplicate(m) {
  if (typeof m.seq !== "number") return false;
  const key = `${m.channel}\0${m.seq}\0${m.id ?? ""}`;
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
function receive(m) {
  if (isDuplicate(m)) return;
  stats.messages++;
  stats.byChannel[m.channel] = (stats.byChannel[m.channel] ?? 0) + 1;
  queue.push(m);
  schedule();
}
function schedule() {
  if (rafHandle || timerHandle) return;
  rafHandle = requestAnimationFrame(flush);
  timerHandle = setTimeout(flush, 100);
}
function flush() {
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
function dispatch(m) {
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

// dashboard/main.ts
var exposed = { client: null, stats, ingest, config: null };
function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}
function channelsOf(cfg) {
  const channels = cfg.projects.map((p) => `project:${p}`);
  if (cfg.user) channels.push(`user:${cfg.user}`);
  return channels;
}
function followState(c) {
  let last = "";
  const follow = (status) => {
    if (status === "connected" && last !== "connected") void loadInbox();
    last = status;
  };
  c.on("state", (s) => {
    renderState(s);
    follow(s.status);
  });
  c.on("error", (e) => noteError(e));
  return follow;
}
function subscribe(c, channel) {
  c.subscribe(channel, {
    onMessage: (m) => receive(m),
    onDiscontinuity: (info) => {
      showGap(channel, info);
      void loadInbox();
    },
    onError: (e) => {
      markRefused(channel, e);
      if (channel.startsWith("user:")) inboxNote(`${channel}: ${errorText(e)}`);
    }
  });
}
function start(cfg) {
  session.config = cfg;
  hideLogin();
  renderWho(cfg);
  const channels = channelsOf(cfg);
  exposed.config = { user: cfg.user, projects: cfg.projects, channels };
  const c = new TidingsClient({ url: wsUrl(), token: cfg.token });
  session.client = c;
  exposed.client = c;
  const follow = followState(c);
  for (const ch of channels) subscribe(c, ch);
  c.connect();
  renderState(c.state);
  if (c.state.status === "connected") follow("connected");
  if (!cfg.user) inboxNote("No user (sub) in the token: the inbox is unavailable.");
  if (cfg.claims === null) noteError("the token could not be decoded");
  else if (isExpired(cfg)) noteError("the token has expired");
}
function init() {
  renderState({ status: "disconnected", reconnectAttempts: 0 });
  bindLog();
  bindInbox();
  bindBanner();
  bindLoginForm(start);
  watchFragment();
  startRate((seconds) => {
    if (seconds % 30 === 0) refreshInboxTimes();
  });
  const first = initialConfig();
  if (first.config) start(first.config);
  else showLogin(first.note, first.projects);
}
function boot() {
  window.tidings = exposed;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
}

// dashboard/dashboard.ts
boot();
