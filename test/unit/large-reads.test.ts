// Sockets read up to 256 KiB at a time (transport/large-reads.ts), against a
// real TCP peer on the loopback: every byte arrives in order, bulk reads come
// larger than a stream's 64 KiB, small reads do not hold a large buffer, a
// reader that stops reading stops the socket's reads, and the peer's end
// (a half-close) is passed on.

import { once } from "node:events";
import { connect, createServer, type OnReadOpts, type Server, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { FIRST_READ_BYTES, LARGE_READ_BYTES, withLargeReads } from "../../src/transport/large-reads.js";

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

  it("grows its buffer with reads that fill it, and answers a read the stream has no room for with false, which stops the socket's reads (net's onread contract)", () => {
    let onread!: OnReadOpts;
    const socket = withLargeReads((given) => {
      onread = given;
      return new Socket();
    });
    socket.pause();
    const next = (): Uint8Array => (typeof onread.buffer === "function" ? onread.buffer() : onread.buffer);
    const read = (length: number | "full", fill: number): { more: boolean; size: number } => {
      const buffer = next();
      const n = length === "full" ? buffer.length : length;
      buffer.fill(fill, 0, n);
      return { more: onread.callback(n, buffer) as boolean, size: buffer.length };
    };
    expect(read(100, 1)).toEqual({ more: true, size: FIRST_READ_BYTES });
    expect(read("full", 2)).toEqual({ more: false, size: FIRST_READ_BYTES });
    expect(read("full", 3)).toEqual({ more: false, size: 4 * FIRST_READ_BYTES });
    expect(read("full", 4)).toEqual({ more: false, size: LARGE_READ_BYTES });
    expect(read("full", 5)).toEqual({ more: false, size: LARGE_READ_BYTES });
    // A small read lets the large buffer go.
    expect(read(10, 6).size).toBe(LARGE_READ_BYTES);
    expect(next().length).toBe(FIRST_READ_BYTES);
    // Every byte pushed is there as read: no buffer handed out was written again.
    const held = socket.read() as Buffer;
    const sizes = [100, FIRST_READ_BYTES, 4 * FIRST_READ_BYTES, LARGE_READ_BYTES, LARGE_READ_BYTES, 10];
    expect(held.length).toBe(sizes.reduce((a, b) => a + b));
    let offset = 0;
    for (const [i, size] of sizes.entries()) {
      expect([held[offset], held[offset + size - 1]]).toEqual([i + 1, i + 1]);
      offset += size;
    }
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
