// Per-sandbox in-memory channels behind WatchSandbox and GetSandboxLogs:
// status changes, log lines and platform events (ring of 50).
//
// A sandbox's log lines come from code the gateway does not trust, at any
// rate it likes, and used to be kept without bound: a 20 s `yes` wrote a
// 419 MB file that each start read whole. So every bound here is fixed:
// - each line is checked and cut to LOG_MESSAGE_MAX_BYTES;
// - the ring keeps the latest LOG_RING lines and at most LOG_RING_BYTES;
// - the file per sandbox (kept so `openshell logs` has the lines after a
//   gateway restart) rotates at `maxFileBytes` and keeps `maxFiles` files;
// - a start reads only the files' end, as much as the ring holds.
// Whether earlier lines were dropped is tracked, so `logs` can say so when,
// and only when, lines it asks for are gone.

import { EventEmitter } from "node:events";
import {
  appendFileSync,
  closeSync,
  existsSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import type { PlatformEvent, SandboxLogLine } from "../gen/openshell.js";
import { orElse } from "../host/fs.js";

export const LOG_RING = 2000;
/** Message bytes the ring holds at most, whatever the lines' length. */
export const LOG_RING_BYTES = 4 * 1024 * 1024;
/** A log message is cut to this many bytes of UTF-8. */
export const LOG_MESSAGE_MAX_BYTES = 64 * 1024;
export const EVENT_RING = 50;

export interface LogFileLimits {
  /** A sandbox's log file is rotated before it would grow past this. */
  maxFileBytes: number;
  /** Files kept per sandbox, the current one included. */
  maxFiles: number;
}

export const DEFAULT_LOG_LIMITS: LogFileLimits = { maxFileBytes: 10 * 1024 * 1024, maxFiles: 2 };
export const LOG_FILES_MAX = 100;

/** The limits from `gateway start --log-max-size MiB --log-max-files N`; defaults for what is absent. */
export function logFileLimits(sizeMib: number | undefined, files: number | undefined): LogFileLimits {
  return {
    maxFileBytes: sizeMib !== undefined ? sizeMib * 1024 * 1024 : DEFAULT_LOG_LIMITS.maxFileBytes,
    maxFiles: files ?? DEFAULT_LOG_LIMITS.maxFiles,
  };
}

/** Longest stored line read back at start; longer ones are skipped. */
const STORED_LINE_MAX_BYTES = 8 * LOG_MESSAGE_MAX_BYTES;
/** What a start reads of a sandbox's files at most, from their end. */
const TAIL_READ_BYTES = LOG_RING_BYTES + LOG_RING * 512;
const TAIL_BLOCK_BYTES = 64 * 1024;
const TARGET_MAX_CHARS = 128;
const FIELDS_MAX = 16;
const FIELD_MAX_CHARS = 1024;
const TRUNCATED = " [truncated]";

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

/** `text` cut to at most `maxBytes` of UTF-8, never inside a character. */
export function truncateUtf8(text: string, maxBytes: number): string {
  if (text.length * 3 <= maxBytes || Buffer.byteLength(text) <= maxBytes) return text;
  const bytes = Buffer.from(text).subarray(0, maxBytes);
  let end = bytes.length;
  // Back off a character cut in two: its lead byte and continuation bytes.
  let back = end - 1;
  while (back >= 0 && (bytes[back]! & 0xc0) === 0x80) back--;
  if (back >= 0) {
    const lead = bytes[back]!;
    const length = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (back + length > end) end = back;
  }
  return bytes.subarray(0, end).toString("utf8");
}

function boundedString(value: unknown, max: number): string {
  return typeof value === "string" ? value.slice(0, max) : "";
}

/**
 * A log line made safe to keep: known level, bounded strings, a real
 * timestamp, at most FIELDS_MAX fields, the message cut (and marked) past
 * LOG_MESSAGE_MAX_BYTES. Never throws, whatever `line` holds.
 */
export function boundLogLine(
  line: Partial<Record<keyof SandboxLogLine, unknown>>,
  now: number,
): SandboxLogLine {
  const level = typeof line.level === "string" ? line.level.toUpperCase() : "";
  const timestamp = line.timestampMs;
  let message = typeof line.message === "string" ? line.message : "";
  if (message.length > LOG_MESSAGE_MAX_BYTES / 3 && Buffer.byteLength(message) > LOG_MESSAGE_MAX_BYTES) {
    message = truncateUtf8(message, LOG_MESSAGE_MAX_BYTES - TRUNCATED.length) + TRUNCATED;
  }
  const fields: Record<string, string> = {};
  if (typeof line.fields === "object" && line.fields !== null) {
    for (const [key, value] of Object.entries(line.fields).slice(0, FIELDS_MAX)) {
      fields[key.slice(0, TARGET_MAX_CHARS)] = boundedString(value, FIELD_MAX_CHARS);
    }
  }
  return {
    sandboxId: boundedString(line.sandboxId, 256),
    timestampMs:
      typeof timestamp === "number" && Number.isSafeInteger(timestamp) && timestamp >= 0 ? timestamp : now,
    level: level in LEVEL_RANK ? level : "INFO",
    target: boundedString(line.target, TARGET_MAX_CHARS),
    message,
    source: boundedString(line.source, 32),
    fields,
  };
}

/** One stored line read back: a bounded log line, or undefined when it is not one (a torn write). */
export function decodeStoredLine(text: string, now: number): SandboxLogLine | undefined {
  if (text.length > STORED_LINE_MAX_BYTES) return undefined;
  const value: unknown = orElse(undefined, () => JSON.parse(text));
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const line = value as Record<string, unknown>;
  if (typeof line.message !== "string" || typeof line.timestampMs !== "number") return undefined;
  return boundLogLine(line, now);
}

/** The files of a sandbox's log, newest first: `path`, `path.1`, ... */
function rotatedPath(path: string, index: number): string {
  return index === 0 ? path : `${path}.${index}`;
}

/** Marks that rotation discarded a sandbox's oldest lines (kept across gateway restarts). */
function droppedMarker(path: string): string {
  return `${path}.dropped`;
}

/**
 * The last lines of a sandbox's log files, oldest first: at most `maxLines`,
 * reading at most TAIL_READ_BYTES from the end, whatever the files' size.
 * `earlier` says whether older lines existed that were not read or are gone.
 */
export function readLogTail(
  path: string,
  maxLines: number,
  now: number,
  readBytes = TAIL_READ_BYTES,
): { lines: SandboxLogLine[]; earlier: boolean } {
  const newestFirst: SandboxLogLine[] = [];
  let budget = readBytes;
  let earlier = existsSync(droppedMarker(path));
  for (let index = 0; index < LOG_FILES_MAX; index++) {
    const file = rotatedPath(path, index);
    let fd: number;
    try {
      fd = openSync(file, "r");
    } catch {
      break;
    }
    try {
      let position = statSync(file).size;
      let carry: Buffer[] = [];
      let carried = 0;
      const take = (bytes: Buffer): void => {
        const text = bytes.toString("utf8").trim();
        if (text === "") return;
        const line = decodeStoredLine(text, now);
        if (line) newestFirst.push(line);
      };
      while (position > 0 && newestFirst.length < maxLines) {
        if (budget <= 0) {
          earlier = true;
          break;
        }
        const length = Math.min(TAIL_BLOCK_BYTES, position, budget);
        position -= length;
        budget -= length;
        const block = Buffer.allocUnsafe(length);
        readSync(fd, block, 0, length, position);
        let end = length;
        for (let at = block.lastIndexOf(0x0a, end - 1); at !== -1; at = block.lastIndexOf(0x0a, end - 1)) {
          const tail = block.subarray(at + 1, end);
          take(carry.length === 0 ? tail : Buffer.concat([tail, ...carry]));
          carry = [];
          carried = 0;
          end = at;
          if (newestFirst.length >= maxLines || at === 0) break;
        }
        if (newestFirst.length >= maxLines) {
          // Bytes before the last line taken: older lines not read.
          if (end > 0) position += end;
          break;
        }
        if (end > 0) {
          carry.unshift(block.subarray(0, end));
          carried += end;
          // Part of a line too long to keep: skipped up to its start.
          if (carried > STORED_LINE_MAX_BYTES) {
            carry = [];
            carried = 0;
          }
        }
      }
      if (position === 0 && carried > 0 && newestFirst.length < maxLines) take(Buffer.concat(carry));
      if (position > 0 || newestFirst.length >= maxLines) {
        earlier ||= position > 0 || existsSync(rotatedPath(path, index + 1));
        break;
      }
    } finally {
      closeSync(fd);
    }
  }
  return { lines: newestFirst.reverse(), earlier };
}

interface LogFile {
  path: string;
  size: number;
}

interface Channel {
  logs: SandboxLogLine[];
  /** Message bytes of `logs`. */
  logBytes: number;
  /** Lines older than the oldest in `logs` were dropped (from memory or from the files). */
  earlierDropped: boolean;
  events: PlatformEvent[];
  emitter: EventEmitter;
  logFile: LogFile | undefined;
}

function messageBytes(line: SandboxLogLine): number {
  return line.message.length < 256 ? line.message.length * 3 : Buffer.byteLength(line.message);
}

export class SandboxBus {
  private readonly channels = new Map<string, Channel>();

  constructor(private readonly limits: LogFileLimits = DEFAULT_LOG_LIMITS) {}

  private channel(id: string): Channel {
    let channel = this.channels.get(id);
    if (!channel) {
      const emitter = new EventEmitter();
      emitter.setMaxListeners(0);
      channel = { logs: [], logBytes: 0, earlierDropped: false, events: [], emitter, logFile: undefined };
      this.channels.set(id, channel);
    }
    return channel;
  }

  /** Binds a sandbox's log file and loads the end of what its files hold. */
  attachLogFile(id: string, path: string): void {
    const channel = this.channel(id);
    // No file yet: the first line creates it.
    channel.logFile = { path, size: orElse(0, () => statSync(path).size) };
    const { lines, earlier } = readLogTail(path, LOG_RING, Date.now());
    channel.logs = [];
    channel.logBytes = 0;
    channel.earlierDropped = earlier;
    this.remember(channel, lines);
  }

  /** Adds lines to the ring, dropping the oldest past its bounds. */
  private remember(channel: Channel, lines: SandboxLogLine[]): void {
    for (const line of lines) {
      channel.logs.push(line);
      channel.logBytes += messageBytes(line);
    }
    let evict = Math.max(0, channel.logs.length - LOG_RING);
    let bytes = channel.logBytes;
    for (let i = 0; i < evict; i++) bytes -= messageBytes(channel.logs[i]!);
    while (bytes > LOG_RING_BYTES && evict < channel.logs.length - 1) {
      bytes -= messageBytes(channel.logs[evict]!);
      evict++;
    }
    if (evict > 0) {
      channel.logs.splice(0, evict);
      channel.logBytes = bytes;
      channel.earlierDropped = true;
    }
  }

  /** Whether lines older than the oldest the gateway holds for this sandbox were dropped. */
  earlierLogsDropped(id: string): boolean {
    return this.channels.get(id)?.earlierDropped ?? false;
  }

  publishStatus(id: string): void {
    this.channels.get(id)?.emitter.emit("status");
  }

  /** Publishes one sandbox's log lines (each bounded first); the file gets them in as few writes as rotation allows. */
  publishLogs(sandboxId: string, lines: SandboxLogLine[]): void {
    if (lines.length === 0) return;
    const channel = this.channel(sandboxId);
    const now = Date.now();
    const bounded = lines.map((line) => boundLogLine(line, now));
    this.remember(channel, bounded);
    if (channel.logFile) this.store(channel.logFile, bounded);
    for (const line of bounded) channel.emitter.emit("log", line);
  }

  /** Appends lines to a sandbox's log file, rotating it so no file grows past the limit. */
  private store(file: LogFile, lines: SandboxLogLine[]): void {
    let text = "";
    let bytes = 0;
    const write = (): void => {
      if (bytes === 0) return;
      // The sandbox directory may already be gone during delete.
      orElse(undefined, () => {
        appendFileSync(file.path, text, { mode: 0o600 });
        file.size += bytes;
      });
      text = "";
      bytes = 0;
    };
    for (const line of lines) {
      const json = `${JSON.stringify(line)}\n`;
      const length = json.length < 256 ? json.length : Buffer.byteLength(json);
      if (file.size + bytes + length > this.limits.maxFileBytes && file.size + bytes > 0) {
        write();
        this.rotate(file);
      }
      text += json;
      bytes += length;
    }
    write();
  }

  private rotate(file: LogFile): void {
    const last = this.limits.maxFiles - 1;
    // As for a write: the directory may be going away.
    orElse(undefined, () => {
      if (existsSync(rotatedPath(file.path, last))) {
        rmSync(rotatedPath(file.path, last), { force: true });
        writeFileSync(droppedMarker(file.path), "", { mode: 0o600 });
      }
      for (let index = last - 1; index >= 0; index--) {
        const from = rotatedPath(file.path, index);
        if (existsSync(from)) renameSync(from, rotatedPath(file.path, index + 1));
      }
    });
    file.size = 0;
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
