// Section 9: the TypeScript API's exec against OpenSSH at its fastest, a
// ControlMaster connection (`ssh -S`) to the private sshd: the warm round trip
// of exec("true") on a handle whose SSH connection is open, interleaved with
// `ssh -S SOCK true`, and 100 concurrent commands on one sandbox against 100
// concurrent `ssh -S` runs (wall time and commands per second).

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { OpenShell } from "../src/api/index.js";
import { runOk, runTimed } from "./lib/proc.js";
import { progress, type Section } from "./lib/report.js";
import type { PrivateSshd } from "./lib/sshd.js";
import { formatMs, percentile, round, summarize } from "./lib/stats.js";
import type { Shared } from "./run.js";

const ROUND_TRIPS = 50;
const CONCURRENT = 100;
const CONCURRENT_ROUNDS = 3;

/** A ControlMaster connection to the private sshd; resolves once `ssh -O check` answers. */
async function controlMaster(sshd: PrivateSshd): Promise<{ args: string[]; stop(): void }> {
  const socket = join(sshd.dir, "control.sock");
  const master: ChildProcess = spawn("ssh", ["-M", "-S", socket, "-N", ...sshd.sshArgs()], {
    stdio: "ignore",
  });
  const args = ["-S", socket, ...sshd.sshArgs()];
  for (let i = 0; ; i++) {
    const check = await runTimed("ssh", ["-O", "check", ...args], { timeoutMs: 10_000 });
    if (check.code === 0) break;
    if (i >= 200 || master.exitCode !== null)
      throw new Error(`ssh ControlMaster did not start: ${check.stderr}`);
    await delay(25);
  }
  return { args, stop: () => master.kill("SIGTERM") };
}

function hrMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6;
}

export async function apiExec(s: Section, shared: Shared): Promise<void> {
  const { env } = shared;
  const gateway = shared.gateway();
  const name = await shared.ioSandbox(s);
  let master: { args: string[]; stop(): void } | undefined;
  try {
    master = await controlMaster(await shared.sshd());
  } catch (error) {
    s.note(
      `OpenSSH ControlMaster yardstick not measured: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  const token = readFileSync(join(env.configHome, "openshell", "gateways", "local", "token"), "utf8").trim();
  const client = new OpenShell({ endpoint: gateway.endpoint, token });
  const sandbox = await client.get(name);
  const apiTrue = async (): Promise<number> => {
    const started = process.hrtime.bigint();
    const result = await sandbox.exec("true");
    if (result.exitCode !== 0) throw new Error(`exec("true") exited ${result.exitCode}: ${result.stderr}`);
    return hrMs(started);
  };
  // 100 at once through one master take their turns: each run's bound covers the whole round.
  const sshTrue = async (timeoutMs = 30_000): Promise<number> =>
    (await runOk("ssh", [...master!.args, "true"], { timeoutMs })).ms;
  const api: number[] = [];
  const ssh: number[] = [];
  const apiWall: number[] = [];
  const sshWall: number[] = [];
  try {
    progress("warming up (the handle's SSH connection opens on its first exec)");
    for (let i = 0; i < 5; i++) {
      await s.attempt('exec("true") (warm-up)', apiTrue);
      if (master) await s.attempt("ssh -S true (warm-up)", () => sshTrue());
    }
    // Interleaved, so a slow moment of the machine hits both alike.
    for (let i = 0; i < ROUND_TRIPS; i++) {
      api.push(await s.attempt('exec("true")', apiTrue));
      if (master) ssh.push(await s.attempt("ssh -S true", () => sshTrue()));
    }
    for (let round = 0; round < CONCURRENT_ROUNDS; round++) {
      apiWall.push(
        await s.attempt(`${CONCURRENT} concurrent exec("true")`, async () => {
          const started = process.hrtime.bigint();
          await Promise.all(Array.from({ length: CONCURRENT }, () => apiTrue()));
          return hrMs(started);
        }),
      );
      if (master) {
        sshWall.push(
          await s.attempt(`${CONCURRENT} concurrent ssh -S true`, async () => {
            const started = process.hrtime.bigint();
            await Promise.all(Array.from({ length: CONCURRENT }, () => sshTrue(300_000)));
            return hrMs(started);
          }),
        );
      }
      progress(
        `${CONCURRENT} concurrent, round ${round + 1}: API ${formatMs(apiWall.at(-1)!)}` +
          (master ? `, ssh -S ${formatMs(sshWall.at(-1)!)}` : ""),
      );
    }
  } finally {
    await sandbox.close();
    client.close();
    master?.stop();
    s.samples("api_exec_ms", api);
    s.samples("ssh_control_ms", ssh);
    s.samples("api_concurrent_ms", apiWall);
    s.samples("ssh_concurrent_ms", sshWall);
    const rows: [string, string, number[]][] = [
      ["api_exec", 'API exec("true"), warm handle', api],
      ["ssh_control", "ssh -S (ControlMaster) true", ssh],
    ];
    for (const [key, label, values] of rows) {
      if (values.length === 0) continue;
      const sum = summarize(values);
      s.figure(
        `${key}_p50_ms`,
        `${label} p50 (n=${sum.n})`,
        round(sum.p50),
        "ms",
        formatMs(sum.p50),
        key === "api_exec" && ssh.length > 0
          ? { text: "≤ ssh -S p50", met: sum.p50 <= percentile(ssh, 50) }
          : undefined,
      );
      s.figure(`${key}_p95_ms`, `${label} p95`, round(sum.p95), "ms", formatMs(sum.p95));
    }
    const walls: [string, string, number[]][] = [
      ["api_concurrent", `${CONCURRENT} concurrent API execs`, apiWall],
      ["ssh_concurrent", `${CONCURRENT} concurrent ssh -S runs`, sshWall],
    ];
    for (const [key, label, values] of walls) {
      if (values.length === 0) continue;
      const wall = percentile(values, 50);
      const rate = (CONCURRENT * 1000) / wall;
      s.figure(
        `${key}_ms`,
        `${label}: wall time (median of ${values.length})`,
        round(wall),
        "ms",
        formatMs(wall),
        key === "api_concurrent" && sshWall.length > 0
          ? { text: "≤ ssh -S wall", met: wall <= percentile(sshWall, 50) }
          : undefined,
      );
      s.figure(`${key}_per_s`, `${label}: per second`, round(rate), "/s", `${rate.toFixed(0)} /s`);
    }
  }
}
