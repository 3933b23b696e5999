/**
 * Channel names (CONTRACT.md §2): `project:<id>`, `user:<id>` or `broadcast`, with `<id>`
 * matching `^[A-Za-z0-9_-]{1,128}$`. Checked before anything is sent, so a typo fails at
 * the call site instead of as a `bad_channel` reply much later.
 */
const CHANNEL = /^(?:(?:project|user):[A-Za-z0-9_-]{1,128}|broadcast)$/;

export function isValidChannel(channel: string): boolean {
  return CHANNEL.test(channel);
}

/** `project:<id>` for a project id. */
export const projectChannel = (projectId: string): string => `project:${projectId}`;

/** `user:<id>` for a user id. */
export const userChannel = (userId: string): string => `user:${userId}`;
