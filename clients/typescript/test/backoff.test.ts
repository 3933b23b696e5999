import { describe, expect, it } from "vitest";
import { backoffCap, backoffDelay } from "../src/index.js";
import { retryDelay } from "../src/backoff.js";

describe("backoff with full jitter", () => {
  it("caps double from the floor and saturate at the ceiling", () => {
    const caps = Array.from({ length: 10 }, (_, i) => backoffCap(i, 500, 20_000));
    expect(caps).toEqual([500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000, 20000]);
    expect(backoffCap(1000, 500, 20_000)).toBe(20_000);
  });

  it("draws every delay in [0, cap], spread over the whole window", () => {
    for (const attempt of [0, 3, 8]) {
      const cap = backoffCap(attempt, 500, 20_000);
      const samples = Array.from({ length: 5000 }, () => backoffDelay(attempt, 500, 20_000));
      expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...samples)).toBeLessThanOrEqual(cap);
      const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
      expect(mean).toBeGreaterThan(cap * 0.45);
      expect(mean).toBeLessThan(cap * 0.55);
      // Full jitter: low and high parts of the window are both used, values differ.
      expect(samples.some((s) => s < cap * 0.1)).toBe(true);
      expect(samples.some((s) => s > cap * 0.9)).toBe(true);
      expect(new Set(samples).size).toBeGreaterThan(100);
    }
  });

  it("reaches both ends of the window", () => {
    expect(backoffDelay(2, 500, 20_000, () => 0)).toBe(0);
    expect(backoffDelay(2, 500, 20_000, () => 0.999999999)).toBe(2000);
  });

  it("waits at least retry_ms for a reconnect frame, plus a little", () => {
    for (let i = 0; i < 1000; i++) {
      const d = retryDelay(3000);
      expect(d).toBeGreaterThanOrEqual(3000);
      expect(d).toBeLessThan(3000 + 100 + 300);
    }
  });
});
