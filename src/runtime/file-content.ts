// Where the local runtime keeps a sandbox's injected-file content: one file in
// the sandbox's state directory holding a serialized GetSandboxFilesResponse
// (path, mode and content of every file, in order). The gateway writes it at
// create while the sandbox's supervisor starts (which reads it only once the
// gateway says it is stored), and the create call returns once it is; the
// content then survives a gateway restart, and goes when the sandbox's
// directory does. Like the store's rows (SQLite, synchronous=NORMAL) it is
// not fsynced. A gateway that dies while writing it leaves a sandbox without
// it, whose create never returned: the next gateway start removes that
// sandbox and the temporary file. After a power loss that drops it too, the
// sandbox is removed rather than run without its files.
// The supervisor reads it directly when the gateway's launch names it, and
// GetSandboxFiles serves the same bytes to a supervisor that cannot.
//
// Ten MiB in one file costs a few milliseconds to write and read; as 256
// SQLite rows it cost over a hundred.

import { readFileSync } from "node:fs";
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { SandboxFile } from "../gen/openshell.js";
import { deserializeFilesResponse, filesResponseParts } from "../transport/frames.js";

export const FILE_CONTENT_NAME = "files.pb";

export function fileContentPath(sandboxDir: string): string {
  return join(sandboxDir, FILE_CONTENT_NAME);
}

/**
 * Writes the files (owner-only, 0600) through a temporary name, so no reader
 * sees part of them, on the thread pool: the gateway goes on serving (the
 * sandbox's supervisor starts meanwhile) while ten MiB are copied.
 */
export async function writeFileContent(sandboxDir: string, files: readonly SandboxFile[]): Promise<void> {
  const target = fileContentPath(sandboxDir);
  const temp = `${target}.tmp`;
  const parts = filesResponseParts({ files: [...files] });
  const handle = await open(temp, "w", 0o600);
  try {
    await writeAll(handle, parts);
  } catch (error) {
    await handle.close();
    await rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  await rename(temp, target);
}

/**
 * The files stored at `path` (see fileContentPath), which must be `paths`,
 * in order. Only a sandbox with files has the file, so a missing one is an
 * error, never "no files". The error reads "content is unreadable: ..." or
 * "content does not match the sandbox's files".
 */
export function readFileContent(path: string, paths: readonly string[]): SandboxFile[] {
  let files: SandboxFile[];
  try {
    files = deserializeFilesResponse(readFileSync(path)).files;
  } catch (error) {
    throw new Error(`content is unreadable: ${(error as Error).message}`, { cause: error });
  }
  if (files.length !== paths.length || files.some((file, i) => file.path !== paths[i])) {
    throw new Error("content does not match the sandbox's files");
  }
  return files;
}

/** The parts in order, without joining them first (ten MiB of content is not copied again). */
async function writeAll(handle: FileHandle, parts: readonly Uint8Array[]): Promise<void> {
  const BATCH = 512; // below IOV_MAX
  for (let i = 0; i < parts.length; i += BATCH) {
    const batch = parts.slice(i, i + BATCH);
    const { bytesWritten } = await handle.writev(batch);
    const total = batch.reduce((sum, part) => sum + part.length, 0);
    if (bytesWritten === total) continue;
    const rest = Buffer.concat(batch).subarray(bytesWritten);
    for (let offset = 0; offset < rest.length; ) offset += (await handle.write(rest, offset)).bytesWritten;
  }
}
