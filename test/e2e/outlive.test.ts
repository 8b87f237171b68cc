// Work outlives the gateway: a gateway stopped (`gateway stop`) or killed
// (SIGKILL) leaves its sandboxes' processes running, and the next start adopts
// their supervisors: a main process counting seconds into a file goes on
// counting, with the same pid; an exec open through the gateway ends with
// "connection lost" (244); new execs work. A supervisor that does not come
// back within the bound is stopped and its sandbox turns to Error
// (SupervisorLost), from which `sandbox start` runs it again. A supervisor
// whose sandbox's directory is removed while no gateway runs ends, pod and all.

import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readSupervisorRecord } from "../../src/gateway/runtime.js";
import { identityAlive, processAlive } from "../../src/host/process.js";
import { collect, json, TestEnv, uniqueName, waitFor, waitForPhase } from "../helpers/cli.js";
import { children, gatewayPid } from "../helpers/processes.js";

interface SandboxDoc {
  id: string;
  phase: string;
  reason?: string;
}

/** Main command: its shell's pid and a count it raises every second, in /sandbox/count. */
const COUNTING = 'i=0; while :; do i=$((i+1)); echo "$$ $i" > /sandbox/count; sleep 1; done';

const sandboxDir = (env: TestEnv, id: string): string =>
  join(env.stateHome, "openshell", "gateways", "local", "sandboxes", id);

async function idOf(env: TestEnv, name: string): Promise<string> {
  return json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"])).id;
}

/** A sandbox whose main command counts (COUNTING), detached. */
async function createCounting(env: TestEnv, prefix: string): Promise<{ name: string; id: string }> {
  const name = uniqueName(prefix);
  const created = await env.run([
    "sandbox",
    "create",
    "--name",
    name,
    "--detach",
    "--",
    "sh",
    "-c",
    COUNTING,
  ]);
  expect(created.code, created.stderr).toBe(0);
  return { name, id: await idOf(env, name) };
}

describe("sandboxes outlive their gateway", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  async function count(name: string): Promise<{ pid: number; count: number }> {
    const read = await env.run(["sandbox", "exec", "-n", name, "--", "cat", "/sandbox/count"]);
    expect(read.code, read.stderr).toBe(0);
    const [pid, value] = read.stdout.trim().split(" ").map(Number);
    return { pid: pid!, count: value! };
  }

  /** Waits until the count has reached `least`, and returns it. */
  async function countAtLeast(name: string, least: number): Promise<{ pid: number; count: number }> {
    for (;;) {
      const now = await count(name);
      if (now.count >= least) return now;
      await new Promise((done) => setTimeout(done, 200));
    }
  }

  const supervisorRecord = (id: string) => readSupervisorRecord(sandboxDir(env, id));

  it("gateway stop then start: the count never restarts, the open exec ends 244 with connection lost, a new exec works", async () => {
    const { name, id } = await createCounting(env, "outlive");
    const supervisor = supervisorRecord(id);
    expect(supervisor).toBeDefined();
    await countAtLeast(name, 2);
    const exec = env.spawn([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "touch /sandbox/sleeping; sleep 60",
    ]);
    const execDone = collect(exec, "exec sleep 60", { timeoutMs: 60_000 });
    // The exec runs once its file is there.
    for (;;) {
      const seen = await env.run(["sandbox", "exec", "-n", name, "--", "test", "-e", "/sandbox/sleeping"]);
      if (seen.code === 0) break;
      await new Promise((done) => setTimeout(done, 100));
    }
    const before = await count(name);

    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    const ended = await execDone;
    expect(ended.code, ended.stderr).toBe(244);
    expect(ended.stderr).toMatch(/connection to gateway 'local' lost/);

    await env.startGateway();
    await waitForPhase(env, name, "Ready");
    const after = await countAtLeast(name, before.count + 1);
    expect(after.pid).toBe(before.pid);
    expect(supervisorRecord(id)).toEqual(supervisor);
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc.phase).toBe("Ready");
  });

  it("a gateway killed with SIGKILL: its sandboxes keep running and the next start adopts them", async () => {
    const { name } = await createCounting(env, "outkill");
    const before = await countAtLeast(name, 2);
    const gateway = gatewayPid(env);
    process.kill(gateway, "SIGKILL");
    await waitFor("the gateway to be gone", 10_000, () => (processAlive(gateway) ? undefined : true));
    await env.startGateway();
    await waitForPhase(env, name, "Ready");
    const after = await countAtLeast(name, before.count + 1);
    expect(after.pid).toBe(before.pid);
  });

  it("a supervisor that does not reconnect within the bound is stopped, its sandbox in Error SupervisorLost; start runs it again", async () => {
    const { name, id } = await createCounting(env, "outlost");
    await countAtLeast(name, 1);
    const supervisor = supervisorRecord(id)!;
    expect(children(gatewayPid(env))).toContain(supervisor.pid);
    // Frozen, it cannot reconnect; a stop's SIGKILL still ends it.
    process.kill(supervisor.pid, "SIGSTOP");
    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    await env.startGateway({ OPENSHELL_GATEWAY_ADOPT_TIMEOUT: "2s" });
    await waitForPhase(env, name, "Error", 20_000);
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc.reason).toMatch(/^SupervisorLost: /);
    await waitFor("the lost supervisor to be stopped", 20_000, () =>
      identityAlive(supervisor) ? undefined : true,
    );
    const started = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(started.code, started.stderr).toBe(0);
    const again = await countAtLeast(name, 1);
    expect(again.pid).toBeGreaterThan(0);
  });
});

describe("a supervisor left without its gateway", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  it("ends, pod and all, once its sandbox's directory is removed", async () => {
    const name = uniqueName("outgone");
    const created = await env.createIdle(name);
    expect(created.code, created.stderr).toBe(0);
    const [supervisor] = env.supervisorRecords();
    expect(supervisor && identityAlive(supervisor)).toBe(true);
    const pod = children(supervisor!.pid);
    expect(pod.length).toBeGreaterThan(0);
    const id = await idOf(env, name);
    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    expect(identityAlive(supervisor!)).toBe(true);
    rmSync(sandboxDir(env, id), {
      recursive: true,
      force: true,
      maxRetries: 5,
    });
    await waitFor("the supervisor to end", 20_000, () => (identityAlive(supervisor!) ? undefined : true));
    await waitFor("its pod to end", 10_000, () => (pod.some(processAlive) ? undefined : true));
  });
});
