// Filesystem steps shared by several layers: the supervisor's staging and
// mounts, the CLI's upload planning and download extraction.

import { lstatSync, readFileSync, type Stats, statSync } from "node:fs";

/** `lstat`, with a path that does not exist (ENOENT, or ENOTDIR under a file) as undefined. */
export const lstatIfExists = (path: string): Stats | undefined => ifExists(() => lstatSync(path));

/** `stat`, following symlinks, likewise. */
export const statIfExists = (path: string): Stats | undefined => ifExists(() => statSync(path));

/** A file's text, or undefined when it does not exist, likewise. */
export const readTextIfExists = (path: string): string | undefined =>
  ifExists(() => readFileSync(path, "utf8"));

// Synchronous: one system call costs less than a trip through the thread pool.
function ifExists<T>(call: () => T): T | undefined {
  try {
    return call();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw error;
  }
}

/**
 * `read()`, or `fallback` when it throws: for state of the host that may be
 * gone, busy or unreadable, where having none is an answer in itself.
 */
export function orElse<T>(fallback: T, read: () => T): T {
  try {
    return read();
  } catch {
    return fallback;
  }
}
