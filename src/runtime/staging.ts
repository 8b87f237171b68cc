// Where a sandbox's supervisor stages its injected files (see
// src/supervisor/inject.ts). On /dev/shm when it is a tmpfs with room: a
// file created there costs a few microseconds, where a disk filesystem can
// take half a millisecond each (ext4 while the blocks of a deleted sandbox
// are being discarded), and the pod waits for every file before it runs
// anything. Otherwise in the sandbox's own directory.
//
// Each start makes a fresh private directory `openshell-files-<id>-XXXXXX`,
// owned by the supervisor's user: mode 0700, or 0710 with the pod's host
// group when the supervisor is root, so the pod's unprivileged bwrap can
// reach the staged files and no other user can. The pod's own /dev is
// bwrap's, so the directory is not visible inside any sandbox. The
// supervisor removes it when its pod stops, and the gateway removes any left
// (by a supervisor that was killed) when the sandbox is deleted or starts again.

import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statfsSync,
} from "node:fs";
import { join } from "node:path";
import { FILE_LIMITS } from "../core/files.js";
import { orElse } from "../host/fs.js";

export const SHARED_MEMORY_DIR = "/dev/shm";

const TMPFS_MAGIC = 0x01021994;

function prefix(sandboxId: string): string {
  return `openshell-files-${sandboxId}-`;
}

/**
 * A new private directory for `sandboxId` under `base` (/dev/shm) and the
 * staging root inside it, or undefined when `base` is not a tmpfs with room
 * for twice the most a sandbox can inject (then stage in the sandbox's
 * directory). `podGroup` is the pod's host gid when the supervisor is root,
 * null when the pod runs as the supervisor's own user.
 */
export function sharedMemoryStaging(
  sandboxId: string,
  podGroup: number | null,
  base = SHARED_MEMORY_DIR,
): { dir: string; root: string } | undefined {
  let dir: string | undefined;
  try {
    const fs = statfsSync(base);
    if (fs.type !== TMPFS_MAGIC || fs.bavail * fs.bsize < 2 * FILE_LIMITS.total) return undefined;
    dir = mkdtempSync(join(base, prefix(sandboxId)));
    if (podGroup !== null) {
      chownSync(dir, process.getuid?.() ?? 0, podGroup);
      chmodSync(dir, 0o710);
    }
    const root = join(dir, "files");
    mkdirSync(root, { mode: 0o755 });
    return { dir, root };
  } catch {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
}

/**
 * Removes every staging directory of `sandboxId` under `base` that this
 * process's user owns: the gateway's cleanup when a sandbox is deleted or
 * started again (its previous supervisor is gone by then).
 */
export function removeSharedMemoryStaging(sandboxId: string, base = SHARED_MEMORY_DIR): void {
  const names = orElse([], () => readdirSync(base)).filter((name) => name.startsWith(prefix(sandboxId)));
  const uid = process.getuid?.();
  for (const name of names) {
    const path = join(base, name);
    try {
      const st = lstatSync(path);
      // Someone else's entry of the same name is left alone (and never followed).
      if (!st.isDirectory() || st.uid !== uid) continue;
      rmSync(path, { recursive: true, force: true });
    } catch {
      // Gone already, or not ours to remove.
    }
  }
}
