// Staging of injected files: each is written, owned by the supervisor's user
// (root when the supervisor is root), into a staging tree that the pod never
// sees as such; `planMounts` then binds each staged file read-only onto its
// sandbox path. The tree is rebuilt from nothing on every start, so a restart
// cannot inherit anything left in it.

import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  mkdirSync,
  openSync,
  rmSync,
  writeSync,
} from "node:fs";
import { posix } from "node:path";
import { messageOf } from "../core/errors.js";
import { effectiveMode, normalizeSandboxPath, validateMode, validateSandboxPath } from "../core/files.js";
import { lstatIfExists } from "../host/fs.js";
import { ownDirectory } from "./host-fs.js";
import { fileInjectionFailed, isSandboxSetupError } from "./setup-errors.js";

export interface InjectedFile {
  /** Absolute destination inside the sandbox. */
  path: string;
  content: Buffer;
  /** Permission bits; 0 means DEFAULT_FILE_MODE. */
  mode: number;
}

export interface StageOwner {
  /** 0 when the supervisor is root; the supervisor's own uid/gid otherwise. */
  uid: number;
  gid: number;
}

const DIR_MODE = 0o755;

/**
 * Rewrites `stagingRoot` to hold exactly `files`, each at
 * `<stagingRoot><path>` with its mode, owned by `owner`, directories 0755.
 * Throws a `FileInjectionFailed` error naming the first file that fails.
 */
export async function stageFiles(
  files: readonly InjectedFile[],
  stagingRoot: string,
  owner: StageOwner,
): Promise<void> {
  const tree = prepareStaging(stagingRoot, owner);
  tree.add(files);
  tree.write();
}

/**
 * Empties `stagingRoot`; the returned tree then takes the files and writes
 * them in as many passes as the caller needs (a pod stages the files bwrap
 * binds one by one before it starts, the rest while it boots).
 */
export function prepareStaging(stagingRoot: string, owner: StageOwner): StagingTree {
  // Fresh every start: a file dropped from the spec, or anything a previous
  // run left, must not survive. rm does not follow symlinks inside the tree.
  rmSync(stagingRoot, { recursive: true, force: true });
  mkdirSync(stagingRoot, { recursive: true, mode: DIR_MODE });
  ownDirectory(stagingRoot, owner, DIR_MODE);
  return new StagingTree(stagingRoot, owner);
}

export class StagingTree {
  /** Staging directories made or checked this run. */
  private readonly known = new Set<string>();
  /** By sandbox path, the files not yet written. */
  private readonly pending = new Map<string, InjectedFile>();

  constructor(
    private readonly root: string,
    private readonly owner: StageOwner,
  ) {}

  /** Takes the files to stage, once, after checking them all. */
  add(files: readonly InjectedFile[]): void {
    for (const { file, path } of checkFiles(files)) this.pending.set(path, file);
  }

  /** Creates the staging directory of sandbox directory `dir`, with its parents. */
  directory(dir: string): void {
    try {
      ensureDirectories(this.root, dir, this.owner, this.known);
    } catch (error) {
      if (isSandboxSetupError(error)) throw error;
      throw fileInjectionFailed(dir, `could not be staged: ${messageOf(error)}`, error);
    }
  }

  /** Writes the files not written yet whose sandbox path `pick` accepts (all by default). */
  write(pick: (path: string) => boolean = () => true): void {
    for (const [path, file] of this.pending) {
      if (!pick(path)) continue;
      try {
        const parent = ensureDirectories(this.root, posix.dirname(path), this.owner, this.known, file.path);
        writeStaged(parent, posix.basename(path), file.content, effectiveMode(file.mode), this.owner);
      } catch (error) {
        if (isSandboxSetupError(error)) throw error;
        throw fileInjectionFailed(file.path, `could not be staged: ${messageOf(error)}`, error);
      }
      this.pending.delete(path);
    }
  }
}

/** Every path valid and distinct, no file where another needs a directory, every mode plain permission bits. */
function checkFiles(files: readonly InjectedFile[]): { file: InjectedFile; path: string }[] {
  const paths = new Set<string>();
  const checked = files.map((file) => {
    // The gateway checked these same rules on receipt; a file that fails them here did not come through it.
    const path = normalizeSandboxPath(file.path);
    if (path === undefined)
      throw fileInjectionFailed(file.path, "the path must be absolute, below /, without ..");
    const pathProblem = validateSandboxPath(file.path);
    if (pathProblem !== undefined) throw fileInjectionFailed(file.path, `the path ${pathProblem}`);
    if (validateMode(file.mode) !== undefined) {
      throw fileInjectionFailed(file.path, `mode ${file.mode.toString(8)} is not within 0777`);
    }
    if (paths.has(path)) throw fileInjectionFailed(file.path, "another injected file has the same path");
    paths.add(path);
    return { file, path };
  });
  for (const { file, path } of checked) {
    for (let dir = posix.dirname(path); dir !== "/"; dir = posix.dirname(dir)) {
      if (paths.has(dir)) throw fileInjectionFailed(file.path, `${dir} is itself an injected file`);
    }
  }
  return checked;
}

/**
 * Creates staging directory `<stagingRoot><dir>` and those above it,
 * refusing any symlink, and returns it. `known` holds directories already
 * checked this run; errors name `forPath`.
 */
function ensureDirectories(
  stagingRoot: string,
  dir: string,
  owner: StageOwner,
  known: Set<string>,
  forPath = dir,
): string {
  let current = stagingRoot;
  for (const part of dir.split("/").slice(1)) {
    if (part === "") continue;
    current = posix.join(current, part);
    if (known.has(current)) continue;
    const st = lstatIfExists(current);
    if (st === undefined) {
      mkdirSync(current, { mode: DIR_MODE });
      ownDirectory(current, owner, DIR_MODE);
      known.add(current);
    } else if (st.isDirectory()) {
      known.add(current);
    } else {
      const what = st.isSymbolicLink() ? "a symlink" : "not a directory";
      throw fileInjectionFailed(forPath, `staging directory ${current} is ${what}`);
    }
  }
  return current;
}

/**
 * Creates the file at its final name (the tree is new this start and nothing
 * reads it before the pod starts, so no temporary name is needed), chowned
 * only when the owner is not this process, with its mode. A failure leaves
 * no partial file.
 */
function writeStaged(dir: string, name: string, content: Uint8Array, mode: number, owner: StageOwner): void {
  const path = posix.join(dir, name);
  const fd = openSync(
    path,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o600,
  );
  try {
    for (let offset = 0; offset < content.length; ) offset += writeSync(fd, content, offset);
    if (owner.uid !== process.getuid?.() || owner.gid !== process.getgid?.()) {
      fchownSync(fd, owner.uid, owner.gid);
    }
    fchmodSync(fd, mode);
  } catch (error) {
    closeSync(fd);
    rmSync(path, { force: true });
    throw error;
  }
  closeSync(fd);
}
