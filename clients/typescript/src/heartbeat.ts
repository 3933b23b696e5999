/**
 * Dead-connection detection for environments that cannot see WebSocket protocol pings
 * (browsers): after `welcome`, send an application `ping` every `heartbeat_ms`; when no
 * frame of any kind arrived for 2 × `heartbeat_ms`, the connection is dead even though TCP
 * has not noticed (laptop sleep, a NAT dropping state, a half-open mobile link).
 *
 * `seen()` runs for every frame, so it only stores a timestamp; the single dead-timer
 * re-arms itself for the remainder when it fires early.
 *
 * Background tabs: browsers throttle timers in hidden tabs (Chrome runs them at most once a
 * minute after a while), so the pings themselves went out late or not at all, and a long
 * silence says nothing about the connection. When the dead-timer fires much later than it
 * was due, the client sends a ping and waits one more period for any frame before declaring
 * the connection dead (once: if that check finds silence again, it is dead).
 */

/** A dead-timer firing this much later than due means timers were throttled. */
export const LATE_TIMER_MS = 1000;

export class Heartbeat {
  private interval: ReturnType<typeof setInterval> | null = null;
  private deadTimer: ReturnType<typeof setTimeout> | null = null;
  private lastSeen = 0;
  private periodMs = 0;
  /** When the dead-timer is due (local ms). */
  private dueAt = 0;
  /** A late check already granted its one extra period. */
  private graced = false;

  constructor(
    private readonly ping: () => void,
    private readonly dead: () => void,
  ) {}

  start(periodMs: number): void {
    this.stop();
    if (!(periodMs > 0)) return;
    this.periodMs = periodMs;
    this.lastSeen = Date.now();
    this.graced = false;
    this.interval = setInterval(() => this.ping(), periodMs);
    this.arm(2 * periodMs);
  }

  /** A frame arrived. */
  seen(): void {
    this.lastSeen = Date.now();
  }

  stop(): void {
    if (this.interval !== null) clearInterval(this.interval);
    if (this.deadTimer !== null) clearTimeout(this.deadTimer);
    this.interval = null;
    this.deadTimer = null;
  }

  private arm(ms: number): void {
    this.dueAt = Date.now() + ms;
    this.deadTimer = setTimeout(() => this.check(), ms);
  }

  private check(): void {
    this.deadTimer = null;
    const now = Date.now();
    const silent = now - this.lastSeen;
    const limit = 2 * this.periodMs;
    if (silent < limit) {
      this.graced = false;
      this.arm(limit - silent);
    } else if (!this.graced && now - this.dueAt >= LATE_TIMER_MS) {
      // Throttled (a hidden tab): our own pings were late too. Ask, and look again later.
      this.graced = true;
      this.ping();
      this.arm(this.periodMs);
    } else {
      this.stop();
      this.dead();
    }
  }
}
