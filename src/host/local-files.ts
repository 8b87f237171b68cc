// The user's `--file` inputs on the local disk: checked with stat before
// anything is sent, then read straight into the request that carries them.

import { closeSync, constants, lstatSync, openSync, readv, type Stats, statSync } from "node:fs";
import {
  checkFileSpecShapes,
  FILE_LIMITS,
  type FileSpec,
  fileError,
  formatBytes,
  overPerFileLimit,
  overTotalLimit,
  sizeOver,
  totalError,
} from "../core/files.js";

/** What `local` is, following symlinks as reading it will. */
function statLocal(spec: FileSpec): number {
  let info: Stats;
  try {
    info = statSync(spec.local);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      const isDangling = lstatSync(spec.local, { throwIfNoEntry: false }) !== undefined;
      throw fileError(
        spec.raw,
        isDangling ? `${spec.local} is a symlink to a missing file` : `${spec.local} does not exist`,
      );
    }
    throw fileError(spec.raw, `cannot read ${spec.local} (${code ?? String(error)})`);
  }
  if (info.isDirectory()) {
    throw fileError(spec.raw, `${spec.local} is a directory; use --upload for directories`);
  }
  if (!info.isFile()) throw fileError(spec.raw, `${spec.local} is not a regular file`);
  if (overPerFileLimit(info.size)) {
    throw fileError(
      spec.raw,
      `${sizeOver(info.size, FILE_LIMITS.perFile)} exceeds the ${formatBytes(FILE_LIMITS.perFile)} per-file limit`,
    );
  }
  return info.size;
}

/**
 * Fills `slot` (stat's size) from the file, asking for one byte more, so a
 * file that changed since (grown past the limits, or truncated) is caught
 * instead of sent. The reads run on the thread pool; opening and closing
 * are quick enough to make inline.
 */
async function readInto(spec: FileSpec, slot: Buffer): Promise<void> {
  let fd: number;
  try {
    fd = openSync(spec.local, constants.O_RDONLY);
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    throw fileError(spec.raw, `cannot read ${spec.local} (${code ?? message})`);
  }
  try {
    // A regular file reads short only at its end: one read for a file that did not change.
    const length = await readvAt(fd, [slot, Buffer.alloc(1)], 0);
    if (length !== slot.length) throw fileError(spec.raw, `${spec.local} changed while it was being read`);
  } finally {
    closeSync(fd);
  }
}

function readvAt(fd: number, buffers: Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    readv(fd, buffers, position, (error, bytesRead) => (error ? reject(error) : resolve(bytesRead)));
  });
}

/** How many files are read at once: enough to keep the thread pool busy, few open descriptors. */
const READ_CONCURRENCY = 8;

/**
 * Checks every `--file` before anything is sent or read: a bad spec, a
 * missing or oversized local file, or a duplicate destination fails the
 * whole command with nothing created. Returns each file's size, from stat.
 * Throws `invalidInput`.
 */
export function checkFileSpecs(specs: readonly FileSpec[]): number[] {
  checkFileSpecShapes(specs);
  // Sizes from stat first, so an over-limit total is refused before anything is read.
  const sizes = specs.map(statLocal);
  const total = sizes.reduce((sum, size) => sum + size, 0);
  if (overTotalLimit(total)) throw totalError(total);
  return sizes;
}

/**
 * Reads each checked file into `slots[i]` (exactly its checked size; the CLI
 * passes views of the create request it lays out, so the content is never
 * copied again). The reads run on the thread pool, so the caller's RPCs
 * proceed meanwhile. Throws `invalidInput`.
 */
export async function readFileContents(specs: readonly FileSpec[], slots: readonly Buffer[]): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < specs.length; i = next++) await readInto(specs[i]!, slots[i]!);
  };
  await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, specs.length) }, worker));
}
