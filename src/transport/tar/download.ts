// The local half of `sandbox download`: the checks that keep a download inside
// the sandbox workspace, the commands run in the sandbox, and the extraction
// of the archive it sends. No network here; the SSH plumbing runs, in order:
//
//   1. probeCommand(path)          -> resolveDownloadSource(stdout, path) = resolved
//   2. typeProbeCommand(resolved)  -> decodeTypeProbe(stdout, path)       = "file" | "dir"
//   3. downloadTarCommand(resolved), its stdout into
//      extractDownload(stdout, dest, { kind, name: basename(resolved), source: path })
//
// The archive comes from the sandbox and is treated as hostile: nothing it
// says can write outside DEST, or leave a symlink that leads out of it.

import { randomBytes } from "node:crypto";
import { constants as fsConstants, type Stats } from "node:fs";
import {
  chmod,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  readlink,
  realpath,
  rename,
  rm,
  symlink,
  unlink,
  utimes,
} from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import tarStream from "tar-stream";
import { invalidInput, messageOf, OpenShellError } from "../../core/errors.js";
import { remoteTool } from "../../core/protocol.js";
import { shellEscape } from "../../core/shell.js";
import { escapeForTerminal } from "../../core/terminal-text.js";
import { lstatIfExists, statIfExists } from "../../host/fs.js";

// ---------------------------------------------------------------------------
// Sandbox path checks (same rules and messages as upstream)

/**
 * Lexically clean an absolute POSIX path: resolve `.` and `..`, collapse
 * `//`, drop a trailing `/`. Undefined for an empty or relative path. It
 * does not follow symlinks; resolveDownloadSource checks the real path too.
 */
export function cleanSandboxPath(p: string): string | undefined {
  if (!p.startsWith("/")) return undefined;
  const stack: string[] = [];
  for (const part of p.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") stack.pop();
    else stack.push(part);
  }
  return `/${stack.join("/")}`;
}

function isOrUnder(p: string, root: string): boolean {
  return p === root || p.startsWith(root.endsWith("/") ? root : `${root}/`);
}

/** The workspace root the sandbox reported (`pwd -P`): absolute, canonical, not `/`. */
export function checkWorkspaceRoot(root: string): string {
  const cleaned = cleanSandboxPath(root);
  if (cleaned === undefined) throw sandboxError("remote workspace must be an absolute path");
  if (cleaned === "/") throw sandboxError("remote workspace resolved to the container root");
  if (cleaned !== root) throw sandboxError(`remote workspace '${root}' is not a canonical absolute path`);
  return cleaned;
}

/** The requested path, made absolute from the root and cleaned; it must be the root or under it. */
export function checkSourcePath(requested: string, root: string): string {
  if (requested === "") throw invalidInput("sandbox source path is empty");
  const candidate = requested.startsWith("/") ? requested : `${root}/${requested}`;
  const cleaned = cleanSandboxPath(candidate);
  if (cleaned === undefined) throw invalidInput(`sandbox source path is invalid (got '${requested}')`);
  if (!isOrUnder(cleaned, root)) {
    throw invalidInput(
      escapeForTerminal(`sandbox source path '${requested}' is outside the sandbox workspace (${root})`),
      downloadHint,
    );
  }
  return cleaned;
}

/** The path with every symlink resolved (`realpath -e`); it must stay in the workspace too. */
export function checkResolvedPath(requested: string, resolved: string, root: string): string {
  if (resolved === "") throw invalidInput(`sandbox source path '${requested}' does not exist`);
  const cleaned = cleanSandboxPath(resolved);
  if (cleaned === undefined) {
    throw sandboxError(`unexpected response while resolving sandbox source path '${requested}'`);
  }
  if (!isOrUnder(cleaned, root)) {
    throw invalidInput(
      escapeForTerminal(
        `sandbox source path '${requested}' resolves to '${resolved}', outside the sandbox workspace (${root})`,
      ),
      downloadHint,
    );
  }
  return cleaned;
}

const downloadHint = "download paths must be inside the sandbox working directory";

/** Prints the workspace root, then the requested path with symlinks resolved (non-zero if it does not exist). */
export function probeCommand(requested: string): string {
  return `pwd -P && ${remoteTool("realpath")} -e -- ${shellEscape(requested)}`;
}

/** Strip one trailing `\n`, then one `\r` — nothing more, so a path ending in a space survives. */
export function decodeProbeOutput(stdout: string | Buffer): string {
  let text: string;
  if (typeof stdout === "string") {
    text = stdout;
  } else {
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(stdout);
    } catch {
      throw sandboxError("ssh probe returned non-UTF-8 output");
    }
  }
  if (text.endsWith("\n")) text = text.slice(0, -1);
  if (text.endsWith("\r")) text = text.slice(0, -1);
  return text;
}

/** The probe's two lines: the workspace root and the resolved path. */
export function decodeProbe(stdout: string | Buffer, requested: string): { root: string; resolved: string } {
  const lines = decodeProbeOutput(stdout).split("\n");
  if (lines.length !== 2) {
    throw sandboxError(`unexpected response while resolving sandbox source path '${requested}'`);
  }
  return { root: lines[0]!, resolved: lines[1]! };
}

/** Every check on the probe's output, in upstream's order; returns the resolved path to download. */
export function resolveDownloadSource(stdout: string | Buffer, requested: string): string {
  const probe = decodeProbe(stdout, requested);
  const root = checkWorkspaceRoot(probe.root);
  checkSourcePath(requested, root);
  return checkResolvedPath(requested, probe.resolved, root);
}

/** Prints `dir`, `file` or `missing`. */
export function typeProbeCommand(resolved: string): string {
  const p = shellEscape(resolved);
  return `if [ -d ${p} ]; then printf dir; elif [ -e ${p} ]; then printf file; else printf missing; fi`;
}

export function decodeTypeProbe(stdout: string | Buffer, requested: string): "file" | "dir" {
  const kind = decodeProbeOutput(stdout);
  if (kind === "dir") return "dir";
  if (kind === "file") return "file";
  if (kind === "missing") throw invalidInput(`sandbox source path '${requested}' does not exist`);
  throw sandboxError(`unexpected probe output for sandbox source path '${requested}': '${kind}'`);
}

/**
 * Archive the resolved path under its own name (`-C parent -- name`), for a
 * file or a directory alike. `--` keeps a name like `--checkpoint-action=...`
 * from being read as an option.
 */
export function downloadTarCommand(resolved: string): string {
  const parent = path.posix.dirname(resolved);
  const name = path.posix.basename(resolved);
  return `${remoteTool("tar")} -c -f - -C ${shellEscape(parent)} -- ${shellEscape(name)}`;
}

// ---------------------------------------------------------------------------
// Local placement

/** Upstream's rule: into DEST when it ends in `/` or is a directory, else DEST itself. */
export function fileDownloadTarget(dest: string, name: string, destIsDir: boolean): string {
  return dest.endsWith("/") || destIsDir ? path.join(dest, name) : dest;
}

export interface DownloadResult {
  /** Regular files written (hard links included). */
  files: number;
  bytes: number;
  /** The local path written: the file, or the directory merged into. */
  path: string;
}

/**
 * Extract the archive `downloadTarCommand` produced. Everything is first
 * extracted into a staging directory and moved into place only once the
 * whole archive has been read and accepted, so a refused or interrupted
 * download leaves DEST as it was (and no directory the download created):
 *
 * - kind "file": the one regular file `name` lands at fileDownloadTarget(...)
 *   through a staging directory beside it and an atomic rename.
 * - kind "dir", DEST missing: extracted into a staging directory beside
 *   DEST, renamed to DEST at the end.
 * - kind "dir", DEST a directory: the contents of `name/` merge into DEST
 *   (as upstream): extracted into a staging directory inside DEST, each
 *   entry checked against what DEST holds, then moved in.
 *
 * Refused, with nothing written outside DEST: absolute names, `..`, entries
 * outside `name`, device and FIFO entries, hard links to anything but a
 * regular file already extracted, symlinks that resolve outside DEST, and
 * writing through any symlink (whether the archive made it or it was there
 * already). DEST itself may be a symlink: that is the user's choice.
 * Modes are kept without setuid/setgid; mtimes are kept.
 */
export async function extractDownload(
  archive: Readable,
  dest: string,
  opts: { kind: "file" | "dir"; name: string; source?: string },
): Promise<DownloadResult> {
  const { name } = opts;
  if (name === "" || name === "." || name === ".." || name.includes("/")) {
    throw new OpenShellError("internal", `invalid download entry name '${name}'`);
  }
  const input = openArchive(archive);
  try {
    return await extractInto(input, dest, opts);
  } catch (error) {
    input.abort();
    throw error;
  }
}

async function extractInto(
  input: ArchiveInput,
  dest: string,
  opts: { kind: "file" | "dir"; name: string; source?: string },
): Promise<DownloadResult> {
  const { name } = opts;
  const destStat = statIfExists(dest);
  if (opts.kind === "dir") {
    if (destStat !== undefined && !destStat.isDirectory()) {
      throw invalidInput(
        `cannot extract directory '${opts.source ?? name}' over non-directory destination '${dest}'`,
      );
    }
    if (destStat === undefined) return extractNewDirectory(input, dest, name);
    // Resolved once, up front: DEST may be a symlink the user chose; below
    // it, every step refuses to pass through one.
    const base = await realpath(dest);
    const staging = await makeStaging(base, 0o700);
    try {
      const extractor = new SafeExtractor(staging, name, "dir", base);
      await extractor.run(input);
      await mergeInto(staging, base);
      await extractor.applyDirModes(base);
      return { files: extractor.files, bytes: extractor.bytes, path: dest };
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  const target = fileDownloadTarget(dest, name, destStat?.isDirectory() ?? false);
  const existing = lstatIfExists(target);
  if (existing?.isDirectory())
    throw invalidInput(`cannot overwrite directory '${target}' with downloaded file`);
  const parent = path.dirname(target);
  const createdParent = await makeDestination(parent);
  let staging: string | undefined;
  let done = false;
  try {
    staging = await makeStaging(parent, 0o700);
    const extractor = new SafeExtractor(staging, name, "file");
    await extractor.run(input);
    const staged = path.join(staging, name);
    const stagedStat = lstatIfExists(staged);
    if (stagedStat === undefined) throw sandboxError(`downloaded archive did not contain '${name}'`);
    if (!stagedStat.isFile()) throw sandboxError(`downloaded entry '${name}' is not a regular file`);
    const now = lstatIfExists(target);
    if (now?.isDirectory()) throw invalidInput(`cannot overwrite directory '${target}' with downloaded file`);
    await rename(staged, target);
    done = true;
    return { files: extractor.files, bytes: extractor.bytes, path: target };
  } finally {
    if (staging !== undefined) await rm(staging, { recursive: true, force: true });
    if (!done && createdParent !== undefined) await rm(createdParent, { recursive: true, force: true });
  }
}

/** A directory download to a DEST that does not exist: staged beside it, renamed to it at the end. */
async function extractNewDirectory(input: ArchiveInput, dest: string, name: string): Promise<DownloadResult> {
  const parent = path.dirname(path.resolve(dest));
  const createdParent = await makeDestination(parent);
  let staging: string | undefined;
  let done = false;
  try {
    // The mode DEST would have had from mkdir (the umask applies).
    staging = await makeStaging(parent, 0o777);
    const extractor = new SafeExtractor(staging, name, "dir");
    await extractor.run(input);
    try {
      await rename(staging, dest);
    } catch (error) {
      throw invalidInput(`failed to move the download into place at '${dest}': ${messageOf(error)}`);
    }
    done = true;
    await extractor.applyDirModes(dest);
    return { files: extractor.files, bytes: extractor.bytes, path: dest };
  } finally {
    if (!done && staging !== undefined) await rm(staging, { recursive: true, force: true });
    if (!done && createdParent !== undefined) await rm(createdParent, { recursive: true, force: true });
  }
}

/** A fresh staging directory in `dir`; returns its real path. */
async function makeStaging(dir: string, mode: number): Promise<string> {
  const staging = path.join(dir, `.openshell-download-${randomBytes(6).toString("hex")}`);
  try {
    await mkdir(staging, { mode });
  } catch (error) {
    throw invalidInput(`failed to create download staging directory in '${dir}': ${messageOf(error)}`);
  }
  return realpath(staging);
}

/**
 * Moves what `staging` holds into `base`: a directory onto an existing
 * directory is merged, anything else is renamed over what is there (rename
 * replaces a file or a symlink itself, never what a symlink points at). The
 * extractor already refused every entry that does not fit what `base` holds.
 */
async function mergeInto(staging: string, base: string): Promise<void> {
  for (const entry of await readdir(staging)) {
    const from = path.join(staging, entry);
    const to = path.join(base, entry);
    const source = await lstat(from);
    const target = lstatIfExists(to);
    if (source.isDirectory() && target?.isDirectory()) await mergeInto(from, to);
    else if (target?.isDirectory()) throw invalidInput(`cannot overwrite directory '${to}' with a download`);
    else await rename(from, to);
  }
}

interface ArchiveInput {
  entries: AsyncIterator<ArchiveEntry>;
  /** Stop reading and discard the rest (the sender sees its pipe close). */
  abort(): void;
}

/**
 * Start reading the archive at once, before any await: node discards a
 * child process's unread stdout when the child exits, and tar-stream
 * announces an entry only to listeners already attached.
 */
function openArchive(archive: Readable): ArchiveInput {
  const extract = tarStream.extract();
  const entries = extract[Symbol.asyncIterator]() as unknown as AsyncIterator<ArchiveEntry>;
  archive.on("error", (error) => extract.destroy(error));
  archive.pipe(extract as unknown as NodeJS.WritableStream);
  return {
    entries,
    abort: () => {
      archive.unpipe(extract as unknown as NodeJS.WritableStream);
      archive.destroy();
      extract.destroy();
    },
  };
}

/** Makes `dir` and its parents; returns the first directory it created, if any (to undo). */
async function makeDestination(dir: string): Promise<string | undefined> {
  try {
    return await mkdir(dir, { recursive: true });
  } catch (error) {
    throw invalidInput(`failed to create local destination directory '${dir}': ${messageOf(error)}`);
  }
}

/** One member of the archive: its header and a stream of its data. */
type ArchiveEntry = AsyncIterable<unknown> & { header: tarStream.Header };

interface PendingDir {
  rel: string[];
  mode: number;
  mtime: Date;
}

interface PendingSymlink {
  rel: string[];
  entryName: string;
  target: string;
  mtime: Date;
}

// Loop guard while resolving a symlink chain, as the kernel's ELOOP limit.
const MAX_SYMLINK_HOPS = 40;

class SafeExtractor {
  files = 0;
  bytes = 0;
  private readonly dirs: PendingDir[] = [];
  /** Symlinks are created last, so no entry is ever written through one the archive made. */
  private readonly symlinks = new Map<string, PendingSymlink>();
  /** Regular files this archive wrote: the only things its hard links may point at. */
  private readonly written = new Set<string>();

  /**
   * Extracts into `root`, a staging directory. With `base`, the entries will
   * then be merged into `base`: every check sees `root` laid over `base`, so
   * what `base` already holds (a symlink, a directory) refuses an entry as it
   * would if extraction were into `base` itself.
   */
  constructor(
    private readonly root: string,
    private readonly name: string,
    private readonly kind: "file" | "dir",
    private readonly base?: string,
  ) {}

  async run(input: ArchiveInput): Promise<void> {
    for (;;) {
      const next = await input.entries.next();
      if (next.done) break;
      await this.entry(next.value);
    }
    await this.finish();
  }

  /** What is at rel in the staging directory, else in `base`; `staged` tells which. */
  private async lookup(rel: string[]): Promise<{ stat: Stats; staged: boolean } | undefined> {
    const staged = lstatIfExists(this.abs(rel));
    if (staged !== undefined) return { stat: staged, staged: true };
    if (this.base === undefined) return undefined;
    const existing = lstatIfExists(path.join(this.base, ...rel));
    return existing === undefined ? undefined : { stat: existing, staged: false };
  }

  private async entry(entry: ArchiveEntry): Promise<void> {
    const header = entry.header;
    const rel = this.memberPath(header.name);
    const mode = header.mode & 0o7777 & ~0o6000;
    const mtime = header.mtime;

    if (this.kind === "file") {
      if (rel.length !== 0 || (header.type !== "file" && header.type !== "contiguous-file")) {
        throw refused(header.name, `downloaded entry '${this.name}' is not a regular file`);
      }
      await this.writeFile(header.name, [this.name], entry, mode, mtime);
      return;
    }

    if (rel.length === 0) {
      // The downloaded directory itself: DEST keeps its own mode and times
      // (it may be the user's working directory).
      if (header.type !== "directory") throw refused(header.name, `'${this.name}' is not a directory`);
      await drain(entry);
      return;
    }
    this.checkNotUnderPendingSymlink(header.name, rel);

    switch (header.type) {
      case "file":
      case "contiguous-file":
        this.symlinks.delete(rel.join("/"));
        await this.writeFile(header.name, rel, entry, mode, mtime);
        return;
      case "directory":
        this.symlinks.delete(rel.join("/"));
        await drain(entry);
        await this.makeDir(header.name, rel, mode, mtime);
        return;
      case "symlink":
        await drain(entry);
        await this.addSymlink(header.name, rel, header.linkname ?? "", mtime);
        return;
      case "link":
        await drain(entry);
        this.symlinks.delete(rel.join("/"));
        await this.hardLink(header.name, rel, header.linkname ?? "");
        return;
      default:
        throw refused(header.name, `${header.type ?? "unknown"} entries are not extracted`);
    }
  }

  /** The entry's path below `name/`, as components; refuses anything else. */
  private memberPath(entryName: string): string[] {
    if (entryName.startsWith("/")) throw refused(entryName, "absolute path");
    const parts = entryName.split("/").filter((p) => p !== "" && p !== ".");
    if (parts.includes("..")) throw refused(entryName, "path contains '..'");
    if (parts[0] !== this.name) throw refused(entryName, `not inside '${this.name}'`);
    return parts.slice(1);
  }

  private abs(rel: string[]): string {
    return path.join(this.root, ...rel);
  }

  /** Make the parent directories of rel, never passing through a symlink or a non-directory. */
  private async ensureParents(entryName: string, rel: string[]): Promise<void> {
    for (let i = 0; i < rel.length - 1; i++) {
      const here = rel.slice(0, i + 1);
      const p = this.abs(here);
      const found = await this.lookup(here);
      const st = found?.stat;
      if (found === undefined || (!found.staged && st!.isDirectory())) {
        await mkdir(p);
        continue;
      }
      if (st!.isSymbolicLink())
        throw refused(entryName, `'${here.join("/")}' is a symlink in the destination`);
      if (!st!.isDirectory())
        throw refused(entryName, `'${here.join("/")}' is not a directory in the destination`);
    }
  }

  /**
   * Makes rel's parents and clears rel for a new non-directory entry (`what`):
   * refused over a directory; what an earlier entry staged there is removed.
   * Replace, never write into: an existing file may be a hard link shared with
   * something outside DEST, and an existing symlink must not be followed.
   * Returns the path to create.
   */
  private async clearFor(entryName: string, rel: string[], what: string): Promise<string> {
    await this.ensureParents(entryName, rel);
    const p = this.abs(rel);
    const existing = await this.lookup(rel);
    if (existing?.stat.isDirectory())
      throw refused(entryName, `cannot overwrite directory '${rel.join("/")}' with ${what}`);
    if (existing?.staged) await unlink(p);
    return p;
  }

  private checkNotUnderPendingSymlink(entryName: string, rel: string[]): void {
    for (let i = 1; i < rel.length; i++) {
      const prefix = rel.slice(0, i).join("/");
      if (this.symlinks.has(prefix))
        throw refused(entryName, `it would be written through the symlink '${prefix}'`);
    }
  }

  private async writeFile(
    entryName: string,
    rel: string[],
    data: AsyncIterable<unknown>,
    mode: number,
    mtime: Date,
  ): Promise<void> {
    const p = await this.clearFor(entryName, rel, "a file");
    this.written.delete(rel.join("/"));
    const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
    const handle = await open(p, flags, 0o600);
    try {
      for await (const chunk of data) {
        const buf = chunk as Buffer;
        await handle.write(buf);
        this.bytes += buf.length;
      }
      // chmod after writing: a read-only mode must not stop the write, and
      // the umask must not change what the sandbox sent.
      await handle.chmod(mode);
      await handle.utimes(mtime, mtime);
    } finally {
      await handle.close();
    }
    this.written.add(rel.join("/"));
    this.files += 1;
  }

  private async makeDir(entryName: string, rel: string[], mode: number, mtime: Date): Promise<void> {
    await this.ensureParents(entryName, rel);
    const p = this.abs(rel);
    const existing = await this.lookup(rel);
    if (existing === undefined || (!existing.staged && existing.stat.isDirectory())) await mkdir(p, 0o700);
    else if (existing.stat.isSymbolicLink())
      throw refused(entryName, `'${rel.join("/")}' is a symlink in the destination`);
    else if (!existing.stat.isDirectory())
      throw refused(entryName, `'${rel.join("/")}' is a file in the destination`);
    // Applied at the very end, in place, deepest first: a read-only directory
    // must still receive its children, and writing them would change its mtime.
    this.dirs.push({ rel, mode, mtime });
  }

  private async addSymlink(entryName: string, rel: string[], target: string, mtime: Date): Promise<void> {
    const pending: PendingSymlink = { rel, entryName, target, mtime };
    const key = rel.join("/");
    this.symlinks.set(key, pending);
    // Checked now for an early, precise refusal, and again at the end, when
    // every entry that could change where it leads has arrived.
    await this.checkSymlink(pending);
  }

  private async checkSymlink(link: PendingSymlink): Promise<void> {
    if (link.target === "") throw refused(link.entryName, "symlink with an empty target");
    if (link.target.startsWith("/")) {
      throw refused(link.entryName, `symlink to '${link.target}' leads outside the destination`);
    }
    const stack = link.rel.slice(0, -1);
    const queue = link.target.split("/");
    let hops = 0;
    while (queue.length > 0) {
      const part = queue.shift()!;
      if (part === "" || part === ".") continue;
      if (part === "..") {
        if (stack.length === 0) {
          throw refused(link.entryName, `symlink to '${link.target}' leads outside the destination`);
        }
        stack.pop();
        continue;
      }
      stack.push(part);
      const next = await this.symlinkAt(stack);
      if (next === undefined) continue;
      hops += 1;
      if (hops > MAX_SYMLINK_HOPS) throw refused(link.entryName, "symlink loop");
      if (next.startsWith("/")) {
        throw refused(link.entryName, `symlink to '${link.target}' leads outside the destination`);
      }
      stack.pop();
      queue.unshift(...next.split("/"));
    }
  }

  /** The target of the symlink at rel once extraction is done, if there is one. */
  private async symlinkAt(rel: string[]): Promise<string | undefined> {
    const pending = this.symlinks.get(rel.join("/"));
    if (pending !== undefined) return pending.target;
    const found = await this.lookup(rel);
    if (!found?.stat.isSymbolicLink()) return undefined;
    return readlink(found.staged ? this.abs(rel) : path.join(this.base!, ...rel));
  }

  private async hardLink(entryName: string, rel: string[], linkName: string): Promise<void> {
    if (linkName.startsWith("/"))
      throw refused(entryName, `hard link to '${linkName}' outside the destination`);
    const parts = linkName.split("/").filter((p) => p !== "" && p !== ".");
    if (parts.includes("..") || parts[0] !== this.name) {
      throw refused(entryName, `hard link to '${linkName}' outside the destination`);
    }
    const targetRel = parts.slice(1);
    if (targetRel.length === 0)
      throw refused(entryName, `hard link to '${linkName}' is not to a regular file`);
    // Only a regular file this archive wrote (and nothing has replaced
    // since) qualifies: not a symlink, not a file that was in DEST before.
    if (!this.written.has(targetRel.join("/")) || this.symlinks.has(targetRel.join("/"))) {
      throw refused(entryName, `hard link to '${linkName}' is not to a regular file extracted before it`);
    }
    for (let i = 1; i <= targetRel.length; i++) {
      const st = lstatIfExists(this.abs(targetRel.slice(0, i)));
      const expected = i < targetRel.length ? st?.isDirectory() : st?.isFile();
      if (!expected)
        throw refused(entryName, `hard link to '${linkName}' is not to a regular file extracted before it`);
    }
    await link(this.abs(targetRel), await this.clearFor(entryName, rel, "a file"));
    this.written.add(rel.join("/"));
    this.files += 1;
  }

  private async finish(): Promise<void> {
    for (const pending of this.symlinks.values()) await this.checkSymlink(pending);
    for (const pending of this.symlinks.values()) {
      const p = await this.clearFor(pending.entryName, pending.rel, "a symlink");
      await symlink(pending.target, p);
      await lutimes(p, pending.mtime, pending.mtime);
    }
  }

  /** The archive's directory modes and times, applied where the entries now are. */
  async applyDirModes(root: string): Promise<void> {
    for (const dir of [...this.dirs].reverse()) {
      const abs = path.join(root, ...dir.rel);
      const st = lstatIfExists(abs);
      if (!st?.isDirectory()) continue;
      await chmod(abs, dir.mode);
      await utimes(abs, dir.mtime, dir.mtime);
    }
  }
}

async function drain(entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of entry) {
    // Data of a non-file entry (there should be none) is discarded.
  }
}

// Entry names, link targets and probe output come from the sandbox: they are
// shown escaped (see terminal-text.ts), so a name cannot act on the terminal.
function refused(entryName: string, why: string): OpenShellError {
  return new OpenShellError(
    "sandbox_error",
    escapeForTerminal(`refusing downloaded archive entry '${entryName}': ${why}`),
    { hint: "nothing was written; the sandbox sent an unsafe archive" },
  );
}

function sandboxError(message: string): OpenShellError {
  return new OpenShellError("sandbox_error", escapeForTerminal(message));
}
