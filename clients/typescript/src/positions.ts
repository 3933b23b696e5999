/**
 * Per-channel position bookkeeping, the heart of exactly-once, in-order delivery.
 *
 * The client keeps, for every channel it ever subscribed (the map outlives subscriptions,
 * so unsubscribing and subscribing again resumes where it stopped), the last durable `seq`
 * it holds and the stream `epoch` that `seq` belongs to. Each durable message is checked
 * against it:
 *
 * - `seq <= last`: a duplicate (replay overlapping live delivery, a repeated subscribe):
 *   dropped;
 * - `prev > last`: a gap, something between `last` and this message never arrived: the
 *   message is NOT delivered, the channel is re-subscribed with `since = last`, and the
 *   gateway replays the missing messages (and this one) in order. Until that subscribe is
 *   answered, further out-of-chain messages are dropped without asking again: the replay
 *   brings them. If the repair brings the same gap again (the missing messages are gone
 *   for good, yet the gateway did not say `recovered:false`), the message is delivered with
 *   a discontinuity instead of asking forever;
 * - otherwise it chains: delivered, and it becomes the position.
 *
 * `last` may also come from a subscribe reply's `seq` (the position from which a fresh
 * subscription delivers everything), so a disconnect before the first message loses nothing;
 * the public `position` only ever reflects a message actually delivered (or a `since` the
 * application supplied).
 */
import type { DiscontinuityInfo, MessageFrame, Position, ReplyFrame } from "./types.js";

interface Track {
  /** Last durable seq held (delivered, or the fresh-subscription floor). */
  last?: number;
  epoch?: string;
  /** Last durable message delivered to the application. */
  delivered: Position | null;
  /** The next durable message starts a new chain (after `recovered:false`). */
  rebase: boolean;
  /** A gap-repairing subscribe is on its way. */
  resyncing: boolean;
  /** `last` when the latest repair was asked for; cleared by any delivery. */
  repairFrom?: number;
}

/** What to do with a message; a discontinuity means: report it, then deliver the message. */
export type Verdict = "deliver" | "duplicate" | "gap" | { discontinuity: DiscontinuityInfo };

const withEpoch = (seq: number, epoch: string | undefined): Position =>
  epoch === undefined ? { seq } : { seq, epoch };

export class PositionTracker {
  private readonly tracks = new Map<string, Track>();

  private track(channel: string): Track {
    let t = this.tracks.get(channel);
    if (!t) {
      t = { delivered: null, rebase: false, resyncing: false };
      this.tracks.set(channel, t);
    }
    return t;
  }

  /** The last delivered position, or `null`. */
  position(channel: string): Position | null {
    return this.tracks.get(channel)?.delivered ?? null;
  }

  /** What to send as `since`/`epoch` in a subscribe, or `null` to subscribe fresh. */
  resumeFrom(channel: string): Position | null {
    const t = this.tracks.get(channel);
    return t?.last === undefined ? null : withEpoch(t.last, t.epoch);
  }

  /** Adopts a position the application persisted, unless the client already knows one. */
  seed(channel: string, pos: Position): void {
    const t = this.track(channel);
    if (t.last !== undefined) return;
    t.last = pos.seq;
    if (pos.epoch !== undefined) t.epoch = pos.epoch;
    t.delivered = withEpoch(pos.seq, pos.epoch);
  }

  /**
   * Applies a successful subscribe reply. `since` is what the subscribe asked for (absent for
   * a fresh one). Returns the discontinuity to report when the gateway answered
   * `recovered:false` to a `since`.
   */
  subscribed(channel: string, reply: ReplyFrame, since: Position | null): DiscontinuityInfo | null {
    const t = this.track(channel);
    t.resyncing = false;
    const oldEpoch = t.epoch;
    const newEpoch = reply.epoch;
    if (newEpoch !== undefined) {
      t.epoch = newEpoch;
      if (t.delivered && t.delivered.epoch === undefined) t.delivered = withEpoch(t.delivered.seq, newEpoch);
    }
    if (!since) {
      if (t.last === undefined && typeof reply.seq === "number") t.last = reply.seq;
      return null;
    }
    if (reply.recovered !== false) return null;
    const changed = since.epoch !== undefined && newEpoch !== undefined && since.epoch !== newEpoch;
    // Another epoch: sequences restarted, we hold nothing of the new one. Same epoch: the
    // held messages after `since` follow, but the first of them does not chain.
    if (changed) t.last = 0;
    t.rebase = true;
    const info: DiscontinuityInfo = {
      channel,
      since: since.seq,
      reason: changed ? "epoch_changed" : "history_incomplete",
    };
    const epoch = since.epoch ?? oldEpoch;
    if (epoch !== undefined) info.epoch = epoch;
    if (newEpoch !== undefined) info.newEpoch = newEpoch;
    if (typeof reply.missed === "number") info.missed = reply.missed;
    return info;
  }

  /** Marks the stream as recreated (SSE sees it in the cursor): the next message starts afresh. */
  epochChanged(channel: string, epoch: string): void {
    const t = this.track(channel);
    t.epoch = epoch;
    t.last = 0;
    t.rebase = true;
  }

  /** Sets the epoch without touching the sequence (SSE learns it from the cursor). */
  setEpoch(channel: string, epoch: string): void {
    this.track(channel).epoch = epoch;
  }

  /** The highest seq held on any channel in `epoch` (sequences are positions in one stream), or `null`. */
  highest(epoch: string): number | null {
    let max: number | null = null;
    for (const t of this.tracks.values()) {
      if (t.epoch === epoch && t.last !== undefined && (max === null || t.last > max)) max = t.last;
    }
    return max;
  }

  epochOf(channel: string): string | undefined {
    return this.tracks.get(channel)?.epoch;
  }

  /** Checks a message against the channel's position and advances it when it is delivered. */
  classify(msg: MessageFrame): Verdict {
    const seq = msg.seq;
    if (typeof seq !== "number") return "deliver";
    const t = this.track(msg.channel);
    let verdict: Verdict = "deliver";
    if (t.last !== undefined) {
      if (seq <= t.last) return "duplicate";
      // After `recovered:false` the first message cannot chain: accept it as the new start.
      if (!t.rebase && typeof msg.prev === "number" && msg.prev > t.last) {
        if (t.resyncing || t.repairFrom !== t.last) return "gap";
        verdict = { discontinuity: this.lostFor(msg.channel, t, t.last) };
      }
    }
    t.rebase = false;
    delete t.repairFrom;
    t.last = seq;
    t.delivered = withEpoch(seq, t.epoch);
    return verdict;
  }

  private lostFor(channel: string, t: Track, since: number): DiscontinuityInfo {
    const info: DiscontinuityInfo = { channel, since, reason: "history_incomplete" };
    if (t.epoch !== undefined) info.epoch = info.newEpoch = t.epoch;
    return info;
  }

  /** Starts a gap repair; `false` when one is already on its way (do not ask again). */
  startResync(channel: string): boolean {
    const t = this.track(channel);
    if (t.resyncing) return false;
    t.resyncing = true;
    if (t.last !== undefined) t.repairFrom = t.last;
    return true;
  }

  endResync(channel: string): void {
    const t = this.tracks.get(channel);
    if (t) t.resyncing = false;
  }

  /** A connection ended: repairs in flight are void (the resubscribe on reconnect repairs). */
  endAllResyncs(): void {
    for (const t of this.tracks.values()) t.resyncing = false;
  }
}
