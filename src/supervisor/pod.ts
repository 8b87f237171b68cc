// Starting a sandbox's bubblewrap pod: its private directories, the staged
// injected files, the generated passwd/group, the mount plan, and the agent
// as the pod's first process.
//
// The agent is node running our own code, so the pod carries its own copy of
// what node needs under /run/openshell (the node binary, the shared libraries
// it links, our dist/ and node_modules/), bound read-only and started through
// the dynamic loader: the agent works whatever the policy hides.
//
// When the supervisor is root, bwrap runs as the sandbox's own unprivileged
// host uid. Such a uid may not be able to reach the sandbox's directories
// (the state directory is usually under /root, mode 0700), so the pod is
// started from a private mount namespace in which root has bound them under
// a traversable tmpfs first.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join, posix } from "node:path";
import { promisify } from "node:util";
import { messageOf } from "../core/errors.js";
import { normalizeSandboxPath } from "../core/files.js";
import { defaultPolicy } from "../core/policy.js";
import { TRANSFER_TOOL_ENV } from "../core/protocol.js";
import { shellEscape } from "../core/shell.js";
import { signalName } from "../core/signals.js";
import type { SandboxFile } from "../gen/openshell.js";
import type { FilesystemPolicy, SandboxPolicy } from "../gen/sandbox.js";
import { lstatIfExists, orElse } from "../host/fs.js";
import { parseDenyList, type SupervisorLaunch } from "../runtime/contract.js";
import { type GuestDisk, mountGuestDisk } from "../runtime/guest-disk.js";
import { resolveInImage } from "../runtime/image-tree.js";
import { sharedMemoryStaging } from "../runtime/staging.js";
import { POD_FORWARD_SOCKET, POD_SSH_SOCKET } from "../transport/unix.js";
import {
  AGENT_BEAT_MS,
  AGENT_SILENCE_MS,
  type AgentChannelDrop,
  type AgentConfig,
  type AgentMessage,
  AgentMessageDecoder,
  BoundedLineReader,
} from "./agent/channel.js";
import { EGRESS_PROXY_PORT, proxyEnvironment } from "./agent/egress.js";
import { executeOnlyLoader } from "./agent-guard.js";
import { EgressPolicy } from "./egress/match.js";
import { type EgressLogLevel, type EgressProxy, egressPolicyFor, startEgressProxy } from "./egress/proxy.js";
import { prepareStaging } from "./inject.js";
import { applyHostPrep, type ControlBind, type HostOwner, planMounts } from "./mounts.js";
import { SeccompError, seccompProgram, seccompSpec } from "./seccomp.js";
import { isSandboxSetupError } from "./setup-errors.js";

export type { AgentConfig, AgentMessage } from "./agent/channel.js";

export class PodError extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

const execFileAsync = promisify(execFile);

export const CONTROL_ROOT = "/run/openshell";
const SANDBOX_UID = 1000;
const WORKDIR = "/sandbox";
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** Where the pod's tmpfs of re-exposed host directories goes in the private mount namespace. */
const EXPOSE_AT = "/mnt";
/** The descriptor bubblewrap gets the compiled seccomp filter on. */
const SECCOMP_FD = 3;
/** Where the egress proxy's socket directory appears in the pod. */
const EGRESS_DIR = `${CONTROL_ROOT}/egress`;

function identity(value: string | undefined, fallback: number): number {
  if (value === undefined || value === "" || value === "sandbox") return fallback;
  return Number(value);
}

export interface NodeClosure {
  /** The node binary the agent runs. */
  node: string;
  loader: string;
  libraries: string[];
  /** The compiled default seccomp filter(s) shipped beside it (a bundle's), looked in before compiling. */
  prebuiltSeccomp?: string | undefined;
  /** A bundle's GNU tar and realpath for uploads and downloads (see transferTools), by name. */
  transfer?: Record<string, LinkedProgram> | undefined;
  /** A directory holding the programs a pod is started with (bwrap, setpriv, unshare, mount), used instead of the system's. */
  tools?: string | undefined;
}

/**
 * What a supervisor bundle (scripts/bundle.mjs) records in its `bundle.json`:
 * paths relative to the bundle's root, which is also the supervisor's app root.
 */
export interface BundleManifest {
  version: string;
  arch: string;
  node: string;
  loader: string;
  libraries: string[];
  seccomp: string;
  tools: string;
  transfer: Record<string, LinkedProgram>;
}

/** The file at the root of a supervisor bundle that describes it. */
export const BUNDLE_MANIFEST = "bundle.json";

/**
 * The node binary with its shared libraries and dynamic loader: from the
 * bundle's manifest when the supervisor runs from one (started through the
 * bundle's loader, node's own path is not process.execPath there), else from
 * ldd. A spare supervisor asks while it waits for its sandbox, so a create
 * does not wait for ldd; a failure is reported when the pod is started.
 */
export async function nodeClosure(appRoot?: string): Promise<NodeClosure> {
  const manifestPath = appRoot === undefined ? undefined : join(appRoot, BUNDLE_MANIFEST);
  if (manifestPath !== undefined && existsSync(manifestPath)) {
    const manifest = await podStep(
      "RuntimeUnavailable",
      `cannot read the supervisor bundle's ${manifestPath}`,
      () => JSON.parse(readFileSync(manifestPath, "utf8")) as BundleManifest,
    );
    const at = (path: string): string => join(appRoot!, path);
    return {
      node: at(manifest.node),
      loader: at(manifest.loader),
      libraries: manifest.libraries.map(at),
      prebuiltSeccomp: at(manifest.seccomp),
      tools: at(manifest.tools),
      transfer: Object.fromEntries(
        Object.entries(manifest.transfer).map(([tool, program]) => [
          tool,
          { path: at(program.path), libraries: program.libraries.map(at) },
        ]),
      ),
    };
  }
  const { stdout } = await podStep("RuntimeUnavailable", "cannot list node's libraries with ldd", () =>
    execFileAsync("ldd", [process.execPath], { encoding: "utf8" }),
  );
  return { node: process.execPath, ...parseLdd(stdout) };
}

/** `step()`, a failure of which becomes a PodError of `reason` saying `what` could not be done. */
async function podStep<T>(reason: string, what: string, step: () => T | Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (error) {
    throw new PodError(reason, `${what}: ${messageOf(error)}`);
  }
}

/** A program a pod runs from its control path, with the shared libraries it links. */
export interface LinkedProgram {
  path: string;
  libraries: string[];
}

/** The host's own `tool` and its libraries from ldd; undefined when it has none, or ldd cannot list them. */
async function hostTool(tool: string): Promise<LinkedProgram | undefined> {
  const path = [`/usr/bin/${tool}`, `/bin/${tool}`].find((candidate) => existsSync(candidate));
  if (!path) return undefined;
  const output = await execFileAsync("ldd", [path], { encoding: "utf8" }).then(
    ({ stdout }) => stdout,
    () => undefined,
  );
  return output === undefined ? undefined : { path, libraries: parseLdd(output).libraries };
}

/**
 * What upload and download run in a sandbox besides its shell: GNU tar and
 * coreutils' realpath. An image may lack them (busybox has neither GNU
 * version), so an image's pod, and any pod of a supervisor bundle (whose
 * root is whatever image its container runs), gets the bundle's or the
 * host's from the control path, each run through the control path's loader
 * and libraries; the transfer commands use them through OPENSHELL_TAR and
 * OPENSHELL_REALPATH. Without them the sandbox's own tools serve.
 */
async function transferTools(
  closure: NodeClosure,
): Promise<{ binds: ControlBind[]; env: Record<string, string> }> {
  const binds: ControlBind[] = [];
  const env: Record<string, string> = {};
  const bound = new Set(closure.libraries.map((lib) => basename(lib)));
  bound.add(basename(closure.loader));
  for (const [tool, variable] of Object.entries(TRANSFER_TOOL_ENV)) {
    const found = closure.transfer?.[tool] ?? (await hostTool(tool));
    if (!found) continue;
    for (const lib of found.libraries) {
      if (bound.has(basename(lib))) continue;
      bound.add(basename(lib));
      binds.push({ src: lib, dest: `${CONTROL_ROOT}/lib/${basename(lib)}`, writable: false });
    }
    binds.push({ src: found.path, dest: `${CONTROL_ROOT}/tools/${tool}`, writable: false });
    env[variable] =
      `${CONTROL_ROOT}/lib/${basename(closure.loader)} --library-path ${CONTROL_ROOT}/lib ${CONTROL_ROOT}/tools/${tool}`;
  }
  return { binds, env };
}

/** The libraries and loader `ldd` lists for a program. */
export function parseLdd(output: string): { loader: string; libraries: string[] } {
  const libraries: string[] = [];
  let loader = "";
  for (const line of output.split("\n")) {
    const arrow = /=>\s+(\/\S+)/.exec(line);
    if (arrow) libraries.push(arrow[1]!);
    else {
      const bare = /^\s*(\/\S+)\s+\(/.exec(line);
      if (bare) loader = bare[1]!;
    }
  }
  if (!loader) throw new PodError("RuntimeUnavailable", "cannot find node's dynamic loader with ldd");
  return { loader, libraries };
}

/** What every pod of this host shares, made once and kept in the gateway's pod-support directory. */
export interface PodSupport {
  /** The agent's dynamic loader, execute-only (see agent-guard.ts). */
  loader: string;
  /** The compiled seccomp filter (see seccomp.ts). */
  seccomp: string;
}

/**
 * Makes (or finds) the pod support in `dir`. `denyText` is the gateway's
 * OPENSHELL_SECCOMP_DENY. Rejects with a PodError naming what is missing.
 */
export async function podSupport(
  dir: string,
  closure: Promise<NodeClosure>,
  denyText: string | undefined,
): Promise<PodSupport> {
  let spec: ReturnType<typeof seccompSpec>;
  try {
    spec = seccompSpec(parseDenyList(denyText));
  } catch (error) {
    throw new PodError("SeccompFilterInvalid", (error as Error).message);
  }
  const { loader, prebuiltSeccomp } = await closure;
  const copy = await podStep(
    "RuntimeUnavailable",
    `cannot make the agent's execute-only loader in ${dir}`,
    () => executeOnlyLoader(dir, loader),
  );
  try {
    return { loader: copy, seccomp: await seccompProgram(dir, spec, { prebuilt: prebuiltSeccomp }) };
  } catch (error) {
    if (error instanceof SeccompError) throw new PodError(error.reason, error.message);
    throw error;
  }
}

function writeIdentityFiles(
  dir: string,
  uid: number,
  gid: number,
  shell: string,
): { passwd: string; group: string } {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const passwd = join(dir, "passwd");
  const group = join(dir, "group");
  writeFileSync(
    passwd,
    [
      "root:x:0:0:root:/root:/usr/sbin/nologin",
      `sandbox:x:${uid}:${gid}:sandbox:${WORKDIR}:${shell}`,
      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
      "",
    ].join("\n"),
    { mode: 0o644 },
  );
  writeFileSync(group, ["root:x:0:", `sandbox:x:${gid}:`, "nogroup:x:65534:", ""].join("\n"), {
    mode: 0o644,
  });
  chmodSync(passwd, 0o644);
  chmodSync(group, 0o644);
  return { passwd, group };
}

/** Top-level directories a merged-/usr host keeps as symlinks into /usr. */
const ROOT_LINKS = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

function covers(paths: readonly string[], path: string): boolean {
  return paths.some((p) => path === p || path.startsWith(p.endsWith("/") ? p : `${p}/`));
}

/**
 * Policies written for container images list `/usr` and `/lib` but not
 * `/lib64`, which images carry in their own root. On a merged-/usr host that
 * is a symlink to `usr/lib64` and holds the ELF interpreter every program
 * needs, so each such root symlink whose target the policy already shows is
 * recreated (a symlink, not a bind: it grants nothing the policy does not).
 */
export function withRootLinks(fs: FilesystemPolicy): FilesystemPolicy {
  const visible = [...fs.readOnly, ...fs.readWrite];
  const extra: string[] = [];
  for (const link of ROOT_LINKS) {
    if (covers(visible, link)) continue;
    const target = orElse(undefined, () => readlinkSync(link));
    if (target === undefined) continue;
    const resolved = posix.resolve("/", target);
    if (covers(visible, resolved)) extra.push(link);
  }
  return extra.length === 0 ? fs : { ...fs, readOnly: [...fs.readOnly, ...extra] };
}

/** The injected files: their paths to plan with, their content when staging needs it. */
export interface InjectedFileSource {
  paths: readonly string[];
  /** Every file with its content, in `paths` order; rejects with a FileInjectionFailed error when it cannot. */
  load(): Promise<SandboxFile[]>;
}

export interface PodOptions {
  launch: SupervisorLaunch;
  policy: SandboxPolicy | undefined;
  files: InjectedFileSource;
  /** Each valid message from the agent but its beats (see agent/channel.ts). */
  onAgent(message: AgentMessage): void;
  /**
   * A promise while the log cannot take more (the agent's channel is not
   * read until it settles), or undefined.
   */
  logBackpressure?(): Promise<void> | undefined;
  /** The agent fell silent for AGENT_SILENCE_MS (false), or spoke again (true). */
  onAgentLiveness?(responsive: boolean, detail: string): void;
  onProgress(step: string, detail: string): void;
  onWarning(message: string): void;
  /** The egress proxy's decisions, for the sandbox log; `diag` when absent. */
  onNetworkLog?(level: EgressLogLevel, message: string): void;
  diag(line: string): void;
  /** From nodeClosure(), started early. */
  closure: Promise<NodeClosure>;
  /** From podSupport(), started early. */
  support: Promise<PodSupport>;
  /** From prepareGuestDisk(launch), started early; undefined when the pod has none. */
  disk?: Promise<GuestDisk> | undefined;
}

export interface Pod {
  sshSocket: string;
  /** The agent's socket for TCP forwards to the pod's loopback (transport/pod-forward.ts). */
  forwardSocket: string;
  exited: Promise<string>;
  /**
   * Puts a policy's network rules in force for new connections (a live
   * update); what it cannot do without a restart is for the caller to have
   * refused (core/policy/live.ts). Throws when the pod has no egress proxy.
   */
  setNetworkPolicy(policy: SandboxPolicy): void;
  stop(): Promise<void>;
}

/** Top-level entries of an image's root the pod does not show from the image: its own mounts take those places. */
const IMAGE_HIDDEN = new Set(["proc", "dev", "sandbox", "tmp"]);

/**
 * An image's filesystem policy: every top-level entry of its root read-only
 * (the image is the sandbox's whole system, as in a container), with the
 * policy's writable paths and workspace as given.
 */
function imagePolicy(fs: FilesystemPolicy, imageRoot: string): FilesystemPolicy {
  const entries = readdirSync(imageRoot).filter((name) => !IMAGE_HIDDEN.has(name));
  return { ...fs, readOnly: entries.map((name) => `/${name}`) };
}

/**
 * The uid and gid an image's User names: `uid[:gid]`, or a name in the
 * image's own /etc/passwd (read only when neither /etc nor the file is a
 * link, which would be the host's). Undefined for none, root, or a name it
 * does not have.
 */
export function imageIdentity(imageRoot: string, user: string): { uid: number; gid: number } | undefined {
  const [name, group] = user.split(":");
  let uid: number | undefined;
  let gid: number | undefined;
  if (name !== undefined && /^\d{1,9}$/.test(name)) uid = Number(name);
  else if (name) {
    const etc = join(imageRoot, "etc");
    const passwd = join(etc, "passwd");
    const file = lstatIfExists(passwd);
    // An image's file, read only when it is a plain file of a sane size.
    if (lstatIfExists(etc)?.isDirectory() && file?.isFile() && file.size <= 1024 * 1024) {
      const line = readFileSync(passwd, "utf8")
        .split("\n")
        .find((entry) => entry.split(":")[0] === name);
      const fields = line?.split(":");
      if (fields && /^\d{1,9}$/.test(fields[2] ?? "")) {
        uid = Number(fields[2]);
        gid = /^\d{1,9}$/.test(fields[3] ?? "") ? Number(fields[3]) : uid;
      }
    }
  }
  if (group !== undefined && /^\d{1,9}$/.test(group)) gid = Number(group);
  if (uid === undefined || uid === 0) return undefined;
  return { uid, gid: gid ?? uid };
}

/**
 * Fills a new sandbox's workspace from its image's `/sandbox`, once: the
 * image's tree copied as it is (links stay links, never followed), then
 * given to the pod's host owner.
 */
async function seedWorkspace(imageRoot: string, workspace: string, marker: string, owner: HostOwner | null) {
  const seed = join(imageRoot, "sandbox");
  if (existsSync(marker) || !lstatIfExists(seed)?.isDirectory()) return;
  const failed = "cannot seed the workspace from the image's /sandbox";
  await podStep("WorkspaceSeedFailed", failed, () =>
    execFileAsync("cp", ["-a", "--no-dereference", `${seed}/.`, `${workspace}/`]),
  );
  if (owner) {
    await podStep("WorkspaceSeedFailed", failed, () =>
      execFileAsync("chown", ["-R", "--no-dereference", `${owner.uid}:${owner.gid}`, workspace]),
    );
  }
  writeFileSync(marker, "");
}

export async function startPod(o: PodOptions): Promise<Pod> {
  const { launch } = o;
  const policy = o.policy ?? defaultPolicy();
  const root = process.getuid?.() === 0;
  const dir = launch.sandboxDir;
  // Injected files are staged on /dev/shm when it can take them (see src/runtime/staging.ts).
  const shm =
    o.files.paths.length > 0
      ? sharedMemoryStaging(launch.sandboxId, root ? launch.hostGid : null)
      : undefined;
  // Everything the pod may write goes on its own bounded filesystem when the
  // supervisor can mount one (see guest-disk.ts), else in its state directory.
  const disk = await (o.disk ?? prepareGuestDisk(launch));
  const storage = disk?.root ?? dir;
  if (disk && launch.reownFrom) {
    await reown(storage, launch.reownFrom, launch).catch(async (error: unknown) => {
      await disk.unmount().catch(() => {});
      throw error;
    });
  }
  const dirs = {
    workspace: join(storage, "workspace"),
    tmp: join(storage, "tmp"),
    rwRoot: join(storage, "rw"),
    files: shm?.root ?? join(dir, "files"),
  };
  const removeStaging = (): void => {
    if (shm) rmSync(shm.dir, { recursive: true, force: true });
  };
  const runDir = join(storage, "run");
  const imageRoot = launch.imageRoot === "" ? undefined : launch.imageRoot;
  const fromImage = imageRoot ? imageIdentity(imageRoot, launch.imageUser) : undefined;
  const uid = identity(policy.process?.runAsUser, fromImage?.uid ?? SANDBOX_UID);
  const gid = identity(
    policy.process?.runAsGroup,
    fromImage && policy.process?.runAsUser === undefined
      ? fromImage.gid
      : uid === SANDBOX_UID
        ? SANDBOX_UID
        : uid,
  );
  const hostOwner = root ? { uid: launch.hostUid, gid: launch.hostGid } : null;
  // An image may have no bash (a busybox image), nor the root of a pod's: its sh then.
  const shell = resolveInImage(imageRoot ?? "/", "/bin/bash") === undefined ? "/bin/sh" : "/bin/bash";
  let egress: EgressProxy | undefined;

  try {
    const injected = o.files.paths;
    if (injected.length > 0) o.onProgress("InjectingFiles", `Writing ${injected.length} injected file(s)`);
    const staging = prepareStaging(dirs.files, {
      uid: process.getuid?.() ?? 0,
      gid: process.getgid?.() ?? 0,
    });
    let loaded = false;
    const load = async (): Promise<void> => {
      if (loaded) return;
      loaded = true;
      staging.add(await o.files.load());
    };
    const { passwd, group } = writeIdentityFiles(join(dir, "etc"), uid, gid, shell);
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    if (disk) linkRunDir(join(dir, "run"), runDir);
    const closure = await o.closure;
    const support = await o.support;
    const tools = imageRoot || closure.transfer ? await transferTools(closure) : { binds: [], env: {} };
    // With network rules, the proxy's socket directory goes into the pod read-only:
    // the pod can connect to the socket but not replace it.
    const egressPolicy = egressPolicyFor(policy);
    if (egressPolicy !== undefined) {
      // An endpoint that grants nothing here is accepted (upstream enforces it), but said at create.
      for (const warning of egressPolicy.warnings) o.onWarning(warning);
      egress = await startEgressProxy({
        socketPath: join(dir, "egress", "proxy.sock"),
        policy: egressPolicy,
        owner: hostOwner,
        log: o.onNetworkLog ?? ((_level, message) => o.diag(message)),
      });
    }
    const controlBinds: ControlBind[] = [
      { src: closure.node, dest: `${CONTROL_ROOT}/bin/node`, writable: false },
      // The file the kernel execs for the agent: execute-only, so the agent is non-dumpable.
      { src: support.loader, dest: `${CONTROL_ROOT}/lib/${basename(closure.loader)}`, writable: false },
      ...closure.libraries.map((lib) => ({
        src: lib,
        dest: `${CONTROL_ROOT}/lib/${basename(lib)}`,
        writable: false,
      })),
      { src: join(launch.appRoot, "dist"), dest: `${CONTROL_ROOT}/app/dist`, writable: false },
      {
        src: join(launch.appRoot, "node_modules"),
        dest: `${CONTROL_ROOT}/app/node_modules`,
        writable: false,
      },
      { src: runDir, dest: `${CONTROL_ROOT}/run`, writable: true },
      ...(egress ? [{ src: dirname(egress.socketPath), dest: EGRESS_DIR, writable: false }] : []),
      ...tools.binds,
    ];
    const plan = planMounts({
      // A policy without a filesystem section gets the default one, as
      // OpenShell's supervisor fills in a baseline.
      policy: imageRoot
        ? imagePolicy(policy.filesystem ?? defaultPolicy().filesystem!, imageRoot)
        : withRootLinks(policy.filesystem ?? defaultPolicy().filesystem!),
      workdir: WORKDIR,
      ...(imageRoot ? { root: imageRoot } : {}),
      ...(launch.workingDir ? { chdir: launch.workingDir } : {}),
      dirs,
      injectedFiles: injected,
      passwdFile: passwd,
      groupFile: group,
      controlBinds,
      uid,
      gid,
      hostOwner,
      hostname: launch.sandboxName,
    });
    if (plan.missing.length > 0) {
      const message = `policy paths not present on this host: ${plan.missing.join(", ")}`;
      if (policy.landlock?.compatibility === "hard_requirement") {
        throw new PodError(
          "FilesystemPolicyUnenforceable",
          `${message} (landlock.compatibility is hard_requirement)`,
        );
      }
      o.onWarning(message);
    }
    // What bwrap binds must exist before it starts: each file bound on its
    // own, and each directory bound whole. The files in those directories are
    // read and written while the pod boots, before the agent is told to run
    // anything.
    const inDirectory = (path: string | undefined) =>
      path !== undefined && plan.injectedDirectories.some((dir) => path.startsWith(`${dir}/`));
    for (const dir of plan.injectedDirectories) staging.directory(dir);
    if (!injected.every((path) => inDirectory(normalizeSandboxPath(path)))) {
      await load();
      staging.write((path) => !inDirectory(path));
    }
    await applyHostPrep([...plan.prep, { kind: "root", hostPath: runDir, mode: 0o700, owner: hostOwner }]);
    if (imageRoot) await seedWorkspace(imageRoot, dirs.workspace, join(storage, "image-seeded"), hostOwner);
    return await launchPod(
      o,
      plan.args,
      closure,
      support,
      root,
      egress,
      disk?.root,
      async () => {
        removeStaging();
        await disk?.unmount();
      },
      async () => {
        await load();
        staging.write();
      },
      shell,
      tools.env,
    );
  } catch (error) {
    await egress?.close();
    removeStaging();
    await disk
      ?.unmount()
      .catch((unmountError: unknown) => o.diag(`guest disk: ${(unmountError as Error).message}`));
    if (error instanceof PodError) throw error;
    if (isSandboxSetupError(error)) throw new PodError(error.reason, error.message);
    throw error;
  }
}

/**
 * Mounts the sandbox's own filesystem when the supervisor can (root) and the
 * launch sizes one; started as soon as the launch is read, so that the mount
 * overlaps fetching the configuration.
 */
export function prepareGuestDisk(launch: SupervisorLaunch): Promise<GuestDisk> | undefined {
  if (process.getuid?.() !== 0 || launch.diskBytes === 0) return undefined;
  return podStep("GuestDiskFailed", "cannot mount the sandbox's filesystem", () =>
    mountGuestDisk({ sandboxId: launch.sandboxId, sandboxDir: launch.sandboxDir, bytes: launch.diskBytes }),
  );
}

/**
 * Gives the sandbox's files to its new host ids. `-h` changes a symlink
 * itself, never what it points to: the sandbox made those links.
 */
async function reown(
  storage: string,
  from: { uid: number; gid: number },
  launch: SupervisorLaunch,
): Promise<void> {
  const owner = `${launch.hostUid}:${launch.hostGid}`;
  await podStep("GuestDiskFailed", "cannot give the sandbox's files to its new uid", () =>
    execFileAsync("chown", ["-R", "-h", `--from=${from.uid}:${from.gid}`, owner, storage]),
  );
}

/**
 * The gateway reaches the pod's SSH socket at `<sandbox dir>/run`: with a
 * guest disk that is a symlink to the run directory on it. The sandbox
 * directory is root's alone, so the pod cannot change where it leads.
 */
function linkRunDir(link: string, target: string): void {
  try {
    const st = lstatSync(link);
    if (st.isSymbolicLink() && readlinkSync(link) === target) return;
    rmSync(link, { recursive: true, force: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  symlinkSync(target, link);
}

async function launchPod(
  o: PodOptions,
  planArgs: string[],
  closure: NodeClosure,
  support: PodSupport,
  root: boolean,
  egress: EgressProxy | undefined,
  /** The sandbox's mounted filesystem, when it has one (root only). */
  diskRoot: string | undefined,
  /** Removes what the pod was given that outlives it (the files' staging on /dev/shm, the disk's mount). */
  cleanUp: () => Promise<void>,
  /** Runs once bwrap is started, before the agent gets its configuration; a throw stops the pod. */
  beforeAgent: () => Promise<void>,
  /** The shell of exec and connect: bash, or an image's sh when it has no bash. */
  shell: string,
  /** Variables every process of the pod gets after the sandbox's own (the transfer tools). */
  toolEnv: Record<string, string>,
): Promise<Pod> {
  const { launch } = o;
  const agent = [
    `${CONTROL_ROOT}/lib/${basename(closure.loader)}`,
    "--library-path",
    `${CONTROL_ROOT}/lib`,
    `${CONTROL_ROOT}/bin/node`,
    `${CONTROL_ROOT}/app/dist/agent.mjs`,
  ];
  const bwrapArgs = [
    ...planArgs,
    // bubblewrap's PID 1 holds the agent's channel on its stdio and is
    // dumpable: its /proc entry is covered (see agent-guard.ts).
    ...(planArgs.includes("--proc") ? ["--tmpfs", "/proc/1", "--remount-ro", "/proc/1"] : []),
    ...(planArgs.includes("--dev") && launch.shmBytes > 0
      ? ["--perms", "1777", "--size", String(launch.shmBytes), "--tmpfs", "/dev/shm"]
      : []),
    "--seccomp",
    String(SECCOMP_FD),
    "--setenv",
    "PATH",
    PATH,
    "--setenv",
    "LANG",
    "C.UTF-8",
    "--",
    ...agent,
  ];
  let command: string;
  let args: string[];
  // A bundle's own programs by their paths: an image's busybox shell runs its
  // own applets (whose setpriv has no --reuid) before anything on PATH.
  const program = (name: string): string => (closure.tools ? join(closure.tools, name) : name);
  const mount = shellEscape(program("mount"));
  if (root) {
    // Re-expose the sandbox directory and the app under a tmpfs that the pod's
    // uid can traverse, in a mount namespace of this pod's own.
    const sandboxAt = `${EXPOSE_AT}/sandbox`;
    const appAt = `${EXPOSE_AT}/app`;
    const supportAt = `${EXPOSE_AT}/support`;
    const diskAt = `${EXPOSE_AT}/disk`;
    const exposed: [string, string][] = [
      [dirname(support.loader), supportAt],
      [launch.sandboxDir, sandboxAt],
      [launch.appRoot, appAt],
      ...(diskRoot ? [[diskRoot, diskAt] as [string, string]] : []),
      // The image's root, in the gateway's state directory that only root may traverse.
      ...(launch.imageRoot ? [[launch.imageRoot, `${EXPOSE_AT}/image`] as [string, string]] : []),
    ];
    const rewrite = (arg: string): string => {
      for (const [from, to] of exposed) {
        if (arg === from) return to;
        if (arg.startsWith(`${from}/`)) return to + arg.slice(from.length);
      }
      return arg;
    };
    command = program("unshare");
    args = [
      "--mount",
      // A slave of the host's mounts, so that another sandbox's disk unmounted
      // on the host is unmounted here too (see guest-disk.ts).
      "--propagation",
      "slave",
      "--",
      "/bin/sh",
      "-ec",
      [
        // An image (a pod's) may have no /mnt.
        `mkdir -p ${EXPOSE_AT}`,
        `${mount} -t tmpfs -o mode=0755,size=64k openshell-pod ${EXPOSE_AT}`,
        ...exposed.map(([, to], index) => `mkdir ${to}\n${mount} --bind "$${index + 1}" ${to}`),
        `shift ${exposed.length}`,
        'exec "$@"',
      ].join("\n"),
      "openshell-pod",
      ...exposed.map(([from]) => from),
      program("setpriv"),
      `--reuid=${launch.hostUid}`,
      `--regid=${launch.hostGid}`,
      "--clear-groups",
      "--",
      program("bwrap"),
      ...bwrapArgs.map(rewrite),
    ];
  } else {
    command = program("bwrap");
    args = bwrapArgs;
  }
  // bubblewrap reads the filter from this descriptor and closes it before anything of the sandbox runs.
  const filter = await podStep("SeccompUnavailable", "cannot open the seccomp filter", () =>
    openSync(support.seccomp, "r"),
  );
  if (launch.cgroupProcs && launch.cgroupProcs.length > 0) {
    // The pod's first process joins the sandbox's control groups before it
    // becomes the pod, so every process of the sandbox is bounded and counted.
    args = ["-c", JOIN_CGROUPS, "openshell-join", ...launch.cgroupProcs, "--", command, ...args];
    command = "/bin/sh";
  }
  // The sandbox's exec group, the sandbox uid's to make groups in, open for the agent (fd 4).
  let groups: number | undefined;
  if (launch.execCgroup) {
    try {
      const dir = launch.execCgroup.dir;
      chownSync(dir, launch.hostUid, launch.hostGid);
      chownSync(join(dir, "cgroup.procs"), launch.hostUid, launch.hostGid);
      groups = openSync(dir, "r");
    } catch (error) {
      o.diag(`no control group per exec: ${(error as Error).message}`);
    }
  }
  let child: ChildProcess;
  try {
    child = spawn(command, args, {
      stdio: ["pipe", "pipe", "pipe", filter, ...(groups === undefined ? [] : [groups])],
      env: { PATH, LANG: "C.UTF-8" },
    });
  } finally {
    closeSync(filter);
    if (groups !== undefined) closeSync(groups);
  }
  const stdio = { stdin: child.stdin!, stdout: child.stdout!, stderr: child.stderr! };
  // Listening before anything is awaited, so an early exit or error is not missed.
  stdio.stdin.on("error", () => {});
  const exited = new Promise<string>((resolve) => {
    // bubblewrap passes on its first process's status, 128+N when a signal killed it.
    child.on("exit", (code, signal) =>
      resolve(
        signal
          ? `its bubblewrap was killed by ${signal}`
          : code !== null && code > 128 && signalName(code - 128)
            ? `its agent was killed by ${signalName(code - 128)}`
            : `its agent exited with status ${code}`,
      ),
    );
    child.on("error", (error) => resolve(`failed to start: ${error.message}`));
  });
  try {
    await beforeAgent();
  } catch (error) {
    // The agent has no configuration yet, so nothing of the sandbox's has run.
    child.kill("SIGKILL");
    throw error;
  }
  const env: Record<string, string> = {
    HOME: WORKDIR,
    USER: "sandbox",
    LOGNAME: "sandbox",
    SHELL: shell,
    PATH,
    LANG: "C.UTF-8",
    OPENSHELL_SANDBOX: "1",
    ...launch.environment,
    ...toolEnv,
    // After the user's environment, as upstream: the proxy is the only way out.
    ...(egress ? proxyEnvironment() : {}),
  };
  const config: AgentConfig = {
    command: launch.command,
    tty: launch.tty,
    env,
    workdir: WORKDIR,
    ...(launch.workingDir ? { mainWorkdir: launch.workingDir } : {}),
    socketPath: `${CONTROL_ROOT}/run/ssh.sock`,
    forwardSocketPath: `${CONTROL_ROOT}/${POD_FORWARD_SOCKET}`,
    startOnAttach: launch.startOnAttach,
    ttySize:
      launch.ttyCols > 0 && launch.ttyRows > 0 ? { cols: launch.ttyCols, rows: launch.ttyRows } : undefined,
    shell,
    sftpServer: "/usr/lib/openssh/sftp-server",
    ...(egress
      ? { egress: { proxySocket: `${EGRESS_DIR}/${basename(egress.socketPath)}`, port: EGRESS_PROXY_PORT } }
      : {}),
    ...(groups !== undefined ? { execGroups: { fd: 4, freezer: launch.execCgroup!.freezer } } : {}),
  };
  stdio.stdin.write(`${JSON.stringify(config)}\n`);
  const stopReading = readAgent(o, stdio.stdout, stdio.stderr);
  // No pod, no sandbox to serve: the proxy goes with it.
  void exited.then(() => {
    stopReading();
    return egress?.close();
  });
  return {
    sshSocket: join(launch.sandboxDir, POD_SSH_SOCKET),
    forwardSocket: join(launch.sandboxDir, POD_FORWARD_SOCKET),
    exited,
    setNetworkPolicy: (policy) => {
      if (!egress) throw new Error("this sandbox started without network rules: it has no egress proxy");
      egress.setPolicy(EgressPolicy.compile(policy.networkPolicies));
    },
    stop: async () => {
      // Killing bwrap ends the pod's PID namespace, and every process in it.
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
      await egress?.close();
      await cleanUp();
    },
  };
}

/** Writes its pid to each file before `--`, then execs what follows; any failure stops it (status 125). */
const JOIN_CGROUPS =
  'for f; do shift; [ "$f" = -- ] && break; echo $$ > "$f" || { echo "cannot join $f" >&2; exit 125; }; done; exec "$@"';

/** Longest line of the pod's stderr (bwrap's and the agent's diagnostics) that is kept. */
const POD_DIAG_LINE_MAX_BYTES = 4096;
/** Lines of the pod's stderr passed on per second; the rest are counted. */
const POD_DIAG_LINES_PER_SECOND = 20;
const LIVENESS_CHECK_MS = AGENT_BEAT_MS / 2;

/**
 * Reads the agent's channel (stdout) and the pod's stderr, both written from
 * inside the sandbox: bounded lines, only valid messages passed on, drops
 * counted and reported at most once a second, and the agent's beats watched.
 * While the log holds the channel back, the agent's silence is not held
 * against it. Returns a function that stops the watch.
 */
function readAgent(o: PodOptions, stdout: NodeJS.ReadableStream, stderr: NodeJS.ReadableStream): () => void {
  const drops: Record<AgentChannelDrop, number> = { oversized: 0, malformed: 0 };
  let lastHeard: number | undefined;
  let held = false;
  let responsive = true;
  const heard = (): void => {
    lastHeard = performance.now();
    if (!responsive) {
      responsive = true;
      o.onAgentLiveness?.(true, "the sandbox agent responds again");
    }
  };
  const decoder = new AgentMessageDecoder(
    (message) => {
      heard();
      if (message.t !== "beat") o.onAgent(message);
    },
    (kind) => {
      drops[kind] += 1;
    },
  );
  stdout.on("data", (chunk: Buffer) => {
    decoder.push(chunk);
    const wait = held ? undefined : o.logBackpressure?.();
    if (wait) {
      held = true;
      stdout.pause();
      void wait.then(() => {
        held = false;
        // Silence while the channel was held is the log's, not the agent's.
        if (lastHeard !== undefined) lastHeard = performance.now();
        stdout.resume();
      });
    }
  });
  let diagLines = 0;
  let suppressed = 0;
  const diagLine = new BoundedLineReader(
    POD_DIAG_LINE_MAX_BYTES,
    (line) => {
      if (diagLines++ < POD_DIAG_LINES_PER_SECOND) o.diag(`pod: ${line.toString("utf8")}`);
      else suppressed++;
    },
    () => {
      suppressed++;
    },
  );
  stderr.on("data", (chunk: Buffer) => diagLine.push(chunk));
  const timer = setInterval(() => {
    if (lastHeard !== undefined && !held && responsive) {
      const silent = performance.now() - lastHeard;
      if (silent > AGENT_SILENCE_MS) {
        responsive = false;
        o.onAgentLiveness?.(false, `the sandbox agent has not responded for ${Math.round(silent)} ms`);
      }
    }
  }, LIVENESS_CHECK_MS);
  const report = setInterval(() => {
    if (drops.oversized + drops.malformed > 0) {
      o.diag(`agent channel: dropped ${drops.malformed} malformed and ${drops.oversized} oversized line(s)`);
      drops.oversized = 0;
      drops.malformed = 0;
    }
    if (suppressed > 0) o.diag(`pod: ${suppressed} more line(s) of diagnostics suppressed`);
    suppressed = 0;
    diagLines = 0;
  }, 1000);
  return () => {
    clearInterval(timer);
    clearInterval(report);
  };
}
