// Connecting to a pod's Unix socket from the host. The socket's directory is
// writable from inside the pod, so the name could be swapped for a symlink
// to some other socket on the host: the socket is opened O_PATH|O_NOFOLLOW,
// checked to be a socket, and reached through its /proc/self/fd link. That
// link is also short, where a deep state directory would pass the 107 bytes
// a socket path may have.

import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { connect, type Socket } from "node:net";

/** Linux's O_PATH (the same value on x86_64 and arm64); node does not export it. */
const O_PATH = 0o10000000;

/** The sandbox-relative place of a pod's SSH socket, under its sandbox directory. */
export const POD_SSH_SOCKET = "run/ssh.sock";

/** Connects to the socket at `path`; throws at once if it is missing or not a socket. */
export function connectUnixSocket(path: string): Socket {
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
  const socket = connect(`/proc/self/fd/${fd}`);
  socket.once("connect", release);
  socket.once("close", release);
  return socket;
}
