import type { ErrorBody, ErrorCode } from "./types.js";

/**
 * Every failure the client reports: a gateway's `{code, message}` (from a reply, an `error`
 * frame or an HTTP error body), or one of the client's own codes (`queue_full`, `timeout`,
 * `disconnected`, `network`, `unknown_outcome`). `status` is set for HTTP errors.
 */
export class TidingsError extends Error {
  readonly code: ErrorCode | (string & {});
  readonly status?: number;

  constructor(code: ErrorCode | (string & {}), message: string, status?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TidingsError";
    this.code = code;
    if (status !== undefined) this.status = status;
  }

  static from(body: ErrorBody, status?: number): TidingsError {
    return new TidingsError(body.code, body.message, status);
  }
}
