// The pod's end of TCP forwards (transport/pod-forward.ts): a Unix socket
// beside the SSH socket, 0600, which only the supervisor and a gateway on
// this machine reach from outside. Each connection names a port on the pod's
// loopback; the agent dials it and joins the two, each side's end passed on
// to the other (half-close), at the pace of the slower side.
//
// Whatever runs in the sandbox could open this socket too and ask for a port
// on the loopback, which it can reach directly anyway; it gains nothing.

import net from "node:net";
import { withLargeReads } from "../../transport/large-reads.js";
import {
  decodeForwardRequest,
  describeConnectError,
  encodeForwardError,
  FORWARD_OK,
  FORWARD_REQUEST_MAX_BYTES,
} from "../../transport/pod-forward.js";
import { listenUnixPrivately } from "../../transport/unix.js";
import { splice } from "../egress/protocol.js";

/** Forwarded connections open at once; more are refused with a reason. */
export const FORWARDS_MAX = 1024;
/** How long a connection has to send its request. */
const REQUEST_MS = 10_000;

export interface ForwardServer {
  close(): Promise<void>;
}

export async function startForwardServer(options: { socketPath: string }): Promise<ForwardServer> {
  const open = new Set<net.Socket>();
  const listener = net.createServer({ allowHalfOpen: true }, (conn) => {
    open.add(conn);
    conn.once("close", () => open.delete(conn));
    conn.on("error", () => conn.destroy());
    if (open.size > FORWARDS_MAX) {
      conn.end(encodeForwardError(`the sandbox has ${FORWARDS_MAX} forwarded connections open already`));
      return;
    }
    serve(conn, open);
  });
  await listenUnixPrivately(listener, options.socketPath);
  return {
    close: async () => {
      const stopped = new Promise<void>((done) => listener.close(() => done()));
      for (const socket of open) socket.destroy();
      await stopped;
    },
  };
}

function serve(conn: net.Socket, open: Set<net.Socket>): void {
  let request: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => conn.destroy(), REQUEST_MS);
  const onData = (chunk: Buffer): void => {
    request = request.length === 0 ? chunk : Buffer.concat([request, chunk]);
    const newline = request.indexOf(0x0a);
    if (newline < 0) {
      if (request.length > FORWARD_REQUEST_MAX_BYTES) {
        clearTimeout(timer);
        conn.off("data", onData);
        conn.end(encodeForwardError("the forward request is too long"));
      }
      return;
    }
    clearTimeout(timer);
    conn.off("data", onData);
    conn.pause();
    const target = decodeForwardRequest(request.subarray(0, newline).toString("utf8"));
    const rest = request.subarray(newline + 1);
    if (!target) {
      conn.end(encodeForwardError("expected a forward request to a loopback port"));
      return;
    }
    // The port's bytes are read up to 256 KiB at a time: fewer, larger writes to the forward's socket.
    const upstream = withLargeReads((onread) =>
      net.connect({ host: target.host, port: target.port, allowHalfOpen: true, onread }),
    );
    open.add(upstream);
    upstream.once("close", () => open.delete(upstream));
    let connected = false;
    upstream.once("connect", () => {
      connected = true;
      upstream.setNoDelay(true);
      conn.write(FORWARD_OK);
      if (rest.length > 0) upstream.write(rest);
      splice(conn, upstream);
      conn.resume();
    });
    upstream.on("error", (error: NodeJS.ErrnoException) => {
      // The requester is told; the sandbox's log is not, so refusals cost it nothing.
      if (!connected) conn.end(encodeForwardError(describeConnectError(target, error)));
    });
    // The requester went away before the port answered.
    conn.once("close", () => {
      if (!connected) upstream.destroy();
    });
  };
  conn.on("data", onData);
}
