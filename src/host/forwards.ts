// Background forwards (`forward start -d`, `sandbox create --forward`): each
// runs as a process of its own, which records itself in the state directory
// ($XDG_STATE_HOME/openshell/forwards/<port>-<pid>.json) once it listens
// and removes its record when it ends. A record names the process by its pid
// and start time, so a process that died without a word (kill -9) leaves a
// record that is told apart as stale, and is removed, and a later process
// given the same pid is never taken for it, nor signalled.

import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { ensurePrivateDir, stateRoot, writeFileAtomic } from "./config.js";
import { orElse } from "./fs.js";
import { identityAlive, type ProcessIdentity, processIdentity } from "./process.js";

export interface ForwardRecord {
  pid: number;
  /** The process's start time (clock ticks after boot), with the pid its identity. */
  start: string;
  gateway: string;
  workspace: string;
  sandbox: string;
  sandboxId: string;
  /** The local address and port it listens on. */
  bind: string;
  port: number;
  /** The port inside the sandbox. */
  targetPort: number;
  /** ISO 8601. */
  startedAt: string;
}

export function forwardsDir(): string {
  return join(stateRoot(), "forwards");
}

function recordPath(port: number, pid: number): string {
  return join(forwardsDir(), `${port}-${pid}.json`);
}

/** Records the current process as the forward `fields` describe; returns the removal. */
export function recordForward(fields: Omit<ForwardRecord, "pid" | "start" | "startedAt">): () => void {
  const identity = processIdentity(process.pid);
  if (!identity) throw new Error("cannot read this process's start time from /proc");
  const record: ForwardRecord = {
    pid: identity.pid,
    start: identity.start,
    ...fields,
    startedAt: new Date().toISOString(),
  };
  const path = recordPath(record.port, record.pid);
  ensurePrivateDir(forwardsDir());
  writeFileAtomic(path, `${JSON.stringify(record)}\n`);
  return () => rmSync(path, { force: true });
}

function parseRecord(text: string): ForwardRecord | undefined {
  const value = orElse<unknown>(undefined, () => JSON.parse(text));
  if (typeof value !== "object" || value === null) return undefined;
  const r = value as Record<string, unknown>;
  const strings = ["start", "gateway", "workspace", "sandbox", "sandboxId", "bind", "startedAt"];
  const numbers = ["pid", "port", "targetPort"];
  if (!strings.every((key) => typeof r[key] === "string")) return undefined;
  if (!numbers.every((key) => Number.isInteger(r[key]) && (r[key] as number) > 0)) return undefined;
  return value as ForwardRecord;
}

/**
 * The forwards running now, by local port. A record whose process is gone
 * is removed, and given to `stale`; one that cannot be read is removed too.
 */
export function liveForwards(stale: (record: ForwardRecord) => void = () => {}): ForwardRecord[] {
  const dir = forwardsDir();
  const live: ForwardRecord[] = [];
  for (const name of orElse<string[]>([], () => readdirSync(dir))) {
    if (!/^\d+-\d+\.json$/.test(name)) continue;
    const path = join(dir, name);
    const record = parseRecord(orElse("", () => readFileSync(path, "utf8")));
    if (record && identityAlive(identityOf(record))) {
      live.push(record);
      continue;
    }
    rmSync(path, { force: true });
    if (record) stale(record);
  }
  return live.sort((a, b) => a.sandbox.localeCompare(b.sandbox) || a.port - b.port);
}

function identityOf(record: ForwardRecord): ProcessIdentity {
  return { pid: record.pid, start: record.start };
}

/**
 * Ends a background forward: SIGTERM, then, if it has not ended within
 * `graceMs`, SIGKILL; its record is removed either way. False when it had
 * ended already.
 */
export async function stopForwardProcess(record: ForwardRecord, graceMs = 5000): Promise<boolean> {
  const identity = identityOf(record);
  const running = identityAlive(identity);
  if (running) {
    orElse(undefined, () => process.kill(record.pid, "SIGTERM"));
    const deadline = Date.now() + graceMs;
    while (identityAlive(identity) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (identityAlive(identity)) orElse(undefined, () => process.kill(record.pid, "SIGKILL"));
  }
  rmSync(recordPath(record.port, record.pid), { force: true });
  return running;
}
