/**
 * A small typed event emitter. `on` returns its own unsubscribe function so that React
 * effects and one-off listeners can clean up without keeping a reference to the handler.
 * A listener that throws never breaks the emitter's caller (the socket's frame loop): the
 * exception goes to `onListenerError`.
 */
export type Listener<A extends unknown[]> = (...args: A) => void;
// Stored type-erased; `on`/`emit` keep the per-event types.
type AnyListener = (...args: unknown[]) => void;

export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  private readonly listeners = new Map<keyof Events, Set<AnyListener>>();

  constructor(private readonly onListenerError: (e: unknown) => void = (e) => console.error("[tidings] listener failed", e)) {}

  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn as unknown as AnyListener);
    return () => this.off(event, fn);
  }

  off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): void {
    this.listeners.get(event)?.delete(fn as unknown as AnyListener);
  }

  listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    // A copy: a listener may remove itself (or others) while we iterate.
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        this.onListenerError(e);
      }
    }
  }

  clear(): void {
    this.listeners.clear();
  }
}
