// The fast byte-frame codec must write exactly what the generated protobuf
// codec writes, and read anything the generated codec writes.

import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ExecSandboxEvent, ExecSandboxInput, RelayFrame, TcpForwardFrame } from "../../src/gen/openshell.js";
import { execEventCodec, execInputCodec, relayCodec, tcpForwardCodec } from "../../src/transport/frames.js";

const SIZES = [0, 1, 127, 128, 16_383, 16_384, 65_536, 262_144, 2_097_153];

describe("fast frame codec", () => {
  for (const size of SIZES) {
    it(`matches the generated codec for ${size}-byte payloads`, () => {
      const data = randomBytes(size);
      const cases = [
        [tcpForwardCodec, TcpForwardFrame, { payload: { $case: "data" as const, value: data } }],
        [relayCodec, RelayFrame, { payload: { $case: "data" as const, value: data } }],
        [execInputCodec, ExecSandboxInput, { payload: { $case: "stdin" as const, value: data } }],
        [execEventCodec, ExecSandboxEvent, { payload: { $case: "stdout" as const, value: { data } } }],
        [execEventCodec, ExecSandboxEvent, { payload: { $case: "stderr" as const, value: { data } } }],
      ] as const;
      for (const [fast, generated, message] of cases) {
        const ours = fast.serialize(message as never);
        const theirs = Buffer.from(
          (generated as { encode(m: unknown): { finish(): Uint8Array } }).encode(message).finish(),
        );
        expect(ours.equals(theirs)).toBe(true);
        const back = fast.deserialize(theirs) as {
          payload: { $case: string; value: Buffer | { data: Buffer } };
        };
        expect(back.payload.$case).toBe(message.payload.$case);
        const value = back.payload.value;
        expect((Buffer.isBuffer(value) ? value : value.data).equals(data)).toBe(true);
      }
    });
  }

  it("leaves every other message to the generated codec", () => {
    const init = {
      payload: {
        $case: "init" as const,
        value: {
          sandboxId: "s",
          serviceId: "x",
          target: { $case: "ssh" as const, value: {} },
          authorizationToken: "t",
        },
      },
    };
    const bytes = tcpForwardCodec.serialize(init);
    expect(bytes.equals(Buffer.from(TcpForwardFrame.encode(init).finish()))).toBe(true);
    expect(tcpForwardCodec.deserialize(bytes)).toEqual(TcpForwardFrame.decode(bytes));
    const exit = { payload: { $case: "exit" as const, value: { exitCode: 42 } } };
    expect(execEventCodec.deserialize(Buffer.from(ExecSandboxEvent.encode(exit).finish()))).toEqual(exit);
  });
});
