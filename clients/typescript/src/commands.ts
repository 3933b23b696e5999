/**
 * Commands awaiting their reply, by command id. Replies are handled synchronously, in the
 * same turn as the frame that carries them: the frames right after a `subscribe` reply are
 * the replayed messages, and they must be judged with what the reply said (its epoch, its
 * `recovered`), which a promise continuation would only apply after them.
 */
import type { ReplyFrame } from "./types.js";

export interface PendingCommand {
  reply(r: ReplyFrame): void;
  /** No reply within the timeout given to `add`. */
  timeout?(): void;
  /** The connection ended before the reply. */
  lost?(): void;
}

export class PendingCommands {
  private readonly pending = new Map<number, { cmd: PendingCommand; timer: ReturnType<typeof setTimeout> | null }>();

  /** Waits for the reply to command `id`; `timeoutMs` null waits as long as the connection lives. */
  add(id: number, cmd: PendingCommand, timeoutMs: number | null): void {
    const timer =
      timeoutMs === null
        ? null
        : setTimeout(() => {
            if (this.pending.delete(id)) cmd.timeout?.();
          }, timeoutMs);
    this.pending.set(id, { cmd, timer });
  }

  /** Routes a reply to its command; `false` if no command waits for that id. */
  settle(reply: ReplyFrame): boolean {
    if (typeof reply.id !== "number") return false;
    const p = this.pending.get(reply.id);
    if (!p) return false;
    this.pending.delete(reply.id);
    if (p.timer !== null) clearTimeout(p.timer);
    p.cmd.reply(reply);
    return true;
  }

  /** The connection ended: drops every command, telling those that care. */
  clear(): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      if (p.timer !== null) clearTimeout(p.timer);
      p.cmd.lost?.();
    }
  }
}
