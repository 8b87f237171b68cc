// Bench section: a sandbox's main command floods stdout (`yes`) for 60 s.
// What must stay bounded (issue: containment of output): the log on disk
// (the cap is 10 MiB × 2 files by default), the gateway's and the flooding
// supervisor's memory (against their idle figures, same run), and the time
// `gateway start` takes with the flooded log against a start with small logs
// (same gateway, same sandboxes, a minute earlier).
//
// It runs on a gateway of its own, since it restarts it twice.

import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { BenchEnv } from "./lib/gateway.js";
import { descendants, residentBytes } from "./lib/proc.js";
import { progress, type Section } from "./lib/report.js";
import { formatMiB, formatMs, round } from "./lib/stats.js";

const FLOOD_SECONDS = 60;
const LOG_CAP_BYTES = 2 * 10 * 1024 * 1024;
const START_RATIO_TARGET = 1.5;
const MEMORY_GROWTH_TARGET = 64 * 1024 * 1024;

/** Waits for /sandbox/go, floods once (the flag file keeps a restart from flooding again), then idles. */
const FLOOD_COMMAND = [
  "sh",
  "-c",
  `until test -e /sandbox/go; do sleep 0.2; done; test -e /sandbox/done || { timeout ${FLOOD_SECONDS} yes; touch /sandbox/done; }; exec sleep infinity`,
];

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
  } catch {
    return "";
  }
}

export async function logFlood(s: Section): Promise<void> {
  const env = new BenchEnv();
  try {
    const gateway = await env.startGateway();
    await env.cliOk(["sandbox", "create", "--name", "quiet", "--detach", "--", "sleep", "infinity"], {
      timeoutMs: 60_000,
    });
    await env.cliOk(["sandbox", "create", "--name", "flood", "--detach", "--", ...FLOOD_COMMAND], {
      timeoutMs: 60_000,
    });
    const readyAgain = async (name: string): Promise<void> => {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const got = await env.cli(["sandbox", "get", name, "-o", "json"], { timeoutMs: 30_000 });
        if (got.code === 0 && (JSON.parse(got.stdout) as { phase: string }).phase === "Ready") return;
        if (Date.now() > deadline)
          throw new Error(`sandbox ${name} not Ready again within 60 s of the restart`);
        await delay(100);
      }
    };
    const restart = async (): Promise<{ ms: number; pid: number }> => {
      await env.cliOk(["gateway", "stop"], { timeoutMs: 60_000 });
      const { ms } = await env.cliOk(["gateway", "start", "--port", "0"], { timeoutMs: 60_000 });
      const info = JSON.parse(
        readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.json"), "utf8"),
      ) as { pid: number };
      env.gateway = { ...gateway, ...info };
      return { ms, pid: info.pid };
    };
    progress("gateway restart with small logs");
    const small = await restart();
    const { id } = JSON.parse(
      (await env.cliOk(["sandbox", "get", "flood", "-o", "json"], { timeoutMs: 30_000 })).stdout,
    ) as { id: string };
    const logDir = join(env.stateHome, "openshell", "gateways", "local", "sandboxes", id);
    const logBytes = (): number =>
      readdirSync(logDir)
        .filter((file) => file.startsWith("sandbox.log"))
        .reduce((sum, file) => sum + statSync(join(logDir, file)).size, 0);
    const supervisors = descendants(small.pid).filter((pid) => cmdline(pid).includes("supervisor.mjs"));
    // Both sandboxes are up again (the flood one waits for its flag): their supervisors idle.
    await readyAgain("quiet");
    await readyAgain("flood");
    const idle = {
      gateway: residentBytes(small.pid) ?? 0,
      supervisor: Math.max(...supervisors.map((pid) => residentBytes(pid) ?? 0)),
    };
    progress(`flooding for ${FLOOD_SECONDS} s`);
    await env.cliOk(["sandbox", "exec", "-n", "flood", "--", "touch", "/sandbox/go"], { timeoutMs: 60_000 });
    const peak = { gateway: 0, supervisor: 0, log: 0 };
    const floodEnds = Date.now() + FLOOD_SECONDS * 1000;
    while (Date.now() < floodEnds) {
      // Sampling over a fixed span: the peak over the flood is the figure.
      await delay(1000);
      peak.gateway = Math.max(peak.gateway, residentBytes(small.pid) ?? 0);
      for (const pid of supervisors) peak.supervisor = Math.max(peak.supervisor, residentBytes(pid) ?? 0);
      peak.log = Math.max(peak.log, logBytes());
    }
    s.figure(
      "flood_log_peak_bytes",
      "sandbox.log* peak during the flood",
      peak.log,
      "bytes",
      formatMiB(peak.log),
      {
        text: `≤ ${formatMiB(LOG_CAP_BYTES)}`,
        met: peak.log <= LOG_CAP_BYTES,
      },
    );
    const rows: [string, string, number, number][] = [
      ["gateway", "gateway VmRSS growth (peak − idle)", peak.gateway, idle.gateway],
      ["supervisor", "supervisor VmRSS growth (peak − idle)", peak.supervisor, idle.supervisor],
    ];
    for (const [key, label, top, base] of rows) {
      s.figure(`flood_${key}_growth_bytes`, label, top - base, "bytes", formatMiB(top - base), {
        text: `≤ ${formatMiB(MEMORY_GROWTH_TARGET)}`,
        met: top - base <= MEMORY_GROWTH_TARGET,
      });
    }
    const logs = await env.cli(["logs", "flood", "-n", "2000"], { timeoutMs: 60_000 });
    const dropped = logs.stderr.includes("earlier log lines were dropped");
    s.note(
      `\`logs -n 2000\` after the flood: ${dropped ? "says earlier lines were dropped" : "DOES NOT say lines were dropped"}`,
    );
    progress("gateway restart with the flooded log");
    const flooded = await restart();
    s.figure("start_small_ms", "`gateway start`, small logs", round(small.ms), "ms", formatMs(small.ms));
    s.figure(
      "start_flooded_ms",
      "`gateway start`, flooded log",
      round(flooded.ms),
      "ms",
      formatMs(flooded.ms),
    );
    const ratio = flooded.ms / small.ms;
    s.figure("start_ratio", "flooded / small start", round(ratio, 2), "ratio", `${ratio.toFixed(2)} ×`, {
      text: `≤ ${START_RATIO_TARGET} ×`,
      met: ratio <= START_RATIO_TARGET,
    });
    const after = residentBytes(flooded.pid) ?? 0;
    s.figure(
      "rss_after_flooded_start_bytes",
      "gateway VmRSS after that start",
      after,
      "bytes",
      formatMiB(after),
    );
  } finally {
    const problems = await env.dispose();
    for (const problem of problems) s.note(problem);
  }
}
