// A control group per exec, so that an exec owns its process tree: what it
// starts, `setsid` and double forks included, stays in its group, and the
// group is killed whole when the exec ends, is aborted or times out.
//
// The supervisor hands the agent the sandbox's group (v2, or v1's freezer)
// as an open directory, owned by the sandbox's uid, that nothing else in the
// pod can reach. A child is started with the agent itself moved into a new
// group for the moment of the spawn (node's spawn returns once the child
// has exec'd), so nothing the child does can precede its joining it.

import { closeSync, mkdirSync, openSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { orElse } from "../../host/fs.js";
import { killGroup } from "../../runtime/cgroups.js";

export interface ExecGroup {
  /** Kills every process left in the group, then removes it. */
  end(): Promise<void>;
}

export class ExecGroups {
  private next = 0;

  private constructor(
    /** The sandbox's group, through this process's own descriptor for it. */
    private readonly root: string,
    private readonly freezer: boolean,
  ) {}

  /**
   * Takes over the inherited descriptor `fd`: reopened close-on-exec, so no
   * child inherits a way to the groups, and the original closed.
   */
  static adopt(fd: number, freezer: boolean): ExecGroups {
    const own = openSync(`/proc/self/fd/${fd}`, "r");
    closeSync(fd);
    return new ExecGroups(`/proc/self/fd/${own}`, freezer);
  }

  /** Runs `spawn` inside a new group; `undefined` for the group when none could be made (the child still runs). */
  spawnIn<T>(spawn: () => T): { value: T; group: ExecGroup | undefined } {
    const dir = join(this.root, `exec-${++this.next}`);
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, "cgroup.procs"), "0");
    } catch {
      return { value: spawn(), group: undefined };
    }
    try {
      return { value: spawn(), group: { end: () => this.end(dir) } };
    } finally {
      writeFileSync(join(this.root, "cgroup.procs"), "0");
    }
  }

  private async end(dir: string): Promise<void> {
    await killGroup(dir, this.freezer ? dir : undefined);
    // Busy a moment longer; the sandbox's removal takes it.
    orElse(undefined, () => rmdirSync(dir));
  }
}
