import { describe, expect, it } from "vitest";
import { decodeJwt } from "../src/index.js";
import { refreshAt } from "../src/jwt.js";
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
  it("refreshes at 90 % of the lifetime when that is earlier", () => {
    // 1 h token: 90 % = 3240 s, 60 s before exp = 3540 s.
    expect(refreshAt({ iat, exp: iat + 3600 }, 0, iat * 1000)).toBe((iat + 3240) * 1000);
  });
  it("refreshes 60 s before exp when that is earlier", () => {
    // 24 h token: 60 s before exp is later than 90 %? no: 90 % = 77760 s, exp-60 = 86340 s → 90 %.
    // 5 min token: 90 % = 270 s, exp-60 = 240 s → 240 s.
    expect(refreshAt({ iat, exp: iat + 300 }, 0, iat * 1000)).toBe((iat + 240) * 1000);
  });
  it("is never in the past", () => {
    expect(refreshAt({ iat, exp: iat + 30 }, 0, (iat + 10) * 1000)).toBe((iat + 10) * 1000);
  });
  it("uses the receive time without iat, and nothing without exp", () => {
    expect(refreshAt({ exp: 1000 }, 0, 0)).toBe(900_000);
    expect(refreshAt({ sub: "x" }, 0, 0)).toBeNull();
  });
});
