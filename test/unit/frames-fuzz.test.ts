// Property tests of the byte-frame codec that reads what a sandbox's relay
// and ForwardTcp streams carry: arbitrary bytes never make it throw anything
// but a decode error, a payload it returns lies within what it was given,
// and every frame round-trips to the same bytes the generated codec writes.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  ExecSandboxEvent,
  type ExecSandboxInput,
  type RelayFrame,
  TcpForwardFrame,
} from "../../src/gen/openshell.js";
import {
  dataFrameCodec,
  decodeBytesField,
  encodeBytesField,
  execEventCodec,
  execInputCodec,
  relayCodec,
  tcpForwardCodec,
} from "../../src/transport/frames.js";

const SEED = 20_251_202;
const RUNS = 3000;

const codecs = [
  ["TcpForwardFrame", tcpForwardCodec],
  ["RelayFrame", relayCodec],
  ["ExecSandboxEvent", execEventCodec],
  ["ExecSandboxInput", execInputCodec],
] as const;

/** Varint-heavy bytes: lengths and tags that overflow, run past the end, or nest. */
const hostileBytes = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc
    .tuple(
      fc.constantFrom(0x0a, 0x12, 0x1a),
      fc.array(fc.integer({ min: 0x80, max: 0xff }), { maxLength: 12 }),
      fc.uint8Array({ maxLength: 16 }),
    )
    .map(([tag, varint, rest]) => Uint8Array.from([tag, ...varint, ...rest])),
);

describe("frame codec under hostile bytes", () => {
  for (const [name, codec] of codecs) {
    it(`${name}: arbitrary bytes decode or fail with an Error, never beyond the input (${RUNS} cases)`, () => {
      fc.assert(
        fc.property(hostileBytes, (bytes) => {
          const input = Buffer.from(bytes);
          let decoded: unknown;
          try {
            decoded = codec.deserialize(input);
          } catch (error) {
            expect(error).toBeInstanceOf(Error);
            return;
          }
          const payload = (decoded as { payload?: { value?: unknown } }).payload?.value;
          const data = Buffer.isBuffer(payload) ? payload : (payload as { data?: unknown } | undefined)?.data;
          if (Buffer.isBuffer(data)) expect(data.length).toBeLessThanOrEqual(input.length);
        }),
        { seed: SEED, numRuns: RUNS },
      );
    });
  }

  it(`decodeBytesField never throws and returns a view inside the message (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        hostileBytes,
        fc.constantFrom(0x0a, 0x12),
        fc.option(fc.constantFrom(0x0a, 0x12)),
        (bytes, tag, outer) => {
          const message = Buffer.from(bytes);
          const data = decodeBytesField(message, tag, outer ?? undefined);
          if (data) {
            expect(data.buffer).toBe(message.buffer);
            expect(data.byteOffset + data.length).toBe(message.byteOffset + message.length);
          }
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`encodeBytesField and decodeBytesField round-trip any payload (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 300 }),
        fc.option(fc.constantFrom(0x0a, 0x12)),
        (bytes, outer) => {
          const data = Buffer.from(bytes);
          const wire = encodeBytesField(0x12, data, outer ?? undefined);
          expect(decodeBytesField(wire, 0x12, outer ?? undefined)?.equals(data)).toBe(true);
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`a data frame gathered from parts is the generated encoding of their concatenation (${RUNS} cases)`, () => {
    const codec = dataFrameCodec<TcpForwardFrame>();
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { minLength: 1, maxLength: 6 }), (parts) => {
        const buffers = parts.map((part) => Buffer.from(part));
        const whole = Buffer.concat(buffers);
        fc.pre(whole.length > 0);
        const frame = codec.gather!(buffers, whole.length);
        expect(codec.fromFrame(frame)?.equals(whole)).toBe(true);
        const ours = tcpForwardCodec.serialize(frame);
        const theirs = Buffer.from(
          TcpForwardFrame.encode({ payload: { $case: "data", value: whole } }).finish(),
        );
        expect(ours.equals(theirs)).toBe(true);
        const back = relayCodec.deserialize(ours);
        expect(back.payload?.$case === "data" && back.payload.value.equals(whole)).toBe(true);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it(`exec events and inputs round-trip through the fast codec (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom("stdout", "stderr"), (bytes, stream) => {
        const data = Buffer.from(bytes);
        const event = { payload: { $case: stream, value: { data } } } as ExecSandboxEvent;
        const wire = execEventCodec.serialize(event);
        expect(wire.equals(Buffer.from(ExecSandboxEvent.encode(event).finish()))).toBe(true);
        const back = execEventCodec.deserialize(wire);
        expect(back.payload?.$case).toBe(stream);
        const input = { payload: { $case: "stdin" as const, value: data } } as ExecSandboxInput;
        const inputBack = execInputCodec.deserialize(execInputCodec.serialize(input));
        expect(Buffer.from((inputBack.payload?.value as Uint8Array | undefined) ?? []).equals(data)).toBe(
          true,
        );
        const relay = relayCodec.deserialize(
          relayCodec.serialize({ payload: { $case: "data", value: data } } as RelayFrame),
        );
        expect(Buffer.from((relay.payload?.value as Uint8Array | undefined) ?? []).equals(data)).toBe(true);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });
});
