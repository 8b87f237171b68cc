// Sockets read up to 256 KiB at a time (transport/large-reads.ts), against a
// real TCP peer on the loopback: every byte arrives in order, bulk reads come
// larger than a stream's 64 KiB, small reads do not hold a large buffer, a
// reader that stops reading stops the socket's reads, and the peer's end
// (a half-close) is passed on.

import { once } from "node:events";
import { connect, createServer, type OnReadOpts, type Server, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { LARGE_READ_BYTES, withLargeReads } from "../../src/transport/large-reads.js";

const STREAM_READ_BYTES = 64 * 1024;

/** Bytes whose every position is told apart (a 32-bit counter), so a lost or swapped chunk shows. */
function pattern(length: number, start = 0): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i + 4 <= length; i += 4) out.writeUInt32LE((start + i) >>> 2, i);
  return out;
}

let server: Server | undefined;
afterEach(() => {
  server?.close();
  server = undefined;
});

/** A server that hands each connection to `serve`, and a client socket with large reads. */
async function pair(serve: (peer: Socket) => void): Promise<Socket> {
  server = createServer({ allowHalfOpen: true }, serve);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  const socket = withLargeReads((onread) =>
    connect({ port, host: "127.0.0.1", allowHalfOpen: true, onread }),
  );
  await once(socket, "connect");
  return socket;
}

describe("withLargeReads", () => {
  it("delivers 16 MiB in order, in reads larger than a stream's and never above the bound", async () => {
    const sent = pattern(16 * 1024 * 1024);
    const socket = await pair((peer) => peer.end(sent));
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    await once(socket, "end");
    expect(Buffer.concat(chunks).equals(sent)).toBe(true);
    expect(Math.max(...chunks.map((c) => c.length))).toBeGreaterThan(STREAM_READ_BYTES);
    expect(chunks.every((c) => c.length <= LARGE_READ_BYTES)).toBe(true);
    socket.destroy();
  });

  it("copies a small read out instead of keeping its 256 KiB buffer", async () => {
    const socket = await pair((peer) => peer.write("hello"));
    const [chunk] = (await once(socket, "data")) as [Buffer];
    expect(chunk.toString()).toBe("hello");
    expect(chunk.buffer.byteLength).toBeLessThan(LARGE_READ_BYTES);
    socket.destroy();
  });

  it("answers a read the stream has no room for with false, which stops the socket's reads (net's onread contract)", () => {
    let onread!: OnReadOpts;
    const socket = withLargeReads((given) => {
      onread = given;
      return new Socket();
    });
    socket.pause();
    const next = (): Uint8Array => (typeof onread.buffer === "function" ? onread.buffer() : onread.buffer);
    const read = (length: number, fill: number): boolean => {
      const buffer = next();
      buffer.fill(fill, 0, length);
      return onread.callback(length, buffer) as boolean;
    };
    expect(read(100, 1)).toBe(true);
    expect(read(LARGE_READ_BYTES, 2)).toBe(false);
    // What was pushed is there, each byte as read: the full read did not share the next read's buffer.
    expect(read(100, 3)).toBe(false);
    const held = socket.read() as Buffer;
    expect(held.length).toBe(100 + LARGE_READ_BYTES + 100);
    expect([held[0], held[100], held[100 + LARGE_READ_BYTES - 1], held.at(-1)]).toEqual([1, 2, 2, 3]);
    socket.destroy();
  });

  it("keeps every byte in order through a reader that pauses after each chunk", async () => {
    const sent = pattern(32 * 1024 * 1024);
    const socket = await pair((peer) => peer.end(sent));
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      socket.pause();
      setImmediate(() => socket.resume());
    });
    await once(socket, "end");
    expect(Buffer.concat(chunks).equals(sent)).toBe(true);
    socket.destroy();
  });

  it("passes the peer's end on, and the socket still sends after it (half-close)", async () => {
    let heard!: (text: string) => void;
    const peerGot = new Promise<string>((resolve) => {
      heard = resolve;
    });
    const socket = await pair((peer) => {
      const got: Buffer[] = [];
      peer.on("data", (chunk: Buffer) => got.push(chunk));
      peer.on("end", () => heard(Buffer.concat(got).toString()));
      peer.end("bye");
    });
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    await once(socket, "end");
    expect(Buffer.concat(chunks).toString()).toBe("bye");
    socket.end("after");
    expect(await peerGot).toBe("after");
    socket.destroy();
  });
});
