/**
 * The cursor an SSE session opens each EventSource with (`last_event_id=`, CONTRACT §5).
 *
 * A Tidings cursor is `e<epoch>;w<watermark>;<channel>=<seq>;…`. The gateway resumes each
 * listed channel after `max(seq of that channel, watermark)`, and a channel the cursor does
 * not name after the watermark (`Cursor::since` in gateway/src/sse.rs). The watermark is the
 * stream's position when the session first connected, and a resumed session keeps it
 * forever, so a channel added later and left out of the cursor would be replayed from that
 * old watermark: history published before it was subscribed (up to the replay cap).
 *
 * So the client builds the cursor itself, on every open, from what it knows, every channel
 * named explicitly:
 * - a channel with a position (a delivered message, a WebSocket subscribe reply, an
 *   application `since`) resumes from it: positions win over the gateway's last cursor,
 *   which may name a message the client refused as a gap;
 * - a channel without a position gets a "floor", fixed the first time it is opened and kept
 *   until it has a position or leaves the set (so a reopen never moves it forward past
 *   messages it may still be owed):
 *   - a channel that was in a fresh open (no cursor at all) starts at that open's watermark,
 *     which the gateway reports in the cursor of the first message;
 *   - a channel added to a running session starts at the newest stream position the client
 *     has seen (the largest seq or watermark in the last cursor, or of any position in the
 *     epoch). Sequences are positions in one stream shared by every channel, so every message
 *     published after the subscription has a larger seq: nothing is lost, and nothing older
 *     than the last message the client saw is replayed. The gateway has no "now" to ask for
 *     over SSE; what falls between that position and the subscription (messages of the new
 *     channel newer than anything the session received) is delivered, as a WebSocket
 *     subscribe with `since` would;
 * - the watermark sent is at most the lowest of those seqs: it moves no named channel forward.
 *
 * A cursor of another shape (not a Tidings cursor) is passed back unchanged.
 */
import type { PositionTracker } from "./positions.js";
import type { Position } from "./types.js";

export interface ParsedCursor {
  epoch: string;
  watermark: number;
  seqs: Map<string, number>;
}

/** Parses `e<epoch>;w<n>;<channel>=<seq>;…`; `null` for any other shape. */
export function parseCursor(cursor: string): ParsedCursor | null {
  const [e, w, ...rest] = cursor.trim().split(";");
  if (!e?.startsWith("e") || e.length < 2 || !w || !/^w\d+$/.test(w)) return null;
  const seqs = new Map<string, number>();
  for (const part of rest) {
    const i = part.lastIndexOf("=");
    const seq = Number(part.slice(i + 1));
    if (i <= 0 || !/^\d+$/.test(part.slice(i + 1)) || !Number.isSafeInteger(seq)) return null;
    seqs.set(part.slice(0, i), seq);
  }
  return { epoch: e.slice(1), watermark: Number(w.slice(1)), seqs };
}

/** Encodes a cursor naming every channel; the watermark is the lowest seq (or `watermark`, if lower). */
export function encodeCursor(epoch: string, seqs: Map<string, number>, watermark = Infinity): string {
  watermark = Math.min(watermark, ...seqs.values());
  const parts = [...seqs].map(([c, s]) => `${c}=${s}`).sort();
  return [`e${epoch}`, `w${watermark}`, ...parts].join(";");
}

/** The epoch of the set's positions when they agree on one, else `null`. */
function commonEpoch(channels: string[], positions: PositionTracker): string | null {
  let epoch: string | null = null;
  for (const c of channels) {
    const e = positions.resumeFrom(c)?.epoch;
    if (e === undefined) continue;
    if (epoch !== null && e !== epoch) return null;
    epoch = e;
  }
  return epoch;
}

/** A position in another epoch than the cursor's: the stream was recreated since. */
export type StaleHandler = (channel: string, pos: Position, epoch: string) => void;

export class CursorBuilder {
  /** The cursor of the last durable message accepted. */
  private last: string | null = null;
  /** Channels without a position: the seq they open from (`null`: the watermark of the fresh open they were in). */
  private readonly floors = new Map<string, number | null>();

  /** A durable message with this cursor was delivered. */
  accepted(cursor: string): void {
    this.last = cursor;
  }

  /** A channel left the set or joined it anew: its floor is recomputed when it is next opened. */
  forget(channel: string): void {
    this.floors.delete(channel);
  }

  /** The stream was recreated: floors of the old epoch mean nothing; start at the new watermark. */
  epochChanged(): void {
    for (const c of this.floors.keys()) this.floors.set(c, null);
  }

  /** The cursor to open `channels` with, or `null` to open fresh (nothing known). */
  build(channels: string[], positions: PositionTracker, stale: StaleHandler): string | null {
    const parsed = this.last === null ? null : parseCursor(this.last);
    if (this.last !== null && parsed === null) return this.last;
    const epoch = parsed?.epoch ?? commonEpoch(channels, positions);
    if (epoch === null) {
      for (const c of channels) if (!this.floors.has(c)) this.floors.set(c, null);
      return null;
    }
    const newest = Math.max(parsed?.watermark ?? 0, ...(parsed?.seqs.values() ?? []), positions.highest(epoch) ?? 0);
    const seqs = new Map<string, number>();
    for (const c of channels) {
      let pos = positions.resumeFrom(c);
      if (pos?.epoch !== undefined && pos.epoch !== epoch) {
        stale(c, pos, epoch);
        pos = positions.resumeFrom(c);
      }
      if (pos && (pos.epoch === undefined || pos.epoch === epoch)) {
        seqs.set(c, pos.seq);
        continue;
      }
      const floor = this.floors.get(c) ?? (this.floors.has(c) ? (parsed?.watermark ?? newest) : newest);
      this.floors.set(c, floor);
      seqs.set(c, floor);
    }
    return encodeCursor(epoch, seqs, parsed?.watermark);
  }
}
