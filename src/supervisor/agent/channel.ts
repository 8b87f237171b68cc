// The channel between a sandbox's agent and its supervisor: JSON lines on the
// agent's stdout, one message per line.
//
// The agent runs inside the sandbox, as the sandbox user, beside the code it
// runs; whatever reaches the supervisor on this channel may have been written
// by that code (through a descriptor it took, or an agent it subverted). So
// the supervisor treats every byte here as hostile:
//
// - A line is at most AGENT_LINE_MAX_BYTES. Longer ones are skipped up to the
//   next newline without being kept, so a flood without newlines costs a
//   bounded buffer, never the supervisor's memory (it used to end in
//   `RangeError: Invalid string length` after ~512 MiB).
// - A line must be exactly one of the messages below, with no other key and
//   every field within its bounds; anything else is dropped and counted.
// - A message says which stream a log line came from (stdout or stderr of the
//   main process) and nothing more: the log's target is derived from that by
//   the supervisor, so no message can claim to be the egress proxy's
//   `network` log or the gateway's.

/** What the supervisor tells the agent on its stdin. */
import { orElse } from "../../host/fs.js";

export interface AgentConfig {
  command: string[];
  tty: boolean;
  env: Record<string, string>;
  /** Where exec and connect start: the workspace. */
  workdir: string;
  /** Where the main command starts, when not the workspace (an image's WorkingDir). */
  mainWorkdir?: string | undefined;
  socketPath: string;
  /** Where the agent serves TCP forwards to the pod's loopback (transport/pod-forward.ts). */
  forwardSocketPath?: string | undefined;
  startOnAttach: boolean;
  ttySize?: { cols: number; rows: number } | undefined;
  shell: string;
  sftpServer: string;
  /**
   * Set when the policy has network rules: the agent forwards 127.0.0.1:<port>
   * in the pod to the supervisor's egress proxy at this socket. Without it the
   * pod has no way out at all.
   */
  egress?: { proxySocket: string; port: number };
  /**
   * The descriptor, inherited from the supervisor, of the sandbox's control
   * group in which the agent makes one per exec; `freezer` for a v1 freezer
   * group (killed frozen), else v2 (cgroup.kill).
   */
  execGroups?: { fd: number; freezer: boolean };
}

/** Longest line the supervisor reads from the agent; a log message's text is well below it even escaped. */
export const AGENT_LINE_MAX_BYTES = 256 * 1024;
/** Longest log line text (UTF-16 units); the agent splits longer output lines into pieces this long. */
export const LOG_TEXT_MAX_CHARS = 16 * 1024;
/** Longest `fatal` message, and the form of its reason. */
const FATAL_MESSAGE_MAX_CHARS = 4096;
const REASON = /^[A-Za-z][A-Za-z0-9]{0,63}$/;
/** Longest configuration line the agent reads from its supervisor. */
export const AGENT_CONFIG_MAX_BYTES = 4 * 1024 * 1024;

/** How often the agent says it is alive, and how long a silence makes it unresponsive. */
export const AGENT_BEAT_MS = 500;
export const AGENT_SILENCE_MS = 2000;

export type AgentMessage =
  /** The main process is running (or waits for its first attach) and SSH is served. */
  | { t: "ready" }
  /** The agent's event loop turns: sent every AGENT_BEAT_MS from its start. */
  | { t: "beat" }
  /** One line of the main process's output; `s` is the stream, `m` the text. */
  | { t: "log"; s: "stdout" | "stderr"; m: string }
  /** The main process ended with this status (128+N for signal N). */
  | { t: "exit"; code: number }
  /** The agent cannot go on. */
  | { t: "fatal"; reason: string; message: string };

export function encodeAgentMessage(message: AgentMessage): string {
  return `${JSON.stringify(message)}\n`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function hasExactly(value: Record<string, unknown>, keys: readonly string[]): boolean {
  const own = Object.keys(value);
  return own.length === keys.length && keys.every((key) => Object.hasOwn(value, key));
}

/** One line of the channel as a message, or undefined when it is not exactly a valid one. */
export function parseAgentMessage(line: string): AgentMessage | undefined {
  const value: unknown = orElse(undefined, () => JSON.parse(line));
  if (!isRecord(value)) return undefined;
  switch (value.t) {
    case "ready":
    case "beat":
      return hasExactly(value, ["t"]) ? { t: value.t } : undefined;
    case "log": {
      const { s, m } = value;
      if (!hasExactly(value, ["t", "s", "m"]) || (s !== "stdout" && s !== "stderr")) return undefined;
      if (typeof m !== "string" || m.length > LOG_TEXT_MAX_CHARS) return undefined;
      return { t: "log", s, m };
    }
    case "exit": {
      const { code } = value;
      if (!hasExactly(value, ["t", "code"]) || !Number.isInteger(code)) return undefined;
      if ((code as number) < 0 || (code as number) > 255) return undefined;
      return { t: "exit", code: code as number };
    }
    case "fatal": {
      const { reason, message } = value;
      if (!hasExactly(value, ["t", "reason", "message"])) return undefined;
      if (typeof reason !== "string" || !REASON.test(reason)) return undefined;
      if (typeof message !== "string" || message.length > FATAL_MESSAGE_MAX_CHARS) return undefined;
      return { t: "fatal", reason, message };
    }
    default:
      return undefined;
  }
}

/**
 * Splits a byte stream into lines of at most `maxBytes` (without the
 * newline). A longer line is dropped whole, its bytes discarded as they
 * arrive: at most `maxBytes` are ever held.
 */
export class BoundedLineReader {
  private parts: Buffer[] = [];
  private held = 0;
  private skipping = false;

  constructor(
    private readonly maxBytes: number,
    private readonly onLine: (line: Buffer) => void,
    private readonly onOversized: () => void,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline === -1 ? chunk.length : newline;
      if (!this.skipping) {
        if (this.held + (end - start) > this.maxBytes) {
          this.parts = [];
          this.held = 0;
          this.skipping = true;
          this.onOversized();
        } else if (end > start) {
          this.parts.push(chunk.subarray(start, end));
          this.held += end - start;
        }
      }
      if (newline === -1) break;
      if (this.skipping) this.skipping = false;
      else {
        const line = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.held);
        this.parts = [];
        this.held = 0;
        this.onLine(line);
      }
      start = newline + 1;
    }
  }

  /** Bytes held for the line not yet ended. */
  get pending(): number {
    return this.held;
  }
}

export type AgentChannelDrop = "oversized" | "malformed";

/**
 * The supervisor's reader of the agent's channel: bytes in, valid messages
 * out; every dropped line is reported (never thrown) with its kind.
 */
export class AgentMessageDecoder {
  private readonly lines: BoundedLineReader;

  constructor(
    onMessage: (message: AgentMessage) => void,
    onDrop: (kind: AgentChannelDrop) => void,
    maxLineBytes = AGENT_LINE_MAX_BYTES,
  ) {
    this.lines = new BoundedLineReader(
      maxLineBytes,
      (line) => {
        const message = line.length === 0 ? undefined : parseAgentMessage(line.toString("utf8"));
        if (message) onMessage(message);
        else onDrop("malformed");
      },
      () => onDrop("oversized"),
    );
  }

  push(chunk: Buffer): void {
    this.lines.push(chunk);
  }
}
