/*
 * Tidings live dashboard (CONTRACT §9): the entry point scripts/build.mjs bundles, with the
 * modules it imports, into /assets/dashboard.js. The SDK is imported from /client/tidings.mjs,
 * the very browser build the gateway serves (the import is left external by the bundler).
 *
 *   main.ts     start-up: window.tidings, the client, one subscription per channel
 *   config.ts   token and projects: URL fragment, the tab's sessionStorage, the token form
 *   state.ts    shared types, the session, window.tidings.stats
 *   header.ts   connection state and detail, user and project chips, rate, history-gap banner
 *   intake.ts   dedupe safety net (stats.duplicates), queue, one DOM update per frame
 *   log.ts      the event log
 *   runs.ts     agent runs
 *   github.ts   pull requests and checks
 *   inbox.ts    the user's inbox
 *   dom.ts, format.ts   element helpers; reading and formatting message fields
 *
 * See README.md for the behaviour and the test hooks.
 */
import { boot } from "./main.js";

boot();
