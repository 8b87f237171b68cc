// Connecting to a pod's Unix socket from the host. The socket's directory is
// writable from inside the pod, so the name could be swapped for a symlink
// to some other socket on the host: the socket is opened O_PATH|O_NOFOLLOW,
// checked to be a socket, and reached through its /proc/self/fd link. That
// link is also short, where a deep state directory would pass the 107 bytes
// a socket path may have.

import { chmodSync, closeSync, constants, fstatSync, lstatSync, openSync, unlinkSync } from "node:fs";
import { connect, type Server, type Socket } from "node:net";
import { orElse } from "../host/fs.js";
import { withLargeReads } from "./large-reads.js";

/** Linux's O_PATH (the same value on x86_64 and arm64); node does not export it. */
const O_PATH = 0o10000000;

/** The sandbox-relative place of a pod's SSH socket, under its sandbox directory. */
export const POD_SSH_SOCKET = "run/ssh.sock";

/** The sandbox-relative place of the pod's socket for TCP forwards to its loopback (transport/pod-forward.ts). */
export const POD_FORWARD_SOCKET = "run/forward.sock";

/**
 * Connects to the socket at `path`; throws at once if it is missing or not a
 * socket. `allowHalfOpen` keeps our side writable after the pod's side ends;
 * `largeReads` reads it up to 256 KiB at a time (transport/large-reads.ts).
 */
export function connectUnixSocket(
  path: string,
  options: { allowHalfOpen?: boolean; largeReads?: boolean } = {},
): Socket {
  const fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
  let open = true;
  const release = (): void => {
    if (open) closeSync(fd);
    open = false;
  };
  if (!fstatSync(fd).isSocket()) {
    release();
    throw Object.assign(new Error(`${path} is not a socket`), { code: "ENOTSOCK" });
  }
  const connectOptions = { path: `/proc/self/fd/${fd}`, allowHalfOpen: options.allowHalfOpen ?? false };
  const socket = options.largeReads
    ? withLargeReads((onread) => connect({ ...connectOptions, onread }))
    : connect(connectOptions);
  socket.once("connect", release);
  socket.once("close", release);
  return socket;
}

/**
 * Listens on a Unix socket at `path` (inside a pod: the agent's SSH and
 * forward sockets), replacing a stale socket there, with a umask that makes
 * it 0600 from the moment it exists.
 */
export async function listenUnixPrivately(listener: Server, path: string): Promise<void> {
  const isSocket = orElse(undefined, () => lstatSync(path).isSocket());
  if (isSocket === false) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  if (isSocket) unlinkSync(path);
  await new Promise<void>((listening, failed) => {
    listener.once("error", failed);
    let previousMask: number | undefined;
    try {
      previousMask = process.umask(0o177);
    } catch {
      // Worker threads cannot change the umask; the chmod below still applies.
    }
    try {
      // Node binds a Unix socket synchronously inside listen().
      listener.listen(path, () => {
        listener.off("error", failed);
        listening();
      });
    } finally {
      if (previousMask !== undefined) process.umask(previousMask);
    }
  });
  chmodSync(path, 0o600);
}
