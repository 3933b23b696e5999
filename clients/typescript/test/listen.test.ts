import { describe, expect, it } from "vitest";
import { listen } from "../src/listen.js";

describe("listen", () => {
  it("uses only addEventListener on implementations whose on… is an accessor (ws builds one event per listener)", () => {
    class WsLike {
      private readonly ls = new Map<string, Set<(e: unknown) => void>>();
      private attr: ((e: unknown) => void) | null = null;
      get onmessage() {
        return this.attr;
      }
      set onmessage(fn) {
        if (this.attr) this.removeEventListener("message", this.attr);
        this.attr = fn;
        if (fn) this.addEventListener("message", fn);
      }
      addEventListener(t: string, fn: (e: unknown) => void) {
        if (!this.ls.has(t)) this.ls.set(t, new Set());
        this.ls.get(t)!.add(fn);
      }
      removeEventListener(t: string, fn: (e: unknown) => void) {
        this.ls.get(t)?.delete(fn);
      }
      dispatch(data: string) {
        for (const fn of this.ls.get("message") ?? []) fn({ data }); // a fresh object per listener
      }
    }
    const ws = new WsLike();
    const got: unknown[] = [];
    const off = listen(ws, "message", (e) => got.push(e));
    ws.dispatch("a");
    expect(got).toEqual([{ data: "a" }]);
    off();
    ws.dispatch("b");
    expect(got).toHaveLength(1);
  });

  it("sets plain on… fields of test doubles, and dedupes an event also sent to listeners", () => {
    const fake = {
      onmessage: null as ((e: unknown) => void) | null,
      ls: [] as Array<(e: unknown) => void>,
      addEventListener(_t: string, fn: (e: unknown) => void) {
        this.ls.push(fn);
      },
    };
    const got: unknown[] = [];
    listen(fake, "message", (e) => got.push(e));
    const ev = { data: "x" };
    fake.onmessage?.(ev);
    for (const l of fake.ls) l(ev);
    fake.onmessage?.({ data: "y" });
    expect(got).toEqual([{ data: "x" }, { data: "y" }]);
  });

  it("works with EventTarget subclasses that dispatch events", () => {
    const et = new EventTarget();
    const got: string[] = [];
    listen(et, "open", (e) => got.push((e as Event).type));
    et.dispatchEvent(new Event("open"));
    expect(got).toEqual(["open"]);
  });
});
