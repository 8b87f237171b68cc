// Keeping the agent out of reach of the code it runs.
//
// The attack: every sandboxed process is started by the agent and runs under
// the agent's own uid. A process of the same uid may normally ptrace it, read
// and write its memory through /proc/<pid>/mem or process_vm_readv/writev,
// open its descriptors through /proc/<pid>/fd, or copy them with
// pidfd_getfd; the agent's stdout is its channel to the supervisor, so any of
// these would let sandbox code speak as the agent.
//
// The defence is one kernel rule: a process that execs a file it cannot read
// is made non-dumpable (fs/exec.c, would_dump), and the kernel then refuses
// all of the above to any process without CAP_SYS_PTRACE over the namespace
// that owns the file. The agent is node started through the dynamic loader,
// so the loader is the file the kernel execs: the pod gets an execute-only
// copy of it (mode 0111, owned by the supervisor's user: host root, or the
// gateway's user, whom no capability of the pod's maps to). The agent's
// children exec ordinary, readable programs and are ordinary again.
//
// bubblewrap's own first process (PID 1 of the pod, which reaps orphans)
// holds the same channel on its stdio and cannot be made non-dumpable, since
// bubblewrap marks itself dumpable after dropping privileges; the pod's
// /proc/1 is covered with an empty read-only tmpfs instead (see launchPod),
// and the seccomp filter refuses ptrace, process_vm_* and pidfd_getfd to
// every sandboxed process whatever its target.

import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { orElse } from "../host/fs.js";

/**
 * The path of an execute-only copy of `loader` under `dir`, named by the
 * digest of its content so an upgraded loader gets a new copy. Made under a
 * temporary name and renamed, so concurrent supervisors never exec a partial one.
 */
export function executeOnlyLoader(dir: string, loader: string): string {
  const content = readFileSync(loader);
  const digest = createHash("sha256").update(content).digest("hex").slice(0, 32);
  const path = join(dir, `ld-${digest}.so`);
  // Not made yet when it is not there.
  const stat = orElse(undefined, () => statSync(path));
  if (stat?.isFile() && stat.size === content.length && (stat.mode & 0o7777) === 0o111) return path;
  // Traversable by the pod's host uid, which binds the copy; not listable.
  mkdirSync(dir, { recursive: true, mode: 0o711 });
  chmodSync(dir, 0o711);
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    copyFileSync(loader, temporary);
    chmodSync(temporary, 0o111);
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
  return path;
}
