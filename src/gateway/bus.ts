// Per-sandbox in-memory channels behind WatchSandbox and GetSandboxLogs:
// status changes, log lines (ring of 2000) and platform events (ring of 50).
// Log lines are also appended to a file per sandbox so `openshell logs`
// still has them after a gateway restart.

import { EventEmitter } from "node:events";
import { appendFileSync, readFileSync } from "node:fs";
import type { PlatformEvent, SandboxLogLine } from "../gen/openshell.js";

export const LOG_RING = 2000;
export const EVENT_RING = 50;

const LEVEL_RANK: Record<string, number> = { ERROR: 0, WARN: 1, INFO: 2, OCSF: 2, DEBUG: 3, TRACE: 4 };

/** True when a line passes a minimum level (unknown levels always pass). */
export function levelPasses(level: string, minLevel: string): boolean {
  if (minLevel === "") return true;
  const min = LEVEL_RANK[minLevel.toUpperCase()];
  const rank = LEVEL_RANK[level.toUpperCase()];
  if (min === undefined || rank === undefined) return true;
  return rank <= min;
}

export function sourcePasses(source: string, sources: string[]): boolean {
  const wanted = sources.filter((s) => s !== "" && s !== "all");
  if (wanted.length === 0) return true;
  return wanted.includes(source === "" ? "gateway" : source);
}

interface Channel {
  logs: SandboxLogLine[];
  events: PlatformEvent[];
  emitter: EventEmitter;
  logFile: string | undefined;
}

export class SandboxBus {
  private readonly channels = new Map<string, Channel>();

  private channel(id: string): Channel {
    let channel = this.channels.get(id);
    if (!channel) {
      const emitter = new EventEmitter();
      emitter.setMaxListeners(0);
      channel = { logs: [], events: [], emitter, logFile: undefined };
      this.channels.set(id, channel);
    }
    return channel;
  }

  /** Binds a sandbox's log file and loads the tail of what it holds. */
  attachLogFile(id: string, path: string): void {
    const channel = this.channel(id);
    channel.logFile = path;
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch {
      return;
    }
    const lines = text.split("\n").filter((line) => line !== "");
    for (const line of lines.slice(-LOG_RING)) {
      try {
        channel.logs.push(JSON.parse(line) as SandboxLogLine);
      } catch {
        // A torn last line after a crash is skipped, not fatal.
      }
    }
  }

  publishStatus(id: string): void {
    this.channels.get(id)?.emitter.emit("status");
  }

  /** Publishes one sandbox's log lines; the file gets them in one write. */
  publishLogs(sandboxId: string, lines: SandboxLogLine[]): void {
    if (lines.length === 0) return;
    const channel = this.channel(sandboxId);
    channel.logs.push(...lines);
    if (channel.logs.length > LOG_RING) channel.logs.splice(0, channel.logs.length - LOG_RING);
    if (channel.logFile) {
      try {
        appendFileSync(channel.logFile, lines.map((line) => `${JSON.stringify(line)}\n`).join(""), {
          mode: 0o600,
        });
      } catch {
        // The sandbox directory may already be gone during delete.
      }
    }
    for (const line of lines) channel.emitter.emit("log", line);
  }

  publishEvent(id: string, event: PlatformEvent): void {
    const channel = this.channel(id);
    channel.events.push(event);
    if (channel.events.length > EVENT_RING) channel.events.shift();
    channel.emitter.emit("event", event);
  }

  /** Ends every watcher of a deleted sandbox and drops its buffers. */
  close(id: string): void {
    const channel = this.channels.get(id);
    if (!channel) return;
    channel.emitter.emit("deleted");
    channel.emitter.removeAllListeners();
    this.channels.delete(id);
  }

  tailLogs(id: string): SandboxLogLine[] {
    return this.channels.get(id)?.logs ?? [];
  }

  tailEvents(id: string, count: number): PlatformEvent[] {
    const events = this.channels.get(id)?.events ?? [];
    return count <= 0 ? [] : events.slice(-count);
  }

  subscribe(
    id: string,
    handlers: {
      status?: () => void;
      log?: (line: SandboxLogLine) => void;
      event?: (event: PlatformEvent) => void;
      deleted?: () => void;
    },
  ): () => void {
    const { emitter } = this.channel(id);
    const pairs = Object.entries(handlers).filter(([, fn]) => fn !== undefined) as [
      string,
      (...args: unknown[]) => void,
    ][];
    for (const [name, fn] of pairs) emitter.on(name, fn);
    return () => {
      for (const [name, fn] of pairs) emitter.off(name, fn);
    };
  }
}
