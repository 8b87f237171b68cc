// Small host filesystem steps shared by the staging of injected files and the
// preparation of a pod's directories, both of which run as root over trees a
// symlink must not redirect. They are synchronous on purpose: the supervisor
// does nothing else while it prepares a pod, and a few hundred files staged
// through the thread pool cost ten times as long as direct system calls.

import { closeSync, constants, fchmodSync, fchownSync, openSync } from "node:fs";

/**
 * Sets a directory's owner (unless `null`) and mode through a descriptor
 * opened without following a symlink, so a swapped path cannot redirect them.
 * The mode is set explicitly because mkdir's is narrowed by the umask.
 */
export function ownDirectory(path: string, owner: { uid: number; gid: number } | null, mode: number): void {
  const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    if (owner !== null) fchownSync(fd, owner.uid, owner.gid);
    fchmodSync(fd, mode);
  } finally {
    closeSync(fd);
  }
}
