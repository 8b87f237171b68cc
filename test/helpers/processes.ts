// The host's view of a gateway's processes, read from /proc.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { TestEnv } from "./cli.js";

/** The direct children of `pid`, from every one of its threads. */
export function children(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((task) =>
    readFileSync(`/proc/${pid}/task/${task}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number),
  );
}

/** A process's command line, NUL-separated; empty once it is gone. */
export function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return "";
  }
}

/** Live processes whose command line mentions `text` (a temporary directory only one run uses). */
export function processesMentioning(text: string): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
    .map(Number)
    .filter((pid) => commandLine(pid).includes(text));
}

/** Kills (SIGKILL) every process whose command line mentions `text`. */
export function killMentioning(text: string): void {
  for (const pid of processesMentioning(text)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  }
}

export const isSupervisor = (pid: number): boolean => commandLine(pid).includes("supervisor.mjs");

/** The pid of the environment's running gateway `name`. */
export function gatewayPid(env: TestEnv, name = "local"): number {
  return Number(
    readFileSync(join(env.stateHome, "openshell", "gateways", name, "gateway.pid"), "utf8").trim(),
  );
}
