// Property tests of the gateway's handling of sandbox log lines: what a
// supervisor pushes and what a start reads back from disk are bounded and
// never throw; rotation keeps every file within its size; a start reads the
// end of the files only, and says whether earlier lines are gone.

import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  boundLogLine,
  decodeStoredLine,
  LOG_MESSAGE_MAX_BYTES,
  LOG_RING,
  readLogTail,
  SandboxBus,
  truncateUtf8,
} from "../../src/gateway/bus.js";
import type { SandboxLogLine } from "../../src/gen/openshell.js";

const SEED = 20_251_202;
const RUNS = 3000;
const NOW = 1_800_000_000_000;
const dir = mkdtempSync(join(tmpdir(), "openshell-logstore-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const logLine: fc.Arbitrary<SandboxLogLine> = fc.record({
  sandboxId: fc.string({ maxLength: 40 }),
  timestampMs: fc.integer({ min: 0, max: 2 ** 45 }),
  level: fc.constantFrom("INFO", "WARN", "ERROR", "DEBUG"),
  target: fc.constantFrom("stdout", "stderr", "network", "openshell_gateway"),
  message: fc.string({ unit: "grapheme", maxLength: 300 }),
  source: fc.constantFrom("sandbox", "gateway"),
  fields: fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 20 }), { maxKeys: 3 }),
});

function isBounded(line: SandboxLogLine): void {
  expect(Buffer.byteLength(line.message)).toBeLessThanOrEqual(LOG_MESSAGE_MAX_BYTES);
  expect(["ERROR", "WARN", "INFO", "OCSF", "DEBUG", "TRACE"]).toContain(line.level);
  expect(Number.isSafeInteger(line.timestampMs)).toBe(true);
  expect(line.target.length).toBeLessThanOrEqual(128);
  expect(Object.keys(line.fields).length).toBeLessThanOrEqual(16);
}

describe("log lines from a supervisor (PushSandboxLogs)", () => {
  it(`bounds any object as a log line without throwing (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.record({
            message: fc.anything(),
            level: fc.anything(),
            timestampMs: fc.anything(),
            fields: fc.anything(),
          }),
        ),
        (value) => {
          isBounded(boundLogLine((typeof value === "object" && value !== null ? value : {}) as never, NOW));
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`keeps a valid line as it is and cuts a message over 65,536 bytes at a character boundary (${RUNS / 10} cases)`, () => {
    fc.assert(
      fc.property(
        logLine,
        fc.string({ unit: "grapheme", minLength: 1, maxLength: 4 }),
        fc.nat({ max: 70_000 }),
        (line, unit, repeat) => {
          expect(boundLogLine(line, NOW)).toEqual(line);
          const long = unit.repeat(repeat);
          const bounded = boundLogLine({ ...line, message: long }, NOW).message;
          if (Buffer.byteLength(long) <= LOG_MESSAGE_MAX_BYTES) expect(bounded).toBe(long);
          else {
            expect(Buffer.byteLength(bounded)).toBeLessThanOrEqual(LOG_MESSAGE_MAX_BYTES);
            expect(bounded.endsWith(" [truncated]")).toBe(true);
            expect(bounded).not.toContain("\uFFFD");
          }
        },
      ),
      { seed: SEED, numRuns: RUNS / 10 },
    );
  });

  it(`truncateUtf8 never splits a character and never exceeds its bound (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 100 }), fc.nat({ max: 400 }), (text, max) => {
        const cut = truncateUtf8(text, max);
        expect(Buffer.byteLength(cut)).toBeLessThanOrEqual(Math.max(max, 0));
        expect(text.startsWith(cut) || Buffer.from(text).toString().startsWith(cut)).toBe(true);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });
});

describe("log lines read back at start", () => {
  it(`decodes any stored text without throwing, bounded (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 200 }),
          fc.json(),
          logLine.map((l) => JSON.stringify(l)),
        ),
        (text) => {
          const line = decodeStoredLine(text, NOW);
          if (line) isBounded(line);
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`reads back the last lines of files holding valid, torn and garbage lines (${RUNS / 10} cases)`, () => {
    let run = 0;
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            logLine.map((l) => ({ l })),
            fc.string({ maxLength: 50 }).map((g) => ({ g })),
          ),
          { maxLength: 60 },
        ),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 64, max: 4096 }),
        (entries, maxLines, readBytes) => {
          const path = join(dir, `tail-${run++}.log`);
          const text = entries
            .map((e) => ("l" in e ? JSON.stringify(e.l) : e.g.replace(/\n/g, " ")))
            .join("\n");
          writeFileSync(path, text);
          const { lines, earlier } = readLogTail(path, maxLines, NOW, readBytes);
          expect(lines.length).toBeLessThanOrEqual(maxLines);
          // What it returns is a suffix of the valid lines, newest last.
          const valid = entries
            .map((e) => ("l" in e ? e.l : decodeStoredLine(e.g, NOW)))
            .filter((l): l is SandboxLogLine => l !== undefined);
          expect(valid.slice(valid.length - lines.length)).toEqual(lines);
          if (Buffer.byteLength(text) <= readBytes && lines.length < maxLines) {
            expect(lines.length).toBe(valid.length);
            expect(earlier).toBe(false);
          }
          if (lines.length < valid.length) expect(earlier).toBe(true);
        },
      ),
      { seed: SEED, numRuns: RUNS / 10 },
    );
  });
});

describe("a sandbox's log file", () => {
  it("rotates at 1 MiB keeping 3 files: 40,000 lines leave every file within 1 MiB and the newest lines readable", () => {
    const sandboxDir = mkdtempSync(join(dir, "rotate-"));
    const path = join(sandboxDir, "sandbox.log");
    const bus = new SandboxBus({ maxFileBytes: 1024 * 1024, maxFiles: 3 });
    bus.attachLogFile("s", path);
    for (let batch = 0; batch < 400; batch++) {
      const lines = Array.from({ length: 100 }, (_, i) => ({
        sandboxId: "s",
        timestampMs: NOW + batch * 100 + i,
        level: "INFO",
        target: "stdout",
        message: `line ${batch * 100 + i} ${"y".repeat(60)}`,
        source: "sandbox",
        fields: {},
      }));
      bus.publishLogs("s", lines);
    }
    const files = readdirSync(sandboxDir).sort();
    expect(files).toEqual(["sandbox.log", "sandbox.log.1", "sandbox.log.2", "sandbox.log.dropped"]);
    for (const file of files) expect(statSync(join(sandboxDir, file)).size).toBeLessThanOrEqual(1024 * 1024);
    expect(bus.tailLogs("s")).toHaveLength(LOG_RING);
    expect(bus.tailLogs("s").at(-1)?.message).toMatch(/^line 39999 /);
    expect(bus.earlierLogsDropped("s")).toBe(true);

    const restarted = new SandboxBus({ maxFileBytes: 1024 * 1024, maxFiles: 3 });
    restarted.attachLogFile("s", path);
    expect(restarted.tailLogs("s").map((l) => l.message)).toEqual(bus.tailLogs("s").map((l) => l.message));
    expect(restarted.earlierLogsDropped("s")).toBe(true);
  });

  it("says nothing was dropped for a log of 10 lines, before and after a restart", () => {
    const path = join(mkdtempSync(join(dir, "small-")), "sandbox.log");
    const bus = new SandboxBus();
    bus.attachLogFile("s", path);
    bus.publishLogs(
      "s",
      Array.from({ length: 10 }, (_, i) => ({
        sandboxId: "s",
        timestampMs: NOW + i,
        level: "INFO",
        target: "stdout",
        message: `l${i}`,
        source: "sandbox",
        fields: {},
      })),
    );
    expect(bus.earlierLogsDropped("s")).toBe(false);
    const restarted = new SandboxBus();
    restarted.attachLogFile("s", path);
    expect(restarted.tailLogs("s")).toHaveLength(10);
    expect(restarted.earlierLogsDropped("s")).toBe(false);
  });
});
