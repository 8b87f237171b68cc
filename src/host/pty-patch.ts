// The node-pty patches of patches.ts (see its header), in a module of their
// own: the sandbox agent needs only these, and importing patches.ts would
// load grpc-js into every pod's agent before it reads its configuration,
// about 30 ms of each create→Ready.

import { readSync } from "node:fs";
import { StringDecoder } from "node:string_decoder";

/** A patch that could not be installed because the internal it relies on is not what it expects. */
export class PatchUnavailable extends Error {
  constructor(
    readonly patch: string,
    what: string,
  ) {
    super(`${patch}: ${what}; the installed dependency's internals changed, so this patch is not applied`);
    this.name = "PatchUnavailable";
  }
}

/** The queue of writes node-pty has not yet handed to the terminal, or PatchUnavailable. */
export function ptyInputQueue(terminal: object): { readonly length: number } {
  const queue = (terminal as { _writeStream?: { _writeQueue?: unknown } })._writeStream?._writeQueue;
  if (!Array.isArray(queue))
    throw new PatchUnavailable("pty-input-queue", "a terminal has no _writeStream._writeQueue array");
  return queue;
}

/** The most a terminal's last output can be once its child has exited (a pty holds far less). */
const DRAIN_LIMIT_BYTES = 4 * 1024 * 1024;

interface TerminalSocket {
  destroy(...args: unknown[]): unknown;
  destroyed: boolean;
  readableEncoding: BufferEncoding | null;
  read(): unknown;
  emit(event: "data", chunk: Buffer | string): boolean;
  _handle?: { fd?: unknown } | null;
}

/**
 * Makes a terminal deliver everything its child printed before it reports the
 * exit. node-pty closes a terminal 200 ms after its child exits, whether or
 * not its output has been read: output the reader had paused for, or that the
 * kernel had not yet passed to the terminal's reader on a loaded host, was
 * lost with it. Now, just before the close, what the stream holds and what
 * the kernel still has (Linux hands a closed terminal's pending output to a
 * read before it answers EIO) is delivered as 'data', in order, up to
 * DRAIN_LIMIT_BYTES. Throws PatchUnavailable when node-pty's `_socket` or its
 * handle's fd is not what this relies on.
 */
export function drainPtyOnClose(terminal: object): void {
  const socket = (terminal as { _socket?: Partial<TerminalSocket> })._socket;
  const fd = socket?._handle?.fd;
  if (!socket || typeof socket.destroy !== "function" || typeof socket.read !== "function")
    throw new PatchUnavailable("pty-drain-on-close", "a terminal has no _socket stream");
  if (typeof fd !== "number" || fd < 0)
    throw new PatchUnavailable("pty-drain-on-close", "a terminal's _socket has no _handle.fd");
  const stream = socket as TerminalSocket;
  const destroy = stream.destroy;
  stream.destroy = function (this: TerminalSocket, ...args: unknown[]) {
    if (!this.destroyed) drainTerminal(this, fd);
    return destroy.apply(this, args);
  };
}

function drainTerminal(socket: TerminalSocket, fd: number): void {
  // What the stream has read but not yet handed out: read() emits it as 'data'.
  while (socket.read() !== null);
  const decoder = socket.readableEncoding ? new StringDecoder(socket.readableEncoding) : undefined;
  const buffer = Buffer.allocUnsafe(64 * 1024);
  for (let total = 0; total < DRAIN_LIMIT_BYTES; ) {
    let n: number;
    try {
      n = readSync(fd, buffer, 0, Math.min(buffer.length, DRAIN_LIMIT_BYTES - total), null);
    } catch {
      break; // EIO: the terminal is drained and closed; EAGAIN: someone still holds it open.
    }
    if (n <= 0) break;
    total += n;
    const chunk = Buffer.from(buffer.subarray(0, n));
    socket.emit("data", decoder ? decoder.write(chunk) : chunk);
  }
}
