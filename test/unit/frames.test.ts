// The fast byte-frame codec must write exactly what the generated protobuf
// codec writes, and read anything the generated codec writes.

import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { credentials, Server, ServerCredentials } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  CreateSandboxRequest,
  ExecSandboxEvent,
  ExecSandboxInput,
  GetSandboxFilesResponse,
  RelayFrame,
  type SandboxFile,
  type SandboxResponse,
  TcpForwardFrame,
} from "../../src/gen/openshell.js";
import { inPlaceFrameCount, installPatches } from "../../src/host/patches.js";
import { FRAME_BYTES, frameDuplex } from "../../src/transport/duplex.js";
import {
  dataFrameCodec,
  deserializeCreateRequest,
  deserializeFilesResponse,
  execEventCodec,
  execInputCodec,
  FastOpenShellClient,
  FastOpenShellService,
  layoutCreateRequest,
  relayCodec,
  serializeCreateRequest,
  serializeFilesResponse,
  tcpForwardCodec,
} from "../../src/transport/frames.js";

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

describe("injected-file codec", () => {
  const files: SandboxFile[] = [0, 1, 127, 128, 16_384, 40_960].map((size, i) => ({
    path: `/etc/app/f${i}`,
    content: randomBytes(size),
    mode: i === 0 ? 0 : 0o444 + i,
    size: 0,
    sha256: i % 2 === 0 ? "" : "ab".repeat(32),
  }));

  it("writes a create request the generated codec reads back field for field", () => {
    const request = CreateSandboxRequest.fromPartial({
      name: "files",
      labels: { team: "a" },
      annotations: { "openshell.dev/start-on-attach": "true" },
      workspace: "w",
      spec: { command: ["sleep", "1"], tty: true, environment: { A: "1" }, logLevel: "info", files },
    });
    const bytes = serializeCreateRequest(request);
    const back = CreateSandboxRequest.decode(bytes);
    const reference = CreateSandboxRequest.decode(CreateSandboxRequest.encode(request).finish());
    expect(back).toEqual(reference);
    // Our reader gives the same message, the content as views of the received bytes.
    expect(deserializeCreateRequest(bytes)).toEqual(reference);
    expect(deserializeCreateRequest(Buffer.from(CreateSandboxRequest.encode(request).finish()))).toEqual(
      reference,
    );
    expect(
      back.spec!.files.map((f) => Buffer.from(f.content).equals(files[back.spec!.files.indexOf(f)]!.content)),
    ).toEqual(files.map(() => true));
    const none = CreateSandboxRequest.fromPartial({ name: "plain", spec: { command: ["true"] } });
    expect(serializeCreateRequest(none).equals(Buffer.from(CreateSandboxRequest.encode(none).finish()))).toBe(
      true,
    );
  });

  it("lays a create request out before its content exists; filled in place, it is sent as that one buffer", () => {
    const request = CreateSandboxRequest.fromPartial({
      name: "laid-out",
      labels: { team: "a" },
      workspace: "w",
      spec: {
        command: ["sleep", "1"],
        files: files.map((f) => ({ ...f, content: Buffer.alloc(0), size: f.content.length, sha256: "" })),
      },
    });
    const { request: laidOut, slots } = layoutCreateRequest(
      request,
      files.map((f) => f.content.length),
    );
    for (const [i, f] of files.entries()) f.content.copy(slots[i]!);
    const bytes = serializeCreateRequest(laidOut);
    // No copy: the slots are views of the bytes sent.
    expect(slots[1]!.buffer).toBe(bytes.buffer);
    const expected = CreateSandboxRequest.fromPartial({
      ...request,
      spec: {
        ...request.spec,
        files: request.spec!.files.map((f, i) => ({ ...f, content: files[i]!.content })),
      },
    });
    expect(CreateSandboxRequest.decode(bytes)).toEqual(
      CreateSandboxRequest.decode(CreateSandboxRequest.encode(expected).finish()),
    );
    // A copy that differs is encoded afresh, never sent as the original's bytes.
    const renamed = serializeCreateRequest({ ...laidOut, name: "other" });
    expect(renamed).not.toBe(bytes);
    expect(CreateSandboxRequest.decode(renamed).name).toBe("other");
    // Without files there is nothing to lay out.
    const none = CreateSandboxRequest.fromPartial({ name: "plain", spec: { command: ["true"] } });
    expect(layoutCreateRequest(none, [])).toEqual({ request: none, slots: [] });
  });

  it("a laid-out request goes through a real grpc-js client and server intact, framed where it lies", async () => {
    expect(installPatches(["grpc-in-place-framing"], {})).toEqual([]);
    const framedBefore = inPlaceFrameCount();
    const server = new Server({ "grpc.max_receive_message_length": 16 * 1024 * 1024 });
    let received: CreateSandboxRequest | undefined;
    server.addService(FastOpenShellService, {
      createSandbox: (
        call: { request: CreateSandboxRequest },
        reply: (error: null, response: SandboxResponse) => void,
      ) => {
        received = call.request;
        reply(null, { sandbox: undefined });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
    const client = new FastOpenShellClient(`127.0.0.1:${port}`, credentials.createInsecure(), {
      "grpc.max_send_message_length": 16 * 1024 * 1024,
    });
    try {
      const big = files.map((f, i) => ({
        ...f,
        content: randomBytes(i === 0 ? 1024 * 1024 : f.content.length),
      }));
      const { request, slots } = layoutCreateRequest(
        CreateSandboxRequest.fromPartial({
          name: "framed",
          spec: {
            command: ["true"],
            files: big.map((f) => ({ ...f, content: Buffer.alloc(0), sha256: "" })),
          },
        }),
        big.map((f) => f.content.length),
      );
      for (const [i, f] of big.entries()) f.content.copy(slots[i]!);
      await new Promise<void>((resolve, reject) =>
        client.createSandbox(request, (error) => (error ? reject(error) : resolve())),
      );
      // Sent where it lay, not copied behind a header by grpc-js.
      expect(inPlaceFrameCount()).toBe(framedBefore + 1);
      expect(received!.name).toBe("framed");
      expect(
        received!.spec!.files.map((f) =>
          Buffer.from(f.content).equals(big[received!.spec!.files.indexOf(f)]!.content),
        ),
      ).toEqual(big.map(() => true));
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  it("writes a files response the generated codec reads back, content intact and in order", () => {
    const bytes = serializeFilesResponse({ files });
    // Content is written after the file's other fields: the same message in a different field order.
    const back = GetSandboxFilesResponse.decode(bytes);
    const reference = GetSandboxFilesResponse.decode(GetSandboxFilesResponse.encode({ files }).finish());
    expect(back).toEqual(reference);
    expect(deserializeFilesResponse(bytes)).toEqual(reference);
    expect(deserializeFilesResponse(GetSandboxFilesResponse.encode({ files }).finish())).toEqual(reference);
    expect(back.files.map((f) => f.path)).toEqual(files.map((f) => f.path));
    expect(
      back.files.map((f) => Buffer.from(f.content).equals(files[back.files.indexOf(f)]!.content)),
    ).toEqual(files.map(() => true));
    expect(serializeFilesResponse({ files: [] }).length).toBe(0);
  });
});

describe("injected-file reader", () => {
  it("leaves a malformed message to the generated codec, which refuses it", () => {
    const good = serializeFilesResponse({
      files: [{ path: "/etc/a", content: randomBytes(300), mode: 0o444, size: 0, sha256: "" }],
    });
    const truncated = good.subarray(0, good.length - 10);
    expect(() => deserializeFilesResponse(truncated)).toThrow();
    expect(() => GetSandboxFilesResponse.decode(truncated)).toThrow();
  });

  it("keeps unknown fields out of the way and reads the known ones", () => {
    const file = { path: "/etc/a", content: randomBytes(64), mode: 0o555, size: 0, sha256: "" };
    // field 9 (varint) and field 10 (fixed32) inside the file, field 7 (fixed64) outside: a newer peer's additions
    const entry = Buffer.concat([
      Buffer.from([0x48, 0x96, 0x01, 0x55, 1, 2, 3, 4]),
      serializeFilesResponse({ files: [file] }).subarray(2),
    ]);
    const message = Buffer.concat([
      Buffer.from([0x39, 1, 2, 3, 4, 5, 6, 7, 8]),
      Buffer.from([0x0a, entry.length]),
      entry,
    ]);
    const back = deserializeFilesResponse(message);
    expect(back.files).toHaveLength(1);
    expect(back.files[0]!.path).toBe("/etc/a");
    expect(back.files[0]!.mode).toBe(0o555);
    expect(Buffer.from(back.files[0]!.content).equals(file.content)).toBe(true);
  });
});

describe("data frames gathered into wire form", () => {
  it("serialize to exactly the generated codec's bytes and read back as the same payload", () => {
    const codec = dataFrameCodec<TcpForwardFrame>();
    for (const sizes of [[1], [127, 1], [100, 28, 16_000, 256], [65_536, 65_536, 65_536, 65_536]]) {
      const parts = sizes.map((n) => randomBytes(n));
      const whole = Buffer.concat(parts);
      const frame = codec.gather!(parts, whole.length);
      expect(Buffer.from(frame.payload?.$case === "data" ? frame.payload.value : []).equals(whole)).toBe(
        true,
      );
      const wire = tcpForwardCodec.serialize(frame);
      expect(wire.equals(Buffer.from(TcpForwardFrame.encode(codec.toFrame(whole)).finish()))).toBe(true);
      expect(codec.fromFrame(tcpForwardCodec.deserialize(wire))?.equals(whole)).toBe(true);
    }
  });

  it("a byte stream written in odd pieces leaves as frames of at most FRAME_BYTES, in order", async () => {
    const written: TcpForwardFrame[] = [];
    const call = Object.assign(new EventEmitter(), {
      write(frame: TcpForwardFrame, callback?: (error?: Error | null) => void) {
        written.push(frame);
        callback?.();
        return true;
      },
      end() {},
      pause() {
        return call;
      },
      resume() {
        return call;
      },
    });
    const stream = frameDuplex(call as never, dataFrameCodec<TcpForwardFrame>());
    const pieces = [1, 32_768, 300_000, 7, FRAME_BYTES, 0, 5].map((n) => randomBytes(n));
    for (const piece of pieces) stream.write(piece);
    await new Promise<void>((resolve) => stream.end(resolve));
    const sent = written.map((f) => tcpForwardCodec.serialize(f)).map((w) => tcpForwardCodec.deserialize(w));
    const payloads = sent.map((f) => (f.payload?.$case === "data" ? f.payload.value : Buffer.alloc(0)));
    expect(payloads.every((p) => p.length > 0 && p.length <= FRAME_BYTES)).toBe(true);
    expect(Buffer.concat(payloads).equals(Buffer.concat(pieces))).toBe(true);
  });
});
