// `logs [NAME]`: the sandbox's log lines — its main process's output and the
// gateway's own notes about it — once, or followed with --tail. Every field
// of a line may come from the sandbox, so each is escaped for the terminal;
// --raw prints only the main command's output lines, as they are, for a user
// who asks for that; -o json prints one JSON object per line (JSON Lines),
// with its time in ISO 8601 UTC, for scripts. The lines come from the API.

import { usageError } from "../../core/errors.js";
import { escapeForTerminal } from "../../core/terminal-text.js";
import type { SandboxLogLine } from "../../gen/openshell.js";
import type { CommandContext } from "../context.js";

export interface LogsOptions {
  name?: string | undefined;
  lines: number;
  tail: boolean;
  since?: string | undefined;
  source: string[];
  level?: string | undefined;
  raw?: boolean | undefined;
  output?: "text" | "json" | undefined;
}

export function parseDuration(text: string): number {
  const match = /^(\d+)([smh])$/.exec(text.trim());
  if (!match) {
    if (/^\d+[a-zA-Z]+$/.test(text.trim()))
      throw usageError(`unknown duration unit: ${text}`, "Use s, m or h, e.g. 30s, 5m, 1h.");
    throw usageError(`invalid duration: ${text}`, "Use a number and a unit, e.g. 30s, 5m, 1h.");
  }
  const unit = { s: 1000, m: 60_000, h: 3_600_000 }[match[2] as "s" | "m" | "h"];
  return Number(match[1]) * unit;
}

export function formatLogLine(line: SandboxLogLine): string {
  const seconds = (line.timestampMs / 1000).toFixed(3);
  const source = (line.source || "gateway").padEnd(7);
  const level = line.level.toUpperCase().padEnd(5);
  const fields = Object.keys(line.fields)
    .sort()
    .map((key) => ` ${key}=${line.fields[key]}`)
    .join("");
  return escapeForTerminal(`[${seconds}] [${source}] [${level}] [${line.target}] ${line.message}${fields}`);
}

/** One line as a JSON Lines record: what a script filters on, the time in ISO 8601 UTC. */
export function logLineRecord(line: SandboxLogLine): string {
  return JSON.stringify({
    time: new Date(line.timestampMs).toISOString(),
    source: line.source || "gateway",
    stream: line.target,
    level: line.level.toUpperCase(),
    message: line.message,
    ...(Object.keys(line.fields).length > 0 ? { fields: line.fields } : {}),
  });
}

/** The main command's own output: what --raw prints unless --source says otherwise. */
function commandOutput(line: SandboxLogLine): boolean {
  return line.source === "sandbox" && (line.target === "stdout" || line.target === "stderr");
}

const LEVELS = ["error", "warn", "info", "debug", "trace"];
const SOURCES = ["gateway", "sandbox", "all"];

export async function logs(ctx: CommandContext, options: LogsOptions): Promise<number> {
  if (!Number.isInteger(options.lines) || options.lines < 1)
    throw usageError(`-n ${options.lines}: expected a positive whole number`);
  if (options.level && !LEVELS.includes(options.level.toLowerCase())) {
    throw usageError(`--level ${options.level}: expected one of ${LEVELS.join(", ")}`);
  }
  for (const source of options.source) {
    if (!SOURCES.includes(source))
      throw usageError(`--source ${source}: expected one of ${SOURCES.join(", ")}`);
  }
  const sinceMs = options.since ? Date.now() - parseDuration(options.since) : 0;
  const sources = options.source.filter((s) => s !== "all");
  const minLevel = options.level?.toUpperCase() ?? "";
  if (options.raw && options.output === "json") throw usageError("--raw cannot be combined with -o json");
  const format = options.raw
    ? (line: SandboxLogLine) => line.message
    : options.output === "json"
      ? logLineRecord
      : formatLogLine;
  const shown = options.raw && options.source.length === 0 ? commandOutput : () => true;
  const print = (line: SandboxLogLine): void => {
    if (shown(line)) ctx.ui.data(format(line));
  };
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = await api.get(name, { signal: ctx.signal });
  const lines = sandbox.logs({
    follow: options.tail,
    since: sinceMs,
    lines: options.lines,
    sources: sources as ("gateway" | "sandbox")[],
    minLevel,
    // Ctrl-C ends a followed stream; the command then exits 0.
    signal: ctx.signal,
    onWarning: (message) => ctx.ui.warn(message),
  });
  for await (const line of lines) print(line);
  return 0;
}
