// `npm run bench [-- SECTION...]`: the figures the issues set targets for, measured on this
// machine against the bench's own gateway (private XDG directories, a free
// port) and, as the yardstick, a private OpenSSH sshd on 127.0.0.1.
//
//   1. create→Ready, p50/p95 over 20 sandboxes: CLI wall time and gateway-side
//   2. gateway resident memory with 0 and with 20 idle sandboxes
//   3. create→Ready with 256 injected files (10 MiB) against none
//   4. `sandbox exec -- true` round trip against `ssh 127.0.0.1 true` and `node -e 0`
//   5. exec stdout throughput (100 MB)
//   6. upload/download of a 200 MB tree against `tar | ssh` and a local `tar | tar` pipe
//   7. a 60 s stdout flood: log size, gateway and supervisor memory, `gateway start` after it (bench/flood.ts)
//   8. exec round trip of a sandbox beside a fork bomb, a memory hog and a cpu spin in another (bench/neighbour.ts)
//   9. the TypeScript API: warm in-process exec("true") p50 and 100 concurrent execs, against
//      OpenSSH with a ControlMaster connection (`ssh -S`) (bench/api.ts)
//  10. sandboxes from images: first pull + unpack against skopeo + umoci alone, create→Ready
//      from a cached image against the host root, the disk 20 sandboxes of one image add
//      (bench/images.ts)
//  11. port forwarding: 100 MB through `sandbox.forward` against `ssh -L` to the private sshd
//      and a direct loopback connection (bench/forward.ts)
//
// A section that cannot run says why and the others still run. Everything
// started here is stopped and every temp directory removed, also on failure
// or Ctrl-C. The table goes to stdout, progress to stderr, and the figures to
// .bench/latest.json (git-ignored).

import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { sha256Hex } from "../src/core/files.js";
import type { SandboxFile } from "../src/gen/openshell.js";
import { apiExec } from "./api.js";
import { logFlood } from "./flood.js";
import { forwardThroughput } from "./forward.js";
import { imageSandboxes } from "./images.js";
import { BenchEnv, type GatewayInfo, ROOT } from "./lib/gateway.js";
import {
  aborted,
  abortRuns,
  descendants,
  proportionalBytes,
  quote,
  residentBytes,
  runOk,
  type Timed,
} from "./lib/proc.js";
import {
  progress,
  renderTable,
  runSection,
  type Section,
  type SectionReport,
  writeJson,
} from "./lib/report.js";
import { PrivateSshd } from "./lib/sshd.js";
import { formatMiB, formatMs, megabytesPerSecond, percentile, round, summarize } from "./lib/stats.js";
import { generateTree, verifySample } from "./lib/tree.js";
import { noisyNeighbour } from "./neighbour.js";

const CREATE_RUNS = 20;
const IDLE_SANDBOXES = 20;
const FILE_RUNS = 16;
const FILE_COUNT = 256;
const FILE_TOTAL = 10 * 1024 * 1024;
const EXEC_RUNS = 30;
const SECTION_COUNT = 11;
const STREAM_BYTES = 100_000_000;
const STREAM_RUNS = 3;
const TREE_BIG_FILES = 40;
const TREE_BIG_BYTES = 5_000_000;
const TREE_SMALL_FILES = 1000;
const TRANSFER_ROUNDS = 3;
/** The sandbox sections 4–6 share. */
const IO_SANDBOX = "bench-io";
const IDLE_COMMAND = ["sleep", "infinity"];

const CREATE_TARGET_MS = 300;
const FILES_ADDED_TARGET_MS = 150;
const EXEC_RATIO_TARGET = 0.6;
const UPLOAD_RATIO_TARGET = 1.0;

export interface Shared {
  env: BenchEnv;
  gateway(): GatewayInfo;
  /** The sandbox sections 4–6 share, created on first use; failed attempts are recorded in `s`. */
  ioSandbox(s: Section): Promise<string>;
  sshd(): Promise<PrivateSshd>;
}

let serial = 0;
/** A sandbox name not used before in this run (a retried attempt gets a new one). */
function fresh(prefix: string): string {
  serial += 1;
  return `${prefix}-${serial}`;
}

function createArgs(name: string, extra: readonly string[] = []): string[] {
  return ["sandbox", "create", "--name", name, "--detach", ...extra, "--", ...IDLE_COMMAND];
}

function within(value: number, limit: number, unit: string): { text: string; met: boolean } {
  return { text: `≤ ${limit}${unit}`, met: value <= limit };
}

/** Deletes the sandboxes a section made; a failure is noted, not thrown, so it cannot hide the section's own. */
async function deleteAll(s: Section, env: BenchEnv, names: readonly string[]): Promise<void> {
  for (const name of names) {
    await env.deleteSandbox(name).catch((error: Error) => s.note(`cleanup: ${error.message}`));
  }
}

// ---- 1. create→Ready ----

async function createLatency(s: Section, { env, gateway }: Shared): Promise<void> {
  gateway();
  progress("warming up the gateway (one sandbox by the CLI, one over gRPC)");
  await s.attempt("warm-up", async () => {
    const name = fresh("bench-w");
    try {
      await env.cliOk(createArgs(name), { timeoutMs: 60_000 });
    } finally {
      await env.deleteSandbox(name);
    }
  });
  await s.attempt("warm-up", async () => {
    const name = fresh("bench-w");
    try {
      await env.createReady(name, IDLE_COMMAND);
    } finally {
      await env.deleteSandbox(name);
    }
  });

  // Interleaved, so both series see the same number of live sandboxes.
  const cli: number[] = [];
  const rpc: number[] = [];
  const created: string[] = [];
  try {
    for (let i = 0; i < CREATE_RUNS; i++) {
      cli.push(
        await s.attempt("CLI create", async () => {
          const name = fresh("bench-c");
          created.push(name);
          return (await env.cliOk(createArgs(name), { timeoutMs: 60_000 })).ms;
        }),
      );
      rpc.push(
        await s.attempt("gRPC create", async () => {
          const name = fresh("bench-g");
          created.push(name);
          return env.createReady(name, IDLE_COMMAND);
        }),
      );
    }
    progress(`CLI p50 ${formatMs(percentile(cli, 50))}, gateway-side p50 ${formatMs(percentile(rpc, 50))}`);
  } finally {
    s.samples("cli_ms", cli);
    s.samples("grpc_ms", rpc);
    if (cli.length > 0) {
      const c = summarize(cli);
      s.figure("cli_p50_ms", `CLI wall time p50 (n=${c.n})`, round(c.p50), "ms", formatMs(c.p50), {
        ...within(c.p50, CREATE_TARGET_MS, " ms"),
      });
      s.figure("cli_p95_ms", `CLI wall time p95 (n=${c.n})`, round(c.p95), "ms", formatMs(c.p95));
    }
    if (rpc.length > 0) {
      const g = summarize(rpc);
      s.figure(
        "grpc_p50_ms",
        `gateway-side p50 (CreateSandbox→Ready, n=${g.n})`,
        round(g.p50),
        "ms",
        formatMs(g.p50),
        {
          ...within(g.p50, CREATE_TARGET_MS, " ms"),
        },
      );
      s.figure("grpc_p95_ms", `gateway-side p95 (n=${g.n})`, round(g.p95), "ms", formatMs(g.p95));
    }
    progress(`deleting ${created.length} sandboxes`);
    await deleteAll(s, env, created);
  }
}

// ---- 2. gateway memory ----

/** The gateway and everything it started (supervisors, bubblewrap, agents, the sandboxes' processes). */
function treeMemory(pid: number): { bytes: number; processes: number } {
  const pids = [pid, ...descendants(pid)];
  let bytes = 0;
  for (const p of pids) bytes += proportionalBytes(p) ?? 0;
  return { bytes, processes: pids.length };
}

async function gatewayMemory(
  s: Section,
  { env, gateway }: Shared,
  coldRss: number | undefined,
): Promise<void> {
  const { pid } = gateway();
  const read = (what: string): number => {
    const bytes = residentBytes(pid);
    if (bytes === undefined)
      throw new Error(`the gateway (pid ${pid}) is gone: cannot read its memory ${what}`);
    return bytes;
  };
  if (coldRss !== undefined) {
    s.figure("rss_cold_bytes", "gateway VmRSS just after start", coldRss, "bytes", formatMiB(coldRss));
  }
  const rss0 = read("with 0 sandboxes");
  const tree0 = treeMemory(pid);
  s.figure("rss_0_bytes", "gateway VmRSS, 0 sandboxes (warm)", rss0, "bytes", formatMiB(rss0));
  const names: string[] = [];
  try {
    progress(`creating ${IDLE_SANDBOXES} idle sandboxes (${IDLE_COMMAND.join(" ")})`);
    for (let i = 0; i < IDLE_SANDBOXES; i++) {
      await s.attempt("gRPC create", async () => {
        const name = fresh("bench-m");
        try {
          await env.createReady(name, IDLE_COMMAND);
        } catch (error) {
          // Only Ready sandboxes count as idle ones: a failed one goes at once.
          await env.deleteSandbox(name);
          throw error;
        }
        names.push(name);
      });
    }
    // Let start-up garbage settle: this is a measurement pause, not a wait for an event.
    await delay(2_000);
    const rss20 = read(`with ${IDLE_SANDBOXES} sandboxes`);
    const tree20 = treeMemory(pid);
    s.figure(
      "rss_20_bytes",
      `gateway VmRSS, ${IDLE_SANDBOXES} idle sandboxes`,
      rss20,
      "bytes",
      formatMiB(rss20),
    );
    const perSandbox = (rss20 - rss0) / IDLE_SANDBOXES;
    s.figure(
      "rss_per_sandbox_bytes",
      "gateway growth per idle sandbox",
      round(perSandbox, 0),
      "bytes",
      formatMiB(perSandbox),
    );
    s.figure(
      "tree_rss_20_bytes",
      `gateway + all it started, ${IDLE_SANDBOXES} idle (Σ PSS, ${tree20.processes} procs)`,
      tree20.bytes,
      "bytes",
      formatMiB(tree20.bytes),
    );
    const treePer = (tree20.bytes - tree0.bytes) / IDLE_SANDBOXES;
    s.figure(
      "tree_rss_per_sandbox_bytes",
      "whole cost per idle sandbox (Σ PSS)",
      round(treePer, 0),
      "bytes",
      formatMiB(treePer),
    );
    s.note(
      "PSS (/proc/PID/smaps_rollup) splits each shared page among the processes sharing it, so the sum is the tree's real footprint.",
    );
  } finally {
    await deleteAll(s, env, names);
  }
  await delay(2_000);
  const after = read("after deleting the sandboxes");
  s.figure("rss_after_delete_bytes", "gateway VmRSS after deleting them", after, "bytes", formatMiB(after));
}

// ---- 3. injected files ----

/** The files must really be in the sandbox, byte-identical, for the figure to mean anything. */
async function checkInjected(env: BenchEnv, name: string, files: readonly SandboxFile[]): Promise<void> {
  const check = await env.cliOk(
    ["sandbox", "exec", "-n", name, "--", "sha256sum", ...files.map((f) => f.path)],
    {
      timeoutMs: 30_000,
    },
  );
  for (const file of files) {
    if (!check.stdout.includes(`${file.sha256}  ${file.path}`)) {
      throw new Error(
        `injected file ${file.path} is not byte-identical inside the sandbox:\n${check.stdout}`,
      );
    }
  }
}

async function injectedFiles(s: Section, { env, gateway }: Shared): Promise<void> {
  gateway();
  const dir = join(env.root, "inject");
  mkdirSync(dir);
  const size = FILE_TOTAL / FILE_COUNT;
  const flags: string[] = [];
  const files: SandboxFile[] = [];
  for (let i = 0; i < FILE_COUNT; i++) {
    const name = `f${String(i).padStart(3, "0")}`;
    const content = randomBytes(size);
    writeFileSync(join(dir, name), content);
    flags.push("--file", `${join(dir, name)}:/opt/bench/${name}`);
    files.push({ path: `/opt/bench/${name}`, content, mode: 0o444, size, sha256: sha256Hex(content) });
  }
  progress(`${FILE_COUNT} files of ${size} bytes (${formatMiB(FILE_TOTAL)}), ${FILE_RUNS} runs of each kind`);

  const series = {
    cliNone: [] as number[],
    cliFiles: [] as number[],
    rpcNone: [] as number[],
    rpcFiles: [] as number[],
  };
  try {
    // Each sandbox is deleted right after its measurement, so every run sees the same gateway.
    const measure = (
      what: string,
      prefix: string,
      create: (name: string) => Promise<number>,
    ): Promise<number> =>
      s.attempt(what, async () => {
        const name = fresh(prefix);
        try {
          return await create(name);
        } finally {
          await env.deleteSandbox(name);
        }
      });
    for (let i = 0; i < FILE_RUNS; i++) {
      series.cliNone.push(
        await measure("CLI create", "bench-fn", async (name) => {
          return (await env.cliOk(createArgs(name), { timeoutMs: 60_000 })).ms;
        }),
      );
      series.cliFiles.push(
        await measure("CLI create --file ×256", "bench-ff", async (name) => {
          const ms = (await env.cliOk(createArgs(name, flags), { timeoutMs: 60_000 })).ms;
          if (i === 0) await checkInjected(env, name, [files[0]!, files[FILE_COUNT - 1]!]);
          return ms;
        }),
      );
      series.rpcNone.push(
        await measure("gRPC create", "bench-rn", (name) => env.createReady(name, IDLE_COMMAND)),
      );
      series.rpcFiles.push(
        await measure("gRPC create, 256 files", "bench-rf", (name) =>
          env.createReady(name, IDLE_COMMAND, files),
        ),
      );
    }
  } finally {
    for (const [key, values] of Object.entries(series)) s.samples(key, values);
    for (const [kind, none, withFiles] of [
      ["CLI", series.cliNone, series.cliFiles],
      ["gateway-side", series.rpcNone, series.rpcFiles],
    ] as const) {
      if (none.length === 0 || withFiles.length === 0) continue;
      const key = kind === "CLI" ? "cli" : "grpc";
      const a = percentile(none, 50);
      const b = percentile(withFiles, 50);
      s.figure(`${key}_none_p50_ms`, `${kind} p50, no files (n=${none.length})`, round(a), "ms", formatMs(a));
      s.figure(
        `${key}_files_p50_ms`,
        `${kind} p50, 256 files / 10 MiB (n=${withFiles.length})`,
        round(b),
        "ms",
        formatMs(b),
      );
      s.figure(`${key}_added_ms`, `${kind} added by the files`, round(b - a), "ms", formatMs(b - a), {
        ...within(b - a, FILES_ADDED_TARGET_MS, " ms"),
      });
    }
  }
}

// ---- 4. exec round trip against OpenSSH ----

async function execLatency(s: Section, shared: Shared): Promise<void> {
  const { env } = shared;
  const name = await shared.ioSandbox(s);
  let sshd: PrivateSshd | undefined;
  try {
    sshd = await shared.sshd();
  } catch (error) {
    s.note(`OpenSSH yardstick not measured: ${error instanceof Error ? error.message : String(error)}`);
  }
  const execTrue = async (): Promise<Timed> =>
    env.cliOk(["sandbox", "exec", "-n", name, "--", "true"], { timeoutMs: 30_000 });
  const sshTrue = async (): Promise<Timed> =>
    runOk("ssh", [...sshd!.sshArgs(), "true"], { timeoutMs: 30_000 });
  const nodeNothing = async (): Promise<Timed> => runOk(process.execPath, ["-e", "0"], { timeoutMs: 30_000 });

  progress("warming up");
  for (let i = 0; i < 2; i++) {
    await s.attempt("sandbox exec -- true (warm-up)", execTrue);
    if (sshd) await s.attempt("ssh true (warm-up)", sshTrue);
    await nodeNothing();
  }
  const exec: number[] = [];
  const ssh: number[] = [];
  const node: number[] = [];
  try {
    // Interleaved, so a slow moment of the machine hits all three alike.
    for (let i = 0; i < EXEC_RUNS; i++) {
      exec.push((await s.attempt("sandbox exec -- true", execTrue)).ms);
      if (sshd) ssh.push((await s.attempt("ssh true", sshTrue)).ms);
      node.push((await s.attempt("node -e 0", nodeNothing)).ms);
    }
  } finally {
    s.samples("exec_ms", exec);
    s.samples("ssh_ms", ssh);
    s.samples("node_ms", node);
    const rows: [string, string, number[]][] = [
      ["exec", "openshell sandbox exec -- true", exec],
      ["ssh", "ssh 127.0.0.1 true (private sshd)", ssh],
      ["node", "node -e 0 (reference)", node],
    ];
    for (const [key, label, values] of rows) {
      if (values.length === 0) continue;
      const sum = summarize(values);
      s.figure(`${key}_p50_ms`, `${label} p50 (n=${sum.n})`, round(sum.p50), "ms", formatMs(sum.p50));
      s.figure(`${key}_p95_ms`, `${label} p95`, round(sum.p95), "ms", formatMs(sum.p95));
    }
    if (exec.length > 0 && ssh.length > 0) {
      const ratio = percentile(exec, 50) / percentile(ssh, 50);
      s.figure("exec_over_ssh", "exec p50 / ssh p50", round(ratio, 2), "ratio", `${ratio.toFixed(2)} ×`, {
        text: `≤ ${EXEC_RATIO_TARGET} ×`,
        met: ratio <= EXEC_RATIO_TARGET,
      });
    }
  }
}

// ---- 5. exec stdout throughput ----

async function execThroughput(s: Section, shared: Shared): Promise<void> {
  const name = await shared.ioSandbox(s);
  const rates: number[] = [];
  try {
    for (let i = 0; i < STREAM_RUNS; i++) {
      const result = await s.attempt("sandbox exec -- head -c 100000000 /dev/zero", async () => {
        const run = await shared.env.cliOk(
          ["sandbox", "exec", "-n", name, "--", "head", "-c", String(STREAM_BYTES), "/dev/zero"],
          { timeoutMs: 300_000, countStdout: true },
        );
        if (run.stdoutBytes !== STREAM_BYTES) {
          throw new Error(
            `${run.command}: ${run.stdoutBytes} bytes arrived on stdout, expected ${STREAM_BYTES}\n  stderr: ${run.stderr.trim()}`,
          );
        }
        return run;
      });
      rates.push(megabytesPerSecond(STREAM_BYTES, result.ms));
      progress(`run ${i + 1}: ${formatMs(result.ms)}, ${rates.at(-1)!.toFixed(0)} MB/s, all bytes arrived`);
    }
  } finally {
    s.samples("mb_per_s", rates);
    if (rates.length > 0) {
      const median = percentile(rates, 50);
      s.figure(
        "stdout_mb_per_s",
        `exec stdout, 100 MB to a counting sink (median of ${rates.length})`,
        round(median),
        "MB/s",
        `${median.toFixed(0)} MB/s`,
      );
    }
  }
}

// ---- 6. transfer against tar | ssh and tar | tar ----

async function transfer(s: Section, shared: Shared): Promise<void> {
  const { env } = shared;
  const name = await shared.ioSandbox(s);
  const base = join(env.root, "transfer");
  progress(`generating ${TREE_BIG_FILES} × ${TREE_BIG_BYTES / 1e6} MB + ${TREE_SMALL_FILES} small files`);
  const tree = generateTree(join(base, "src", "tree"), TREE_BIG_FILES, TREE_BIG_BYTES, TREE_SMALL_FILES);
  s.figure(
    "tree_bytes",
    `tree (${tree.fileCount} files)`,
    tree.totalBytes,
    "bytes",
    `${(tree.totalBytes / 1e6).toFixed(1)} MB`,
  );
  let sshd: PrivateSshd | undefined;
  try {
    sshd = await shared.sshd();
  } catch (error) {
    s.note(`tar | ssh not measured: ${error instanceof Error ? error.message : String(error)}`);
  }
  const sshDest = join(base, "ssh-dest");
  const pipeDest = join(base, "pipe-dest");
  const remote = "/sandbox/up";

  const upload = (): Promise<number> =>
    s.attempt("sandbox upload", async () => {
      await env.cliOk(["sandbox", "exec", "-n", name, "--", "rm", "-rf", remote], { timeoutMs: 60_000 });
      return (await env.cliOk(["sandbox", "upload", name, tree.dir, remote], { timeoutMs: 300_000 })).ms;
    });
  const viaSsh = async (): Promise<number> => {
    rmSync(sshDest, { recursive: true, force: true });
    const remoteCommand = `mkdir -p ${quote(sshDest)} && tar x -C ${quote(sshDest)}`;
    const script = `set -o pipefail; tar c -C ${quote(tree.dir)} . | ssh ${sshd!.sshArgs().map(quote).join(" ")} ${quote(remoteCommand)}`;
    return (await runOk("bash", ["-c", script], { timeoutMs: 300_000 })).ms;
  };
  const viaPipe = async (): Promise<number> => {
    rmSync(pipeDest, { recursive: true, force: true });
    mkdirSync(pipeDest);
    const script = `set -o pipefail; tar c -C ${quote(tree.dir)} . | tar x -C ${quote(pipeDest)}`;
    return (await runOk("bash", ["-c", script], { timeoutMs: 300_000 })).ms;
  };

  const rate = (ms: number): number => megabytesPerSecond(tree.totalBytes, ms);
  const up: number[] = [];
  const ssh: number[] = [];
  const pipe: number[] = [];
  const down: number[] = [];
  const figures = (): void => {
    s.samples("upload_mb_per_s", up);
    s.samples("ssh_mb_per_s", ssh);
    s.samples("pipe_mb_per_s", pipe);
    s.samples("download_mb_per_s", down);
    const rows: [string, string, number[]][] = [
      ["upload", "openshell sandbox upload", up],
      ["ssh", "tar c | ssh 127.0.0.1 tar x (private sshd)", ssh],
      ["pipe", "tar c | tar x, local (ceiling)", pipe],
      ["download", "openshell sandbox download", down],
    ];
    for (const [key, label, values] of rows) {
      if (values.length === 0) continue;
      const median = percentile(values, 50);
      s.figure(
        `${key}_mb_per_s`,
        `${label} (median of ${values.length})`,
        round(median),
        "MB/s",
        `${median.toFixed(0)} MB/s`,
      );
    }
    if (up.length > 0 && ssh.length > 0) {
      const ratio = percentile(up, 50) / percentile(ssh, 50);
      s.figure("upload_over_ssh", "upload / tar|ssh", round(ratio, 2), "ratio", `${ratio.toFixed(2)} ×`, {
        text: `≥ ${UPLOAD_RATIO_TARGET.toFixed(1)} ×`,
        met: ratio >= UPLOAD_RATIO_TARGET,
      });
    }
  };
  try {
    for (let round = 0; round < TRANSFER_ROUNDS; round++) {
      up.push(rate(await upload()));
      if (sshd) ssh.push(rate(await viaSsh()));
      pipe.push(rate(await viaPipe()));
      progress(
        `round ${round + 1}: upload ${up.at(-1)!.toFixed(0)} MB/s` +
          (sshd ? `, tar|ssh ${ssh.at(-1)!.toFixed(0)} MB/s` : "") +
          `, tar|tar ${pipe.at(-1)!.toFixed(0)} MB/s`,
      );
    }
    if (sshd) verifySample(tree, sshDest, "tar | ssh copy");
    verifySample(tree, pipeDest, "tar | tar copy");
    for (let round = 0; round < TRANSFER_ROUNDS; round++) {
      const dest = join(base, `download-${round}`);
      const ms = await s.attempt("sandbox download", async () => {
        rmSync(dest, { recursive: true, force: true });
        const result = await env.cliOk(["sandbox", "download", name, `${remote}/tree`, dest], {
          timeoutMs: 300_000,
        });
        verifySample(tree, dest, `openshell sandbox download (round ${round + 1})`);
        return result.ms;
      });
      rmSync(dest, { recursive: true, force: true });
      down.push(rate(ms));
      progress(`download ${round + 1}: ${down.at(-1)!.toFixed(0)} MB/s, sampled files byte-identical`);
    }
    s.note(
      `downloads checked byte-identical (sha256) on ${tree.sample.length} sampled files of the uploaded tree`,
    );
  } finally {
    figures();
    rmSync(base, { recursive: true, force: true });
  }
}

// ---- main ----

/** Other work on the machine skews every figure: the load average is printed beside them. */
function loadText(): string {
  return loadavg()
    .map((v) => v.toFixed(2))
    .join(" ");
}

/** `npm run bench -- 3 6` runs only sections 3 and 6 (section 2 needs section 1's sandboxes). */
function selectedSections(args: readonly string[]): Set<number> {
  const only = new Set<number>();
  for (const arg of args) {
    const id = Number(arg);
    if (!Number.isInteger(id) || id < 1 || id > SECTION_COUNT)
      throw new Error(`bench: unknown section "${arg}"; use 1 to ${SECTION_COUNT}`);
    only.add(id);
  }
  return only;
}

async function main(): Promise<number> {
  // This process runs with the CLI's malloc settings (package.json's bench
  // script), as its gRPC client stands in for the CLI. What it starts must not
  // inherit them: the ssh and tar yardsticks run as a user's would, and
  // openshell's own processes set theirs.
  delete process.env.GLIBC_TUNABLES;
  const only = selectedSections(process.argv.slice(2));
  const started = Date.now();
  const loadAtStart = loadavg().map((v) => round(v, 2));
  const env = new BenchEnv();
  let sshd: PrivateSshd | undefined;
  const sections: SectionReport[] = [];
  const cleanupProblems: string[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      process.stderr.write("\ncleaning up\n");
      await sshd?.stop().catch((error: Error) => cleanupProblems.push(`cleanup: sshd: ${error.message}`));
      cleanupProblems.push(...(await env.dispose()));
    })();
    return cleaning;
  };
  // The first Ctrl-C ends the running commands and lets the sections unwind
  // into the cleanup below; a second one cleans up at once and exits.
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    process.stderr.write(`\n${signal}: stopping\n`);
    abortRuns();
    if (signals > 1) void cleanup().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let gateway: GatewayInfo | undefined;
  let gatewayError = "";
  let ioSandbox: Promise<string> | undefined;
  let sshdStart: Promise<PrivateSshd> | undefined;
  const shared: Shared = {
    env,
    gateway: () => {
      if (!gateway) throw new Error(`not run: the bench's gateway did not start: ${gatewayError}`);
      return gateway;
    },
    ioSandbox: (s) => {
      ioSandbox ??= (async () => {
        shared.gateway();
        return s.attempt("CLI create", async () => {
          const name = fresh(IO_SANDBOX);
          await env.cliOk(createArgs(name), { timeoutMs: 60_000 });
          return name;
        });
      })();
      return ioSandbox;
    },
    sshd: () => {
      sshdStart ??= (async () => {
        sshd = new PrivateSshd();
        await sshd.start();
        progress(`private sshd listening on 127.0.0.1:${sshd.port}`);
        return sshd;
      })();
      return sshdStart;
    },
  };

  try {
    process.stderr.write(
      `openshell bench: ${cpus().length} CPUs, node ${process.version}, load ${loadText()}, temp ${env.root}\n`,
    );
    try {
      gateway = await env.startGateway();
      process.stderr.write(`gateway pid ${gateway.pid} at ${gateway.endpoint}\n`);
    } catch (error) {
      gatewayError = error instanceof Error ? error.message : String(error);
      process.stderr.write(`gateway did not start: ${gatewayError}\n`);
    }
    const coldRss = gateway ? residentBytes(gateway.pid) : undefined;
    const all: [string, (s: Section) => Promise<void>][] = [
      ["create→Ready (--detach, warm gateway)", (s) => createLatency(s, shared)],
      ["gateway resident memory", (s) => gatewayMemory(s, shared, coldRss)],
      ["create→Ready with injected files", (s) => injectedFiles(s, shared)],
      ["exec round trip vs OpenSSH", (s) => execLatency(s, shared)],
      ["exec stdout throughput", (s) => execThroughput(s, shared)],
      ["transfer of a 200 MB tree", (s) => transfer(s, shared)],
      ["a 60 s stdout flood (own gateway)", (s) => logFlood(s)],
      ["exec beside a noisy neighbour (own gateway)", (s) => noisyNeighbour(s)],
      ["API exec vs OpenSSH ControlMaster", (s) => apiExec(s, shared)],
      ["sandboxes from images (own gateway, own registry)", (s) => imageSandboxes(s)],
      ["port forward throughput vs ssh -L", (s) => forwardThroughput(s, shared)],
    ];
    for (const [index, [title, body]] of all.entries()) {
      if (only.size === 0 || only.has(index + 1)) sections.push(await runSection(index + 1, title, body));
    }
  } finally {
    await cleanup();
  }

  const seconds = (Date.now() - started) / 1000;
  const document = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? "", kernel: release(), node: process.version },
    load: { atStart: loadAtStart, atEnd: loadavg().map((v) => round(v, 2)) },
    seconds: round(seconds),
    sections,
    cleanup: cleanupProblems,
  };
  const file = writeJson(join(ROOT, ".bench"), document);
  process.stdout.write(
    `\nopenshell bench — ${cpus().length} CPUs, node ${process.version}, ${seconds.toFixed(0)} s, ` +
      `load average ${loadAtStart.join(" ")} at start, ${loadText()} at end\n`,
  );
  process.stdout.write(`${renderTable(sections)}\n`);
  for (const problem of cleanupProblems) process.stdout.write(`  ${problem}\n`);
  process.stdout.write(`\nFigures written to ${file}\n`);
  if (aborted()) return 130;
  return sections.some((section) => section.status === "failed") || cleanupProblems.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(
      `bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exit(1);
  },
);
