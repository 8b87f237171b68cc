// Lifetimes as the CLI and the gateway read and print them (core/lifetime.ts).

import { describe, expect, it } from "vitest";
import { formatTtl, parseTtl, TTL_MAX_SECONDS } from "../../src/core/lifetime.js";

describe("parseTtl", () => {
  it.each([
    ["30m", 1800],
    ["1h", 3600],
    ["1h30m", 5400],
    ["90s", 90],
    ["2d", 172_800],
    ["1d2h3m4s", 93_784],
    ["45", 45],
    [" 20s ", 20],
    ["366d", TTL_MAX_SECONDS],
  ])("%j is %i seconds", (text, seconds) => {
    expect(parseTtl(text)).toBe(seconds);
  });

  it.each(["", "0", "0s", "soon", "1y", "1.5h", "-5m", "5m1h", "367d", "1 h", "h", "1e3"])(
    "%j is refused",
    (text) => {
      expect(parseTtl(text)).toBeUndefined();
    },
  );
});

describe("formatTtl", () => {
  it.each([
    [20, "20s"],
    [3600, "1h"],
    [5400, "1h30m"],
    [93_784, "1d2h3m4s"],
    [0, "0s"],
  ])("%i seconds print as %j", (seconds, text) => {
    expect(formatTtl(seconds)).toBe(text);
    if (seconds > 0) expect(parseTtl(text)).toBe(seconds);
  });
});
