/**
 * What the page says about its connection: the state with its reconnect attempt count and
 * last error (connection-state, connection-detail), the user and project chips (red when a
 * subscription is refused), the messages-per-second rate and the history-gap banner.
 */
import { $, h } from "./dom.js";
import { errorText, isObject } from "./format.js";
import { stats, type Config } from "./state.js";

/** The part of the SDK's `client.state` shown here. */
export interface ConnState {
  status: string;
  error?: string | undefined;
  reconnectAttempts?: number | undefined;
}

/** The state last shown, and the last error reported since the connection last came up. */
let shown: ConnState = { status: "disconnected", reconnectAttempts: 0 };
let lastError: string | null = null;

/**
 * Shows a connection state: its status, and as detail the reconnect attempt count and the
 * last error (the state's own, else the last one noted), which stays until the next connect.
 */
export function renderState(s: ConnState): void {
  const status = typeof s.status === "string" ? s.status : "error";
  if (s.error) lastError = s.error;
  else if (status === "connected" && shown.status !== "connected") lastError = null;
  shown = s;
  const el = $("connection-state");
  el.textContent = status;
  el.dataset.status = status;
  $("connection-dot").dataset.status = status;
  const parts: string[] = [];
  const attempts = typeof s.reconnectAttempts === "number" ? s.reconnectAttempts : 0;
  if (attempts > 0) parts.push(`reconnect attempt ${attempts}`);
  if (lastError) parts.push(lastError);
  const detail = $("connection-detail");
  detail.textContent = parts.join(" · ");
  detail.title = parts.join("\n");
  detail.dataset.reconnectAttempts = String(attempts);
}

/** An error to show next to the state (the client's `error` events, a token problem). */
export function noteError(e: unknown): void {
  lastError = errorText(e);
  renderState(shown);
}

export function renderWho(cfg: Config): void {
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

/** A subscription the gateway refused (forbidden, bad_channel, …): its chip turns red. */
export function markRefused(channel: string, e: unknown): void {
  console.warn(`dashboard: subscription to ${channel} refused`, e);
  for (const chip of $("who").querySelectorAll<HTMLElement>(".chip")) {
    if (chip.dataset.channel === channel) {
      chip.classList.add("refused");
      chip.title = `${channel}: ${errorText(e)}`;
    }
  }
}

/** Updates the messages-per-second figure once a second; `tick` runs along with it. */
export function startRate(tick: (seconds: number) => void): void {
  let lastCount = 0;
  let seconds = 0;
  setInterval(() => {
    const n = stats.messages;
    $("rate").textContent = `${(n - lastCount).toLocaleString()} msg/s`;
    lastCount = n;
    tick(++seconds);
  }, 1000);
}

// ---------------------------------------------------------------------------------------
// History gaps (data-testid="discontinuity")

let bannerTimer: ReturnType<typeof setTimeout> | 0 = 0;

/** Shows "history incomplete — reloaded" for a channel, for 15 s or until dismissed. */
export function showGap(channel: string, info: unknown): void {
  stats.discontinuities++;
  const banner = $("banner");
  const why = isObject(info) && typeof info.reason === "string" ? ` (${info.reason})` : "";
  $("banner-detail").textContent = `${channel}${why}`;
  banner.dataset.channel = channel;
  banner.hidden = false;
  if (bannerTimer) clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => {
    banner.hidden = true;
  }, 15000);
}

export function bindBanner(): void {
  $("banner-close").addEventListener("click", () => {
    $("banner").hidden = true;
  });
}
