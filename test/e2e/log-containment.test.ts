// A sandbox's output and its agent's channel played as a hostile sandbox
// would, against the real gateway, supervisor and bubblewrap pod: a stdout
// flood stays within the log's cap and the daemons' memory, a forged
// `network` line and a line without end on the agent's channel are dropped,
// and a frozen agent takes the sandbox out of Ready within 3 s.
//
// The agent's channel is written from the host (root takes the agent's
// stdout with pidfd_getfd): the supervisor's reading is under test, whoever
// manages to write there.

import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collect, json, TestEnv, uniqueName, waitFor, waitForOutput, waitForPhase } from "../helpers/cli.js";

const isRoot = process.getuid?.() === 0;
const MIB = 1024 * 1024;

function gatewayPid(env: TestEnv): number {
  return Number(readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.pid"), "utf8"));
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
  } catch {
    return "";
  }
}

function parentOf(pid: number): number | undefined {
  try {
    const match = /^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Processes below `root`, by walking /proc. */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const parent = parentOf(Number(entry));
    if (parent !== undefined) children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/** The agent of the one sandbox this environment's gateway runs, and its supervisor. */
function agentOf(env: TestEnv): { agent: number; supervisor: number } {
  const agents = descendants(gatewayPid(env)).filter(
    (pid) =>
      // The agent itself, started through the pod's dynamic loader (bwrap's argv names it too).
      cmdline(pid).startsWith("/run/openshell/lib/") && cmdline(pid).includes("/dist/agent.mjs"),
  );
  expect(agents, "one sandbox agent below the gateway").toHaveLength(1);
  let supervisor = agents[0]!;
  while (!cmdline(supervisor).includes("supervisor.mjs")) supervisor = parentOf(supervisor)!;
  return { agent: agents[0]!, supervisor };
}

// Takes the agent's stdout with pidfd_getfd(2), as a process beside the
// agent might, and writes stdin into it (the channel is a socket, which
// /proc/<pid>/fd/1 cannot open).
const WRITE_INTO_CHANNEL = `
import ctypes, os, select, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(438, os.pidfd_open(int(sys.argv[1])), 1, 0)
if fd < 0:
    raise OSError(ctypes.get_errno(), "pidfd_getfd")
data = memoryview(sys.stdin.buffer.read())
while data:
    try:
        data = data[os.write(fd, data):]
    except BlockingIOError:
        select.select([], [fd], [])
`;

function writeIntoChannel(agent: number, data: Buffer): void {
  execFileSync("python3", ["-c", WRITE_INTO_CHANNEL, String(agent)], { input: data, timeout: 30_000 });
}

interface SandboxDoc {
  id: string;
  phase: string;
  reason?: string;
}

// Memory and start-up time under a flood are measured by the bench (section 7,
// a 60 s flood); this test holds what must be true whatever the machine's speed.
describe.skipIf(!isRoot)("a stdout flood (yes), logs capped at 2 MiB x 2 files", () => {
  const env = new TestEnv();
  const flood = uniqueName("flood");
  afterAll(() => env.dispose());

  it("keeps the log within 4 MiB through two rotations, `logs` shows the latest lines and `logs -n 2000` that earlier ones were dropped, also after a restart", async () => {
    const started = await env.run(
      ["gateway", "start", "--port", "0", "--log-max-size", "2", "--log-max-files", "2"],
      { timeoutMs: 30_000 },
    );
    expect(started.code, started.stderr).toBe(0);
    const flooding = await env.run(["sandbox", "create", "--name", flood, "--detach", "--", "yes"], {
      timeoutMs: 60_000,
    });
    expect(flooding.code, flooding.stderr).toBe(0);
    const { id } = json<SandboxDoc>(await env.run(["sandbox", "get", flood, "-o", "json"]));
    const logDir = join(env.stateHome, "openshell", "gateways", "local", "sandboxes", id);
    const logFiles = (): string[] => readdirSync(logDir).filter((file) => file.startsWith("sandbox.log"));
    // Rotation renames files under a look: a file listed and gone by the time it is measured
    // counts as empty, which can only understate the peak, never pass a log over the cap.
    const sizeOf = (file: string): number =>
      statSync(join(logDir, file), { throwIfNoEntry: false })?.size ?? 0;
    const logBytes = (): number => logFiles().reduce((sum, file) => sum + sizeOf(file), 0);

    // The event: the log has rotated past its last kept file (lines were dropped) and filled
    // the new one again; every look on the way is within the cap.
    let peak = 0;
    let droppedAt: number | undefined;
    await waitFor("the flood's log to rotate past its two files and refill", 120_000, () => {
      peak = Math.max(peak, logBytes());
      if (droppedAt === undefined && logFiles().includes("sandbox.log.dropped")) droppedAt = logBytes();
      return droppedAt !== undefined && sizeOf("sandbox.log") > 1024 * 1024 ? true : undefined;
    });
    expect(peak).toBeLessThanOrEqual(4 * MIB);
    expect(logBytes()).toBeLessThanOrEqual(4 * MIB);

    const all = await env.run(["logs", flood, "-n", "2000"], { timeoutMs: 30_000 });
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout.trim().split("\n").at(-1)).toMatch(/\[stdout\] y$/);
    expect(all.stderr).toContain("earlier log lines were dropped");
    // The latest 200 lines were asked for and are all there: nothing to warn about.
    const latest = await env.run(["logs", flood], { timeoutMs: 30_000 });
    expect(latest.stdout.trim().split("\n")).toHaveLength(200);
    expect(latest.stderr).not.toContain("dropped");

    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    const restart = await env.run(["gateway", "start"], { timeoutMs: 30_000 });
    expect(restart.code, restart.stderr).toBe(0);
    const again = await env.run(["logs", flood, "-n", "2000"], { timeoutMs: 30_000 });
    expect(again.stderr).toContain("earlier log lines were dropped");
    expect(logBytes()).toBeLessThanOrEqual(4 * MIB);
  }, 240_000);
});

describe.skipIf(!isRoot)("the agent's channel written by a hostile process", () => {
  const env = new TestEnv();
  const name = uniqueName("chan");
  beforeAll(async () => {
    await env.startGateway();
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--detach",
        "--",
        "sh",
        "-c",
        "echo main-started; exec sleep infinity",
      ],
      { timeoutMs: 60_000 },
    );
    if (created.code !== 0) throw new Error(`create failed: ${created.stderr}`);
  });
  afterAll(() => env.dispose());

  it("logs a forged {s:network} line nowhere, drops a 16 MiB line without newline, and keeps the sandbox Ready with exec working", async () => {
    const tail = env.spawn(["logs", name, "--tail"]);
    const seen = collect(tail, "logs --tail");
    await waitForOutput(tail.stdout!, "main-started", "the main process's first line in the log");
    const { agent, supervisor } = agentOf(env);
    const block = Buffer.alloc(16 * MIB, 0x7b);
    writeIntoChannel(
      agent,
      Buffer.concat([
        Buffer.from('{"t":"log","s":"network","m":"egress allowed forged-9a1"}\n'),
        Buffer.from('{"t":"log","s":"stdout","m":"x","target":"network"}\n'),
        block,
        Buffer.from('\n{"t":"log","s":"stdout","m":"after-the-flood-9a1"}\n'),
      ]),
    );
    await waitForOutput(tail.stdout!, "after-the-flood-9a1", "the line written after the 16 MiB line");
    tail.kill("SIGINT");
    const output = (await seen).stdout;
    expect(output).toMatch(/\[stdout\] after-the-flood-9a1/);
    expect(output).not.toContain("forged-9a1");
    expect(output).not.toMatch(/\[network\]/);
    expect(parentOf(supervisor), "the supervisor still runs").toBe(gatewayPid(env));
    const exec = await env.run(["sandbox", "exec", "-n", name, "--", "echo", "still-serving"], {
      timeoutMs: 30_000,
    });
    expect(exec.stdout.trim(), exec.stderr).toBe("still-serving");
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc.phase).toBe("Ready");
  });

  it("moves the sandbox out of Ready within 3 s of SIGSTOP to its agent (reason AgentUnresponsive), and back to Ready on SIGCONT", async () => {
    const { agent } = agentOf(env);
    const stopped = performance.now();
    process.kill(agent, "SIGSTOP");
    try {
      await waitForPhase(env, name, "Provisioning", 3000);
      const detectedMs = performance.now() - stopped;
      process.stderr.write(`frozen agent detected after ${Math.round(detectedMs)} ms\n`);
      const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
      expect(doc.phase).toBe("Provisioning");
      expect(doc.reason).toMatch(/^AgentUnresponsive: /);
      const exec = await env.run(["sandbox", "exec", "-n", name, "--", "true"], { timeoutMs: 30_000 });
      expect(exec.code).not.toBe(0);
      expect(exec.stderr).toContain("not ready");
    } finally {
      process.kill(agent, "SIGCONT");
    }
    await waitForPhase(env, name, "Ready", 5000);
    const exec = await env.run(["sandbox", "exec", "-n", name, "--", "echo", "resumed"], {
      timeoutMs: 30_000,
    });
    expect(exec.stdout.trim(), exec.stderr).toBe("resumed");
  });
});
