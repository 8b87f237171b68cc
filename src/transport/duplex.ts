// A byte stream over a bidirectional gRPC stream of frames. ForwardTcp,
// RelayStream and the supervisor's relay all carry raw bytes in `data`
// frames; this turns either end of such a call into a node Duplex so ssh2,
// sockets and pipes can use it directly. Backpressure is kept both ways.

import { Duplex } from "node:stream";

/** The parts of a grpc-js duplex call (client or server side) we use. */
export interface FrameStream<In, Out> {
  write(frame: Out, callback?: (error?: Error | null) => void): boolean;
  end(): void;
  on(event: "data", listener: (frame: In) => void): this;
  on(event: "end", listener: () => void): this;
  on(event: "error", listener: (error: Error) => void): this;
  on(event: "drain", listener: () => void): this;
  on(event: "close", listener: () => void): this;
  once(event: "drain", listener: () => void): this;
  pause(): this;
  resume(): this;
  /** Client calls end early by cancelling; server calls have no cancel and end with an error status. */
  cancel?: () => void;
  emit?(event: "error", error: Error): boolean;
}

/**
 * The largest data frame written. OpenShell writes 64 KiB; larger frames are
 * the same wire format and well within every peer's 1 MiB decode limit, and
 * fewer, fuller messages are what bulk transfers through grpc-js need.
 */
export const FRAME_BYTES = 256 * 1024;

/**
 * How end-of-input crosses a relay. A gRPC client half-closes by ending its
 * request stream, but a server that ends its response ends the whole call.
 * So our gateway's side of a RelayStream sends its EOF as an empty data frame
 * (`sendEofFrame`), which our supervisor reads as EOF (`readEofFrame`) and
 * OpenShell peers skip, and ends the call once both directions are done.
 */
export interface EofOptions {
  sendEofFrame?: boolean;
  readEofFrame?: boolean;
}

/** How a byte stream maps onto a call's frames. */
export interface FrameCodec<In, Out> {
  fromFrame(frame: In): Buffer | undefined;
  toFrame(data: Buffer): Out;
  /** A frame of `length` bytes gathered from `parts`, in one copy (default: concatenate, then toFrame). */
  gather?(parts: readonly Buffer[], length: number): Out;
}

export function frameDuplex<In, Out>(
  call: FrameStream<In, Out>,
  codec: FrameCodec<In, Out>,
  eof: EofOptions = {},
): Duplex {
  const gather = codec.gather ?? ((parts, length) => codec.toFrame(Buffer.concat(parts, length)));
  let finished = false;
  let readEnded = false;
  let writeEnded = false;
  const endCallWhenDone = (): void => {
    if (readEnded && writeEnded && !finished) {
      finished = true;
      call.end();
    }
  };
  const duplex = new Duplex({
    allowHalfOpen: true,
    read() {
      call.resume();
    },
    // One write in flight at a time: node queues what the producer writes
    // meanwhile, and writev sends the queue as frames of up to FRAME_BYTES,
    // so ssh2's 32 KiB packets travel in fewer, fuller messages, each
    // gathered into its wire form in one copy.
    writev(chunks, callback) {
      const frames: Out[] = [];
      let parts: Buffer[] = [];
      let length = 0;
      for (const { chunk } of chunks) {
        const data = chunk as Buffer;
        for (let offset = 0; offset < data.length; ) {
          const take = Math.min(FRAME_BYTES - length, data.length - offset);
          parts.push(take === data.length ? data : data.subarray(offset, offset + take));
          length += take;
          offset += take;
          if (length === FRAME_BYTES) {
            frames.push(gather(parts, length));
            parts = [];
            length = 0;
          }
        }
      }
      if (length > 0) frames.push(gather(parts, length));
      if (frames.length === 0) {
        callback();
        return;
      }
      const last = frames.length - 1;
      for (const [index, frame] of frames.entries()) {
        call.write(frame, index === last ? (error) => callback(error ?? null) : undefined);
      }
    },
    final(callback) {
      writeEnded = true;
      if (eof.sendEofFrame) {
        call.write(codec.toFrame(Buffer.alloc(0)));
        endCallWhenDone();
      } else call.end();
      callback();
    },
    destroy(error, callback) {
      // Both directions ended in order (the stream closes by itself then):
      // the call ends on its own, and cancelling it now would drop the last
      // frames written, still queued below.
      const graceful = error === null && readEnded && writeEnded;
      if (!finished && !graceful) {
        finished = true;
        if (call.cancel) call.cancel();
        else call.emit?.("error", unavailable(error?.message ?? "the stream was torn down"));
      }
      callback(error);
    },
  });
  const endRead = (): void => {
    if (readEnded) return;
    readEnded = true;
    duplex.push(null);
  };
  call.on("data", (frame) => {
    const data = codec.fromFrame(frame);
    if (data === undefined || readEnded) return;
    if (data.length === 0) {
      if (eof.readEofFrame) endRead();
      return;
    }
    if (!duplex.push(data)) call.pause();
  });
  call.on("end", () => {
    endRead();
    if (eof.sendEofFrame) endCallWhenDone();
    else finished = true;
  });
  call.on("error", (error) => {
    finished = true;
    duplex.destroy(error);
  });
  // A server call whose client went away (cancelled, process gone) only
  // closes: without this its byte stream, and whatever is bridged to it,
  // would wait forever.
  call.on("close", () => {
    if (finished) return;
    finished = true;
    duplex.destroy(new Error("the peer went away before the stream ended"));
  });
  return duplex;
}

/** A gRPC UNAVAILABLE status as grpc-js servers accept it through an 'error' event. */
function unavailable(details: string): Error {
  return Object.assign(new Error(details), { code: 14, details });
}
