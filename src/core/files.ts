// Files injected into a sandbox at create time (`--file LOCAL:REMOTE[:MODE]`,
// `spec.files` on the wire). The supervisor writes them as root and binds them
// read-only, so the sandbox can read but never change them.
//
// The rules live here once. The CLI applies them before any RPC (checkFileSpecs,
// throwing `invalidInput` with messages that start `--file <raw>:`); the gateway
// applies the same rules on receipt (validateSandboxFiles, returning messages
// that start `spec.files[i]`). Only that wording differs.

import { createHash } from "node:crypto";
import { closeSync, constants, lstatSync, openSync, readv, type Stats, statSync } from "node:fs";
import type { SandboxFile } from "../gen/openshell.js";
import { invalidInput, type OpenShellError } from "./errors.js";
import { byteLength } from "./names.js";

/**
 * A create request carries every file inline, so these bound its size: the
 * gateway raises its receive limit to fit `total` and no further.
 */
export const FILE_LIMITS = {
  perFile: 1_048_576,
  total: 10_485_760,
  count: 256,
  pathBytes: 4096,
} as const;

/** Read-only for everyone; on the wire a mode of 0 means this. */
export const DEFAULT_FILE_MODE = 0o444;

/** Linux's NAME_MAX: a longer component would only fail later, at write time, as an ERROR sandbox. */
const COMPONENT_MAX_BYTES = 255;

/**
 * Destinations a file may not be written under: kernel filesystems, and the
 * directories OpenShell itself trusts inside a sandbox (policy, TLS material,
 * supervisor sockets, network namespaces). A file there could impersonate them.
 */
export const RESERVED_ROOTS: readonly string[] = [
  "/proc",
  "/sys",
  "/dev",
  "/run/openshell",
  "/opt/openshell",
  "/etc/openshell",
  "/etc/openshell-tls",
  "/run/openshell-sidecar",
  "/run/netns",
  "/var/run/netns",
];

export interface FileSpec {
  /** The flag value as typed, for messages. */
  raw: string;
  local: string;
  /** As typed; `normalizeSandboxPath` gives the form sent and compared. */
  remote: string;
  mode: number;
}

// ---------------------------------------------------------------------------
// Rules shared by both entry points
// ---------------------------------------------------------------------------

/** Absolute, without empty or `.` components or a trailing `/`: what normalizing would return unchanged. */
const ALREADY_NORMAL = /^(?:\/(?!\.(?:\/|$))[^/]+)+$/;

/** Collapses `//` and drops `.` components; `..` is refused elsewhere, never resolved. */
export function normalizeSandboxPath(path: string): string {
  if (ALREADY_NORMAL.test(path)) return path;
  const absolute = path.startsWith("/");
  const parts = path.split("/").filter((part) => part !== "" && part !== ".");
  if (absolute) return "/" + parts.join("/");
  return parts.length === 0 ? "." : parts.join("/");
}

/**
 * Why `path` cannot be a file's destination, as a predicate for the caller to
 * put after its subject (`spec.files[2].path must be absolute`), or undefined.
 */
export function validateSandboxPath(path: string): string | undefined {
  if (path.includes("\0")) return "must not contain NUL bytes";
  const length = byteLength(path);
  if (length > FILE_LIMITS.pathBytes) return `exceeds ${FILE_LIMITS.pathBytes} bytes (${length})`;
  if (!path.startsWith("/")) return "must be absolute";
  const components = path.split("/");
  if (components.includes("..")) return "must not contain '..' components";
  const normalized = normalizeSandboxPath(path);
  if (normalized === "/") return "must not be /";
  const last = components[components.length - 1];
  if (last === "" || last === ".") return "must name a file, not end with '/'";
  if (components.some((part) => byteLength(part) > COMPONENT_MAX_BYTES)) {
    return `has a component longer than ${COMPONENT_MAX_BYTES} bytes`;
  }
  const root = RESERVED_ROOTS.find((r) => normalized === r || normalized.startsWith(r + "/"));
  if (root !== undefined) return `must not be under ${root}, which is reserved`;
  return undefined;
}

/** `0444`, `04755`: how modes appear in messages. */
export function formatMode(mode: number): string {
  return "0" + mode.toString(8).padStart(3, "0");
}

/** A predicate, as for `validateSandboxPath` (`spec.files[0].mode must not set ...`). */
export function validateMode(mode: number): string | undefined {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    const shown = Number.isInteger(mode) && mode >= 0 ? formatMode(mode) : String(mode);
    return `must be permission bits between 0 and 0777 (got ${shown})`;
  }
  if ((mode & 0o7000) !== 0) {
    return `must not set setuid, setgid or sticky bits (got ${formatMode(mode)})`;
  }
  return undefined;
}

/** Legal modes that do not do what their author probably meant. */
export function modeWarnings(mode: number): string[] {
  const effective = mode === 0 ? DEFAULT_FILE_MODE : mode;
  const shown = formatMode(effective);
  const warnings: string[] = [];
  if ((effective & 0o004) === 0) {
    warnings.push(
      `mode ${shown} leaves the sandbox user unable to read the file: it is owned by root, so the sandbox user gets only the "other" bits`,
    );
  }
  if ((effective & 0o222) !== 0) {
    warnings.push(`mode ${shown} has write bits, which have no effect: injected files are read-only`);
  }
  return warnings;
}

function effectiveMode(mode: number): number {
  return mode === 0 ? DEFAULT_FILE_MODE : mode;
}

function tooManyFiles(count: number): boolean {
  return count > FILE_LIMITS.count;
}

function overPerFileLimit(size: number): boolean {
  return size > FILE_LIMITS.perFile;
}

function overTotalLimit(total: number): boolean {
  return total > FILE_LIMITS.total;
}

/** The first file whose destination, once normalized, an earlier file already claimed. */
function firstDuplicate(paths: readonly string[]): { index: number; earlier: number } | undefined {
  const seen = new Map<string, number>();
  for (const [index, path] of paths.entries()) {
    const key = normalizeSandboxPath(path);
    const earlier = seen.get(key);
    if (earlier !== undefined) return { index, earlier };
    seen.set(key, index);
  }
  return undefined;
}

export function sha256Hex(content: Uint8Array): string {
  return createHash("sha256").update(content).digest("hex");
}

/** `512 B`, `1 MiB`, `1.3 MiB`. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (Number(value.toFixed(1)) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1).replace(/\.0$/, "")} ${units[unit]}`;
}

/** A size just over a limit rounds to the limit itself ("1 MiB exceeds 1 MiB"); show bytes then. */
function sizeOver(size: number, limit: number): string {
  const shown = formatBytes(size);
  return shown === formatBytes(limit) ? `${size} bytes` : shown;
}

/** One line for listings: `/etc/app/cfg.yaml (0444, 1.3 KiB, sha256 3f2a…)`. */
export function describeFile(file: SandboxFile): string {
  const size = file.content.length > 0 ? file.content.length : file.size;
  const digest = file.sha256 !== "" ? file.sha256 : sha256Hex(file.content);
  return `${file.path} (${formatMode(effectiveMode(file.mode))}, ${formatBytes(size)}, sha256 ${digest.slice(0, 12)}…)`;
}

// ---------------------------------------------------------------------------
// CLI side
// ---------------------------------------------------------------------------

const FILE_FLAG_HINT = "expected --file LOCAL:REMOTE[:MODE], e.g. --file ./cfg.yaml:/etc/app/cfg.yaml:0444";

function fileError(raw: string, problem: string, hint?: string): OpenShellError {
  return invalidInput(`--file ${raw}: ${problem}`, hint);
}

/**
 * Splits `--file LOCAL:REMOTE[:MODE]`. The rule, which the README repeats:
 *
 * 1. A trailing `:<digits>` is the MODE, in octal (`444`, `0444`, `0555`).
 *    Digits 8 or 9 are an error, not a path; MODE defaults to 0444.
 * 2. What is left is split at its LAST `:/`: LOCAL is before it, REMOTE starts
 *    at the `/`. So LOCAL may contain `:` (even `:/`), REMOTE must be absolute,
 *    and REMOTE may contain `:` but not `:/`, nor end in `:<digits>`.
 *
 * `./a:b.txt:/etc/x` is LOCAL `./a:b.txt`, REMOTE `/etc/x`, MODE 0444;
 * `./x:/etc/y:0555` is LOCAL `./x`, REMOTE `/etc/y`, MODE 0555.
 */
export function parseFileFlag(raw: string): FileSpec {
  let rest = raw;
  let mode = DEFAULT_FILE_MODE;
  const modeMatch = /:(\d+)$/.exec(raw);
  if (modeMatch !== null) {
    const digits = modeMatch[1]!;
    if (!/^[0-7]+$/.test(digits)) {
      throw fileError(raw, `mode ${digits} is not octal (digits 0-7 only, e.g. 0444)`);
    }
    mode = Number.parseInt(digits, 8);
    // On the wire 0 means "the default", so an explicit 0000 would silently become 0444.
    if (mode === 0) throw fileError(raw, `mode ${digits} grants no access; use 0444 for read-only`);
    const problem = validateMode(mode);
    if (problem !== undefined) throw fileError(raw, `mode ${problem}`);
    rest = raw.slice(0, modeMatch.index);
  }
  const separator = rest.lastIndexOf(":/");
  if (separator === -1) throw fileError(raw, "REMOTE must be an absolute path", FILE_FLAG_HINT);
  const local = rest.slice(0, separator);
  const remote = rest.slice(separator + 1);
  if (local === "") throw fileError(raw, "LOCAL is empty", FILE_FLAG_HINT);
  const problem = validateSandboxPath(remote);
  if (problem !== undefined) throw fileError(raw, `REMOTE ${problem}`);
  return { raw, local, remote, mode };
}

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

function totalError(total: number): OpenShellError {
  return invalidInput(
    `--file: all files together total ${sizeOver(total, FILE_LIMITS.total)}, over the ${formatBytes(FILE_LIMITS.total)} limit`,
  );
}

/**
 * Checks every `--file` before anything is sent or read: a bad spec, a
 * missing or oversized local file, or a duplicate destination fails the
 * whole command with nothing created. Returns each file's size, from stat.
 * Throws `invalidInput`.
 */
export function checkFileSpecs(specs: readonly FileSpec[]): number[] {
  if (tooManyFiles(specs.length)) {
    throw invalidInput(`--file: at most ${FILE_LIMITS.count} files can be injected (got ${specs.length})`);
  }
  for (const spec of specs) {
    const pathProblem = validateSandboxPath(spec.remote);
    if (pathProblem !== undefined) throw fileError(spec.raw, `REMOTE ${pathProblem}`);
    const modeProblem = validateMode(spec.mode);
    if (modeProblem !== undefined) throw fileError(spec.raw, `mode ${modeProblem}`);
  }
  const duplicate = firstDuplicate(specs.map((spec) => spec.remote));
  if (duplicate !== undefined) {
    const spec = specs[duplicate.index]!;
    const earlier = specs[duplicate.earlier]!;
    throw fileError(
      spec.raw,
      `REMOTE ${normalizeSandboxPath(spec.remote)} is already the destination of --file ${earlier.raw}`,
    );
  }
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

/**
 * The SHA-256 of each content, yielding to the event loop about every MiB,
 * so a request being sent meanwhile keeps going out. (WebCrypto's
 * thread-pool digest would copy each content first.)
 */
export async function sha256HexEach(contents: readonly Uint8Array[]): Promise<string[]> {
  const digests: string[] = [];
  let sinceYield = 0;
  for (const content of contents) {
    digests.push(sha256Hex(content));
    sinceYield += content.length;
    if (sinceYield >= 1 << 20) {
      sinceYield = 0;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  return digests;
}

// ---------------------------------------------------------------------------
// Gateway side
// ---------------------------------------------------------------------------

/**
 * `spec.files` as received. Returns the first problem, worded for an
 * INVALID_ARGUMENT status, or undefined. A non-empty `size` or `sha256` sent
 * by the client must match the content: a mismatch means a corrupted request.
 */
export function validateSandboxFiles(files: readonly SandboxFile[]): string | undefined {
  if (tooManyFiles(files.length)) {
    return `spec.files: at most ${FILE_LIMITS.count} files (got ${files.length})`;
  }
  let total = 0;
  for (const [index, file] of files.entries()) {
    const subject = `spec.files[${index}]`;
    const pathProblem = validateSandboxPath(file.path);
    if (pathProblem !== undefined) return `${subject}.path ${pathProblem}`;
    const modeProblem = validateMode(effectiveMode(file.mode));
    if (modeProblem !== undefined) return `${subject}.mode ${modeProblem}`;
    const size = file.content.length;
    if (overPerFileLimit(size)) return `${subject} exceeds the ${FILE_LIMITS.perFile}-byte per-file limit`;
    if (file.size !== 0 && file.size !== size) {
      return `${subject}.size ${file.size} does not match its content (${size} bytes)`;
    }
    if (file.sha256 !== "" && file.sha256.toLowerCase() !== sha256Hex(file.content)) {
      return `${subject}.sha256 does not match its content`;
    }
    total += size;
  }
  const duplicate = firstDuplicate(files.map((file) => file.path));
  if (duplicate !== undefined) {
    const path = normalizeSandboxPath(files[duplicate.index]!.path);
    return `spec.files[${duplicate.index}].path ${path} duplicates spec.files[${duplicate.earlier}].path`;
  }
  if (overTotalLimit(total)) {
    return `spec.files: total size ${total} exceeds the ${FILE_LIMITS.total}-byte limit`;
  }
  return undefined;
}
