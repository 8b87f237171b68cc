// Where the local runtime keeps a sandbox's injected-file content: one file in
// the sandbox's state directory holding a serialized GetSandboxFilesResponse
// (path, mode and content of every file, in order). The gateway writes it at
// create, before the sandbox's row exists, so the content survives a gateway
// restart; it goes when the sandbox's directory does. Like the store's rows
// (SQLite, synchronous=NORMAL) it is not fsynced: a power loss may lose it
// with or without its row, and a sandbox whose content is gone fails with
// FileInjectionFailed rather than starting without its files.
// The supervisor reads it directly when the gateway's launch names it, and
// GetSandboxFiles serves the same bytes to a supervisor that cannot.
//
// Ten MiB in one file costs a few milliseconds to write and read; as 256
// SQLite rows it cost over a hundred.

import { closeSync, openSync, readFileSync, renameSync, rmSync, writeSync, writevSync } from "node:fs";
import { join } from "node:path";
import type { SandboxFile } from "../gen/openshell.js";
import { deserializeFilesResponse, filesResponseParts } from "../transport/frames.js";

export const FILE_CONTENT_NAME = "files.pb";

export function fileContentPath(sandboxDir: string): string {
  return join(sandboxDir, FILE_CONTENT_NAME);
}

/** Writes the files (owner-only, 0600) through a temporary name, so no reader sees part of them. */
export function writeFileContent(sandboxDir: string, files: readonly SandboxFile[]): void {
  const target = fileContentPath(sandboxDir);
  const temp = `${target}.tmp`;
  const parts = filesResponseParts({ files: [...files] });
  const fd = openSync(temp, "w", 0o600);
  try {
    writeAll(fd, parts);
  } catch (error) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw error;
  }
  closeSync(fd);
  renameSync(temp, target);
}

/**
 * The files stored at `path` (see fileContentPath). Only a sandbox with files
 * has the file, so a missing one is an error, never "no files".
 */
export function readFileContent(path: string): SandboxFile[] {
  return deserializeFilesResponse(readFileSync(path)).files;
}

/** The parts in order, without joining them first (ten MiB of content is not copied again). */
function writeAll(fd: number, parts: readonly Uint8Array[]): void {
  const BATCH = 512; // below IOV_MAX
  for (let i = 0; i < parts.length; i += BATCH) {
    const batch = parts.slice(i, i + BATCH);
    const written = writevSync(fd, batch);
    const total = batch.reduce((sum, part) => sum + part.length, 0);
    if (written === total) continue;
    const rest = Buffer.concat(batch).subarray(written);
    for (let offset = 0; offset < rest.length; ) offset += writeSync(fd, rest, offset);
  }
}
