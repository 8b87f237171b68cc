// Bench section: a noisy neighbour. Sandbox B's `sandbox exec -- true` round
// trip p50 while another sandbox runs a fork bomb (A, the gateway's default
// limits only: a process limit), a memory hog and a cpu spin (A', --memory
// 256Mi --cpu 1) in turn, each also bounded by the exec's own --timeout,
// beside B's p50 with them idle, same run, own gateway. Target (issue 14): under each load,
// at most 2× idle. Also recorded: A's peak process count against its limit.

import { setTimeout as delay } from "node:timers/promises";
import { DEFAULT_PIDS } from "../src/core/limits.js";
import { cgroupUsage, findSandboxCgroups } from "../src/runtime/cgroups.js";
import { BenchEnv } from "./lib/gateway.js";
import { progress, type Section } from "./lib/report.js";
import { formatMs, round, summarize } from "./lib/stats.js";

const RUNS = 20;
const LOAD_SECONDS = 25;
const RATIO_TARGET = 2;

const LOADS: [key: string, label: string, sandbox: string, script: string][] = [
  // Each shell forks two more forever; forks fail at the process limit.
  ["fork_bomb", "a fork bomb", "bomb", "f() { f | f & }; f; sleep 60"],
  // Allocations past the memory limit, OOM-killed, again and again.
  [
    "memory_hog",
    "a memory hog",
    "noisy",
    "while :; do /usr/bin/python3 -c 'b = bytearray(1 << 30)' 2>/dev/null; done",
  ],
  [
    "cpu_spin",
    "a cpu spin (8 loops)",
    "noisy",
    'for i in 1 2 3 4 5 6 7 8; do sh -c "while :; do :; done" & done; wait',
  ],
];

export async function noisyNeighbour(s: Section): Promise<void> {
  const env = new BenchEnv();
  try {
    await env.startGateway();
    await env.cliOk(
      [
        "sandbox",
        "create",
        "--name",
        "noisy",
        "--cpu",
        "1",
        "--memory",
        "256Mi",
        "--detach",
        "--",
        "sleep",
        "infinity",
      ],
      { timeoutMs: 60_000 },
    );
    for (const name of ["bomb", "quiet"]) {
      await env.cliOk(["sandbox", "create", "--name", name, "--detach", "--", "sleep", "infinity"], {
        timeoutMs: 60_000,
      });
    }
    const groupsOf = async (name: string) => {
      const { id } = JSON.parse(
        (await env.cliOk(["sandbox", "get", name, "-o", "json"], { timeoutMs: 30_000 })).stdout,
      ) as { id: string };
      const groups = findSandboxCgroups(id);
      if (!groups)
        throw new Error(`sandbox ${name} has no control groups: limits are not enforced on this host`);
      return groups;
    };
    const execTrue = async (): Promise<number> =>
      (await env.cliOk(["sandbox", "exec", "-n", "quiet", "--", "true"], { timeoutMs: 30_000 })).ms;
    const p50 = async (key: string): Promise<number> => {
      const samples: number[] = [];
      for (let i = 0; i < RUNS; i++) samples.push(await s.attempt(`exec beside ${key}`, execTrue));
      s.samples(`${key}_ms`, samples);
      return summarize(samples).p50;
    };
    progress("warming up");
    for (let i = 0; i < 3; i++) await execTrue();
    progress("B's exec round trip, its neighbours idle");
    const idle = await p50("idle");
    s.figure("idle_p50_ms", `B exec p50, neighbours idle (n=${RUNS})`, round(idle), "ms", formatMs(idle));
    for (const [key, label, sandbox, script] of LOADS) {
      progress(`B's exec round trip beside ${label} in ${sandbox}`);
      const groups = await groupsOf(sandbox);
      const load = env.cli(
        ["sandbox", "exec", "-n", sandbox, "--timeout", String(LOAD_SECONDS), "--", "sh", "-c", script],
        {
          timeoutMs: (LOAD_SECONDS + 30) * 1000,
        },
      );
      // Measured once the load is on: the neighbour busy with more than its idle processes or cpu.
      const before = cgroupUsage(groups);
      const on = Date.now() + 10_000;
      while (Date.now() < on) {
        const now = cgroupUsage(groups);
        if ((now.cpuSeconds ?? 0) - (before.cpuSeconds ?? 0) > 0.5) break;
        await delay(50);
      }
      let peakPids = 0;
      const sampler = setInterval(() => {
        peakPids = Math.max(peakPids, cgroupUsage(groups).pids ?? 0);
      }, 100);
      let busy: number;
      try {
        busy = await p50(key);
      } finally {
        clearInterval(sampler);
      }
      const ratio = busy / idle;
      s.figure(
        `${key}_p50_ms`,
        `B exec p50 beside ${label} in ${sandbox}`,
        round(busy),
        "ms",
        formatMs(busy),
      );
      s.figure(`${key}_ratio`, `  / idle p50`, round(ratio, 2), "ratio", `${ratio.toFixed(2)} ×`, {
        text: `≤ ${RATIO_TARGET} ×`,
        met: ratio <= RATIO_TARGET,
      });
      if (key === "fork_bomb") {
        s.figure(
          "fork_bomb_peak_pids",
          "bomb's peak processes (default limit)",
          peakPids,
          "count",
          String(peakPids),
          {
            text: `≤ ${DEFAULT_PIDS}`,
            met: peakPids <= DEFAULT_PIDS,
          },
        );
      }
      await load;
      // The exec's group is killed with it: A is back to idle before the next load.
      const settle = Date.now() + 10_000;
      while ((cgroupUsage(groups).pids ?? 0) > 8 && Date.now() < settle) await delay(50);
      s.note(`after ${label}: ${sandbox} holds ${cgroupUsage(groups).pids} processes`);
    }
  } finally {
    const problems = await env.dispose();
    for (const problem of problems) s.note(problem);
  }
}
