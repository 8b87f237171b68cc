// The runtime contract: what a gateway tells the supervisor of a sandbox it
// starts, and what the supervisor reports back. The gateway and the
// supervisor both import this module and neither owns it; nothing here
// depends on either side.

/** What the gateway tells a supervisor when it starts one. */
export interface SupervisorLaunch {
  sandboxId: string;
  sandboxName: string;
  workspace: string;
  instanceId: string;
  /** gRPC target the supervisor dials, e.g. `unix:///…/supervisor.sock`. */
  gateway: string;
  secret: string;
  sandboxDir: string;
  hostUid: number;
  hostGid: number;
  /**
   * The size of the sandbox's own filesystem, which holds everything the
   * pod may write (src/runtime/guest-disk.ts); fixed when it is first
   * made. Absent, or a supervisor that cannot mount: directories in
   * `sandboxDir` instead.
   */
  diskBytes?: number | undefined;
  /**
   * The `cgroup.procs` files of the sandbox's control groups, which the
   * gateway made with its limits in them: the pod's first process joins
   * them before anything of the sandbox runs, so every process counts.
   */
  cgroupProcs?: string[] | undefined;
  /**
   * The size of the pod's own /dev/shm when the sandbox has a memory limit
   * (a quarter of it): its pages count against that limit, so a full
   * /dev/shm is ENOSPC for the writer rather than an OOM kill of the sandbox.
   */
  shmBytes?: number | undefined;
  /**
   * The sandbox's group in which each exec gets one of its own, killed whole
   * when the exec ends: v2 (cgroup.kill), or v1's freezer. The supervisor
   * gives it to the sandbox's uid and hands the agent a descriptor for it.
   */
  execCgroup?: { dir: string; freezer: boolean } | undefined;
  /**
   * The host ids the sandbox's files belonged to when it ran under other ones
   * (its uid was another sandbox's on this host); the supervisor gives them
   * to `hostUid`/`hostGid` before the pod starts.
   */
  reownFrom?: { uid: number; gid: number } | undefined;
  appRoot: string;
  command: string[];
  tty: boolean;
  environment: Record<string, string>;
  /** Hold the main command until the first attach (uploads go first). */
  startOnAttach: boolean;
  /** Initial size of the main command's pty (80x24 when absent). */
  ttySize?: { cols: number; rows: number } | undefined;
  /**
   * The injected files' content on this host (src/runtime/file-content.ts), read
   * directly instead of through GetSandboxFiles; absent when there are none.
   */
  filesPath?: string | undefined;
  /** With `filesPath`: the files' paths in the order it holds them, so the pod is planned before they are read. */
  filePaths?: string[] | undefined;
  /**
   * With `filesPath`, at create: the gateway is still writing it, and sends
   * a `files-stored` notice on stdin once it has; the content is read after.
   */
  filesPending?: boolean | undefined;
}

/** What the gateway tells a running supervisor on stdin after the launch, one JSON object per line. */
export type SupervisorNotice = { kind: "files-stored" };

/** Reports a supervisor writes on stdout, one JSON object per line. */
export type SupervisorReport =
  | { kind: "failure"; reason: string; message: string }
  | { kind: "progress"; step: string; message: string }
  | { kind: "warning"; message: string }
  /** The sandbox's agent stopped answering its supervisor (frozen, or its event loop stuck), or answers again. */
  | { kind: "liveness"; responsive: boolean; message: string };

/** Syscall names as libseccomp spells them; anything else in a deny list is refused before it reaches it. */
const SYSCALL_NAME = /^[a-z_][a-z0-9_]{0,63}$/;

/**
 * The environment variable naming the directory where supervisors keep what
 * every pod shares (the compiled filter, the agent's execute-only loader);
 * the local runtime sets it.
 */
export const POD_SUPPORT_DIR_ENV = "OPENSHELL_POD_SUPPORT_DIR";

/** The environment variable through which the gateway's operator names calls to refuse besides the defaults. */
export const SECCOMP_DENY_ENV = "OPENSHELL_SECCOMP_DENY";

/**
 * Parses a deny list: system call names separated by commas or spaces, e.g.
 * `OPENSHELL_SECCOMP_DENY=io_setup,io_submit`. Throws with the offending
 * entry named.
 */
export function parseDenyList(text: string | undefined): string[] {
  if (text === undefined) return [];
  const names = text.split(/[\s,]+/).filter((name) => name !== "");
  for (const name of names) {
    if (!SYSCALL_NAME.test(name)) {
      throw new Error(
        `${SECCOMP_DENY_ENV}: '${name}' is not a system call name (expected names like keyctl or io_setup, separated by commas)`,
      );
    }
  }
  return names;
}
