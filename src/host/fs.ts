// Filesystem steps shared by several layers: the supervisor's staging and
// mount preparation, the CLI's upload planning and download extraction.

import { lstatSync, type Stats } from "node:fs";

/**
 * `lstat`, with a path that does not exist (ENOENT, or ENOTDIR: a component
 * is not a directory) as undefined. Synchronous: one system call, cheaper
 * than a round trip through the thread pool, and the staging of a pod's
 * files does hundreds in a row.
 */
export function lstatIfExists(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw error;
  }
}
