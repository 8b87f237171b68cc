// Sockets that relay bulk bytes, read up to 256 KiB at a time. Read through
// its stream, a socket gives at most 64 KiB a read, and a relay pays every
// per-chunk cost downstream (a write, a frame, a gRPC message, the peer's
// read) for each. With `onread` the kernel hands over what it holds, up to
// LARGE_READ_BYTES, in one read into a buffer of ours, which is pushed into
// the socket's own stream: the socket still reads, pipes, pauses and ends as
// any other (its stream's backpressure stops the reads, as it does without).

import type { OnReadOpts, Socket } from "node:net";

/** The most one read takes. */
export const LARGE_READ_BYTES = 256 * 1024;
/**
 * A socket's first buffer, and its buffer again after a small read: a read
 * that fills its buffer makes the next one four times larger, up to
 * LARGE_READ_BYTES, so only a connection that moves bulk bytes reads large.
 */
export const FIRST_READ_BYTES = 16 * 1024;

/**
 * The socket `open` makes with the `onread` it is given (pass it to
 * `net.connect` or `new Socket`), its reads up to LARGE_READ_BYTES.
 */
export function withLargeReads(open: (onread: OnReadOpts) => Socket): Socket {
  let size = FIRST_READ_BYTES;
  let buffer: Buffer | undefined;
  // Set before any read: a socket reads only once connected, after `open` returned.
  let socket: Socket | undefined;
  socket = open({
    buffer: () => {
      buffer ??= Buffer.allocUnsafe(size);
      return buffer;
    },
    callback(length, read) {
      let chunk: Buffer;
      if (length >= read.length / 2) {
        // The buffer goes with the bytes; when they filled it there is likely more, and the next is larger.
        chunk = Buffer.from(read.buffer, read.byteOffset, length);
        buffer = undefined;
        if (length === read.length) size = Math.min(size * 4, LARGE_READ_BYTES);
      } else {
        // Copied out, so the buffer serves the next read; a large one is let go.
        chunk = Buffer.from(read.subarray(0, length));
        if (size > FIRST_READ_BYTES && length < size / 4) {
          buffer = undefined;
          size = FIRST_READ_BYTES;
        }
      }
      // What the stream does with a read of its own: false stops reading until it is read.
      return socket!.push(chunk);
    },
  });
  return socket;
}
