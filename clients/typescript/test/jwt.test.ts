import { describe, expect, it } from "vitest";
import { decodeJwt } from "../src/index.js";
import { refreshAt, refreshDelay } from "../src/jwt.js";
import { makeToken } from "./fakes.js";

describe("decodeJwt", () => {
  it("reads sub, exp and projects without verifying", () => {
    const t = makeToken({ sub: "alice", exp: 2000000000, iat: 1999990000, projects: ["p1", "p2"], role: "x" });
    expect(decodeJwt(t)).toEqual({ sub: "alice", exp: 2000000000, iat: 1999990000, projects: ["p1", "p2"], role: "x" });
  });

  it("handles base64url and UTF-8", () => {
    const t = makeToken({ sub: "zoë-~?>", exp: 1 });
    expect(decodeJwt(t)?.sub).toBe("zoë-~?>");
  });

  it("returns null for garbage", () => {
    expect(decodeJwt("nope")).toBeNull();
    expect(decodeJwt("a.%%%.c")).toBeNull();
    expect(decodeJwt(`a.${Buffer.from("[1]").toString("base64url")}.c`)).toEqual({});
  });
});

describe("refreshAt", () => {
  const iat = 1_000_000;
  const t0 = 5_000; // the local receive time, unrelated to iat: only the lifetime counts
  it("refreshes at 90 % of the lifetime when that is earlier", () => {
    // 1 h token: 90 % = 3240 s, 60 s before exp = 3540 s.
    expect(refreshAt({ iat, exp: iat + 3600 }, t0)).toBe(t0 + 3240_000);
  });
  it("refreshes 60 s before exp when that is earlier", () => {
    // 5 min token: 90 % = 270 s, exp-60 = 240 s → 240 s.
    expect(refreshAt({ iat, exp: iat + 300 }, t0)).toBe(t0 + 240_000);
  });
  it("waits at least half the lifetime, and at least 5 s", () => {
    expect(refreshDelay({ iat, exp: iat + 100 }, t0)).toBe(50_000); // exp-60 = 40 s < 50 s
    expect(refreshDelay({ iat, exp: iat + 30 }, t0)).toBe(15_000); // exp-60 is negative
    expect(refreshDelay({ iat, exp: iat + 6 }, t0)).toBe(5_000);
    expect(refreshDelay({ iat, exp: iat }, t0)).toBe(5_000);
  });
  it("counts from the local receive time, whatever the local clock says of exp", () => {
    // The local clock is 2 h ahead of the gateway: exp is "past", the lifetime is still 1 h.
    const local = (iat + 7200) * 1000;
    expect(refreshAt({ iat, exp: iat + 3600 }, local)).toBe(local + 3240_000);
  });
  it("uses the receive time without iat, and nothing without exp", () => {
    expect(refreshAt({ exp: 1000 }, 0)).toBe(900_000);
    expect(refreshDelay({ exp: 1000 }, 1_000_000)).toBe(5_000); // already past locally: the floor
    expect(refreshAt({ sub: "x" }, 0)).toBeNull();
  });
});
