// Small host filesystem steps shared by the staging of injected files and the
// preparation of a pod's directories, both of which run as root over trees a
// symlink must not redirect.

import type { Stats } from "node:fs";
import { constants, lstat, open } from "node:fs/promises";

/** `lstat`, with a missing path as `undefined`. */
export async function lstatIfExists(path: string): Promise<Stats | undefined> {
  return lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
}

/**
 * Sets a directory's owner (unless `null`) and mode through a descriptor
 * opened without following a symlink, so a swapped path cannot redirect them.
 * The mode is set explicitly because mkdir's is narrowed by the umask.
 */
export async function ownDirectory(
  path: string,
  owner: { uid: number; gid: number } | null,
  mode: number,
): Promise<void> {
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    if (owner !== null) await handle.chown(owner.uid, owner.gid);
    await handle.chmod(mode);
  } finally {
    await handle.close();
  }
}
