// What a sandbox's bubblewrap pod sees. `planMounts` turns the filesystem
// policy, the sandbox's private host directories and its injected files into
// bwrap's arguments plus the host directories to prepare first; it reads the
// host only through `HostFs`, so unit tests can hand it a made-up host.
//
// The layout, in the order bwrap builds it:
// - the root is bwrap's own tmpfs and is remounted read-only last, so nothing
//   outside the writable mounts can be written;
// - `read_only` paths are read-only binds of the host's own paths (a host
//   symlink such as merged-usr `/bin -> usr/bin` is recreated as a symlink);
// - `read_write` paths, the workspace and `/tmp` are binds of the sandbox's
//   private host directories, never the host's own;
// - every injected file is a read-only bind of its root-owned staged copy.
//   A read-only bind of a file cannot be written, chmodded, removed or renamed
//   from inside, but the kernel lets a process rename a directory that merely
//   contains a mount, after which it could recreate the path with its own
//   content. So every directory between a writable mount and an injected file
//   is bound onto itself: a mount point cannot be renamed or removed (EBUSY),
//   yet stays writable. Where the file's directories do not exist in a
//   read-only host bind, bwrap cannot create them (EROFS), so the nearest
//   existing directory is "exploded": a tmpfs over it holding read-only binds
//   of its host entries, then the missing directories and the file, then the
//   tmpfs is remounted read-only.

import {
  closeSync,
  constants,
  fchownSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  statSync,
} from "node:fs";
import { posix } from "node:path";
import {
  DEFAULT_FILE_MODE,
  GROUP_FILE as GROUP,
  normalizeSandboxPath,
  PASSWD_FILE as PASSWD,
  SANDBOX_TMP,
  SANDBOX_WORKDIR,
  unplaceableFileReason,
} from "../core/files.js";
import { wholeFilesystemReason } from "../core/policy/validate.js";
import type { FilesystemPolicy } from "../gen/sandbox.js";
import { lstatIfExists } from "../host/fs.js";
import { ownDirectory } from "./host-fs.js";
import {
  fileInjectionFailed,
  filesystemSetupFailed,
  type SandboxSetupReason,
  setupFailed,
} from "./setup-errors.js";

/** The sandbox's own host directories. */
export interface PodHostDirs {
  /** Backs the workdir (`/sandbox`); persistent until the sandbox is deleted. */
  workspace: string;
  /** Backs `/tmp`. A host directory, not a tmpfs, so files injected below it can be pinned. */
  tmp: string;
  /** Each `read_write` path outside the workdir and `/tmp` is backed by `<rwRoot><path>`. */
  rwRoot: string;
  /** Staging root: an injected file `/a/b` is staged at `<files>/a/b` (see `stageFiles`). */
  files: string;
}

/** A supervisor path the pod needs (the agent's code, the run dir with its socket). */
export interface ControlBind {
  src: string;
  dest: string;
  writable: boolean;
}

export interface HostOwner {
  uid: number;
  gid: number;
}

export type HostEntry =
  | { kind: "dir" }
  | { kind: "file" }
  | { kind: "symlink"; target: string }
  /** Sockets, fifos, devices: bindable, but never a directory. */
  | { kind: "other" };

/** The host as the planner sees it; `undefined` means the path does not exist. */
export interface HostFs {
  lstat(path: string): HostEntry | undefined;
  /** Follows symlinks, as bwrap does for a bind's source. */
  isDirectory(path: string): boolean | undefined;
  readdir(path: string): string[];
}

export interface MountPlanInput {
  policy: FilesystemPolicy;
  /** Where the workspace appears and where processes start. Default `/sandbox`. */
  workdir?: string;
  dirs: PodHostDirs;
  /** Sandbox paths of the injected files, already staged under `dirs.files`. */
  injectedFiles: readonly string[];
  /** Generated files bound read-only over `/etc/passwd` and `/etc/group`. */
  passwdFile: string;
  groupFile: string;
  controlBinds: readonly ControlBind[];
  /** The sandbox user and group inside the pod. */
  uid: number;
  gid: number;
  /**
   * The pod's host uid/gid, owner of the host directories the pod writes, when
   * the supervisor is root; `null` when the supervisor is that user itself.
   */
  hostOwner: HostOwner | null;
  hostname: string;
  /**
   * The host directory that stands for the pod's `/` when the sandbox runs
   * from an image: `read_only` paths are bound from under it (an image's
   * symlinks are recreated as symlinks, so they resolve inside the pod, and a
   * path through one is never looked up on the host). Unset: the host's own
   * root.
   */
  root?: string;
  /** Where processes start; the workdir unless set (an image's WorkingDir). */
  chdir?: string;
  fs?: HostFs;
}

export type HostPrepStep =
  /** One of the sandbox's own roots: created with its parents, owner and mode enforced each start. */
  | { kind: "root"; hostPath: string; mode: number; owner: HostOwner | null }
  /** A directory inside a private root: created if missing; a symlink or non-directory is refused. */
  | {
      kind: "dir";
      hostPath: string;
      /** Where this directory appears in the pod, when it does. */
      sandboxPath: string | null;
      /** The policy path or injected file this directory is for; errors name it. */
      forPath: string;
      reason: SandboxSetupReason;
      mode: number;
      owner: HostOwner | null;
    }
  /** The mount point of a file bind inside a private root: an empty file if missing. */
  | {
      kind: "file";
      hostPath: string;
      sandboxPath: string;
      forPath: string;
      reason: SandboxSetupReason;
      owner: HostOwner | null;
    };

export interface MountPlan {
  /** bwrap's arguments up to the command: namespaces, identity, mounts, `--chdir`. */
  args: string[];
  /** Run by `applyHostPrep` before bwrap starts, in order. */
  prep: HostPrepStep[];
  /** Policy paths the pod will not have: `read_only` paths missing on the host, devices `--dev` lacks. */
  missing: string[];
  /**
   * Sandbox paths of the directories bound whole from the staging tree (see
   * groupInjectedDirectories). bwrap needs each to exist; the files inside
   * may be staged after it starts, as long as nothing in the pod runs yet.
   * Every other injected file is a bind of its own and must be staged first.
   */
  injectedDirectories: string[];
}

export const DEFAULT_WORKDIR = SANDBOX_WORKDIR;
const PRIVATE_TMP = SANDBOX_TMP;

/** What bwrap's `--dev` provides; anything else under `/dev` is not in the pod. */
const DEV_ENTRIES = new Set([
  "null",
  "zero",
  "full",
  "random",
  "urandom",
  "tty",
  "stdin",
  "stdout",
  "stderr",
  "fd",
  "core",
  "ptmx",
  "pts",
  "shm",
]);

/** Where `stageFiles` puts, and the plan binds from, the injected file at sandbox path `path`. */
export function stagedPath(stagingRoot: string, path: string): string {
  // Joined by hand for the usual normal path: hundreds of files make posix.join show.
  if (normalizeSandboxPath(path) === path && !stagingRoot.endsWith("/")) return stagingRoot + path;
  return posix.join(stagingRoot, path);
}

function isAtOrUnder(path: string, dir: string): boolean {
  if (path === dir) return true;
  // No `${dir}/` built per call: the planner asks this thousands of times.
  return path.startsWith(dir) && (dir === "/" || path.charCodeAt(dir.length) === SLASH);
}

const SLASH = 0x2f;

function isUnder(path: string, dir: string): boolean {
  return path !== dir && isAtOrUnder(path, dir);
}

/** Components of `path` below `dir`: `("/a/b/c", "/a")` → `["b", "c"]`. */
function componentsBelow(path: string, dir: string): string[] {
  const rest = dir === "/" ? path.slice(1) : path.slice(dir.length + 1);
  return rest === "" ? [] : rest.split("/");
}

function depth(path: string): number {
  return path === "/" ? 0 : path.split("/").length - 1;
}

export const realHostFs: HostFs = {
  lstat(path) {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st === undefined) return undefined;
    if (st.isSymbolicLink()) return { kind: "symlink", target: readlinkSync(path) };
    if (st.isDirectory()) return { kind: "dir" };
    if (st.isFile()) return { kind: "file" };
    return { kind: "other" };
  },
  isDirectory(path) {
    return statSync(path, { throwIfNoEntry: false })?.isDirectory();
  },
  readdir(path) {
    return readdirSync(path);
  },
};

type Origin = "read_only" | "read_write" | "workdir" | "tmp" | "identity" | "control" | "injected";

/** Which of two mounts at the same path goes on top: higher ranks are mounted later. */
const RANK: Record<Origin | "special" | "structure" | "explodeEntry", number> = {
  special: -1,
  structure: 0,
  read_only: 0,
  read_write: 0,
  workdir: 0,
  tmp: 0,
  explodeEntry: 1,
  identity: 2,
  control: 2,
  injected: 3,
};

/** A mount the pod must have, before it is resolved into bwrap operations. */
interface MountRequest {
  dest: string;
  /** The path as given, for messages (an injected path may be rewritten through a symlink). */
  asGiven: string;
  origin: Origin;
  writable: boolean;
  isDir: boolean;
  /** The host path bwrap binds. */
  src: string;
  /** Set when `src` is one of the sandbox's own directories, which the prep steps may create in. */
  privateRoot?: { root: string; rel: string[] };
  /** Set when the request is a host symlink to recreate rather than a bind. */
  symlinkTarget?: string;
}

interface BwrapOp {
  dest: string;
  rank: number;
  args: string[];
}

export function planMounts(input: MountPlanInput): MountPlan {
  return new MountPlanner(input).plan();
}

class MountPlanner {
  private readonly fs: HostFs;
  private readonly workdir: string;
  private readonly missing: string[] = [];
  private readonly requests: MountRequest[] = [];
  private readonly ops = new Map<string, BwrapOp>();
  private readonly prep = new Map<string, HostPrepStep>();
  /** Exploded directories: sandbox path → the host directory whose entries it shows. */
  private readonly explodes = new Map<string, string>();
  /** Requests that need no operation: a host symlink already visible through its cover. */
  private readonly dropped = new Set<MountRequest>();

  constructor(private readonly input: MountPlanInput) {
    this.fs = input.fs ?? realHostFs;
    const workdir = normalizeSandboxPath(input.workdir ?? DEFAULT_WORKDIR);
    if (workdir === undefined || workdir === "/") {
      throw filesystemSetupFailed(input.workdir ?? "", "the workdir must be an absolute path below /");
    }
    this.workdir = workdir;
  }

  plan(): MountPlan {
    // The pod's own procfs (its PID namespace) and a minimal /dev (null, zero,
    // full, random, urandom, tty, a private devpts, shm): what policies list
    // under /proc and /dev is satisfied by these.
    this.addOp("/proc", RANK.special, ["--proc", "/proc"]);
    this.addOp("/dev", RANK.special, ["--dev", "/dev"]);
    this.collectRequests();
    for (const request of this.requests) this.resolve(request);
    for (const request of this.requests) this.emitRequest(request);
    this.emitExplodedEntries();

    const { uid, gid, hostname } = this.input;
    const args = [
      // bwrap runs as an unprivileged host uid, so a new user namespace is what
      // gives it the right to mount; the sandbox user maps onto that host uid.
      "--unshare-user",
      "--uid",
      String(uid),
      "--gid",
      String(gid),
      "--unshare-ipc",
      "--unshare-pid",
      "--unshare-net",
      "--unshare-uts",
      "--unshare-cgroup-try",
      // No nested user namespace: it would hand the sandbox user capabilities
      // over a copy of this mount namespace.
      "--disable-userns",
      "--die-with-parent",
      // A new session: the pod has no controlling terminal of the supervisor's,
      // so TIOCSTI cannot push keystrokes into it. The agent allocates its own
      // ptys from the pod's devpts for interactive shells.
      "--new-session",
      "--cap-drop",
      "ALL",
      "--hostname",
      hostname,
      "--clearenv",
    ];
    const ordered = [...this.ops.values()].sort(
      (a, b) => depth(a.dest) - depth(b.dest) || a.rank - b.rank || (a.dest < b.dest ? -1 : 1),
    );
    for (const op of ordered) args.push(...op.args);
    // Non-recursive remounts: the writable binds below stay writable.
    for (const dir of [...this.explodes.keys()].sort()) args.push("--remount-ro", dir);
    args.push("--remount-ro", "/", "--chdir", this.input.chdir ?? this.workdir);

    const injectedDirectories = this.requests
      .filter((r) => r.origin === "injected" && r.isDir && !this.dropped.has(r))
      .map((r) => r.dest);
    return { args, prep: [...this.prep.values()], missing: [...this.missing].sort(), injectedDirectories };
  }

  // ---- requests -----------------------------------------------------------

  private collectRequests(): void {
    const { policy } = this.input;
    // The writability each policy path ends with: read_write wins over read_only.
    const policyPaths = new Map<string, boolean>();
    const addPolicyPath = (given: string, writable: boolean, list: "read_only" | "read_write") => {
      const path = normalizeSandboxPath(given);
      if (path === undefined) {
        throw filesystemSetupFailed(given, `${list} paths must be absolute, without ".."`);
      }
      if (path === "/") {
        throw filesystemSetupFailed(given, wholeFilesystemReason(list));
      }
      if (isAtOrUnder(path, "/proc")) return; // the pod's own procfs, from --proc
      if (isAtOrUnder(path, "/dev")) {
        const entry = componentsBelow(path, "/dev")[0];
        if (entry !== undefined && !DEV_ENTRIES.has(entry)) this.missing.push(path);
        return;
      }
      policyPaths.set(path, writable || (policyPaths.get(path) ?? false));
    };
    for (const p of policy.readOnly) addPolicyPath(p, false, "read_only");
    for (const p of policy.readWrite) addPolicyPath(p, true, "read_write");
    policyPaths.set(this.workdir, policy.includeWorkdir || (policyPaths.get(this.workdir) ?? false));
    // A private /tmp always exists; it is read-only only if the policy says so.
    if (!policyPaths.has(PRIVATE_TMP)) policyPaths.set(PRIVATE_TMP, true);

    // Host symlinks among the read_only paths are recreated as they are;
    // everything planned below one is planned where the symlink leads.
    const symlinks = new Map<string, string>();
    for (const [path, writable] of policyPaths) {
      if (writable || this.privateBacking(path, false) !== undefined) continue;
      const entry = this.lstatInRoot(path);
      if (entry?.kind === "symlink") symlinks.set(path, entry.target);
    }
    const through = (path: string, asGiven: string, reason: SandboxSetupReason) =>
      resolveThroughSymlinks(path, symlinks, () =>
        setupFailed(reason, asGiven, "passes through too many symlinks"),
      );

    const seen = new Map<string, MountRequest>();
    for (const [given, writable] of policyPaths) {
      const dest = through(given, given, "FilesystemSetupFailed");
      const origin = this.policyOrigin(dest, writable);
      const backing = this.privateBacking(dest, writable);
      let request: MountRequest;
      if (backing !== undefined) {
        const src = posix.join(backing.root, ...backing.rel);
        request = {
          dest,
          asGiven: given,
          origin,
          writable,
          isDir: this.fs.lstat(src)?.kind !== "file",
          src,
          privateRoot: backing,
        };
      } else {
        const entry = this.lstatInRoot(dest);
        if (entry === undefined) {
          this.missing.push(given);
          continue;
        }
        const src = this.input.root === undefined ? dest : posix.join(this.input.root, dest);
        request = { dest, asGiven: given, origin, writable: false, isDir: entry.kind === "dir", src };
        if (entry.kind === "symlink") request.symlinkTarget = entry.target;
      }
      const earlier = seen.get(dest);
      // Two policy paths may meet at one place through a symlink: the writable one wins.
      if (earlier !== undefined && (earlier.writable || !request.writable)) continue;
      seen.set(dest, request);
    }
    this.requests.push(...seen.values());

    for (const [given, src] of [
      [PASSWD, this.input.passwdFile],
      [GROUP, this.input.groupFile],
    ] as const) {
      const dest = through(given, given, "FilesystemSetupFailed");
      this.requests.push({ dest, asGiven: given, origin: "identity", writable: false, isDir: false, src });
    }

    for (const bind of this.input.controlBinds) {
      const given = normalizeSandboxPath(bind.dest);
      if (given === undefined || given === "/") {
        throw filesystemSetupFailed(bind.dest, "a control bind needs an absolute destination below /");
      }
      const isDir = this.fs.isDirectory(bind.src);
      if (isDir === undefined) {
        throw filesystemSetupFailed(given, `control bind source ${bind.src} does not exist`);
      }
      const dest = through(given, given, "FilesystemSetupFailed");
      this.requests.push({
        dest,
        asGiven: given,
        origin: "control",
        writable: bind.writable,
        isDir,
        src: bind.src,
      });
    }

    const injected = new Set<string>();
    for (const given of this.input.injectedFiles) {
      const path = normalizeSandboxPath(given);
      if (path === undefined || path === "/") {
        throw fileInjectionFailed(given, "the path must be absolute, below /, without ..");
      }
      const dest = through(path, given, "FileInjectionFailed");
      if (injected.has(dest)) throw fileInjectionFailed(given, "another injected file has the same path");
      injected.add(dest);
      this.requests.push({
        dest,
        asGiven: given,
        origin: "injected",
        writable: false,
        isDir: false,
        src: stagedPath(this.input.dirs.files, path),
      });
    }

    this.checkConflicts();
    this.groupInjectedDirectories();
    // Parents before children, so a request's cover has been resolved first.
    this.requests.sort((a, b) => depth(a.dest) - depth(b.dest) || RANK[a.origin] - RANK[b.origin]);
  }

  /**
   * Injected files in a directory the sandbox would not otherwise have (one
   * the plan creates, on the root tmpfs or under a read-only host bind, with
   * no other mount in it) are bound as that one staged directory, read-only,
   * instead of one bind per file. Nothing in it can be written, chmodded,
   * removed, renamed or added either way, but each bind is a mount bwrap must
   * make, and 256 of them cost more than the rest of the pod's start. Files
   * inside a writable mount (the workspace, /tmp, read_write paths) keep their
   * own binds: the directories around them stay writable.
   */
  private groupInjectedDirectories(): void {
    const injected = this.requests.filter((r) => r.origin === "injected");
    // Staging is by the path as given; one rewritten through a policy symlink would be missing from the group.
    if (injected.some((r) => normalizeSandboxPath(r.asGiven) !== r.dest)) return;
    const others = this.requests.filter((r) => r.origin !== "injected");
    const groups = new Map<string, MountRequest[]>();
    // Files share directories: each is judged once.
    const judged = new Map<string, boolean>();
    const injectedOnly = (dir: string): boolean => {
      const known = judged.get(dir);
      if (known !== undefined) return known;
      const verdict = this.isInjectedOnly(dir, others);
      judged.set(dir, verdict);
      return verdict;
    };
    for (const request of injected) {
      const dir = ancestorsBelow(request.dest, "/").find(injectedOnly);
      if (dir === undefined) continue;
      const members = groups.get(dir);
      if (members) members.push(request);
      else groups.set(dir, [request]);
    }
    if (groups.size === 0) return;
    const grouped = new Set([...groups.values()].flat());
    const kept = this.requests.filter((r) => !grouped.has(r));
    this.requests.length = 0;
    this.requests.push(...kept);
    for (const [dir, members] of groups) {
      this.requests.push({
        dest: dir,
        asGiven: members[0]!.asGiven,
        origin: "injected",
        writable: false,
        isDir: true,
        src: stagedPath(this.input.dirs.files, dir),
      });
    }
  }

  /** Whether `dir` would exist in the sandbox only to hold injected files. */
  private isInjectedOnly(dir: string, others: readonly MountRequest[]): boolean {
    if (others.some((r) => isAtOrUnder(r.dest, dir))) return false;
    let cover: MountRequest | undefined;
    for (const r of others) {
      if (isUnder(dir, r.dest) && (cover === undefined || r.dest.length > cover.dest.length)) cover = r;
    }
    // No cover: the root tmpfs, empty and remounted read-only at the end.
    if (cover === undefined) return true;
    if (cover.writable || cover.privateRoot !== undefined || cover.symlinkTarget !== undefined) return false;
    return this.fs.lstat(posix.join(cover.src, ...componentsBelow(dir, cover.dest))) === undefined;
  }

  /**
   * A `read_only` path as the root shows it: the host's own, or under an
   * image's root, looked up one component at a time so that a symlink on the
   * way (which the host would follow to its own files) makes the path
   * missing rather than leading out of the image.
   */
  private lstatInRoot(path: string): HostEntry | undefined {
    const root = this.input.root;
    if (root === undefined) return this.fs.lstat(path);
    const parts = componentsBelow(path, "/");
    for (let n = 1; n < parts.length; n++) {
      if (this.fs.lstat(posix.join(root, ...parts.slice(0, n)))?.kind !== "dir") return undefined;
    }
    return this.fs.lstat(posix.join(root, ...parts));
  }

  private policyOrigin(dest: string, writable: boolean): Origin {
    if (dest === this.workdir) return "workdir";
    if (dest === PRIVATE_TMP) return "tmp";
    return writable ? "read_write" : "read_only";
  }

  /** The sandbox's own directory behind a policy path, if it has one. */
  private privateBacking(path: string, writable: boolean): { root: string; rel: string[] } | undefined {
    const { workspace, tmp, rwRoot } = this.input.dirs;
    if (isAtOrUnder(path, this.workdir)) return { root: workspace, rel: componentsBelow(path, this.workdir) };
    if (isAtOrUnder(path, PRIVATE_TMP)) return { root: tmp, rel: componentsBelow(path, PRIVATE_TMP) };
    if (writable) return { root: rwRoot, rel: componentsBelow(path, "/") };
    return undefined;
  }

  private checkConflicts(): void {
    const fail = (r: MountRequest, why: string) => setupFailed(reasonOf(r), r.asGiven, why);
    const controlAt = new Map(
      this.requests.filter((r) => r.origin === "control").map((r) => [r.dest, r] as const),
    );
    // By destination: with hundreds of injected files, comparing every pair costs more than the plan.
    const byDest = new Map<string, MountRequest[]>();
    for (const r of this.requests) {
      const same = byDest.get(r.dest);
      if (same) same.push(r);
      else byDest.set(r.dest, [r]);
    }
    for (const r of this.requests) {
      if (r.origin === "injected" || r.origin === "identity" || r.origin === "control") {
        if (isAtOrUnder(r.dest, "/proc") || isAtOrUnder(r.dest, "/dev")) {
          throw fail(r, "/proc and /dev are the pod's own; nothing can be placed there");
        }
      }
      const unplaceable = r.origin === "injected" ? unplaceableFileReason(r.dest) : undefined;
      if (unplaceable !== undefined) throw fail(r, `${r.dest} ${unplaceable}`);
      // The control path at or above r.dest, found by walking up r.dest rather
      // than testing every control against every request.
      for (let at: string = r.dest; ; at = posix.dirname(at)) {
        const c = controlAt.get(at);
        if (c !== undefined && c !== r) throw fail(r, `${c.dest} is reserved for the supervisor`);
        if (at === "/") break;
      }
      for (const other of byDest.get(r.dest)!) {
        if (other === r) continue;
        if (r.origin === "injected" && other.isDir && other.symlinkTarget === undefined) {
          throw fail(r, `the policy makes ${other.dest} a directory`);
        }
      }
    }
  }

  // ---- resolution ---------------------------------------------------------

  /** The request whose mount `path` lies in: the nearest planned ancestor. */
  private coverOf(path: string): MountRequest | undefined {
    let best: MountRequest | undefined;
    for (const r of this.requests) {
      if (!isUnder(path, r.dest) || r.symlinkTarget !== undefined) continue;
      if (best === undefined || r.dest.length > best.dest.length) best = r;
    }
    return best;
  }

  private resolve(request: MountRequest): void {
    if (request.privateRoot !== undefined) this.prepareOwnBacking(request);
    const cover = this.coverOf(request.dest);
    if (cover === undefined) {
      for (const dir of ancestorsBelow(request.dest, "/")) this.addDir(dir);
      return;
    }
    if (!cover.isDir) {
      throw setupFailed(reasonOf(request), request.asGiven, `${cover.dest} is a file, not a directory`);
    }
    if (cover.privateRoot !== undefined) this.resolveInPrivate(request, cover);
    else this.resolveInHost(request, cover);
  }

  /** Creates a private request's own directory (or checks its file) in the sandbox's storage. */
  private prepareOwnBacking(request: MountRequest): void {
    const { root, rel } = request.privateRoot!;
    const { dirs, hostOwner } = this.input;
    const visibleRoot = root === dirs.workspace || root === dirs.tmp;
    this.addPrep({
      kind: "root",
      hostPath: root,
      mode: root === dirs.tmp ? 0o1777 : 0o755,
      owner: visibleRoot ? hostOwner : null,
    });
    for (let i = 1; i <= rel.length; i++) {
      const hostPath = posix.join(root, ...rel.slice(0, i));
      const last = i === rel.length;
      // Directories under rwRoot above a read_write path are not in the pod; leave them to the supervisor.
      const sandboxPath = visibleRoot
        ? posix.join(root === dirs.tmp ? PRIVATE_TMP : this.workdir, ...rel.slice(0, i))
        : `/${rel.slice(0, i).join("/")}`;
      const visible = visibleRoot || this.isPrivateWritable(sandboxPath);
      const common = { hostPath, forPath: request.asGiven, reason: reasonOf(request) };
      if (last && !request.isDir) this.addPrep({ kind: "file", ...common, sandboxPath, owner: hostOwner });
      else {
        const owner = visible ? hostOwner : null;
        this.addPrep({
          kind: "dir",
          ...common,
          sandboxPath: visible ? sandboxPath : null,
          mode: 0o755,
          owner,
        });
      }
    }
  }

  private isPrivateWritable(sandboxPath: string): boolean {
    return this.requests.some(
      (r) => r.writable && r.privateRoot?.root === this.input.dirs.rwRoot && isAtOrUnder(sandboxPath, r.dest),
    );
  }

  /**
   * Under one of the sandbox's own directories: the directories down to the
   * mount point are created on the host (refusing symlinks), and, when the
   * cover is writable, each is bound onto itself so it cannot be renamed away.
   */
  private resolveInPrivate(request: MountRequest, cover: MountRequest): void {
    const parts = componentsBelow(request.dest, cover.dest);
    const reason = reasonOf(request);
    for (let i = 1; i <= parts.length; i++) {
      const hostPath = posix.join(cover.src, ...parts.slice(0, i));
      const sandboxPath = posix.join(cover.dest, ...parts.slice(0, i));
      const common = { hostPath, sandboxPath, forPath: request.asGiven, reason, owner: this.input.hostOwner };
      if (i < parts.length) {
        this.addPrep({ kind: "dir", ...common, mode: 0o755 });
        if (cover.writable) this.addOp(sandboxPath, RANK.structure, ["--bind", hostPath, sandboxPath]);
      } else if (request.symlinkTarget === undefined) {
        this.addPrep(request.isDir ? { kind: "dir", ...common, mode: 0o755 } : { kind: "file", ...common });
      }
    }
  }

  /**
   * Under a read-only bind of a host path: a mount point that exists on the
   * host is used as it is; otherwise the nearest existing directory is
   * exploded so the missing ones can be made on a tmpfs.
   */
  private resolveInHost(request: MountRequest, cover: MountRequest): void {
    const parts = componentsBelow(request.dest, cover.dest);
    const hostAt = (n: number) => posix.join(cover.src, ...parts.slice(0, n));
    const sandboxAt = (n: number) => posix.join(cover.dest, ...parts.slice(0, n));
    const fail = (why: string) => setupFailed(reasonOf(request), request.asGiven, why);

    let existing = 0; // how many leading components exist on the host as real directories
    let needsExplode = false;
    for (let n = 1; n <= parts.length; n++) {
      const entry = this.fs.lstat(hostAt(n));
      const last = n === parts.length;
      if (!last) {
        if (entry?.kind === "dir") {
          existing = n;
          continue;
        }
        if (entry === undefined) {
          needsExplode = true;
          break;
        }
        if (entry.kind === "symlink") {
          throw fail(`${sandboxAt(n)} is a symlink to ${entry.target}; use the path it leads to`);
        }
        throw fail(`${sandboxAt(n)} is a file, not a directory`);
      }
      if (request.symlinkTarget !== undefined && hostAt(n) === request.src) {
        // The host's own symlink, already visible through the cover's bind.
        this.dropped.add(request);
        return;
      }
      if (entry === undefined || entry.kind === "symlink") {
        // A host symlink at the destination is replaced: the request is for this very path.
        needsExplode = true;
      } else if (entry.kind === "dir" && !request.isDir) {
        throw fail(`${sandboxAt(n)} is a directory`);
      } else if (entry.kind !== "dir" && request.isDir) {
        throw fail(`${sandboxAt(n)} is a file, not a directory`);
      }
    }
    if (!needsExplode) return;

    const exploded = sandboxAt(existing);
    this.explodes.set(exploded, hostAt(existing));
    if (exploded !== cover.dest) this.addOp(exploded, RANK.structure, ["--tmpfs", exploded]);
    for (let n = existing + 1; n < parts.length; n++) this.addDir(sandboxAt(n));
  }

  // ---- emission -----------------------------------------------------------

  private emitRequest(request: MountRequest): void {
    if (this.dropped.has(request)) return;
    const { dest } = request;
    if (request.symlinkTarget !== undefined) {
      this.addOp(dest, RANK[request.origin], ["--symlink", request.symlinkTarget, dest]);
    } else if (this.explodes.has(dest)) {
      this.addOp(dest, RANK[request.origin], ["--tmpfs", dest]);
    } else {
      const bind = request.writable ? "--bind" : "--ro-bind";
      this.addOp(dest, RANK[request.origin], [bind, request.src, dest], `${request.origin}:${dest}`);
    }
  }

  /**
   * Each exploded tmpfs shows its host directory's entries, except where the
   * plan mounts something else (an entry on the way to a planned path is a
   * real directory, or resolution would have refused or exploded it).
   */
  private emitExplodedEntries(): void {
    const planned = new Set([...this.ops.values()].map((op) => op.dest));
    for (const [dir, hostDir] of this.explodes) {
      for (const name of this.fs.readdir(hostDir).sort()) {
        const dest = posix.join(dir, name);
        if (planned.has(dest)) continue;
        const hostPath = posix.join(hostDir, name);
        const entry = this.fs.lstat(hostPath);
        if (entry === undefined) continue;
        this.addOp(
          dest,
          RANK.explodeEntry,
          entry.kind === "symlink" ? ["--symlink", entry.target, dest] : ["--ro-bind", hostPath, dest],
        );
      }
    }
  }

  private addDir(dest: string): void {
    this.addOp(dest, RANK.structure, ["--dir", dest]);
  }

  /** Ops are keyed by destination, or by `key` where several stack at one destination. */
  private addOp(dest: string, rank: number, args: string[], key = dest): void {
    if (!this.ops.has(key)) this.ops.set(key, { dest, rank, args });
  }

  private addPrep(step: HostPrepStep): void {
    if (!this.prep.has(step.hostPath)) this.prep.set(step.hostPath, step);
  }
}

function reasonOf(request: MountRequest): SandboxSetupReason {
  return request.origin === "injected" ? "FileInjectionFailed" : "FilesystemSetupFailed";
}

/** Directories strictly between `dir` and `path`: `("/a/b/c", "/")` → `["/a", "/a/b"]`. */
function ancestorsBelow(path: string, dir: string): string[] {
  const parts = componentsBelow(path, dir);
  const ancestors: string[] = [];
  let current = dir === "/" ? "" : dir;
  for (const part of parts.slice(0, -1)) {
    current = `${current}/${part}`;
    ancestors.push(current);
  }
  return ancestors;
}

/** `path` as the pod resolves it through the planned symlinks above it. */
function resolveThroughSymlinks(path: string, symlinks: Map<string, string>, tooMany: () => Error): string {
  let current = path;
  for (let hops = 0; hops < 40; hops++) {
    let link: string | undefined;
    for (const candidate of symlinks.keys()) {
      if (isUnder(current, candidate) && (link === undefined || candidate.length > link.length))
        link = candidate;
    }
    if (link === undefined) return current;
    const target = symlinks.get(link)!;
    const base = posix.isAbsolute(target) ? target : posix.join(posix.dirname(link), target);
    current = normalizeSandboxPath(posix.join(base, ...componentsBelow(current, link))) ?? current;
  }
  throw tooMany();
}

// ---- host preparation -------------------------------------------------------

/**
 * Creates the host directories and mount-point files the plan needs, refusing
 * to follow a symlink anywhere below the sandbox's own roots: the sandbox
 * writes those trees, and a symlink planted there on an earlier run would
 * otherwise steer a mount (or a root-owned mkdir) out of them.
 */
export async function applyHostPrep(steps: readonly HostPrepStep[]): Promise<void> {
  // Synchronous on purpose (see host-fs.ts): nothing else runs meanwhile.
  for (const step of steps) {
    if (step.kind === "root") {
      mkdirSync(step.hostPath, { recursive: true, mode: step.mode });
      if (!lstatSync(step.hostPath).isDirectory()) {
        throw filesystemSetupFailed(step.hostPath, "the sandbox's storage directory is not a directory");
      }
      ownDirectory(step.hostPath, step.owner, step.mode);
      continue;
    }
    const fail = (why: string) =>
      setupFailed(step.reason, step.forPath, `${step.sandboxPath ?? step.hostPath} ${why}`);
    const st = lstatIfExists(step.hostPath);
    if (st?.isSymbolicLink()) throw fail("is a symlink; refusing to mount through it");
    if (step.kind === "dir") {
      if (st === undefined) {
        mkdirSync(step.hostPath, { mode: step.mode });
        ownDirectory(step.hostPath, step.owner, step.mode);
      } else if (!st.isDirectory()) {
        throw fail("exists and is not a directory");
      }
    } else if (st === undefined) {
      // An empty placeholder for bwrap to mount onto; the pod never sees it.
      const fd = openSync(
        step.hostPath,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        DEFAULT_FILE_MODE,
      );
      try {
        if (step.owner !== null) fchownSync(fd, step.owner.uid, step.owner.gid);
      } finally {
        closeSync(fd);
      }
    } else if (st.isDirectory()) {
      throw fail("is a directory");
    } else if (!st.isFile()) {
      throw fail("exists and is not a regular file");
    }
  }
}
