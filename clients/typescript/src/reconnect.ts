/**
 * The wait before the next connection attempt: one timer, cut short by the browser's
 * `online` event (the network is back: no reason to sit out the rest of a backoff).
 */
type OnlineTarget = { addEventListener?: (t: string, f: () => void) => void; removeEventListener?: (t: string, f: () => void) => void };

export class ReconnectTimer {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private removeOnline: (() => void) | null = null;

  constructor(private readonly fire: () => void) {}

  /** Runs `fire` after `delay` ms (or at the next `online` event, if sooner). */
  schedule(delay: number): void {
    this.clear();
    this.timer = setTimeout(() => {
      this.timer = null;
      this.fire();
    }, delay);
  }

  clear(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Listens to `online` (where the runtime has it) while the client wants a connection. */
  watchOnline(): void {
    const g = globalThis as OnlineTarget;
    if (this.removeOnline || typeof g.addEventListener !== "function") return;
    const onOnline = (): void => {
      if (this.timer === null) return;
      this.clear();
      this.fire();
    };
    g.addEventListener("online", onOnline);
    this.removeOnline = () => g.removeEventListener?.("online", onOnline);
  }

  unwatchOnline(): void {
    this.removeOnline?.();
    this.removeOnline = null;
  }
}
