// Property tests of the supervisor's reader of the agent's channel: whatever
// bytes arrive, in whatever chunks, it never throws, never holds more than
// its line cap, and passes on only exact, bounded messages.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  AGENT_LINE_MAX_BYTES,
  type AgentMessage,
  AgentMessageDecoder,
  BoundedLineReader,
  encodeAgentMessage,
  LOG_TEXT_MAX_CHARS,
  parseAgentMessage,
} from "../../src/supervisor/agent/channel.js";

const SEED = 20_251_202;
const RUNS = 3000;

const validMessage: fc.Arbitrary<AgentMessage> = fc.oneof(
  fc.constant({ t: "ready" as const }),
  fc.constant({ t: "beat" as const }),
  fc.record({
    t: fc.constant("log" as const),
    s: fc.constantFrom("stdout" as const, "stderr" as const),
    m: fc.string({ unit: "grapheme", maxLength: 200 }),
  }),
  fc.record({ t: fc.constant("exit" as const), code: fc.integer({ min: 0, max: 255 }) }),
  fc.record({
    t: fc.constant("fatal" as const),
    reason: fc.stringMatching(/^[A-Za-z][A-Za-z0-9]{0,20}$/),
    message: fc.string({ maxLength: 100 }),
  }),
);

/** Splits `data` at the given cut points (as a pipe may deliver it). */
function chunked(data: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of points) {
    chunks.push(data.subarray(start, point));
    start = point;
  }
  chunks.push(data.subarray(start));
  return chunks;
}

function isValid(message: AgentMessage): boolean {
  switch (message.t) {
    case "ready":
    case "beat":
      return Object.keys(message).length === 1;
    case "log":
      return (message.s === "stdout" || message.s === "stderr") && message.m.length <= LOG_TEXT_MAX_CHARS;
    case "exit":
      return Number.isInteger(message.code) && message.code >= 0 && message.code <= 255;
    case "fatal":
      return /^[A-Za-z][A-Za-z0-9]{0,63}$/.test(message.reason) && message.message.length <= 4096;
  }
}

describe("agent channel decoder", () => {
  it(`round-trips any sequence of valid messages, in any chunking (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.array(validMessage, { maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (messages, cuts) => {
          const out: AgentMessage[] = [];
          let drops = 0;
          const decoder = new AgentMessageDecoder(
            (m) => out.push(m),
            () => drops++,
          );
          const wire = Buffer.from(messages.map(encodeAgentMessage).join(""));
          for (const chunk of chunked(wire, cuts)) decoder.push(chunk);
          expect(drops).toBe(0);
          expect(out).toEqual(messages);
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`never throws on arbitrary bytes and passes only valid messages (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.constant(new Uint8Array([0x0a]))), {
          maxLength: 20,
        }),
        (chunks) => {
          const decoder = new AgentMessageDecoder(
            (m) => expect(isValid(m)).toBe(true),
            () => {},
            256,
          );
          for (const chunk of chunks) decoder.push(Buffer.from(chunk));
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`refuses messages with a claimed target, extra keys or out-of-range fields (${RUNS} cases)`, () => {
    const forged = fc.oneof(
      fc.record({
        t: fc.constant("log"),
        s: fc.string().filter((s) => s !== "stdout" && s !== "stderr"),
        m: fc.string(),
      }),
      fc.record({ t: fc.constant("log"), s: fc.constant("stdout"), m: fc.string(), target: fc.string() }),
      fc
        .record({
          t: fc.constant("exit"),
          code: fc.oneof(fc.integer({ min: 256 }), fc.integer({ max: -1 }), fc.double()),
        })
        .filter((v) => !(Number.isInteger(v.code) && v.code >= 0 && v.code <= 255)),
      fc.record({ t: fc.string().filter((t) => !["ready", "beat", "log", "exit", "fatal"].includes(t)) }),
      fc.anything().filter((v) => typeof v !== "object" || v === null || Array.isArray(v)),
    );
    fc.assert(
      fc.property(forged, (value) => {
        expect(parseAgentMessage(JSON.stringify(value) ?? "undefined")).toBeUndefined();
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it("refuses a log line naming the network target: {t:log, s:network} is dropped", () => {
    expect(parseAgentMessage('{"t":"log","s":"network","m":"egress allowed"}')).toBeUndefined();
    expect(
      parseAgentMessage(`{"t":"log","s":"stdout","m":"${"x".repeat(LOG_TEXT_MAX_CHARS + 1)}"}`),
    ).toBeUndefined();
  });

  it(`holds at most the line cap of a flood without newlines, then reads the next line (${RUNS / 10} cases)`, () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 20 }), (chunkSize, chunks) => {
        const max = 100;
        const lines: string[] = [];
        let oversized = 0;
        const reader = new BoundedLineReader(
          max,
          (line) => lines.push(line.toString()),
          () => oversized++,
        );
        for (let i = 0; i < chunks; i++) {
          reader.push(Buffer.alloc(chunkSize, 0x61));
          expect(reader.pending).toBeLessThanOrEqual(max);
        }
        reader.push(Buffer.from("\nnext\n"));
        const total = chunkSize * chunks;
        expect(lines).toEqual(total > max ? ["next"] : ["a".repeat(total), "next"]);
        expect(oversized).toBe(total > max ? 1 : 0);
      }),
      { seed: SEED, numRuns: RUNS / 10 },
    );
  });

  it("drops a 64 MiB line without a newline and decodes the message after it", () => {
    const out: AgentMessage[] = [];
    const drops: string[] = [];
    const decoder = new AgentMessageDecoder(
      (m) => out.push(m),
      (kind) => drops.push(kind),
    );
    const block = Buffer.alloc(1024 * 1024, 0x7b);
    for (let i = 0; i < 64; i++) decoder.push(block);
    decoder.push(Buffer.from(`\n${encodeAgentMessage({ t: "exit", code: 3 })}`));
    expect(drops).toEqual(["oversized"]);
    expect(out).toEqual([{ t: "exit", code: 3 }]);
    expect(AGENT_LINE_MAX_BYTES).toBe(256 * 1024);
  });
});
