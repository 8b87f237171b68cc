// Joining two byte streams: each one's data goes to the other, half-close
// included, and an error on either tears down both.

import type { Duplex } from "node:stream";

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
