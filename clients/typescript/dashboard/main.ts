/**
 * Start-up: exposes `window.tidings`, wires the page's controls, picks the token (fragment,
 * the tab's saved token, or the form) and starts the client with one subscription per
 * channel: `project:<id>` for each project and `user:<sub>`.
 */
import { TidingsClient } from "/client/tidings.mjs";
import { bindLoginForm, hideLogin, initialConfig, isExpired, showLogin, watchFragment } from "./config.js";
import { errorText } from "./format.js";
import { bindBanner, markRefused, noteError, renderState, renderWho, showGap, startRate } from "./header.js";
import { bindInbox, inboxNote, loadInbox, refreshInboxTimes } from "./inbox.js";
import { ingest, receive } from "./intake.js";
import { bindLog } from "./log.js";
import { session, stats, type Config, type Exposed } from "./state.js";

const exposed: Exposed = { client: null, stats, ingest, config: null };

function wsUrl(): string {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

function channelsOf(cfg: Config): string[] {
  const channels = cfg.projects.map((p) => `project:${p}`);
  if (cfg.user) channels.push(`user:${cfg.user}`);
  return channels;
}

/** Shows the state and errors; reloads the inbox on every (re)connect. Returns the status follower. */
function followState(c: TidingsClient): (status: string) => void {
  let last = "";
  const follow = (status: string): void => {
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

function subscribe(c: TidingsClient, channel: string): void {
  c.subscribe(channel, {
    onMessage: (m) => receive(m),
    onDiscontinuity: (info) => {
      showGap(channel, info);
      void loadInbox();
    },
    onError: (e) => {
      markRefused(channel, e);
      if (channel.startsWith("user:")) inboxNote(`${channel}: ${errorText(e)}`);
    },
  });
}

function start(cfg: Config): void {
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

function init(): void {
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

export function boot(): void {
  window.tidings = exposed;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
}
