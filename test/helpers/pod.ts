// A throwaway bubblewrap pod for tests: private host directories under
// os.tmpdir(), injected files staged as the supervisor stages them, the mount
// plan applied, and each `run` a fresh bwrap over the same directories, as the
// unprivileged host uid the supervisor would use.

import { type ChildProcess, spawn } from "node:child_process";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FilesystemPolicy } from "../../src/gen/sandbox.js";
import { type InjectedFile, stageFiles } from "../../src/supervisor/inject.js";
import {
  applyHostPrep,
  type ControlBind,
  type MountPlan,
  type PodHostDirs,
  planMounts,
} from "../../src/supervisor/mounts.js";

export const SANDBOX_UID = 1000;
export const SANDBOX_GID = 1000;

/** Close to the policy a sandbox gets by default. */
export const DEFAULT_TEST_POLICY: FilesystemPolicy = {
  includeWorkdir: true,
  readOnly: ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/dev/urandom"],
  readWrite: ["/tmp", "/dev/null"],
};

export interface PodSpec {
  policy?: FilesystemPolicy;
  files?: InjectedFile[];
  controlBinds?: ControlBind[];
  hostname?: string;
  /**
   * Who owns the staged copies: the supervisor (root when we are root), or the
   * pod's own host uid, as when an ordinary user runs the supervisor and only
   * the read-only bind keeps the sandbox user from changing them.
   */
  stagedBy?: "supervisor" | "pod";
}

export interface PodResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ThrowawayPod {
  /** The temporary directory holding everything below. */
  root: string;
  dirs: PodHostDirs;
  plan: MountPlan;
  /** The host uid/gid bwrap runs as. */
  hostUid: number;
  hostGid: number;
  /** Runs `sh -c script` as the sandbox user in a new pod over the same directories. */
  run(script: string, options?: { timeoutMs?: number; step?: string }): Promise<PodResult>;
  dispose(): Promise<void>;
}

const isRoot = process.getuid?.() === 0;

/** As root, a host uid nobody else uses (as the supervisor picks one); otherwise ourselves. */
function podHostIds(): { uid: number; gid: number } {
  if (!isRoot) return { uid: process.getuid!(), gid: process.getgid!() };
  const id = 2_000_000_000 + (process.pid % 1_000_000);
  return { uid: id, gid: id };
}

export async function createThrowawayPod(spec: PodSpec = {}): Promise<ThrowawayPod> {
  const root = await mkdtemp(join(tmpdir(), "openshell-pod-"));
  // mkdtemp makes it 0700; bwrap, running as the pod's host uid, must reach the sources below.
  await chmod(root, 0o755);
  const host = podHostIds();
  const dirs: PodHostDirs = {
    workspace: join(root, "workspace"),
    tmp: join(root, "tmp"),
    rwRoot: join(root, "rw"),
    files: join(root, "files"),
  };
  const passwdFile = join(root, "passwd");
  const groupFile = join(root, "group");
  try {
    await writeFile(
      passwdFile,
      [
        "root:x:0:0:root:/root:/usr/sbin/nologin",
        `sandbox:x:${SANDBOX_UID}:${SANDBOX_GID}:sandbox:/sandbox:/bin/sh`,
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
        "",
      ].join("\n"),
      { mode: 0o644 },
    );
    await writeFile(
      groupFile,
      ["root:x:0:", `sandbox:x:${SANDBOX_GID}:`, "nogroup:x:65534:", ""].join("\n"),
      {
        mode: 0o644,
      },
    );
    const files = spec.files ?? [];
    const stageOwner = spec.stagedBy === "pod" ? host : { uid: process.getuid!(), gid: process.getgid!() };
    await stageFiles(files, dirs.files, stageOwner);
    const plan = planMounts({
      policy: spec.policy ?? DEFAULT_TEST_POLICY,
      dirs,
      injectedFiles: files.map((f) => f.path),
      passwdFile,
      groupFile,
      controlBinds: spec.controlBinds ?? [],
      uid: SANDBOX_UID,
      gid: SANDBOX_GID,
      hostOwner: isRoot ? host : null,
      hostname: spec.hostname ?? "openshell-test",
    });
    await applyHostPrep(plan.prep);
    return {
      root,
      dirs,
      plan,
      hostUid: host.uid,
      hostGid: host.gid,
      run: (script, options = {}) => runPod(plan, host, script, options),
      dispose: () => rm(root, { recursive: true, force: true }),
    };
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

function runPod(
  plan: MountPlan,
  host: { uid: number; gid: number },
  script: string,
  { timeoutMs = 20_000, step = "pod command" }: { timeoutMs?: number; step?: string },
): Promise<PodResult> {
  const bwrapArgs = [
    ...plan.args,
    "--setenv",
    "PATH",
    "/usr/local/bin:/usr/bin:/bin",
    "--setenv",
    "HOME",
    "/sandbox",
    "--setenv",
    "USER",
    "sandbox",
    "/bin/sh",
    "-c",
    script,
  ];
  // bwrap needs no privilege; as root, drop to the pod's host uid first so the
  // sandbox user is nobody special outside (setpriv execs bwrap, which stays
  // our child for --die-with-parent).
  const child = isRoot
    ? spawn(
        "setpriv",
        [`--reuid=${host.uid}`, `--regid=${host.gid}`, "--clear-groups", "--", "bwrap", ...bwrapArgs],
        { stdio: ["ignore", "pipe", "pipe"] },
      )
    : spawn("bwrap", bwrapArgs, { stdio: ["ignore", "pipe", "pipe"] });
  return collect(child, timeoutMs, step);
}

function collect(child: ChildProcess, timeoutMs: number, step: string): Promise<PodResult> {
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${step}: no exit within ${timeoutMs} ms; stderr so far: ${stderr}`));
    }, timeoutMs);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`${step}: could not start: ${error.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}
