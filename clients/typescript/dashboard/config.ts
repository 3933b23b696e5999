/**
 * Where the page's token and projects come from (CONTRACT §9):
 *
 * 1. the URL fragment `#token=<JWT>&projects=p1,p2` (a fragment never reaches a server log;
 *    the query is never read). Once read, the token is taken out of the address bar and the
 *    tab's history (`history.replaceState`, no new entry): the address keeps `#projects=…` only;
 * 2. else the token this tab saved in `sessionStorage` (kept for the tab's lifetime, so a
 *    reload keeps working; never `localStorage`), unless it has expired;
 * 3. else the token form.
 *
 * Projects: the fragment's (or the form's) list, else the token's `projects` claim other
 * than `*`. User: the token's `sub`, decoded by the SDK's `decodeJwt` without verification
 * (the gateway verifies).
 */
import { decodeJwt, type TokenClaims } from "/client/tidings.mjs";
import { $ } from "./dom.js";
import type { Config } from "./state.js";

const ID_RE = /^[A-Za-z0-9_-]{1,128}$/;
/** The `sessionStorage` key of the tab's token. */
const STORAGE_KEY = "tidings.dashboard.token";

/** Valid, distinct ids of a comma-separated list, in order. */
export function splitList(s: string): string[] {
  const out: string[] = [];
  for (const part of s.split(",")) {
    const p = part.trim();
    if (p && ID_RE.test(p) && !out.includes(p)) out.push(p);
  }
  return out;
}

function readFragment(): { token: string | null; projects: string[] | null } {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const t = params.get("token")?.trim() || null;
  const p = params.get("projects");
  return { token: t, projects: p === null ? null : splitList(p) };
}

function claimedProjects(claims: TokenClaims | null): string[] {
  const list: string[] = [];
  for (const p of claims?.projects ?? []) {
    if (p !== "*" && ID_RE.test(p) && !list.includes(p)) list.push(p);
  }
  return list;
}

/** The configuration for a token; `projects` null or empty: the token's `projects` claim. */
export function makeConfig(token: string, projects: string[] | null): Config {
  const claims = decodeJwt(token);
  const sub = claims?.sub !== undefined && ID_RE.test(claims.sub) ? claims.sub : null;
  const list = projects !== null && projects.length > 0 ? projects : claimedProjects(claims);
  return { token, user: sub, projects: list, claims };
}

/** Whether the token's `exp` has passed (a token without `exp`, or unreadable, has not). */
export function isExpired(cfg: Config): boolean {
  const exp = cfg.claims?.exp;
  return exp !== undefined && exp * 1000 < Date.now();
}

// ---------------------------------------------------------------------------------------
// The tab's token (sessionStorage: gone with the tab; storage may be unavailable)

function savedToken(): string | null {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

function saveToken(token: string): void {
  try {
    sessionStorage.setItem(STORAGE_KEY, token);
  } catch {
    // No storage (disabled, sandboxed): a reload shows the form.
  }
}

function forgetToken(): void {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing saved then
  }
}

// ---------------------------------------------------------------------------------------
// The address bar

/** The fragment the page runs with; navigating to another one starts over. */
let address = "";

/** Rewrites the address without the token (and without adding a history entry). */
function setAddress(projects: string[] | null): void {
  const list = projects?.join(",") ?? "";
  history.replaceState(null, "", location.pathname + (list ? `#projects=${list}` : ""));
  address = location.hash;
}

/** A new token or project list typed into the fragment reloads the page with it. */
export function watchFragment(): void {
  address = location.hash;
  window.addEventListener("hashchange", () => {
    if (location.hash !== address) location.reload();
  });
}

// ---------------------------------------------------------------------------------------
// Start-up choice and the token form

export type Initial =
  | { config: Config }
  | { config: null; note: string | null; projects: string[] | null };

/** The configuration to start with, or null (with what to tell the form) when there is none. */
export function initialConfig(): Initial {
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

export function showLogin(message?: string | null, projects?: string[] | null): void {
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

export function hideLogin(): void {
  $("login").hidden = true;
  $("panels").hidden = false;
}

/** The form's token, saved for the tab like a fragment's; its projects go to the address. */
export function bindLoginForm(start: (cfg: Config) => void): void {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = ($("token-input") as HTMLTextAreaElement).value.trim();
    const p = ($("projects-input") as HTMLInputElement).value;
    if (!t) {
      showLogin("Paste a token first.");
      return;
    }
    const projects = p.trim() ? splitList(p) : null;
    saveToken(t);
    setAddress(projects);
    start(makeConfig(t, projects));
  });
}
