// The sandbox's canonical (main) process: started once, exactly as given (no
// shell), on a pty or on pipes. Its output flows into a replay buffer for
// later attachers, into line events for the logs, and to whoever is attached;
// no attacher's slowness can stall it. The log is the one reader that can
// (pauseOutput): the sandbox's log is stored at the pace the gateway can take
// it, and a process printing faster blocks on its writes, as on a full pipe,
// instead of growing any buffer. One attacher at a time holds stdin; the
// others watch.

import { EventEmitter } from "node:events";
import { StringDecoder } from "node:string_decoder";
import { LOG_TEXT_MAX_CHARS } from "./channel.js";
import {
  type ChildExit,
  ChildStartError,
  outputSettled,
  type SessionChild,
  signalFromName,
  signalGroup,
  startChild,
} from "./child.js";

export type OutputStreamName = "stdout" | "stderr";

export interface MainOutputChunk {
  stream: OutputStreamName;
  data: Buffer;
}

export interface MainOutputLine {
  stream: OutputStreamName;
  /** One line without its line ending (a trailing CR from a terminal is dropped too). */
  text: string;
}

/** How the main process ended. `code` is normalized: 128+N for a death by signal N. */
export type MainExitStatus = ChildExit;

export interface MainProcessOptions {
  /** argv, run exactly: argv[0] is looked up on env.PATH, nothing passes through a shell. */
  command: readonly string[];
  cwd: string;
  env: Readonly<Record<string, string>>;
  /** Run on an 80x24 pty (output merged, as a terminal shows it) instead of pipes. */
  tty: boolean;
  /** Do not start until the first attach (files are uploaded before the command runs). */
  startOnAttach?: boolean;
  /** The pty's size at start, when the client that will attach told it; 80x24 otherwise. */
  ptySize?: { cols: number; rows: number };
  /** Bytes of output kept for attachers that arrive later; 1 MiB by default. */
  replayBytes?: number;
}

export interface MainAttachListener {
  /** Replayed output (synchronously, inside attach()), then live output. */
  output(chunk: MainOutputChunk): void;
  /** The process ended; the attachment is over. Called at most once, never inside attach(). */
  exit(status: MainExitStatus): void;
}

export interface MainAttachment {
  /** Whether this attacher holds the stdin lease; the others are read-only. */
  readonly holdsStdin: boolean;
  /** Writes to the process's stdin; false asks the caller to wait for the process's "drain" event. */
  write(data: Buffer): boolean;
  /** Closes the process's stdin (pipes only; a terminal's end of input is a ^D the user types). */
  endStdin(): void;
  resize(cols: number, rows: number): void;
  /** Signals the process group; false if not allowed (read-only) or the name is unknown. */
  signal(name: string): boolean;
  /** Stops receiving output; gives the stdin lease back. */
  detach(): void;
}

export type MainProcessState = "pending" | "running" | "exited";

interface MainProcessEvents {
  start: [pid: number];
  output: [chunk: MainOutputChunk];
  line: [line: MainOutputLine];
  exit: [status: MainExitStatus];
  /** stdin accepts writes again after write() returned false. */
  drain: [];
}

export const MAIN_PTY_COLS = 80;
export const MAIN_PTY_ROWS = 24;
export const MAIN_REPLAY_BYTES = 1024 * 1024;
// Background grandchildren can hold the output pipes open after the process
// exits; the exit is reported at most this long after the process ended.
const OUTPUT_GRACE_MS = 2000;
// A line this long is cut into pieces this long, so a process printing
// without newlines cannot grow a log line without bound.
const MAX_LINE_CHARS = LOG_TEXT_MAX_CHARS;

interface Attacher {
  listener: MainAttachListener;
  holdsStdin: boolean;
}

export class MainProcess extends EventEmitter<MainProcessEvents> {
  readonly command: readonly string[];
  readonly tty: boolean;
  private readonly options: MainProcessOptions;
  private readonly replayLimit: number;
  private readonly replayChunks: MainOutputChunk[] = [];
  private replayTotal = 0;
  private readonly attachers = new Set<Attacher>();
  private stdinHolder: Attacher | undefined;
  private child: SessionChild | undefined;
  private status: MainExitStatus | undefined;
  private cancelled = false;
  private paused = false;
  /** Settles when paused output is read again. */
  private resumed: { promise: Promise<void>; resolve: () => void } | undefined;
  private readonly lines = {
    stdout: new LineSplitter(),
    stderr: new LineSplitter(),
  };

  constructor(options: MainProcessOptions) {
    super();
    if (options.command.length === 0 || options.command[0] === "") {
      throw new TypeError("the main process needs a command");
    }
    this.options = options;
    this.command = [...options.command];
    this.tty = options.tty;
    this.replayLimit = options.replayBytes ?? MAIN_REPLAY_BYTES;
  }

  get state(): MainProcessState {
    if (this.status) return "exited";
    return this.child ? "running" : "pending";
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get exitStatus(): MainExitStatus | undefined {
    return this.status;
  }

  get startsOnAttach(): boolean {
    return this.options.startOnAttach === true;
  }

  /** Starts the process now (once; later calls do nothing). A failure to start is reported as an exit. */
  start(): void {
    if (this.child || this.status || this.cancelled) return;
    const [file, ...args] = this.command as [string, ...string[]];
    let child: SessionChild;
    try {
      child = startChild(
        { file, args, cwd: this.options.cwd, env: this.options.env },
        this.tty
          ? {
              term: this.options.env.TERM ?? "xterm-256color",
              cols: this.options.ptySize?.cols ?? MAIN_PTY_COLS,
              rows: this.options.ptySize?.rows ?? MAIN_PTY_ROWS,
            }
          : undefined,
      );
    } catch (error) {
      const code = error instanceof ChildStartError ? error.code : 127;
      const reason = error instanceof Error ? error.message : String(error);
      // Reported on a later tick, as a spawned process's exit would be, so
      // whoever just called start() or attach() sees it through its listeners.
      setImmediate(() => this.failToStart(code, reason));
      this.cancelled = true;
      return;
    }
    this.child = child;
    child.stdout.on("data", (data: Buffer) => this.record("stdout", data));
    child.stderr?.on("data", (data: Buffer) => this.record("stderr", data));
    if (this.paused) this.pauseOutput();
    child.stdin.on("drain", () => this.emit("drain"));
    this.emit("start", child.pid);
    void this.finishWhenDone(child);
  }

  /**
   * Attaches a viewer: replays the buffered output to it at once, then streams
   * live output and finally the exit. The first attacher (unless `readOnly`)
   * holds stdin until it detaches. With startOnAttach, the first attach starts
   * the process.
   */
  attach(listener: MainAttachListener, options: { readOnly?: boolean } = {}): MainAttachment {
    const attacher: Attacher = {
      listener,
      holdsStdin: !options.readOnly && this.stdinHolder === undefined && !this.status,
    };
    if (attacher.holdsStdin) this.stdinHolder = attacher;
    for (const chunk of this.replayChunks) listener.output(chunk);
    const status = this.status;
    if (status) {
      queueMicrotask(() => listener.exit(status));
    } else {
      this.attachers.add(attacher);
      if (this.startsOnAttach) this.start();
    }
    const holds = () => attacher.holdsStdin && this.stdinHolder === attacher;
    return {
      holdsStdin: attacher.holdsStdin,
      write: (data) => (holds() ? this.write(data) : true),
      endStdin: () => {
        if (holds()) this.endStdin();
      },
      resize: (cols, rows) => {
        if (holds()) this.resize(cols, rows);
      },
      signal: (name) => holds() && this.signal(name),
      detach: () => {
        this.attachers.delete(attacher);
        if (this.stdinHolder === attacher) this.stdinHolder = undefined;
      },
    };
  }

  /** Writes to stdin; false means wait for "drain". Ignored before the start and after the exit. */
  write(data: Buffer | string): boolean {
    const stdin = this.child?.stdin;
    if (!stdin || this.status || stdin.writableEnded || stdin.destroyed) return true;
    return stdin.write(data);
  }

  /** Closes stdin (pipes); a terminal has no end of input other than the ^D typed into it. */
  endStdin(): void {
    const stdin = this.child?.stdin;
    if (stdin && !this.tty && !stdin.writableEnded) stdin.end();
  }

  resize(cols: number, rows: number): void {
    this.child?.resize(cols, rows);
  }

  /** Sends a signal ("TERM", "SIGTERM") to the process group; false if not running or unknown. */
  signal(name: string): boolean {
    const signal = signalFromName(name);
    const child = this.child;
    if (!signal || !child || this.status) return false;
    signalGroup(child.pid, signal);
    return true;
  }

  /**
   * Ends the process: SIGTERM to its group, SIGKILL after `graceMs`. A gated
   * process that never started is cancelled (resolves undefined).
   */
  async stop(graceMs = 5000): Promise<MainExitStatus | undefined> {
    if (this.status) return this.status;
    const child = this.child;
    if (!child) {
      this.cancelled = true;
      return undefined;
    }
    child.signal("SIGTERM");
    const killer = setTimeout(() => child.signal("SIGKILL"), graceMs);
    try {
      await child.exited;
      return await new Promise<MainExitStatus>((done) => {
        if (this.status) return done(this.status);
        this.once("exit", done);
      });
    } finally {
      clearTimeout(killer);
    }
  }

  /** Stops reading the process's output until resumeOutput; the process blocks once its pipe is full. */
  pauseOutput(): void {
    if (!this.paused) {
      let resolve!: () => void;
      const promise = new Promise<void>((done) => {
        resolve = done;
      });
      this.resumed = { promise, resolve };
    }
    this.paused = true;
    this.child?.stdout.pause();
    this.child?.stderr?.pause();
  }

  resumeOutput(): void {
    this.paused = false;
    this.resumed?.resolve();
    this.resumed = undefined;
    this.child?.stdout.resume();
    this.child?.stderr?.resume();
  }

  get outputPaused(): boolean {
    return this.paused;
  }

  /** A copy of the replay buffer (at most `replayBytes`, oldest first). */
  replay(): MainOutputChunk[] {
    return [...this.replayChunks];
  }

  private record(stream: OutputStreamName, data: Buffer): void {
    const chunk: MainOutputChunk = { stream, data };
    this.remember(chunk);
    this.emit("output", chunk);
    for (const text of this.lines[stream].push(data)) this.emit("line", { stream, text });
    for (const attacher of [...this.attachers]) attacher.listener.output(chunk);
  }

  private remember(chunk: MainOutputChunk): void {
    this.replayChunks.push(chunk);
    this.replayTotal += chunk.data.length;
    while (this.replayTotal > this.replayLimit) {
      const oldest = this.replayChunks[0]!;
      const excess = this.replayTotal - this.replayLimit;
      if (oldest.data.length <= excess) {
        this.replayChunks.shift();
        this.replayTotal -= oldest.data.length;
      } else {
        this.replayChunks[0] = { stream: oldest.stream, data: oldest.data.subarray(excess) };
        this.replayTotal -= excess;
      }
    }
  }

  private async finishWhenDone(child: SessionChild): Promise<void> {
    const status = await child.exited;
    // Output held back for the log is still read before the exit is reported.
    await outputSettled(child, {
      graceMs: OUTPUT_GRACE_MS,
      blocked: () => (this.paused ? this.resumed?.promise : undefined),
    });
    // Leftover grandchildren holding the pipes get EPIPE instead of an
    // audience; the exit is what the sandbox's state follows.
    child.stdout.destroy();
    child.stderr?.destroy();
    this.finish(status);
  }

  private failToStart(code: number, reason: string): void {
    const message = `openshell: cannot start the main process: ${reason}\n`;
    this.record("stderr", Buffer.from(message));
    this.finish({ code, signal: null, error: reason });
  }

  private finish(status: MainExitStatus): void {
    if (this.status) return;
    for (const stream of ["stdout", "stderr"] as const) {
      const rest = this.lines[stream].flush();
      if (rest !== undefined) this.emit("line", { stream, text: rest });
    }
    this.status = status;
    const attachers = [...this.attachers];
    this.attachers.clear();
    this.stdinHolder = undefined;
    for (const attacher of attachers) attacher.listener.exit(status);
    this.emit("exit", status);
  }
}

/** Splits a byte stream into text lines, decoding UTF-8 across chunk boundaries. */
class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private partial = "";

  push(data: Buffer): string[] {
    const text = this.partial + this.decoder.write(data);
    const pieces = text.split("\n");
    this.partial = pieces.pop() ?? "";
    const lines = pieces.map(stripCarriageReturn);
    while (this.partial.length > MAX_LINE_CHARS) {
      lines.push(this.partial.slice(0, MAX_LINE_CHARS));
      this.partial = this.partial.slice(MAX_LINE_CHARS);
    }
    return lines;
  }

  /** The unterminated last line, if any. */
  flush(): string | undefined {
    const rest = this.partial + this.decoder.end();
    this.partial = "";
    return rest === "" ? undefined : stripCarriageReturn(rest);
  }
}

function stripCarriageReturn(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}
