/**
 * Attaches a handler to a browser-style event source (WebSocket, EventSource) so that it
 * works with every implementation an application may inject:
 *
 * - real implementations (browsers, Node's undici WebSocket, the `ws` and `eventsource`
 *   packages) define `on…` as an accessor that is itself a listener: for them only
 *   `addEventListener` is used (the `ws` package builds a distinct event object per
 *   listener, so listening both ways would see every frame twice);
 * - hand-written doubles usually have plain `on…` fields and call them directly, some also
 *   keep listeners: for them the handler is set both ways, and an event object seen by one
 *   path is not handled again by the other.
 */
type Handler = (ev: unknown) => void;

interface ListenTarget {
  addEventListener?: (type: string, fn: Handler) => void;
  removeEventListener?: (type: string, fn: Handler) => void;
}

/** Whether `prop` is a getter/setter somewhere on `obj`'s prototype chain. */
function isAccessor(obj: object, prop: string): boolean {
  for (let o: object | null = obj; o; o = Object.getPrototypeOf(o) as object | null) {
    const d = Object.getOwnPropertyDescriptor(o, prop);
    if (d) return d.get !== undefined || d.set !== undefined;
  }
  return false;
}

/** Listens to `type` on `target`; returns a function that detaches the handler. */
export function listen(target: object, type: string, fn: Handler): () => void {
  let last: unknown = undefined;
  const handler: Handler = (ev) => {
    if (ev !== undefined && ev !== null && typeof ev === "object") {
      if (ev === last) return;
      last = ev;
    }
    fn(ev);
  };
  const t = target as ListenTarget & Record<string, unknown>;
  const prop = `on${type}`;
  const hasListeners = typeof t.addEventListener === "function";
  const useProperty = !(hasListeners && isAccessor(target, prop));
  if (useProperty) t[prop] = handler;
  if (hasListeners) t.addEventListener?.(type, handler);
  return () => {
    if (useProperty && t[prop] === handler) t[prop] = null;
    if (hasListeners && typeof t.removeEventListener === "function") t.removeEventListener(type, handler);
  };
}
