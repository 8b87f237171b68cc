// A sandbox's control groups: where the kernel enforces its cpu, memory and
// process limits, counts what it uses, and from where all of its processes
// are killed at once. The gateway makes them at create (so a limit this host
// cannot enforce refuses the create), the supervisor starts the pod inside
// them (every process of the sandbox descends from bubblewrap), and the
// gateway reads their usage and removes them with the sandbox.
//
// cgroup v2 where its controllers are (cpu.max, memory.max, pids.max),
// otherwise v1's per-controller hierarchies (cpu, cpuacct, memory, pids,
// freezer), as on hosts with v1 and a controller-less v2 hierarchy beside
// it. Each sandbox's groups are children of the gateway's own group in each
// hierarchy, so they stay inside whatever bounds the gateway itself.
//
// An exec's processes get a group of their own inside the sandbox's (see
// execGroupOf): v2's cgroup.kill, or v1's freezer, ends its whole tree.

import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statfsSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import type { Limits } from "../core/limits.js";
import { orElse } from "../host/fs.js";

/** The environment variable naming where cgroup hierarchies are mounted; /sys/fs/cgroup by default. */
export const CGROUP_ROOT_ENV = "OPENSHELL_CGROUP_ROOT";

const CGROUP_SUPER_MAGIC = 0x27e0eb;
const CGROUP2_SUPER_MAGIC = 0x63677270;
const CPU_PERIOD_US = 100_000;

type Controller = "cpu" | "cpuacct" | "memory" | "pids" | "freezer";

/** One sandbox's groups: a directory per hierarchy it uses. */
export interface SandboxCgroups {
  version: 1 | 2;
  /** v2: the one group. v1: a group per controller. */
  dirs: Partial<Record<Controller | "unified", string>>;
}

export function cgroupRoot(): string {
  const value = process.env[CGROUP_ROOT_ENV];
  return value === undefined || value.trim() === "" ? "/sys/fs/cgroup" : value;
}

function isCgroupFs(path: string, magic: number): boolean {
  return orElse(false, () => statfsSync(path).type === magic);
}

/** This process's group in each hierarchy, from /proc/self/cgroup (`4:memory:/a/b`, `0::/c`). */
function ownGroups(): Map<string, string> {
  const groups = new Map<string, string>();
  for (const line of orElse("", () => readFileSync("/proc/self/cgroup", "utf8")).split("\n")) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!match) continue;
    const names = match[1] === "" ? ["unified"] : match[1]!.split(",");
    for (const name of names) groups.set(name, match[2]!);
  }
  return groups;
}

/** The parent of the sandboxes' groups in a hierarchy mounted at `mount`: this process's group, when it is there. */
function parentIn(mount: string, controller: string): string {
  const own = ownGroups().get(controller);
  const candidate = own === undefined ? mount : join(mount, own);
  return existsSync(candidate) ? candidate : mount;
}

function readControllers(dir: string): string[] {
  return orElse([], () => readFileSync(join(dir, "cgroup.controllers"), "utf8").trim().split(/\s+/));
}

interface Layout {
  version: 1 | 2;
  /** Parent directory per hierarchy, or why it is missing. */
  parents: Partial<Record<Controller | "unified", string>>;
  missing: Partial<Record<Controller | "unified", string>>;
}

function layout(root: string): Layout {
  const parents: Layout["parents"] = {};
  const missing: Layout["missing"] = {};
  if (isCgroupFs(root, CGROUP2_SUPER_MAGIC)) {
    const parent = parentIn(root, "unified");
    const have = readControllers(parent);
    parents.unified = parent;
    for (const controller of ["cpu", "memory", "pids"] as const) {
      if (have.includes(controller)) parents[controller] = parent;
      else missing[controller] = `the cgroup v2 controller '${controller}' is not enabled at ${parent}`;
    }
    return { version: 2, parents, missing };
  }
  for (const controller of ["cpu", "cpuacct", "memory", "pids", "freezer"] as const) {
    const mount = join(root, controller);
    if (isCgroupFs(mount, CGROUP_SUPER_MAGIC)) parents[controller] = parentIn(mount, controller);
    else missing[controller] = `no cgroup v1 '${controller}' hierarchy is mounted at ${mount}`;
  }
  const unified = join(root, "unified");
  if (isCgroupFs(unified, CGROUP2_SUPER_MAGIC)) parents.unified = parentIn(unified, "unified");
  return { version: 1, parents, missing };
}

/** The controller a limit needs. */
const NEEDS: Partial<Record<keyof Limits, Controller>> = {
  cpuMillis: "cpu",
  memoryBytes: "memory",
  pids: "pids",
};

export class CgroupError extends Error {
  constructor(
    /** The limit that cannot be enforced: cpu, memory or pids. */
    readonly limit: string,
    message: string,
  ) {
    super(message);
    this.name = "CgroupError";
  }
}

function write(dir: string, file: string, value: string): void {
  writeFileSync(join(dir, file), value);
}

/**
 * Makes the groups of sandbox `id` with `limits` in them. Throws a CgroupError
 * naming the first limit this host cannot enforce, and why; nothing is left.
 */
export function createSandboxCgroups(id: string, limits: Limits, root = cgroupRoot()): SandboxCgroups {
  const found = layout(root);
  const name = `openshell-${id}`;
  const made: SandboxCgroups = { version: found.version, dirs: {} };
  const wanted = new Set<Controller | "unified">();
  for (const [key, controller] of Object.entries(NEEDS) as [keyof Limits, Controller][]) {
    if (limits[key] === undefined) continue;
    const reason = found.missing[controller];
    if (reason) throw new CgroupError(controller, reason);
    wanted.add(controller);
  }
  // Usage counters, and the hierarchy from which an exec's tree is killed, where there are.
  for (const extra of ["cpuacct", "memory", "pids", "freezer", "unified"] as const) {
    if (found.parents[extra]) wanted.add(extra);
  }
  const step = (limit: string, what: () => void): void => {
    try {
      what();
    } catch (error) {
      removeSandboxCgroups(made);
      throw new CgroupError(limit, (error as Error).message);
    }
  };
  for (const controller of wanted) {
    const parent = found.parents[controller]!;
    const dir = join(parent, name);
    if (made.version === 2 && made.dirs.unified) {
      made.dirs[controller] = made.dirs.unified;
      continue;
    }
    const required = limitSet(limits, controller);
    try {
      if (found.version === 2) {
        // Children get the controllers only when the parent passes them down.
        const enable = ["cpu", "memory", "pids"].filter((c) => found.parents[c as Controller]);
        if (enable.length > 0) write(parent, "cgroup.subtree_control", enable.map((c) => `+${c}`).join(" "));
      }
      mkdirSync(dir);
    } catch (error) {
      if (!required && (error as NodeJS.ErrnoException).code !== "EEXIST") continue;
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") {
        removeSandboxCgroups(made);
        throw new CgroupError(controller, `cannot make a cgroup at ${dir}: ${(error as Error).message}`);
      }
    }
    made.dirs[controller] = dir;
    if (found.version === 2) made.dirs.unified = dir;
  }
  const cpu = made.dirs.cpu;
  if (limits.cpuMillis !== undefined && cpu) {
    const quota = Math.max(1000, Math.round((limits.cpuMillis * CPU_PERIOD_US) / 1000));
    step("cpu", () => {
      if (made.version === 2) write(cpu, "cpu.max", `${quota} ${CPU_PERIOD_US}`);
      else {
        write(cpu, "cpu.cfs_period_us", String(CPU_PERIOD_US));
        write(cpu, "cpu.cfs_quota_us", String(quota));
      }
    });
  }
  const memory = made.dirs.memory;
  if (limits.memoryBytes !== undefined && memory) {
    const bytes = String(limits.memoryBytes);
    step("memory", () => {
      if (made.version === 2) {
        write(memory, "memory.max", bytes);
        // No swap accounting: no swap to escape to either.
        ignoreFailure(() => write(memory, "memory.swap.max", "0"));
      } else {
        write(memory, "memory.limit_in_bytes", bytes);
        // Without swap accounting the limit above is the bound.
        ignoreFailure(() => write(memory, "memory.memsw.limit_in_bytes", bytes));
      }
    });
  }
  const pids = made.dirs.pids;
  if (limits.pids !== undefined && pids) step("pids", () => write(pids, "pids.max", String(limits.pids)));
  return made;
}

function limitSet(limits: Limits, controller: Controller | "unified"): boolean {
  return (Object.entries(NEEDS) as [keyof Limits, Controller][]).some(
    ([key, c]) => c === controller && limits[key] !== undefined,
  );
}

/** The files a process writes its pid to, to join every group of the sandbox (its pod's first process does). */
export function procsFiles(groups: SandboxCgroups): string[] {
  return [...new Set(Object.values(groups.dirs))].map((dir) => join(dir, "cgroup.procs"));
}

/** The group in which a sandbox's execs get groups of their own: v2's (cgroup.kill), else v1's freezer. */
export function execGroupOf(groups: SandboxCgroups): { dir: string; freezer: boolean } | undefined {
  if (groups.dirs.unified) return { dir: groups.dirs.unified, freezer: false };
  if (groups.dirs.freezer) return { dir: groups.dirs.freezer, freezer: true };
  return undefined;
}

function pidsIn(dir: string): number[] {
  const text = orElse("", () => readFileSync(join(dir, "cgroup.procs"), "utf8"));
  return text
    .split("\n")
    .filter((line) => line !== "")
    .map(Number);
}

/**
 * Kills every process in the group at `dir` and waits until it is empty:
 * cgroup.kill on v2, else freezing it (v1 freezer, when `freezer` is that
 * group) so nothing forks while the pids are killed, until none is left.
 */
export async function killGroup(dir: string, freezer?: string): Promise<void> {
  // A group gone already needs no kill; one that cannot be frozen is still
  // ended by the kills below, more slowly.
  if (existsSync(join(dir, "cgroup.kill"))) ignoreFailure(() => write(dir, "cgroup.kill", "1"));
  else if (freezer) ignoreFailure(() => write(freezer, "freezer.state", "FROZEN"));
  const deadline = Date.now() + 5000;
  for (;;) {
    const pids = pidsIn(dir);
    if (pids.length === 0 || Date.now() > deadline) break;
    // A pid may have exited meanwhile.
    for (const pid of pids) ignoreFailure(() => process.kill(pid, "SIGKILL"));
    // A killed process in a frozen group dies once thawed.
    if (freezer) {
      ignoreFailure(() => {
        write(freezer, "freezer.state", "THAWED");
        write(freezer, "freezer.state", "FROZEN");
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  if (freezer) ignoreFailure(() => write(freezer, "freezer.state", "THAWED"));
}

/** Kills whatever is left in the sandbox's groups, then removes them. */
export async function destroySandboxCgroups(groups: SandboxCgroups): Promise<void> {
  const target = groups.dirs.unified ?? groups.dirs.pids ?? groups.dirs.memory ?? groups.dirs.cpu;
  if (target) await killGroup(target, groups.version === 1 ? groups.dirs.freezer : undefined);
  removeSandboxCgroups(groups);
}

function removeSandboxCgroups(groups: SandboxCgroups): void {
  // Children first: the exec groups inside. A group not there, or still
  // busy, is left to the next delete (or sweepIdleCgroups).
  for (const dir of new Set(Object.values(groups.dirs))) {
    for (const child of subgroups(dir)) ignoreFailure(() => rmdirSync(join(dir, child)));
    ignoreFailure(() => rmdirSync(dir));
  }
}

function subgroups(dir: string): string[] {
  return orElse([], () =>
    readdirSync(dir, { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name),
  );
}

function ignoreFailure(step: () => void): void {
  orElse(undefined, step);
}

/** The groups sandbox `id` would have, found again after a gateway restart (or undefined). */
export function findSandboxCgroups(id: string, root = cgroupRoot()): SandboxCgroups | undefined {
  const found = layout(root);
  const name = `openshell-${id}`;
  const dirs: SandboxCgroups["dirs"] = {};
  for (const [controller, parent] of Object.entries(found.parents) as [Controller | "unified", string][]) {
    const dir = join(parent, name);
    if (existsSync(dir)) dirs[controller] = dir;
  }
  if (Object.keys(dirs).length === 0) return undefined;
  if (found.version === 2 && dirs.unified) {
    for (const c of ["cpu", "cpuacct", "memory", "pids"] as const) dirs[c] = dirs.unified;
  }
  return { version: found.version, dirs };
}

export interface CgroupUsage {
  cpuSeconds?: number;
  memoryBytes?: number;
  pids?: number;
  /** Times the kernel's OOM killer ended a process of the sandbox. */
  oomKills?: number;
}

function readText(dir: string | undefined, file: string): string | undefined {
  return dir ? orElse(undefined, () => readFileSync(join(dir, file), "utf8")) : undefined;
}

function readNumber(dir: string | undefined, file: string): number | undefined {
  const text = readText(dir, file);
  const value = Number(text?.trim());
  return text !== undefined && Number.isFinite(value) ? value : undefined;
}

function readKey(dir: string | undefined, file: string, key: string): number | undefined {
  const line = readText(dir, file)
    ?.split("\n")
    .find((l) => l.startsWith(`${key} `));
  return line === undefined ? undefined : Number(line.slice(key.length + 1));
}

/** What the sandbox's groups count now. */
export function cgroupUsage(groups: SandboxCgroups): CgroupUsage {
  const usage: CgroupUsage = {};
  const set = <K extends keyof CgroupUsage>(key: K, value: number | undefined): void => {
    if (value !== undefined) usage[key] = value;
  };
  if (groups.version === 2) {
    const dir = groups.dirs.unified;
    const usec = readKey(dir, "cpu.stat", "usage_usec");
    set("cpuSeconds", usec === undefined ? undefined : usec / 1e6);
    set("memoryBytes", readNumber(dir, "memory.current"));
    set("pids", readNumber(dir, "pids.current"));
    set("oomKills", readKey(dir, "memory.events", "oom_kill"));
  } else {
    const ns = readNumber(groups.dirs.cpuacct, "cpuacct.usage");
    set("cpuSeconds", ns === undefined ? undefined : ns / 1e9);
    set("memoryBytes", readNumber(groups.dirs.memory, "memory.usage_in_bytes"));
    set("pids", readNumber(groups.dirs.pids, "pids.current"));
    set("oomKills", readKey(groups.dirs.memory, "memory.oom_control", "oom_kill"));
  }
  return usage;
}

/**
 * Removes sandboxes' groups, of any gateway on this host, that hold no
 * process and were made more than `olderThanMs` ago: those of sandboxes
 * deleted with their state (or stopped; a start makes them again). Younger
 * ones may be a create's whose pod has not joined yet.
 */
export function sweepIdleCgroups(
  olderThanMs = 60_000,
  root = cgroupRoot(),
  /** Sandbox ids to consider; all by default. */
  only?: (id: string) => boolean,
): number {
  const found = layout(root);
  let removed = 0;
  for (const parent of new Set(Object.values(found.parents))) {
    for (const name of subgroups(parent)) {
      if (!name.startsWith("openshell-") || (only && !only(name.slice("openshell-".length)))) continue;
      const dir = join(parent, name);
      try {
        if (Date.now() - statSync(dir).mtimeMs < olderThanMs || pidsIn(dir).length > 0) continue;
        for (const child of subgroups(dir)) rmdirSync(join(dir, child));
        rmdirSync(dir);
        removed += 1;
      } catch {
        // Busy after all, or gone.
      }
    }
  }
  return removed;
}
