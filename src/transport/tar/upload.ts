// The local half of `sandbox upload` and `sandbox create --upload`: decide what
// goes where (planUpload), stream it as a tar archive (packUpload), give the
// command the sandbox runs to unpack it (remoteExtractCommand), and check the
// sandbox's own account of what it wrote (verifyExtraction). No network here;
// the SSH plumbing hands packUpload the channel of `remoteExtractCommand()`.
//
// Placement (README "Uploads"). LOCAL[:DEST]; DEST omitted means the sandbox
// working directory (shown as `~`).
//
//   LOCAL is a directory (cp -r semantics, without upstream's src/src nesting)
//     ./src                     -> ~/src/...
//     ./src:/sandbox            -> /sandbox/src/...
//     ./src:/sandbox/src        -> /sandbox/src/...      DEST already names the directory: no nesting
//     ./src:/sandbox/src/       -> /sandbox/src/src/...  trailing `/` always means "into this directory"
//     . | .. | / | src/. :/d    -> /d/...                no name of its own: contents land flat
//   LOCAL is a file or a symlink (cp semantics; the symlink itself is uploaded)
//     a.txt                     -> ~/a.txt
//     a.txt:/x/                 -> /x/a.txt
//     a.txt:/x/b.txt            -> /x/b.txt              renamed, with .gitignore filtering too
//     a.txt:b.txt               -> ~/b.txt
//     a.txt:/x | a.txt:/x/.     -> /x/a.txt              a top-level name is a directory (as upstream)
//
// Upstream nests `./src:/sandbox/src` as /sandbox/src/src and ignores the
// rename when .gitignore filtering applies; both are fixed here. Existing
// directories in the sandbox are merged into, never emptied.

import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync, type Stats } from "node:fs";
import { readdir, readlink } from "node:fs/promises";
import path from "node:path";
import type { Writable } from "node:stream";
import tarStream from "tar-stream";
import { invalidInput, messageOf, OpenShellError } from "../../core/errors.js";
import { remoteTool } from "../../core/protocol.js";
import { shellEscape } from "../../core/shell.js";
import { lstatIfExists } from "../../host/fs.js";

// One quoting rule for every remote command (src/core/shell.ts), re-exported
// beside the commands built with it.
export { shellEscape };

export interface UploadSpec {
  local: string;
  dest: string | undefined;
}

export type UploadEntryType = "dir" | "file" | "symlink";

export interface UploadEntry {
  /** Path inside the archive, relative to the extraction directory, `/`-separated, no trailing `/`. */
  name: string;
  type: UploadEntryType;
  /** Permission bits as archived (setuid, setgid and sticky bits dropped). */
  mode: number;
  /** Content bytes; 0 for directories and symlinks. */
  size: number;
  mtime: Date;
  /** Symlink target, verbatim. */
  linkTarget: string | undefined;
  /** Absolute local path the entry is read from. */
  localPath: string;
}

export interface UploadPlan {
  /** LOCAL as the user wrote it. */
  local: string;
  /** LOCAL made absolute. */
  localPath: string;
  /** "gitignore" when `git ls-files` chose the files; "none" when every file under LOCAL goes. */
  filter: "gitignore" | "none";
  /** A warning to show the user before uploading, if any. */
  warning: string | undefined;
  /** Directory the sandbox's tar extracts into (`tar -C`); relative means the sandbox working directory. */
  extractDir: string;
  /** Where the upload ends up in the sandbox, for messages: `/sandbox/src`, `~/a.txt`. */
  remotePath: string;
  entries: UploadEntry[];
  totals: { entries: number; files: number; bytes: number };
  /** Exact size of the archive packUpload streams (what the sandbox's tar must report reading). */
  archiveBytes: number;
  /**
   * Name of the empty file packUpload writes after every entry. The sandbox
   * places nothing unless its tar extracted it: GNU tar takes an archive cut
   * at an entry boundary for a whole one. Random, so no entry is ever named so.
   */
  endMarker: string;
}

export interface UploadProgress {
  /** Content bytes packed so far. */
  bytes: number;
  /** Regular files packed so far. */
  files: number;
  totalBytes: number;
  totalFiles: number;
}

export interface PackResult {
  entries: number;
  /** Content bytes. */
  bytes: number;
  /** Archive bytes streamed, padding included. */
  archiveBytes: number;
}

/** Split `LOCAL[:DEST]` at the first `:`; an empty DEST means none (`./src:` uploads to the working directory). */
export function parseUploadFlag(spec: string): UploadSpec {
  const colon = spec.indexOf(":");
  const local = colon === -1 ? spec : spec.slice(0, colon);
  const dest = colon === -1 ? "" : spec.slice(colon + 1);
  if (local === "") {
    throw invalidInput(
      `--upload '${spec}': the local path is empty`,
      "use --upload LOCAL[:DEST], e.g. --upload ./src:/sandbox/src",
    );
  }
  return { local, dest: dest === "" ? undefined : dest };
}

// ---------------------------------------------------------------------------
// Placement

export interface UploadPlacement {
  extractDir: string;
  /** Archive name of the upload's root: the file's name, the directory's prefix, or "" for flat contents. */
  rootName: string;
  remotePath: string;
}

/** Where LOCAL lands for DEST; pure, see the table at the top of this file. */
export function placeUpload(local: string, dest: string | undefined, kind: "dir" | "file"): UploadPlacement {
  const localName = path.posix.basename(stripTrailingSlashes(local));
  const cleanDest = dest === undefined || dest === "" ? undefined : dest.replace(/\/{2,}/g, "/");

  if (kind === "dir") {
    const rootName = localName === "" || localName === "." || localName === ".." ? "" : localName;
    if (cleanDest === undefined) return placement(".", rootName);
    const extractDir = stripTrailingSlashes(cleanDest);
    if (cleanDest.endsWith("/")) return placement(extractDir, rootName);
    if (rootName !== "" && path.posix.basename(extractDir) === rootName) return placement(extractDir, "");
    return placement(extractDir, rootName);
  }

  if (cleanDest === undefined) return placement(".", localName);
  if (cleanDest.endsWith("/")) return placement(stripTrailingSlashes(cleanDest), localName);
  const destName = path.posix.basename(cleanDest);
  const destParent = path.posix.dirname(cleanDest);
  // `/foo` is taken as a directory, as upstream does: the sandbox user cannot
  // write to `/`, so a file named /foo is almost never what was meant.
  if (destName === "." || destName === ".." || destParent === "/") return placement(cleanDest, localName);
  return placement(destParent, destName);
}

function placement(extractDir: string, rootName: string): UploadPlacement {
  return { extractDir, rootName, remotePath: remoteDisplayPath(extractDir, rootName) };
}

function stripTrailingSlashes(p: string): string {
  if (p === "") return p;
  const stripped = p.replace(/\/+$/, "");
  return stripped === "" ? "/" : stripped;
}

/** An absolute sandbox path, or `~/...` for one relative to the sandbox working directory (upstream shows `~`). */
function remoteDisplayPath(extractDir: string, member: string): string {
  const joined = path.posix.join(extractDir, member);
  if (joined.startsWith("/")) return joined;
  return joined === "." ? "~" : `~/${joined}`;
}

// ---------------------------------------------------------------------------
// Planning

/**
 * Decide what to upload from LOCAL and where it lands. Reads only LOCAL and
 * what is under it; symlinks are recorded, never followed.
 */
export async function planUpload(
  local: string,
  dest: string | undefined,
  opts: {
    gitIgnore: boolean;
    /**
     * Also send LOCAL's `.git` (a directory LOCAL only): `git ls-files` never lists it, so a
     * filtered upload of a repository otherwise arrives without its history. Unfiltered uploads
     * carry it anyway.
     */
    git?: boolean;
  },
): Promise<UploadPlan> {
  const localPath = path.resolve(local);
  const rootStat = inspectLocal(local);
  if (rootStat === undefined) throw invalidInput(`local path does not exist: ${local}`);

  const kind = rootStat.isDirectory() ? "dir" : "file";
  const where = placeUpload(local, dest, kind);
  const collector = new EntryCollector(local, localPath, where.rootName);

  let filter: UploadPlan["filter"] = "none";
  let warning: string | undefined;
  const gitFiles =
    opts.gitIgnore && !rootStat.isSymbolicLink() ? await gitVisibleFiles(localPath, kind) : undefined;
  if (gitFiles !== undefined && gitFiles.length === 0) {
    warning = `.gitignore filtering excluded all files in ${local}; uploading unfiltered`;
  }

  if (kind === "file") {
    const linkTarget = rootStat.isSymbolicLink() ? await readlink(local) : undefined;
    collector.add(where.rootName, localPath, rootStat, linkTarget);
    if (gitFiles !== undefined && gitFiles.length > 0) filter = "gitignore";
  } else if (gitFiles !== undefined && gitFiles.length > 0) {
    filter = "gitignore";
    if (where.rootName !== "") collector.add(where.rootName, localPath, rootStat);
    for (const rel of gitFiles) await collector.addGitPath(rel);
    if (opts.git === true) warning = await collector.addGitDir();
  } else {
    if (where.rootName !== "") collector.add(where.rootName, localPath, rootStat);
    await collector.addTree("");
  }

  const entries = collector.sorted();
  let files = 0;
  let bytes = 0;
  let archiveBytes = END_OF_ARCHIVE_BYTES + END_MARKER_BYTES;
  for (const entry of entries) {
    if (entry.type === "file") {
      files += 1;
      bytes += entry.size;
    }
    archiveBytes += entryArchiveBytes(entry);
  }
  return {
    local,
    localPath,
    filter,
    warning,
    extractDir: where.extractDir,
    remotePath: where.remotePath,
    entries,
    totals: { entries: entries.length, files, bytes },
    archiveBytes: roundUp(archiveBytes, RECORD_BYTES),
    endMarker: `${STAGING_PREFIX}end.${randomBytes(8).toString("hex")}`,
  };
}

class EntryCollector {
  private readonly entries = new Map<string, UploadEntry>();

  constructor(
    private readonly local: string,
    private readonly localPath: string,
    private readonly rootName: string,
  ) {}

  /** `rel` is relative to LOCAL ("" is LOCAL itself); the archive name gets the root prefix. */
  archiveName(rel: string): string {
    if (rel === "") return this.rootName;
    return this.rootName === "" ? rel : `${this.rootName}/${rel}`;
  }

  add(name: string, localPath: string, stat: Stats, linkTarget?: string): void {
    this.entries.set(name, entryFromStat(name, localPath, stat, linkTarget, this.displayPath(localPath)));
  }

  private displayPath(localPath: string): string {
    const rel = path.relative(this.localPath, localPath);
    return rel === "" ? this.local : path.join(this.local, rel);
  }

  /** Everything under LOCAL/rel, depth first; with skipSockets, sockets are left out. */
  async addTree(rel: string, skipSockets = false): Promise<void> {
    const dir = path.join(this.localPath, rel);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      throw invalidInput(
        `failed to read local upload directory: ${this.displayPath(dir)}: ${messageOf(error)}`,
      );
    }
    for (const name of names) {
      const childRel = rel === "" ? name : `${rel}/${name}`;
      const childPath = path.join(dir, name);
      const stat = inspectLocal(childPath);
      // Gone between readdir and lstat: nothing to send.
      if (stat === undefined || (skipSockets && stat.isSocket())) continue;
      await this.addStat(childRel, childPath, stat);
      if (stat.isDirectory()) await this.addTree(childRel, skipSockets);
    }
  }

  private async addStat(rel: string, localPath: string, stat: Stats): Promise<void> {
    const linkTarget = stat.isSymbolicLink() ? await readlink(localPath) : undefined;
    this.add(this.archiveName(rel), localPath, stat, linkTarget);
  }

  /**
   * One path listed by `git ls-files`, plus its parent directories. A
   * tracked file deleted from the work tree is skipped; a directory (a
   * submodule) goes whole.
   */
  async addGitPath(rel: string): Promise<void> {
    const parts = rel.split("/");
    const parents: Array<{ rel: string; stat: Stats }> = [];
    for (let i = 1; i < parts.length; i++) {
      const parentRel = parts.slice(0, i).join("/");
      const stat = inspectLocal(path.join(this.localPath, parentRel));
      // Not a real directory any more (removed, or replaced by a symlink that
      // would lead outside LOCAL): the listing is stale for this path.
      if (stat === undefined || !stat.isDirectory()) return;
      parents.push({ rel: parentRel, stat });
    }
    const localPath = path.join(this.localPath, rel);
    const stat = inspectLocal(localPath);
    if (stat === undefined) return;
    for (const parent of parents) {
      const name = this.archiveName(parent.rel);
      if (!this.entries.has(name)) this.add(name, path.join(this.localPath, parent.rel), parent.stat);
    }
    await this.addStat(rel, localPath, stat);
    if (stat.isDirectory()) await this.addTree(rel);
  }

  /**
   * LOCAL's `.git`, whole (objects, refs, config, hooks), or a warning saying why the sandbox's
   * git will not find a repository: none here, or a `.git` file naming a directory elsewhere (a
   * worktree or a submodule), which is sent but whose target is not.
   */
  async addGitDir(): Promise<string | undefined> {
    const gitPath = path.join(this.localPath, ".git");
    const stat = await lstatIfExists(gitPath);
    if (stat === undefined) {
      return `${this.local} has no .git to include; upload the repository's top-level directory`;
    }
    await this.addStat(".git", gitPath, stat);
    if (stat.isDirectory()) {
      // A socket there is a running git's (the fsmonitor daemon's), meaningless anywhere else.
      await this.addTree(".git", true);
      return undefined;
    }
    return `${this.displayPath(gitPath)} is not a directory (a worktree or submodule link); the repository it names is not uploaded`;
  }

  /** Sorted per directory: a directory, then its children by byte order, depth first. */
  sorted(): UploadEntry[] {
    const keyed = [...this.entries.values()].map((entry) => ({
      entry,
      key: entry.name.split("/").map((part) => Buffer.from(part)),
    }));
    keyed.sort((a, b) => compareComponents(a.key, b.key));
    return keyed.map((k) => k.entry);
  }
}

function compareComponents(a: Buffer[], b: Buffer[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const c = Buffer.compare(a[i]!, b[i]!);
    if (c !== 0) return c;
  }
  return a.length - b.length;
}

function entryFromStat(
  name: string,
  localPath: string,
  stat: Stats,
  linkTarget: string | undefined,
  displayPath: string,
): UploadEntry {
  // Only the permission bits travel: setuid/setgid on an uploaded file is never
  // what a sandbox needs, and the remote tar applies archived modes verbatim.
  const mode = stat.mode & 0o777;
  const mtime = stat.mtime;
  if (stat.isDirectory())
    return { name, type: "dir", mode, size: 0, mtime, linkTarget: undefined, localPath };
  if (stat.isFile())
    return { name, type: "file", mode, size: stat.size, mtime, linkTarget: undefined, localPath };
  if (stat.isSymbolicLink()) {
    return { name, type: "symlink", mode, size: 0, mtime, linkTarget: linkTarget ?? "", localPath };
  }
  throw invalidInput(
    `unsupported file type for upload: ${displayPath}`,
    "only regular files, directories and symlinks can be uploaded; move sockets, FIFOs and devices out of the way or use .gitignore",
  );
}

/** `lstatIfExists`, with a failure other than a missing path as a one-line error naming the path. */
function inspectLocal(p: string): Stats | undefined {
  try {
    return lstatIfExists(p);
  } catch (error) {
    throw invalidInput(`failed to inspect local upload path: ${p}: ${messageOf(error)}`);
  }
}

// ---------------------------------------------------------------------------
// git

/** Variables that would point git at another repository than the one LOCAL is in. */
const GIT_LOCATION_VARIABLES = [
  "GIT_DIR",
  "GIT_WORK_TREE",
  "GIT_INDEX_FILE",
  "GIT_PREFIX",
  "GIT_COMMON_DIR",
  "GIT_OBJECT_DIRECTORY",
  "GIT_ALTERNATE_OBJECT_DIRECTORIES",
];

/**
 * The files git would not ignore under LOCAL (relative to LOCAL; for a file,
 * its own name if git keeps it), or undefined when git cannot say (not a
 * repository, git missing, any failure): the caller then uploads everything.
 */
async function gitVisibleFiles(localPath: string, kind: "dir" | "file"): Promise<string[] | undefined> {
  const cwd = kind === "dir" ? localPath : path.dirname(localPath);
  const toplevel = await runGit(["rev-parse", "--show-toplevel"], cwd);
  if (toplevel === undefined) return undefined;
  // Run from LOCAL itself: ls-files then lists only what is under it, with
  // paths relative to it. Literal pathspecs, so a file named `*.txt` or
  // `:(glob)x` means itself.
  const args = ["--literal-pathspecs", "ls-files", "-co", "--exclude-standard", "-z"];
  if (kind === "file") args.push("--", path.basename(localPath));
  const listed = await runGit(args, cwd);
  if (listed === undefined) return undefined;
  const files = new Set(
    listed
      .toString("utf8")
      .split("\0")
      .filter((f) => f !== ""),
  );
  return [...files];
}

function runGit(args: string[], cwd: string): Promise<Buffer | undefined> {
  const env = { ...process.env };
  for (const name of GIT_LOCATION_VARIABLES) delete env[name];
  // Our own git over the user's tree: its listing is as long as the tree is.
  const options = { cwd, env, encoding: "buffer", maxBuffer: Number.POSITIVE_INFINITY } as const;
  return new Promise((resolve) => {
    execFile("git", args, options, (error, stdout) => resolve(error ? undefined : stdout));
  });
}

// ---------------------------------------------------------------------------
// Packing

const BLOCK_BYTES = 512;
const END_OF_ARCHIVE_BYTES = 2 * BLOCK_BYTES;
// The end marker: one ustar header, no content.
const END_MARKER_BYTES = BLOCK_BYTES;
// Names the sandbox side gives its staging directories and the end marker.
const STAGING_PREFIX = ".openshell-upload.";
// GNU tar reads whole records (20 blocks unless told otherwise) and reports
// `Total bytes read` in records. Padding the archive to a record boundary, as
// tar itself does, makes that figure equal to what was sent.
const RECORD_BLOCKS = 20;
const RECORD_BYTES = RECORD_BLOCKS * BLOCK_BYTES;
// File content is read synchronously into a few reused buffers: a fresh
// buffer per chunk, read on the thread pool through a stream, cost more CPU
// than the rest of the upload, and each buffer goes back to the pool once the
// destination has taken its bytes (an SSH channel copies them into packets).
const READ_CHUNK_BYTES = 256 * 1024;
const POOL_BUFFERS = 8;
// tar-stream writes mtime as a signed 32-bit count of seconds.
const MAX_TAR_SECONDS = 2 ** 31 - 1;

function roundUp(n: number, unit: number): number {
  return Math.ceil(n / unit) * unit;
}

function headerName(entry: UploadEntry): string {
  return entry.type === "dir" ? `${entry.name}/` : entry.name;
}

/**
 * Bytes tar-stream writes for one entry: a ustar header when the name fits
 * one, otherwise a pax header carrying path (and link target) first; then the
 * content padded to blocks. packUpload checks the real count against the sum,
 * so a tar-stream that encodes differently fails loudly, never silently.
 */
function entryArchiveBytes(entry: UploadEntry): number {
  const name = headerName(entry);
  const link = entry.linkTarget;
  let header = BLOCK_BYTES;
  if (!fitsUstar(name, link)) {
    let pax = paxRecordBytes("path", name);
    if (link) pax += paxRecordBytes("linkpath", link);
    header = BLOCK_BYTES + roundUp(pax, BLOCK_BYTES) + BLOCK_BYTES;
  }
  return header + (entry.type === "file" ? roundUp(entry.size, BLOCK_BYTES) : 0);
}

function fitsUstar(name: string, link: string | undefined): boolean {
  if (/[^\x00-\x7f]/.test(name)) return false;
  let rest = name;
  let prefix = "";
  while (rest.length > 100) {
    const slash = rest.indexOf("/");
    if (slash === -1) return false;
    prefix += prefix ? `/${rest.slice(0, slash)}` : rest.slice(0, slash);
    rest = rest.slice(slash + 1);
  }
  if (prefix.length > 155) return false;
  return !link || Buffer.byteLength(link) <= 100;
}

function paxRecordBytes(key: string, value: string): number {
  // A pax record is "<len> <key>=<value>\n" where <len> counts itself.
  const body = Buffer.byteLength(` ${key}=${value}\n`);
  let digits = String(body).length;
  if (body + digits >= 10 ** digits) digits += 1;
  return body + digits;
}

function clampMtime(mtime: Date): Date {
  const seconds = Math.min(Math.max(Math.floor(mtime.getTime() / 1000), 0), MAX_TAR_SECONDS);
  return new Date(seconds * 1000);
}

/** Read buffers handed out and taken back by identity; a failure wakes whoever waits for one. */
class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly owners = new WeakMap<Uint8Array, Buffer>();
  private readonly waiters: { resolve(buffer: Buffer): void; reject(error: Error): void }[] = [];
  private failure: Error | undefined;

  constructor(count: number, size: number) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.allocUnsafeSlow(size));
  }

  take(): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    const buffer = this.free.pop();
    if (buffer) return Promise.resolve(buffer);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** The first `length` bytes of a pool buffer, as a chunk that `release` recognizes. */
  chunk(buffer: Buffer, length: number): Buffer {
    const chunk = buffer.subarray(0, length);
    this.owners.set(chunk, buffer);
    return chunk;
  }

  /** Takes back the buffer behind `chunk`, if it is one of ours (headers and padding are not). */
  release(chunk: Uint8Array): void {
    const buffer = this.owners.get(chunk);
    if (!buffer) return;
    this.owners.delete(chunk);
    this.give(buffer);
  }

  give(buffer: Buffer): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(buffer);
    else this.free.push(buffer);
  }

  fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }
}

/**
 * Writes the plan as a tar archive into `sink` and ends it. File contents
 * are read in chunks as the sink takes them (the archive is never held in
 * memory); a file whose size differs from the plan, or that is no longer a
 * regular file, stops the archive with an error instead of producing a
 * corrupt one. Resolves once the whole archive has been written; rejects
 * with the error that stopped it, including the sink closing early.
 */
export async function packUpload(
  plan: UploadPlan,
  sink: Writable,
  onProgress?: (progress: UploadProgress) => void,
): Promise<PackResult> {
  const pack = tarStream.pack();
  const pool = new BufferPool(POOL_BUFFERS, READ_CHUNK_BYTES);
  const progress: UploadProgress = {
    bytes: 0,
    files: 0,
    totalBytes: plan.totals.bytes,
    totalFiles: plan.totals.files,
  };
  let entries = 0;
  let stopped: Error | undefined;
  let complete = false;
  const stop = (error: Error): void => {
    if (stopped) return;
    stopped = error;
    pool.fail(error);
    pack.destroy(error);
  };
  const onSinkError = (error: Error): void => stop(error);
  const onSinkClose = (): void => {
    if (!complete) stop(new Error("upload archive stream closed before it was fully read"));
  };
  sink.on("error", onSinkError);
  sink.on("close", onSinkClose);

  const feeding = (async () => {
    for (const entry of plan.entries) {
      await packEntry(pack, entry, pool, (n) => {
        progress.bytes += n;
        onProgress?.({ ...progress });
      });
      entries += 1;
      if (entry.type === "file") {
        progress.files += 1;
        onProgress?.({ ...progress });
      }
    }
    await entryFinished(pack, (cb) =>
      pack.entry(
        { name: plan.endMarker, type: "file", size: 0, mode: 0o600, mtime: new Date(0) },
        Buffer.alloc(0),
        cb,
      ),
    );
    pack.finalize();
  })();
  feeding.catch((error: unknown) => stop(error instanceof Error ? error : new Error(String(error))));

  let archiveBytes = 0;
  const write = async (chunk: Buffer): Promise<void> => {
    archiveBytes += chunk.length;
    const more = sink.write(chunk, (error) => {
      if (!error) pool.release(chunk);
    });
    if (!more) await drained(sink, "upload archive stream closed before it was fully read");
  };
  try {
    for await (const chunk of pack as AsyncIterable<Buffer>) await write(chunk);
    await feeding;
    const padding = roundUp(archiveBytes, RECORD_BYTES) - archiveBytes;
    if (padding > 0) await write(Buffer.alloc(padding));
    if (archiveBytes !== plan.archiveBytes) {
      throw new OpenShellError(
        "internal",
        `upload archive for ${plan.local} is ${archiveBytes} bytes, planned ${plan.archiveBytes}; refusing to report it as complete`,
      );
    }
    if (stopped) throw stopped;
    complete = true;
    sink.end();
    return { entries, bytes: progress.bytes, archiveBytes };
  } catch (error) {
    const reason = stopped ?? (error instanceof Error ? error : new Error(String(error)));
    stop(reason);
    throw reason;
  } finally {
    sink.off("error", onSinkError);
    sink.off("close", onSinkClose);
  }
}

async function packEntry(
  pack: tarStream.Pack,
  entry: UploadEntry,
  pool: BufferPool,
  onBytes: (n: number) => void,
): Promise<void> {
  const mtime = clampMtime(entry.mtime);
  // tar-stream replaces a zero mode with its default (0644/0755); a mode-000
  // file therefore arrives readable, which is harmless in a sandbox.
  if (entry.type !== "file") {
    const header: Parameters<tarStream.Pack["entry"]>[0] =
      entry.type === "dir"
        ? { name: headerName(entry), type: "directory", mode: entry.mode, mtime }
        : { name: entry.name, type: "symlink", linkname: entry.linkTarget ?? "", mode: entry.mode, mtime };
    await entryFinished(pack, (cb) => pack.entry(header, cb));
    return;
  }

  // O_NOFOLLOW: a file swapped for a symlink since planning must not lead the
  // upload outside LOCAL. O_NONBLOCK: a FIFO swapped in must not hang us.
  const flags = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;
  let fd: number;
  try {
    fd = openSync(entry.localPath, flags);
  } catch (error) {
    throw changedWhileUploading(entry, messageOf(error));
  }
  try {
    const before = fstatSync(fd);
    if (!before.isFile()) throw changedWhileUploading(entry, "it is no longer a regular file");
    if (before.size !== entry.size) {
      throw changedWhileUploading(entry, `it was ${entry.size} bytes when planned and is ${before.size} now`);
    }
    let finishedCallback: ((error?: Error | null) => void) | undefined;
    const finished = new Promise<void>((resolve, reject) => {
      finishedCallback = (error) => (error ? reject(error) : resolve());
    });
    finished.catch(() => {});
    const sink: EntrySink = pack.entry(
      { name: entry.name, type: "file", size: entry.size, mode: entry.mode, mtime },
      (error) => finishedCallback?.(error),
    );
    // A failure reaches us through the entry callback and the pack stream;
    // the sink's own error event must not become an uncaught exception.
    sink.on("error", () => {});
    let written = 0;
    while (written < entry.size) {
      const buffer = await pool.take();
      let n: number;
      try {
        n = readSync(fd, buffer, 0, Math.min(buffer.length, entry.size - written), written);
      } catch (error) {
        pool.give(buffer);
        throw changedWhileUploading(entry, messageOf(error));
      }
      if (n === 0) {
        pool.give(buffer);
        throw changedWhileUploading(
          entry,
          `it shrank from ${entry.size} to ${written} bytes while being read`,
        );
      }
      written += n;
      const more = sink.write(pool.chunk(buffer, n));
      onBytes(n);
      if (!more) await drained(sink, "upload archive stream closed");
    }
    const after = fstatSync(fd);
    if (after.size !== entry.size) {
      throw changedWhileUploading(
        entry,
        `it grew from ${entry.size} to ${after.size} bytes while being read`,
      );
    }
    sink.end();
    await finished;
  } finally {
    closeSync(fd);
  }
}

/** A stream `drained` can wait on: the archive's sink, or a tar-stream entry (a streamx Writable). */
interface Drainable {
  readonly destroyed: boolean;
  on(event: "drain" | "close" | "error", listener: (error?: Error) => void): unknown;
  off(event: "drain" | "close" | "error", listener: (error?: Error) => void): unknown;
}

/** What packEntry uses of a tar-stream entry. */
interface EntrySink extends Drainable {
  write(chunk: Buffer): boolean;
  end(data?: unknown): unknown;
}

function entryFinished(
  pack: tarStream.Pack,
  start: (cb: (error?: Error | null) => void) => unknown,
): Promise<void> {
  return new Promise((resolve, reject) => {
    if (pack.destroyed) {
      reject(new Error("upload archive stream closed"));
      return;
    }
    start((error) => (error ? reject(error) : resolve()));
  });
}

/**
 * Resolves when `stream` wants more; rejects with its error if it fails, or
 * with `closed` if it closes (or is closed already) first.
 */
function drained(stream: Drainable, closed: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (stream.destroyed) {
      reject(new Error(closed));
      return;
    }
    const done = (error?: Error): void => {
      for (const event of ["drain", "error", "close"] as const) stream.off(event, listeners[event]);
      if (error) reject(error);
      else resolve();
    };
    const listeners = {
      drain: () => done(),
      error: (error?: Error) => done(error ?? new Error(closed)),
      close: () => done(new Error(closed)),
    };
    for (const event of ["drain", "error", "close"] as const) stream.on(event, listeners[event]);
  });
}

function changedWhileUploading(entry: UploadEntry, why: string): OpenShellError {
  return invalidInput(
    `upload aborted: ${entry.localPath} changed while uploading (${why})`,
    "retry once the files under the upload path have stopped changing",
  );
}

// ---------------------------------------------------------------------------
// Remote side
//
// An upload must land whole or not at all. tar -x writes straight into its
// directory, so a CLI killed mid-stream (SIGKILL, Ctrl-C), a dropped
// connection, a full disk, or an entry tar may not write would leave part
// of the tree behind, mixed with what was there. The sandbox side therefore
// runs a small POSIX sh script (sh, tar, mv, mkdir, touch, stat: what any
// image with GNU tar has, so it works against an OpenShell gateway too):
//
// 1. Extract into a fresh staging directory inside DIR,
//    `DIR/.openshell-upload.<pid>.<random>/t`: hidden, never the name of a
//    real entry, and on DIR's filesystem, so placing is a rename, never a
//    copy. tar's listing and its errors name members relative to that
//    directory, exactly as they would have been relative to DIR.
// 2. Place nothing unless tar exited 0 and extracted the end marker, the
//    archive's last entry (UploadPlan.endMarker): GNU tar takes an archive
//    cut at an entry boundary for a whole one and exits 0. tar's messages
//    are held in memory, not in a file, so a full disk cannot swallow them.
// 3. Place each top-level entry: a rename when DIR has nothing by that name;
//    a merge when both are directories (a symlink to a directory in DIR
//    counts as one, as --keep-directory-symlink has it), recursing, with
//    the archived mode applied to the merged directory at the end as tar -p
//    did; otherwise the existing entry is first moved aside into staging,
//    then replaced. Every directory's moves are journalled in staging (the
//    names placed, the entries moved aside), so any failure, such as an
//    injected file that cannot be moved (EBUSY, README "Tamper-proof
//    files"), or a signal, moves everything back: DIR is left as it was.
//    A failure is reported as `openshell-upload: STAGE: ERRNO-TEXT\0NAME\0`
//    with NAME relative to DIR; NUL cannot occur in a name.
// 4. Remove staging on every exit path: a trap on EXIT, and HUP, INT, PIPE
//    and TERM turned into exits that run it. A client that disconnects
//    makes the agent send SIGHUP to the whole process group, and SIGKILL
//    only 2 s later (src/supervisor/agent/ssh-server.ts), so the trap runs.
//    A SIGKILL still leaves staging behind, so the next upload into DIR
//    removes every staging directory whose shell is no longer alive.
//
// DIR and the directories above it that the upload had to create are
// removed again when it fails.
//
// What this is not: where no staging directory can be made (DIR is
// read-only, as /usr/bin is), tar extracts into DIR directly, as before; it
// can create nothing at DIR's top level and its own error names the path,
// but a writable directory below a read-only DIR would still take part of
// a failed upload. A file is never placed over an existing directory (tar
// removed an empty one); a merged directory keeps the time of the merge as
// its mtime, since its contents changed then. A SIGKILL in the middle of
// placing leaves what was placed so far.

/** Options of every extraction; see remoteExtractCommand. */
const TAR_EXTRACT = `-x -v --totals -b ${RECORD_BLOCKS} -p --no-same-owner --keep-directory-symlink --warning=no-timestamp --quoting-style=escape -f -`;

/**
 * The command the sandbox runs with the archive on stdin: the staged
 * extraction described above, around this tar invocation.
 *
 * - `LC_ALL=C`: mkdir's, tar's and mv's messages in English (verifyExtraction reads them) and
 *   names listed with octal escapes for non-ASCII bytes, which decode
 *   exactly, whatever locale the sandbox has.
 * - `-v` lists each member on stdout; `--totals` prints `Total bytes read`
 *   on stderr; `-b 20` pins the record size the total is counted in.
 * - `-p`: an unprivileged tar otherwise masks archived modes with the umask
 *   (0775 would arrive 0755, a 0600 secret stays 0600 only by luck); with
 *   `-p` the archived bits are applied as they are. They never include
 *   setuid/setgid (dropped when planning), so this grants nothing the user
 *   could not chmod themselves.
 * - `--no-same-owner`: if the sandbox user is root, files belong to it, not
 *   to whatever uid owned them on this machine.
 * - `--keep-directory-symlink`: a directory the sandbox reaches through a
 *   symlink is merged into, not replaced by a real directory.
 * - `--warning=no-timestamp`: clock skew between machines is not an error.
 */
export function remoteExtractCommand(plan: UploadPlan): string {
  const dir = shellEscape(plan.extractDir);
  const token = randomBytes(8).toString("hex");
  return `D=${dir} E=${shellEscape(plan.endMarker)}
export LC_ALL=C
nl='
'
c= t=$D
while [ ! -e "$t" ] && [ ! -L "$t" ]; do
  c=$t
  case $t in */*) t=\${t%/*} t=\${t:-/} ;; *) t=. ;; esac
done
mkdir -p -- "$D" || exit
case $D in */) p=$D ;; *) p=$D/ ;; esac
have() { [ -e "$1" ] || [ -L "$1" ]; }
wipe() { rm -rf -- "$1" 2>/dev/null || { chmod -R u+rwx -- "$1"; rm -rf -- "$1"; } 2>/dev/null; }
for o in "$p"${STAGING_PREFIX}*; do
  q=\${o#"$p"${STAGING_PREFIX}} q=\${q%%.*}
  case $q in '' | *[!0-9]*) continue ;; esac
  [ -d "$o" ] && ! kill -0 "$q" 2>/dev/null && wipe "$o"
done
S=$p${STAGING_PREFIX}$$.${token} k=0 placed=
fail() {
  m=\${3%%"$nl"*}
  printf 'openshell-upload: %s: %s\\000%s\\000\\n' "$1" "\${m##*: }" "\${2#/}" >&2
}
undo() {
  while [ "$k" -gt 0 ]; do
    eval "r=\\$r_$k"
    if [ -d "$S/j/$k" ]; then
      set --
      for f in "$S/j/$k/n"/* "$S/j/$k/n"/.[!.]* "$S/j/$k/n"/..?*; do
        have "$f" || continue
        n=$D$r/\${f##*/}
        if ! have "$S/t$r/\${f##*/}" && have "$n"; then
          [ ! -d "$n" ] || [ -L "$n" ] || [ -w "$n" ] || chmod u+w -- "$n" 2>/dev/null
          set -- "$@" "$n"
        fi
      done
      [ $# = 0 ] || mv -f -- "$@" "$S/t$r/"
      set --
      for f in "$S/j/$k/o"/* "$S/j/$k/o"/.[!.]* "$S/j/$k/o"/..?*; do
        ! have "$f" || set -- "$@" "$f"
      done
      [ $# = 0 ] || mv -f -- "$@" "$D$r/"
    fi
    k=$((k - 1))
  done
}
finish() {
  s=$?
  trap '' HUP INT PIPE TERM
  [ -n "$placed" ] || undo
  wipe "$S"
  if [ -z "$placed" ] && [ -n "$c" ]; then
    d=$D
    while rmdir -- "$d" 2>/dev/null && [ "$d" != "$c" ]; do d=\${d%/*}; done
  fi
  exit "$s"
}
trap finish EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM
if ! mkdir -m 700 -- "$S" 2>/dev/null; then
  trap - EXIT HUP INT PIPE TERM
  exec ${remoteTool("tar")} ${TAR_EXTRACT} --exclude="$E" -C "$D"
fi
mkdir -- "$S/t" "$S/j" || exit
exec 3>&1
e=$(${remoteTool("tar")} ${TAR_EXTRACT} -C "$S/t" 2>&1 >&3 3>&-)
s=$?
[ -z "$e" ] || printf '%s\n' "$e" >&2
[ "$s" = 0 ] || exit "$s"
[ -f "$S/t/$E" ] && rm -f -- "$S/t/$E" || exit 3
moving() { [ ! -d "$1" ] || [ -L "$1" ] || [ ! -d "$D$r/\${1##*/}" ]; }
run() {
  case $1 in
    journal) shift; m=$(touch -- "$@" 2>&1) ;;
    aside) shift; m=$(mv -f -- "$@" "$S/j/$k/o/" 2>&1) ;;
    place) shift; m=$(mv -f -- "$@" "$D$r/" 2>&1) ;;
  esac
}
pass() {
  g=$1
  set --
  for e in "$S/t$r"/* "$S/t$r"/.[!.]* "$S/t$r"/..?*; do
    have "$e" && moving "$e" || continue
    case $g in
      journal) set -- "$@" "$S/j/$k/n/\${e##*/}" ;;
      aside) have "$D$r/\${e##*/}" || continue; set -- "$@" "$D$r/\${e##*/}" ;;
      place)
        if [ -d "$e" ] && [ ! -L "$e" ] && [ ! -w "$e" ]; then
          w=$(stat -c %a -- "$e" 2>/dev/null)
          m=$(chmod u+w -- "$e" 2>&1) && run place "$e" || return
          [ -z "$w" ] || chmod -- "$w" "$D$r/\${e##*/}" 2>/dev/null
          continue
        fi
        set -- "$@" "$e" ;;
    esac
    [ $# -lt 512 ] || { run "$g" "$@" || return; set --; }
  done
  [ $# = 0 ] || run "$g" "$@"
}
merge() {
  k=$((k + 1)) r=$1
  eval "r_$k=\\$r m_$k="
  if [ -n "$r" ]; then
    set -- $(stat -c %a -- "$S/t$r" "$D$r/" 2>/dev/null)
    [ $# != 2 ] || [ "$1" = "$2" ] || eval "m_$k=\\$1"
    [ -r "$S/t$r" ] && [ -w "$S/t$r" ] && [ -x "$S/t$r" ] || chmod u+rwx -- "$S/t$r"
  fi
  b=
  for e in "$S/t$r"/* "$S/t$r"/.[!.]* "$S/t$r"/..?*; do
    have "$e" && moving "$e" || continue
    if [ -d "$D$r/\${e##*/}" ] && [ ! -L "$D$r/\${e##*/}" ]; then
      fail replace "$r/\${e##*/}" "Is a directory"
      return 1
    fi
    b=1
  done
  if [ -n "$b" ]; then
    if ! m=$(mkdir -- "$S/j/$k" "$S/j/$k/n" "$S/j/$k/o" 2>&1) || ! pass journal; then
      fail place "$r" "$m"
      return 1
    fi
    if ! pass aside; then
      for e in "$S/t$r"/* "$S/t$r"/.[!.]* "$S/t$r"/..?*; do
        have "$e" && moving "$e" && have "$D$r/\${e##*/}" && break
      done
      fail replace "$r/\${e##*/}" "$m"
      return 1
    fi
    if ! pass place; then
      for e in "$S/t$r"/* "$S/t$r"/.[!.]* "$S/t$r"/..?*; do
        have "$e" && moving "$e" && break
      done
      fail place "$r/\${e##*/}" "$m"
      return 1
    fi
  fi
  set -- "$r"
  for e in "$S/t$1"/* "$S/t$1"/.[!.]* "$S/t$1"/..?*; do
    [ -d "$e" ] && [ ! -L "$e" ] || continue
    merge "$1/\${e##*/}" || return
  done
}
merge "" || exit 1
placed=1
while [ "$k" -gt 0 ]; do
  eval "m=\\$m_$k r=\\$r_$k"
  [ -z "$m" ] || chmod -- "$m" "$D$r/" 2>/dev/null
  k=$((k - 1))
done
`;
}

/**
 * Check the sandbox tar's report against the plan: exit status 0, every
 * entry listed, and exactly the archive's bytes read. Throws an error naming
 * the first failing sandbox path otherwise.
 */
export function verifyExtraction(
  plan: UploadPlan,
  stdout: string | Buffer,
  stderr: string | Buffer,
  exitCode: number | null,
): void {
  const out = typeof stdout === "string" ? stdout : stdout.toString("utf8");
  const err = typeof stderr === "string" ? stderr : stderr.toString("utf8");

  if (exitCode !== 0) throw extractionFailure(plan, out, err, exitCode);
  const incomplete = incompleteExtraction(plan, out, err);
  if (incomplete) throw incomplete;
  if (!/^Total bytes read: \d+/m.test(err)) {
    throw new OpenShellError(
      "sandbox_error",
      "upload could not be verified: the sandbox's tar did not report the bytes it read",
      { hint: "uploads need GNU tar in the sandbox image" },
    );
  }
}

/** An entry the sandbox did not list, or a byte count other than the archive's; undefined if neither. */
function incompleteExtraction(plan: UploadPlan, out: string, err: string): OpenShellError | undefined {
  const listed = new Set(
    out
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => stripTrailingSlashes(unescapeTarName(line))),
  );
  const missing = plan.entries.filter((entry) => !listed.has(entry.name));
  if (missing.length > 0) {
    const extracted = plan.entries.length - missing.length;
    return new OpenShellError(
      "sandbox_error",
      `upload incomplete: the sandbox extracted ${extracted} of ${plan.entries.length} entries; ` +
        `${remoteDisplayPath(plan.extractDir, missing[0]!.name)} is missing`,
    );
  }
  const total = /^Total bytes read: (\d+)/m.exec(err);
  if (total && Number(total[1]) !== plan.archiveBytes) {
    return new OpenShellError(
      "sandbox_error",
      `upload incomplete: sent ${plan.archiveBytes} archive bytes to ${plan.remotePath}, the sandbox's tar read ${total[1]}`,
    );
  }
  return undefined;
}

function extractionFailure(
  plan: UploadPlan,
  stdout: string,
  stderr: string,
  exitCode: number | null,
): OpenShellError {
  const placing = placementFailure(plan, stderr);
  if (placing) return placing;
  const lines = stderr.split("\n").filter((line) => line.trim() !== "");
  const status = exitCode === null ? "was killed" : `exited with status ${exitCode}`;

  for (const line of lines) {
    // GNU tar: `tar: <member>: Cannot <operation>: <errno text>`.
    const tarError = /^tar: (.+?): Cannot (.*): ([^:]+)$/.exec(line);
    if (tarError) {
      const where = remoteDisplayPath(plan.extractDir, stripTrailingSlashes(unescapeTarName(tarError[1]!)));
      // tar removes an existing file before creating it afresh; "Cannot
      // open: File exists" means that removal failed: the path is a
      // read-only bind (an injected --file) or a mount point.
      if (tarError[2] === "open" && /^file exists$/i.test(tarError[3]!)) return readOnlyFileThere(where);
      return failure(`upload failed: ${where}: ${lowerFirst(tarError[3]!)}`, tarError[3]!);
    }
    // GNU tar when write(2) falls short, which is how a full disk shows on
    // some filesystems (tmpfs) instead of ENOSPC.
    const shortWrite = /^tar: (.+?): Wrote only (\d+) of (\d+) bytes$/.exec(line);
    if (shortWrite) {
      const where = remoteDisplayPath(plan.extractDir, unescapeTarName(shortWrite[1]!));
      return new OpenShellError(
        "sandbox_error",
        `upload failed: ${where}: no space left on device (tar wrote only ${shortWrite[2]} of ${shortWrite[3]} bytes)`,
      );
    }
    // coreutils / busybox mkdir: `mkdir: cannot create directory '<p>': <errno text>`.
    const mkdirError = /^mkdir: (?:cannot|can't) create directory ['\u2018](.*)['\u2019]: ([^:]+)$/.exec(
      line,
    );
    if (mkdirError) {
      const where = mkdirError[1]!.startsWith("/") ? mkdirError[1]! : remoteDisplayPath(mkdirError[1]!, "");
      return failure(`upload failed: ${where}: ${lowerFirst(mkdirError[2]!)}`, mkdirError[2]!);
    }
  }
  if (exitCode === 127 || lines.some((line) => /tar: (?:command )?not found/.test(line))) {
    return new OpenShellError("sandbox_error", "upload failed: tar is not installed in the sandbox", {
      hint: "uploads need GNU tar in the sandbox image",
    });
  }
  // The sandbox's tar exited 0 without reaching the end marker: the archive
  // was cut short, and the sandbox placed nothing.
  if (exitCode === 3 && /^Total bytes read: \d+/m.test(stderr)) {
    return (
      incompleteExtraction(plan, stdout, stderr) ??
      new OpenShellError(
        "sandbox_error",
        `upload incomplete: the archive sent to ${plan.remotePath} ended before its last entry`,
      )
    );
  }
  const last = lines.filter((line) => !line.startsWith("Total bytes read")).at(-1);
  return new OpenShellError(
    "sandbox_error",
    `upload failed: extracting into ${plan.remotePath}: tar ${status}${last ? `: ${last}` : ""}`,
  );
}

// What the sandbox's script reports when it cannot move an extracted entry
// into place (remoteExtractCommand): the stage (`replace`: moving the
// existing entry aside; `place`: moving the new one in), the errno text, and
// the name relative to DIR, each field ended by NUL.
const PLACEMENT_FAILURE = /openshell-upload: (replace|place): ([A-Za-z ,'-]{0,80})\0([^\0]{0,4096})\0/;

/**
 * The error for an upload the sandbox extracted but could not move into
 * place, or undefined if that is not what stopped it. The name is used
 * only when it is DIR itself or one of the planned entries: the report
 * comes from the sandbox and is not trusted to name anything else.
 */
function placementFailure(plan: UploadPlan, stderr: string): OpenShellError | undefined {
  const report = PLACEMENT_FAILURE.exec(stderr);
  if (!report) return undefined;
  const [, stage, errnoText, name] = report as unknown as [string, string, string, string];
  const known = name === "" || plan.entries.some((entry) => entry.name === name);
  const where = known ? remoteDisplayPath(plan.extractDir, name) : plan.remotePath;
  // Renaming a read-only bind of a single file (an injected --file) away
  // fails with EBUSY: the file tar used to fail to replace.
  if (stage === "replace" && /^device or resource busy$/i.test(errnoText)) return readOnlyFileThere(where);
  if (/^is a directory$/i.test(errnoText)) {
    return new OpenShellError(
      "sandbox_error",
      `upload failed: ${where}: a directory is already there and a file cannot replace it`,
    );
  }
  const reason = errnoText === "" ? "could not be moved into place" : lowerFirst(errnoText);
  return failure(`upload failed: ${where}: ${reason}`, errnoText);
}

function readOnlyFileThere(where: string): OpenShellError {
  return new OpenShellError(
    "sandbox_error",
    `upload failed: ${where}: a read-only file is already there and cannot be replaced`,
    { hint: "injected files (--file) are read-only in the sandbox; upload to another path" },
  );
}

function failure(message: string, errnoText: string): OpenShellError {
  const hint = /read-only file system|permission denied/i.test(errnoText)
    ? "upload to a writable path in the sandbox, such as /sandbox or /tmp"
    : undefined;
  return new OpenShellError("sandbox_error", message, hint === undefined ? {} : { hint });
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

const C_ESCAPES: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, "\\": 92 };

/** Undo GNU tar's `escape` quoting of a member name: `\n`, `\\`, `\303\251`, ... */
export function unescapeTarName(quoted: string): string {
  const bytes: number[] = [];
  const raw = Buffer.from(quoted, "utf8");
  for (let i = 0; i < raw.length; i++) {
    const byte = raw[i]!;
    if (byte !== 0x5c || i + 1 >= raw.length) {
      bytes.push(byte);
      continue;
    }
    const next = String.fromCharCode(raw[i + 1]!);
    const octal = /^[0-7]{3}$/.exec(raw.subarray(i + 1, i + 4).toString("latin1"));
    if (octal) {
      bytes.push(Number.parseInt(octal[0], 8));
      i += 3;
    } else if (next in C_ESCAPES) {
      bytes.push(C_ESCAPES[next]!);
      i += 1;
    } else {
      bytes.push(byte);
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

// ---------------------------------------------------------------------------
