// Running and timing child processes for the bench, and reading what the
// kernel says about a process tree (resident memory, descendants).

import { type ChildProcess, type SpawnOptions, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createConnection } from "node:net";
import { setTimeout as delay } from "node:timers/promises";

/**
 * Set on Ctrl-C: running children are ended and nothing new is spawned, so
 * the sections unwind and the cleanup (which passes `duringAbort`) runs alone.
 */
const abort = new AbortController();
const running = new Set<ChildProcess>();

export function abortRuns(): void {
  abort.abort();
  for (const child of running) child.kill("SIGTERM");
}

export function aborted(): boolean {
  return abort.signal.aborted;
}

export function throwIfAborted(): void {
  if (abort.signal.aborted) throw new Error("interrupted");
}

export interface RunOptions {
  /** Runs even after Ctrl-C (cleanup commands). */
  duringAbort?: boolean;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to stdin, which is then closed; stdin is closed at once without it. */
  input?: string | Buffer;
  /** Kills the process and fails with the step named if it has not exited by then. */
  timeoutMs?: number;
  /** Counts stdout bytes instead of keeping them (for throughput runs). */
  countStdout?: boolean;
}

export interface Timed {
  command: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stdoutBytes: number;
  stderr: string;
  /** Spawn to the last byte of output and exit: what a user waits for. */
  ms: number;
}

/** A command that failed: carries the exact command line and its output for the report. */
export class CommandFailure extends Error {
  constructor(
    readonly result: Timed,
    why: string,
  ) {
    super(
      `${why}\n  command: ${result.command}\n  exit: ${result.code ?? result.signal}\n` +
        `  stdout: ${tail(result.stdout)}\n  stderr: ${tail(result.stderr)}`,
    );
  }
}

function tail(text: string, max = 1500): string {
  const trimmed = text.trim();
  if (trimmed === "") return "(empty)";
  return trimmed.length > max ? `...${trimmed.slice(-max)}` : trimmed;
}

/** Quotes an argument for display (and for sh), only when it needs it. */
export function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function runTimed(file: string, args: readonly string[], options: RunOptions = {}): Promise<Timed> {
  const command = [file, ...args].map(quote).join(" ");
  if (!options.duringAbort && abort.signal.aborted)
    return Promise.reject(new Error(`interrupted: ${command}`));
  const timeoutMs = options.timeoutMs ?? 60_000;
  const spawnOptions: SpawnOptions = { stdio: ["pipe", "pipe", "pipe"] };
  if (options.env) spawnOptions.env = options.env;
  if (options.cwd) spawnOptions.cwd = options.cwd;
  const started = process.hrtime.bigint();
  const child = spawn(file, args, spawnOptions);
  running.add(child);
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  let stdoutBytes = 0;
  child.stdout?.on("data", (d: Buffer) => {
    stdoutBytes += d.length;
    if (!options.countStdout) stdout.push(d);
  });
  child.stderr?.on("data", (d: Buffer) => stderr.push(d));
  child.stdin?.on("error", () => {});
  if (options.input !== undefined) child.stdin?.end(options.input);
  else child.stdin?.end();
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      running.delete(child);
      reject(new Error(`${command}: ${error.message}`));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      const result: Timed = {
        command,
        code,
        signal,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stdoutBytes,
        stderr: Buffer.concat(stderr).toString("utf8"),
        ms: Number(process.hrtime.bigint() - started) / 1e6,
      };
      if (timedOut) reject(new CommandFailure(result, `no exit within ${timeoutMs} ms`));
      else resolve(result);
    });
  });
}

/** Runs a command and fails (with the command and its output) unless it exits 0. */
export async function runOk(file: string, args: readonly string[], options: RunOptions = {}): Promise<Timed> {
  const result = await runTimed(file, args, options);
  if (result.code !== 0) throw new CommandFailure(result, "command failed");
  return result;
}

/** Resident set size of one process in bytes, from /proc/<pid>/status (undefined once gone). */
export function residentBytes(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Proportional set size in bytes, from /proc/<pid>/smaps_rollup: each shared
 * page counted as its share, so sums over processes are not inflated by the
 * code they all map. Falls back to VmRSS where smaps_rollup cannot be read.
 */
export function proportionalBytes(pid: number): number | undefined {
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const match = /^Pss:\s+(\d+)\s+kB/m.exec(rollup);
    if (match) return Number(match[1]) * 1024;
  } catch {
    // gone, or not ours to read
  }
  return residentBytes(pid);
}

/** Every live descendant of `pid` (children, grandchildren, ...), from /proc. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue;
    }
    // The command name is in parentheses and may hold spaces; the ppid is the second field after it.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const next = queue.shift()!;
    for (const child of children.get(next) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Waits for every pid to exit, up to `timeoutMs`; returns those still alive. */
export async function waitForExit(pids: readonly number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let alive = pids.filter(isAlive);
  while (alive.length > 0 && Date.now() < deadline) {
    await delay(50);
    alive = alive.filter(isAlive);
  }
  return alive;
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port; fails after `timeoutMs`. */
export async function waitForTcp(port: number, step: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const connected = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: "127.0.0.1", port });
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (connected) return;
    if (Date.now() > deadline)
      throw new Error(`${step}: nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await delay(20);
  }
}
