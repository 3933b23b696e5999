/**
 * Dead-connection detection for environments that cannot see WebSocket protocol pings
 * (browsers): after `welcome`, send an application `ping` every `heartbeat_ms`; when no
 * frame of any kind arrived for 2 × `heartbeat_ms`, the connection is dead even though TCP
 * has not noticed (laptop sleep, a NAT dropping state, a half-open mobile link).
 *
 * `seen()` runs for every frame, so it only stores a timestamp; the single dead-timer
 * re-arms itself for the remainder when it fires early.
 */
export class Heartbeat {
  private interval: ReturnType<typeof setInterval> | null = null;
  private deadTimer: ReturnType<typeof setTimeout> | null = null;
  private lastSeen = 0;
  private periodMs = 0;

  constructor(
    private readonly ping: () => void,
    private readonly dead: () => void,
  ) {}

  start(periodMs: number): void {
    this.stop();
    if (!(periodMs > 0)) return;
    this.periodMs = periodMs;
    this.lastSeen = Date.now();
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
    this.deadTimer = setTimeout(() => this.check(), ms);
  }

  private check(): void {
    this.deadTimer = null;
    const silent = Date.now() - this.lastSeen;
    const limit = 2 * this.periodMs;
    if (silent >= limit) {
      this.stop();
      this.dead();
    } else {
      this.arm(limit - silent);
    }
  }
}
