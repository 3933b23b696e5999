/**
 * `@tidings/client`: the browser and Node client of Tidings. Zero runtime dependencies;
 * React bindings live in `@tidings/client/react`.
 */
export { TidingsClient, type ClientEvents } from "./client.js";
export { Subscription, type SubscriptionEvents, type SubscriptionState } from "./subscription.js";
export { TidingsError } from "./errors.js";
export { backoffCap, backoffDelay } from "./backoff.js";
export { decodeJwt, type TokenClaims } from "./jwt.js";
export { isValidChannel, projectChannel, userChannel } from "./channel.js";
export { FALLBACK_AFTER } from "./connection.js";
export type * from "./types.js";
