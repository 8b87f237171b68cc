// TCP forwards into a pod. A sandbox's loopback exists only inside its pod's
// network namespace, which nothing outside can enter; the agent, the pod's
// first process, listens on a Unix socket beside its SSH socket (the pod's
// `run/forward.sock`, reached from the host as the SSH socket is) and, for
// each connection, dials the port asked for on the pod's own loopback:
//
//   host → agent   "openshell-forward/1 127.0.0.1 8080\n"
//   agent → host   "ok\n"          then the port's bytes, both ways
//              or  "error <why>\n" and the end of the connection
//
// The host side (the supervisor serving a relay, or a gateway on the same
// machine) sends nothing after its request until it has read the answer, so
// every byte after "ok\n" is the port's. The answer comes from inside the
// sandbox: it is read bounded (FORWARD_REPLY_MAX_BYTES) and within a
// deadline, and its text is cut and made printable before anyone shows it.

import type { Socket } from "node:net";
import { FORWARD_OPEN_MS, hostPort, loopbackAddress } from "../core/forward.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import { connectUnixSocket } from "./unix.js";

export const FORWARD_TAG = "openshell-forward/1";
export const FORWARD_OK = "ok\n";
/** The longest request line the agent reads, and the longest answer the host side reads. */
export const FORWARD_REQUEST_MAX_BYTES = 256;
export const FORWARD_REPLY_MAX_BYTES = 1024;

export interface ForwardTarget {
  host: string;
  port: number;
}

export function encodeForwardRequest(target: ForwardTarget): string {
  return `${FORWARD_TAG} ${target.host} ${target.port}\n`;
}

/** The target of a request line (without its newline), or undefined unless it is a loopback host and a port. */
export function decodeForwardRequest(line: string): ForwardTarget | undefined {
  const match = /^openshell-forward\/1 (\S{1,64}) (\d{1,5})$/.exec(line);
  if (!match) return undefined;
  const host = loopbackAddress(match[1]!);
  const port = Number(match[2]);
  if (host === undefined || port < 1 || port > 65535) return undefined;
  return { host, port };
}

export function encodeForwardError(why: string): string {
  return `error ${why.replace(/[\r\n]/g, " ").slice(0, FORWARD_REPLY_MAX_BYTES - 16)}\n`;
}

/** What the agent says when it cannot reach `target`: the kernel's reason, in words. */
export function describeConnectError(target: ForwardTarget, error: NodeJS.ErrnoException): string {
  const where = `${hostPort(target.host, target.port)} in the sandbox`;
  switch (error.code) {
    case "ECONNREFUSED":
      return `nothing listens on ${where} (connection refused)`;
    case "ETIMEDOUT":
      return `${where} did not accept the connection in time`;
    case "EADDRNOTAVAIL":
    case "ENETUNREACH":
      return `${where} is not an address the sandbox has (${error.code})`;
    default:
      return `cannot connect to ${where}: ${error.code ?? error.message}`;
  }
}

/** The sandbox's end refused the forward (nothing listens there, say): its reason, printable. */
export class PodForwardRefused extends Error {}

/**
 * Opens a forward to `target` through the pod's forward socket at `path`;
 * resolves with the socket, paused (pipe it, or resume it once listening),
 * once the agent has connected, its answer read (bytes after it put back). Rejects with PodForwardRefused carrying the
 * agent's reason, or an Error when the socket cannot be reached or the agent
 * does not answer within `timeoutMs`.
 */
export function openPodForward(
  path: string,
  target: ForwardTarget,
  timeoutMs = FORWARD_OPEN_MS,
): Promise<Socket> {
  let socket: Socket;
  try {
    socket = connectUnixSocket(path, { allowHalfOpen: true, largeReads: true });
  } catch (error) {
    return Promise.reject(new Error(`the sandbox's forward socket: ${(error as Error).message}`));
  }
  // Whoever takes the socket listens for its errors; this one keeps an
  // error that comes first, or in between, from ending the process.
  socket.on("error", () => {});
  return new Promise((resolve, reject) => {
    let answer: Buffer = Buffer.alloc(0);
    const finish = (error?: Error): void => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onFailure);
      socket.off("end", onEnd);
      if (error) {
        socket.destroy();
        reject(error);
      } else resolve(socket);
    };
    const onData = (chunk: Buffer): void => {
      answer = answer.length === 0 ? chunk : Buffer.concat([answer, chunk]);
      const newline = answer.indexOf(0x0a);
      if (newline < 0) {
        if (answer.length > FORWARD_REPLY_MAX_BYTES) finish(new Error("the sandbox's answer is too long"));
        return;
      }
      socket.pause();
      const line = answer.subarray(0, newline + 1).toString("utf8");
      const rest = answer.subarray(newline + 1);
      if (line === FORWARD_OK) {
        if (rest.length > 0) socket.unshift(rest);
        finish();
      } else if (line.startsWith("error ")) {
        finish(new PodForwardRefused(escapeForTerminal(line.slice("error ".length).trimEnd()).slice(0, 300)));
      } else finish(new Error("the sandbox answered the forward with something else"));
    };
    const onFailure = (error: Error): void =>
      finish(new Error(`the sandbox's forward socket: ${error.message}`));
    const onEnd = (): void => finish(new Error("the sandbox closed the forward before answering"));
    const timer = setTimeout(
      () => finish(new Error(`the sandbox did not answer the forward within ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
    socket.on("data", onData);
    socket.on("error", onFailure);
    socket.on("end", onEnd);
    socket.write(encodeForwardRequest(target));
  });
}
