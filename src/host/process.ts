// Helpers for the processes openshell starts and watches.

import { readFileSync } from "node:fs";

/**
 * Whether a process runs, by pid (EPERM means it does, owned by another
 * user). A zombie does not: a killed gateway whose parent (a container's init
 * that reaps nothing) never collects it still answers signal 0, and must not
 * be taken for a gateway that is running.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
  return !isZombie(pid);
}

/** The fields of /proc/PID/stat after the command name (which is in parentheses and may hold any character), from the state on. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

function isZombie(pid: number): boolean {
  return statFields(pid)?.[0] === "Z";
}

/**
 * A process as the kernel tells it apart from a later one given the same
 * pid: the pid and its start time (clock ticks after boot).
 */
export interface ProcessIdentity {
  pid: number;
  start: string;
}

/** The identity of a running process; undefined when there is none (or a zombie). */
export function processIdentity(pid: number): ProcessIdentity | undefined {
  const fields = statFields(pid);
  // starttime is field 22 of the stat line, the 20th from the state (field 3).
  const start = fields?.[19];
  if (!fields || fields[0] === "Z" || !start || !/^\d+$/.test(start)) return undefined;
  return { pid, start };
}

/** Whether the process `identity` names still runs (not a later one with its pid). */
export function identityAlive(identity: ProcessIdentity): boolean {
  return processIdentity(identity.pid)?.start === identity.start;
}

/**
 * glibc malloc settings for the CLI (bin/openshell's #! line sets them), the
 * gateway and the supervisors, which pass up to ten MiB of injected files
 * through fresh buffers on every create: allocations below 32 MiB come from
 * the heap, which glibc then marks for transparent huge pages, and up to
 * 64 MiB freed at its top is kept rather than given back (a heap that shrinks
 * and grows again faults in a huge page each time, which slowed uploads by a
 * fifth). Faulting fresh memory in 4 KiB pages is slow on virtual machines
 * (a 10 MiB buffer took ~30 ms to fill on a Firecracker guest, 2–15 ms in
 * huge pages). Other C libraries ignore the variable; settings of the user's
 * own come after these, so theirs win.
 */
export const MALLOC_TUNABLES =
  "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864";

/** The GLIBC_TUNABLES entry for a gateway or supervisor started from `env`. */
export function mallocTunables(env: NodeJS.ProcessEnv = process.env): { GLIBC_TUNABLES: string } {
  const own = env.GLIBC_TUNABLES ?? "";
  if (own.startsWith(MALLOC_TUNABLES)) return { GLIBC_TUNABLES: own };
  return { GLIBC_TUNABLES: own === "" ? MALLOC_TUNABLES : `${MALLOC_TUNABLES}:${own}` };
}
