// Joining two byte streams: each one's data goes to the other, half-close
// included, and an error on either tears down both. And joining what one
// stream emits into a buffer, bounded.

import type { Duplex } from "node:stream";

/** Keeps the first `limit` bytes `stream` emits, so a hostile peer cannot make us buffer without end. */
export function collectBounded(stream: NodeJS.EventEmitter, limit: number): () => Buffer {
  const chunks: Buffer[] = [];
  let kept = 0;
  stream.on("data", (chunk: Buffer) => {
    if (kept >= limit) return;
    const part = chunk.length <= limit - kept ? chunk : chunk.subarray(0, limit - kept);
    chunks.push(part);
    kept += part.length;
  });
  return () => Buffer.concat(chunks, kept);
}

export function bridge(a: Duplex, b: Duplex, onClose: () => void = () => {}): void {
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    onClose();
  };
  a.pipe(b);
  b.pipe(a);
  a.on("error", (error) => {
    b.destroy(error);
    close();
  });
  b.on("error", (error) => {
    a.destroy(error);
    close();
  });
  a.on("close", close);
  b.on("close", close);
}
