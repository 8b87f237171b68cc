// A faster codec for the messages that carry bulk bytes: ForwardTcp and
// RelayStream `data` frames, exec stdout/stderr events and exec stdin. The
// generated codec copies every payload two or three times through its
// writer and reader; here such a frame is written as its protobuf tags and
// lengths plus one copy of the payload, and read back as a view of the
// received buffer. Every other message goes through the generated codec.
// The bytes on the wire are exactly protobuf's, so any OpenShell peer reads
// them.

import { makeGenericClientConstructor } from "@grpc/grpc-js";
import {
  ExecSandboxEvent,
  ExecSandboxInput,
  type OpenShellClient,
  OpenShellService,
  RelayFrame,
  TcpForwardFrame,
} from "../gen/openshell.js";

function varintLength(value: number): number {
  let length = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 128)) length++;
  return length;
}

function writeVarint(out: Buffer, offset: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    out[offset++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  out[offset++] = v;
  return offset;
}

function readVarint(buffer: Buffer, offset: number): [value: number, next: number] | undefined {
  let value = 0;
  let scale = 1;
  for (let i = offset; i < buffer.length && i < offset + 5; i++) {
    const byte = buffer[i]!;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, i + 1];
    scale *= 128;
  }
  return undefined;
}

/** `tag len payload`, optionally wrapped in an outer `tag len` (a bytes field inside a message field). */
export function encodeBytesField(tag: number, data: Buffer, outerTag?: number): Buffer {
  const inner = 1 + varintLength(data.length) + data.length;
  const total = outerTag === undefined ? inner : 1 + varintLength(inner) + inner;
  const out = Buffer.allocUnsafe(total);
  let offset = 0;
  if (outerTag !== undefined) {
    out[offset++] = outerTag;
    offset = writeVarint(out, offset, inner);
  }
  out[offset++] = tag;
  offset = writeVarint(out, offset, data.length);
  data.copy(out, offset);
  return out;
}

/** The payload of a message that is exactly that one field, or undefined (then use the full codec). */
export function decodeBytesField(message: Buffer, tag: number, outerTag?: number): Buffer | undefined {
  let offset = 0;
  if (outerTag !== undefined) {
    if (message[0] !== outerTag) return undefined;
    const outer = readVarint(message, 1);
    if (!outer || outer[1] + outer[0] !== message.length) return undefined;
    offset = outer[1];
  }
  if (message[offset] !== tag) return undefined;
  const inner = readVarint(message, offset + 1);
  if (!inner || inner[1] + inner[0] !== message.length) return undefined;
  return message.subarray(inner[1]);
}

// Wire tags (field number << 3 | 2, length-delimited).
const FIELD_1 = 0x0a;
const FIELD_2 = 0x12;

interface Generated<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

type Fast<T> = { serialize(message: T): Buffer; deserialize(buffer: Buffer): T };

/** A codec whose fast cases are the given `$case` names, each a bytes field at `tag` (inside `outer`). */
function fastCodec<T extends { payload?: { $case: string; value: unknown } | undefined }>(
  generated: Generated<T>,
  cases: { name: string; tag: number; outer?: number; unwrap?: boolean }[],
): Fast<T> {
  return {
    serialize(message) {
      const payload = message.payload;
      const fast = payload && cases.find((c) => c.name === payload.$case);
      if (fast && payload) {
        const data = (fast.unwrap ? (payload.value as { data: Buffer }).data : payload.value) as Buffer;
        // An empty payload is rare and encoded differently (proto3 omits it), so it takes the slow path.
        if (data.length > 0) return encodeBytesField(fast.tag, data, fast.outer);
      }
      return Buffer.from(generated.encode(message).finish());
    },
    deserialize(buffer) {
      for (const fast of cases) {
        const data = decodeBytesField(buffer, fast.tag, fast.outer);
        if (data) {
          return { payload: { $case: fast.name, value: fast.unwrap ? { data } : data } } as unknown as T;
        }
      }
      return generated.decode(buffer);
    },
  };
}

export const tcpForwardCodec = fastCodec(TcpForwardFrame, [{ name: "data", tag: FIELD_2 }]);
export const relayCodec = fastCodec(RelayFrame, [{ name: "data", tag: FIELD_2 }]);
export const execEventCodec = fastCodec(ExecSandboxEvent, [
  { name: "stdout", tag: FIELD_1, outer: FIELD_1, unwrap: true },
  { name: "stderr", tag: FIELD_1, outer: FIELD_2, unwrap: true },
]);
export const execInputCodec = fastCodec(ExecSandboxInput, [{ name: "stdin", tag: FIELD_2 }]);

function both<T>(codec: Fast<T>, side: "request" | "response") {
  return {
    [`${side}Serialize`]: codec.serialize,
    [`${side}Deserialize`]: codec.deserialize,
  };
}

/** OpenShellService with the fast codec on its byte-carrying methods; same wire format. */
export const FastOpenShellService = {
  ...OpenShellService,
  forwardTcp: {
    ...OpenShellService.forwardTcp,
    ...both(tcpForwardCodec, "request"),
    ...both(tcpForwardCodec, "response"),
  },
  relayStream: {
    ...OpenShellService.relayStream,
    ...both(relayCodec, "request"),
    ...both(relayCodec, "response"),
  },
  execSandbox: { ...OpenShellService.execSandbox, ...both(execEventCodec, "response") },
  execSandboxInteractive: {
    ...OpenShellService.execSandboxInteractive,
    ...both(execInputCodec, "request"),
    ...both(execEventCodec, "response"),
  },
} as typeof OpenShellService;

export const FastOpenShellClient = makeGenericClientConstructor(
  FastOpenShellService,
  "openshell.v1.OpenShell",
) as unknown as typeof OpenShellClient;
