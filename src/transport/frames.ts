// A faster codec for the messages that carry bulk bytes: ForwardTcp and
// RelayStream `data` frames, exec stdout/stderr events and exec stdin, and
// the injected files of CreateSandbox and GetSandboxFiles. The generated
// codec copies every payload two or three times through its growing writer;
// here such a message is written as its protobuf tags and lengths plus one
// copy of the payload, and a frame is read back as a view of the received
// buffer. Every other message goes through the generated codec.
// The bytes on the wire are exactly protobuf's, so any OpenShell peer reads
// them.

import { makeGenericClientConstructor } from "@grpc/grpc-js";
import {
  CreateSandboxRequest,
  ExecSandboxEvent,
  ExecSandboxInput,
  GetSandboxFilesResponse,
  type OpenShellClient,
  OpenShellService,
  RelayFrame,
  SandboxFile,
  SandboxSpec,
  TcpForwardFrame,
} from "../gen/openshell.js";
import { framedInPlace } from "../host/patches.js";
import type { FrameCodec } from "./duplex.js";

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

/**
 * Reads a varint of at most `maxBytes` bytes (5: a length; 10: any field,
 * refused above 2^53), or undefined past the end or the limit.
 */
function readVarint(
  buffer: Uint8Array,
  offset: number,
  maxBytes = 5,
): [value: number, next: number] | undefined {
  let value = 0;
  let scale = 1;
  for (let i = offset; i < buffer.length && i < offset + maxBytes; i++) {
    const byte = buffer[i]!;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return value <= Number.MAX_SAFE_INTEGER ? [value, i + 1] : undefined;
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

// A bulk message is laid out in a buffer from `framedInPlace` (host/patches.ts),
// so grpc-js sends it without copying it behind its frame header.

/** Set on a message whose wire form is already built (`gatherDataFrame`, `layoutCreateRequest`). */
const WIRE = Symbol("openshell.wire");

/**
 * `message` carrying its wire form. Not enumerable, so a copy made by
 * spreading (`{ ...message, name }`) is encoded afresh, never sent as the
 * original's bytes.
 */
function withWire<T extends object>(message: T, wire: Buffer): T {
  return Object.defineProperty(message, WIRE, { value: wire, enumerable: false });
}

/** The wire tag of length-delimited field `field` (field number << 3 | 2). */
const delimitedTag = (field: number): number => field * 8 + 2;
const FIELD_1 = delimitedTag(1);
const FIELD_2 = delimitedTag(2);
/** SandboxSpec.files, an extension number (proto/EXTENSIONS.md). */
const SPEC_FILES_FIELD = 1002;
const SPEC_FILES = delimitedTag(SPEC_FILES_FIELD);
const EMPTY = Buffer.alloc(0);

/** The tag and length that open a length-delimited field of `length` bytes. */
function fieldHeader(tag: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(varintLength(tag) + varintLength(length));
  writeVarint(out, writeVarint(out, 0, tag), length);
  return out;
}

function byteLength(parts: readonly Uint8Array[]): number {
  let total = 0;
  for (const part of parts) total += part.length;
  return total;
}

/** `tag len parts...`: the parts become one length-delimited field. */
function delimited(tag: number, parts: Uint8Array[]): Uint8Array[] {
  return [fieldHeader(tag, byteLength(parts)), ...parts];
}

/**
 * Repeated SandboxFile entries at `tag`: each file's small fields through the
 * generated codec, its content appended as field 2 without being copied here.
 */
function fileEntries(tag: number, files: readonly SandboxFile[]): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (const file of files) {
    const rest = SandboxFile.encode({ ...file, content: EMPTY }).finish();
    const content = file.content.length > 0 ? [fieldHeader(FIELD_2, file.content.length), file.content] : [];
    parts.push(...delimited(tag, [rest, ...content]));
  }
  return parts;
}

function joined(parts: readonly Uint8Array[]): Buffer {
  return Buffer.concat(parts, byteLength(parts));
}

/**
 * CreateSandboxRequest with up to 10 MiB of files: laid out (see
 * layoutCreateRequest) with the content copied in once, or, when it was
 * laid out already, sent as its buffer without a copy.
 */
export function serializeCreateRequest(request: CreateSandboxRequest): Buffer {
  const wire = (request as { [WIRE]?: Buffer })[WIRE];
  if (wire !== undefined) {
    UNWRITTEN.get(wire)?.();
    UNWRITTEN.delete(wire);
    return wire;
  }
  const files = request.spec?.files ?? [];
  if (files.length === 0) return Buffer.from(CreateSandboxRequest.encode(request).finish());
  const { request: laidOut, slots } = layoutCreateRequest(
    request,
    files.map((file) => file.content.length),
  );
  for (const [i, file] of files.entries()) slots[i]!.set(file.content);
  return serializeCreateRequest(laidOut);
}

/**
 * A CreateSandboxRequest laid out before its files' content exists: one
 * buffer will hold every byte of the message, with the space for file i's
 * content (`sizes[i]` bytes) left as `slots[i]` and the other fields written
 * in when the request is serialized. The returned request's
 * files have those slots as content; filled in place, the request
 * serializes as the buffer itself, so ten MiB of files are never joined.
 * Nothing else in the request may change after this.
 */
export function layoutCreateRequest(
  request: CreateSandboxRequest,
  sizes: readonly number[],
): { request: CreateSandboxRequest; slots: Buffer[] } {
  const spec = request.spec;
  // Without files the generated codec's bytes serve (serializeCreateRequest).
  if (!spec || spec.files.length === 0) return { request, slots: [] };
  const rest = CreateSandboxRequest.encode({ ...request, spec: undefined }).finish();
  const specHead = SandboxSpec.encode({ ...spec, files: [] }).finish();
  const entries = spec.files.map((file, i) => {
    const size = sizes[i] ?? 0;
    const fields = SandboxFile.encode({ ...file, content: EMPTY }).finish();
    const contentHead = size > 0 ? fieldHeader(FIELD_2, size) : EMPTY;
    return {
      head: fieldHeader(SPEC_FILES, fields.length + contentHead.length + size),
      fields,
      contentHead,
      size,
    };
  });
  let specLength = specHead.length;
  for (const e of entries) specLength += e.head.length + e.fields.length + e.contentHead.length + e.size;
  const specField = fieldHeader(FIELD_1, specLength);
  const wire = framedInPlace(rest.length + specField.length + specLength);
  // Positions now, bytes at serialization: the reads into the slots (on the
  // thread pool) are then the first to touch the buffer's fresh pages.
  const parts: [offset: number, part: Uint8Array][] = [];
  let offset = 0;
  const place = (part: Uint8Array): void => {
    parts.push([offset, part]);
    offset += part.length;
  };
  place(rest);
  place(specField);
  place(specHead);
  const slots = entries.map((e) => {
    place(e.head);
    place(e.fields);
    place(e.contentHead);
    offset += e.size;
    return wire.subarray(offset - e.size, offset);
  });
  UNWRITTEN.set(wire, () => {
    for (const [at, part] of parts) wire.set(part, at);
  });
  const files = spec.files.map((file, i) => ({ ...file, content: slots[i]! }));
  return { request: withWire({ ...request, spec: { ...spec, files } }, wire), slots };
}

/** Laid-out requests whose small fields are still to be written into their buffer. */
const UNWRITTEN = new WeakMap<Buffer, () => void>();

/** GetSandboxFilesResponse as parts to write out (writev) or join; the content is not copied. */
export function filesResponseParts(response: GetSandboxFilesResponse): Uint8Array[] {
  return fileEntries(FIELD_1, response.files);
}

/** GetSandboxFilesResponse, the content copied once. */
export function serializeFilesResponse(response: GetSandboxFilesResponse): Buffer {
  return joined(filesResponseParts(response));
}

/**
 * Splits a message into the bodies of every occurrence of the
 * length-delimited field `field` (views, not copies) and the bytes of all
 * other fields. Undefined for anything unusual (groups, a truncated field):
 * the generated codec then reads the message and reports what is wrong.
 */
function splitField(
  buffer: Uint8Array,
  field: number,
): { taken: Uint8Array[]; rest: Uint8Array } | undefined {
  const taken: Uint8Array[] = [];
  const rest: Uint8Array[] = [];
  let offset = 0;
  while (offset < buffer.length) {
    const tag = readVarint(buffer, offset, 10);
    if (!tag) return undefined;
    const [key, afterTag] = tag;
    let end: number;
    switch (key % 8) {
      case 0: {
        const value = readVarint(buffer, afterTag, 10);
        if (!value) return undefined;
        end = value[1];
        break;
      }
      case 1:
        end = afterTag + 8;
        break;
      case 2: {
        const length = readVarint(buffer, afterTag, 10);
        if (!length) return undefined;
        end = length[1] + length[0];
        if (end <= buffer.length && Math.floor(key / 8) === field) {
          taken.push(buffer.subarray(length[1], end));
          offset = end;
          continue;
        }
        break;
      }
      case 5:
        end = afterTag + 4;
        break;
      default:
        return undefined;
    }
    if (end > buffer.length) return undefined;
    rest.push(buffer.subarray(offset, end));
    offset = end;
  }
  return { taken, rest: joined(rest) };
}

/** A SandboxFile whose content is a view of the received buffer. */
function decodeFile(body: Uint8Array): SandboxFile {
  const split = splitField(body, 2);
  if (split?.taken.length !== 1) return SandboxFile.decode(body);
  const content = split.taken[0]!;
  return {
    ...SandboxFile.decode(split.rest),
    content: Buffer.from(content.buffer, content.byteOffset, content.byteLength),
  };
}

function decodeFiles(bodies: Uint8Array[]): SandboxFile[] {
  return bodies.map(decodeFile);
}

/** GetSandboxFilesResponse without copying the content (the generated codec copies every file). */
export function deserializeFilesResponse(buffer: Uint8Array): GetSandboxFilesResponse {
  const split = splitField(buffer, 1);
  if (!split || split.rest.length > 0) return GetSandboxFilesResponse.decode(buffer);
  return { files: decodeFiles(split.taken) };
}

/** CreateSandboxRequest without copying the files' content. */
export function deserializeCreateRequest(buffer: Buffer): CreateSandboxRequest {
  const request = splitField(buffer, 1);
  if (request?.taken.length !== 1) return CreateSandboxRequest.decode(buffer);
  const spec = splitField(request.taken[0]!, SPEC_FILES_FIELD);
  if (!spec) return CreateSandboxRequest.decode(buffer);
  return {
    ...CreateSandboxRequest.decode(request.rest),
    spec: { ...SandboxSpec.decode(spec.rest), files: decodeFiles(spec.taken) },
  };
}

interface Generated<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

type Fast<T> = { serialize(message: T): Buffer; deserialize(buffer: Buffer): T };

type DataFrame = TcpForwardFrame | RelayFrame;

/**
 * A `data` frame (field 2 of TcpForwardFrame and RelayFrame) gathered from
 * `parts` straight into its wire form: one copy, where concatenating,
 * encoding and framing would make three. The message still reads as an
 * ordinary frame.
 */
function gatherDataFrame(parts: readonly Buffer[], length: number): DataFrame {
  const head = 1 + varintLength(length);
  // Framed in place: grpc-js sends it behind its header without copying it again.
  const wire = framedInPlace(head + length);
  wire[0] = FIELD_2;
  writeVarint(wire, 1, length);
  let offset = head;
  for (const part of parts) {
    part.copy(wire, offset);
    offset += part.length;
  }
  return withWire({ payload: { $case: "data" as const, value: wire.subarray(head) } }, wire);
}

/** The byte-stream codec of ForwardTcp and RelayStream calls: raw bytes in `data` frames. */
export function dataFrameCodec<F extends DataFrame>(): FrameCodec<F, F> {
  return {
    fromFrame: (frame) => (frame.payload?.$case === "data" ? frame.payload.value : undefined),
    toFrame: (data) => ({ payload: { $case: "data", value: data } }) as F,
    gather: (parts, length) => gatherDataFrame(parts, length) as F,
  };
}

/** A codec whose fast cases are the given `$case` names, each a bytes field at `tag` (inside `outer`). */
function fastCodec<T extends { payload?: { $case: string; value: unknown } | undefined }>(
  generated: Generated<T>,
  cases: { name: string; tag: number; outer?: number; unwrap?: boolean }[],
): Fast<T> {
  return {
    serialize(message) {
      const wire = (message as { [WIRE]?: Buffer })[WIRE];
      if (wire !== undefined) return wire;
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
  createSandbox: {
    ...OpenShellService.createSandbox,
    requestSerialize: serializeCreateRequest,
    requestDeserialize: deserializeCreateRequest,
  },
  getSandboxFiles: {
    ...OpenShellService.getSandboxFiles,
    responseSerialize: serializeFilesResponse,
    responseDeserialize: deserializeFilesResponse,
  },
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
