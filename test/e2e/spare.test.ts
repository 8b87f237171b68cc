// The spare supervisor: a root gateway starts the next one as soon as one is
// used, at the lowest priority so it loads only on idle CPU, and raises it
// to normal before it starts a pod, so sandboxes never run at low priority.

import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestEnv, uniqueName } from "../helpers/cli.js";
import { children, commandLine, isSupervisor, gatewayPid as pidOf } from "../helpers/processes.js";

const isRoot = process.getuid?.() === 0;

/** Field 19 of /proc/PID/stat: the niceness. */
function niceness(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
}

/** The supervisor serving a sandbox has its pod below it (a spare may have ldd running, never a pod). */
const hasPod = (pid: number): boolean =>
  children(pid).some((child) => /^(unshare|bwrap)\0/.test(commandLine(child)));

describe.runIf(isRoot)("the spare supervisor", () => {
  const env = new TestEnv();
  const name = uniqueName("spare");
  let gatewayPid: number;

  beforeAll(async () => {
    await env.startGateway();
    const created = await env.createIdle(name);
    expect(created.code, created.stderr).toBe(0);
    gatewayPid = pidOf(env);
  });
  afterAll(() => env.dispose());

  it("waits at the lowest priority; the one in use, and its sandbox, run at normal priority", async () => {
    const supervisors = children(gatewayPid).filter(isSupervisor);
    const [used, spare] = [supervisors.filter(hasPod), supervisors.filter((pid) => !hasPod(pid))];
    expect(used).toHaveLength(1);
    expect(spare).toHaveLength(1);
    expect(niceness(spare[0]!)).toBe(19);
    expect(niceness(used[0]!)).toBe(0);
    const inside = await env.run(["sandbox", "exec", "-n", name, "--", "cat", "/proc/self/stat"]);
    expect(inside.code, inside.stderr).toBe(0);
    expect(inside.stdout.slice(inside.stdout.lastIndexOf(")") + 2).split(" ")[16]).toBe("0");
  });
});
