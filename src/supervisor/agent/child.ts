// One sandboxed process, on pipes or on a pty, behind one interface: output
// as Readables with backpressure, stdin as a Writable, the exit status
// normalized once, and signals sent to the whole process group. Both the SSH
// sessions and the main process start their children here.
//
// The agent already runs inside the sandbox as the sandbox user, so nothing
// here changes namespaces or credentials: a child is a plain child.

import { spawn } from "node:child_process";
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { delimiter, isAbsolute, join, resolve } from "node:path";
import { finished, Readable, Writable } from "node:stream";
import { type IPty, spawn as spawnPty } from "node-pty";
import { signalName, signalNumber } from "../../core/signals.js";
import { orElse } from "../../host/fs.js";
import { drainPtyOnClose, PatchUnavailable, ptyInputQueue } from "../../host/pty-patch.js";

export interface ChildCommand {
  /** The program: a path, or a name looked up on `env.PATH`. */
  file: string;
  args: readonly string[];
  cwd: string;
  env: Readonly<Record<string, string>>;
}

export interface PtySpec {
  term: string;
  cols: number;
  rows: number;
}

export interface ChildExit {
  /** The exit code, or 128+N for a death by signal N (what a shell reports). */
  code: number;
  /** The signal that killed the process, e.g. "SIGTERM"; null for a normal exit. */
  signal: NodeJS.Signals | null;
  /** Set when the process never ran; a one-line reason for the user. */
  error?: string;
}

export interface SessionChild {
  readonly pid: number;
  readonly tty: boolean;
  /** Standard output; with a pty, everything the terminal shows. */
  readonly stdout: Readable;
  /** Standard error; null with a pty, where it is merged into stdout. */
  readonly stderr: Readable | null;
  /** Ending it closes the child's stdin (pipes). A terminal has no such end: ending is ignored. */
  readonly stdin: Writable;
  readonly exited: Promise<ChildExit>;
  resize(cols: number, rows: number): void;
  /** Sends a signal to the child's whole process group (the child leads its own). */
  signal(signal: NodeJS.Signals): void;
}

/** The command could not be started; `code` is what a shell would report (127 or 126). */
export class ChildStartError extends Error {
  readonly code: 126 | 127;
  constructor(code: 126 | 127, message: string) {
    super(message);
    this.name = "ChildStartError";
    this.code = code;
  }
}

const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin";

// A pty is only paused once this much output waits for the reader: node-pty
// destroys the terminal 200 ms after the child exits, so output still held in
// the kernel while paused would be lost. A large buffer makes that need a reader
// stalled for megabytes at exactly the moment of exit.
const PTY_OUTPUT_BUFFER_BYTES = 8 * 1024 * 1024;
// node-pty's write() queues without limit; stop taking stdin while this many
// chunks are queued (each at most one SSH packet, 32 KiB).
const PTY_INPUT_QUEUE_CHUNKS = 32;
const PTY_INPUT_POLL_MS = 5;

/** Starts `command` on pipes, or on a pty when `pty` is given. Throws ChildStartError. */
export function startChild(command: ChildCommand, pty?: PtySpec): SessionChild {
  const program = resolveProgram(command);
  return pty ? startOnPty(command, program, pty) : startOnPipes(command, program);
}

/** The SSH name of a signal ("TERM") as a node signal name ("SIGTERM"), if it is one. */
export function signalFromName(name: string): NodeJS.Signals | undefined {
  const upper = name.toUpperCase();
  const full = upper.startsWith("SIG") ? upper : `SIG${upper}`;
  return full in osConstants.signals ? (full as NodeJS.Signals) : undefined;
}

/** Sends `signal` to the process group `pid` leads, or to `pid` alone if it leads none. */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone: nothing left to signal.
    }
  }
}

/**
 * Resolves when the child's output has all been consumed (every stream
 * ended) or, on pipes, since background grandchildren can hold them open
 * indefinitely, `graceMs` after the process exited. If the reader is applying
 * backpressure when the grace runs out (`blocked` returns a promise of its
 * drain), output the process wrote before exiting may still sit in the pipe:
 * wait for the drain and grant one more grace before giving up. A pty's
 * output has already ended when its exit is reported, so there it is only a
 * matter of the reader taking it, however slowly.
 */
export function outputSettled(
  child: SessionChild,
  options: { graceMs: number; blocked?: () => Promise<void> | undefined },
): Promise<void> {
  const ends = [child.stdout, child.stderr]
    .filter((stream): stream is Readable => stream !== null)
    .map((stream) => new Promise<void>((done) => finished(stream, { writable: false }, () => done())));
  const allEnded = Promise.all(ends).then(() => {});
  if (child.tty) return allEnded;
  return new Promise((settled) => {
    let isSettled = false;
    let timer: NodeJS.Timeout | undefined;
    const settle = () => {
      if (isSettled) return;
      isSettled = true;
      if (timer) clearTimeout(timer);
      settled();
    };
    void allEnded.then(settle);
    void child.exited.then(() => {
      if (isSettled) return;
      timer = setTimeout(() => {
        const drained = options.blocked?.();
        if (!drained) return settle();
        void drained.then(() => {
          if (!isSettled) timer = setTimeout(settle, options.graceMs);
        });
      }, options.graceMs);
    });
  });
}

interface ResolvedProgram {
  path: string;
}

function startError(errno: string | undefined, message: string): ChildStartError {
  return new ChildStartError(errno === "EACCES" || errno === "ENOEXEC" ? 126 : 127, message);
}

/** Why `command` could not be started (its ChildStartError), or undefined if its program is found. */
export function programProblem(command: ChildCommand): ChildStartError | undefined {
  try {
    resolveProgram(command);
    return undefined;
  } catch (error) {
    if (error instanceof ChildStartError) return error;
    throw error;
  }
}

/** Finds the program the way execvp would, so "not found" (127) and "not executable" (126) read clearly. */
function resolveProgram(command: ChildCommand): ResolvedProgram {
  const { file, cwd } = command;
  if (file === "") throw new ChildStartError(127, "empty command");
  try {
    if (!statSync(cwd).isDirectory()) {
      throw startError("ENOENT", `working directory ${cwd} is not a directory`);
    }
    accessSync(cwd, fsConstants.X_OK);
  } catch (error) {
    if (error instanceof ChildStartError) throw error;
    const errno = (error as NodeJS.ErrnoException).code;
    throw startError(errno, `working directory ${cwd}: ${describeErrno(errno)}`);
  }
  if (file.includes("/")) {
    const path = isAbsolute(file) ? file : resolve(cwd, file);
    const problem = executableProblem(path);
    if (problem) throw startError(problem, `${file}: ${describeErrno(problem)}`);
    return { path };
  }
  let sawUnexecutable = false;
  for (const dir of (command.env.PATH ?? DEFAULT_PATH).split(delimiter)) {
    const path = resolve(cwd, join(dir === "" ? "." : dir, file));
    const problem = executableProblem(path);
    if (!problem) return { path };
    if (problem === "EACCES") sawUnexecutable = true;
  }
  if (sawUnexecutable) throw startError("EACCES", `${file}: Permission denied`);
  throw startError("ENOENT", `${file}: command not found`);
}

/** Why `path` cannot be executed (an errno name), or undefined if it can. */
function executableProblem(path: string): string | undefined {
  try {
    if (statSync(path).isDirectory()) return "EACCES";
    accessSync(path, fsConstants.X_OK);
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? "ENOENT";
  }
}

function describeErrno(errno: string | undefined): string {
  switch (errno) {
    case "ENOENT":
      return "No such file or directory";
    case "EACCES":
      return "Permission denied";
    case "ENOTDIR":
      return "Not a directory";
    default:
      return errno ?? "cannot be used";
  }
}

function startOnPipes(command: ChildCommand, program: ResolvedProgram): SessionChild {
  const child = spawn(program.path, [...command.args], {
    argv0: command.file,
    cwd: command.cwd,
    env: { ...command.env },
    // A new session, so the child leads a process group the agent can
    // signal as a whole, and no terminal signal of the agent reaches it.
    detached: true,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const exited = new Promise<ChildExit>((done) => {
    child.once("exit", (code, signal) => {
      done(signal ? { code: 128 + (signalNumber(signal) ?? 0), signal } : { code: code ?? 0, signal: null });
    });
    // Only reached when the file vanished between the check and the spawn.
    child.once("error", (error: NodeJS.ErrnoException) => {
      if (child.pid !== undefined) return;
      const failure = startError(error.code, `${command.file}: ${describeErrno(error.code)}`);
      done({ code: failure.code, signal: null, error: failure.message });
    });
  });
  // The child may stop reading or exit before its stdin is written out; what
  // was left has nowhere to go, and EPIPE is not the session's failure.
  child.stdin.on("error", () => {});
  return {
    pid: child.pid ?? -1,
    tty: false,
    stdout: child.stdout,
    stderr: child.stderr,
    stdin: child.stdin,
    exited,
    resize() {},
    signal(signal) {
      if (child.pid !== undefined) signalGroup(child.pid, signal);
    },
  };
}

function startOnPty(command: ChildCommand, program: ResolvedProgram, spec: PtySpec): SessionChild {
  const term: IPty = spawnPty(program.path, [...command.args], {
    name: spec.term,
    cols: positiveOr(spec.cols, 80),
    rows: positiveOr(spec.rows, 24),
    cwd: command.cwd,
    env: { ...command.env },
    encoding: null,
  });
  let hasExited = false;
  const stdout = new Readable({
    highWaterMark: PTY_OUTPUT_BUFFER_BYTES,
    read() {
      term.resume();
    },
  });
  // With `encoding: null` node-pty hands over Buffers, whatever its types say.
  term.onData((data: string | Buffer) => {
    if (hasExited) return;
    if (!stdout.push(typeof data === "string" ? Buffer.from(data) : data)) term.pause();
  });
  const exited = new Promise<ChildExit>((done) => {
    // node-pty reports the exit only once the terminal's output is closed,
    // so everything the child printed has been pushed by now.
    term.onExit(({ exitCode, signal }) => {
      hasExited = true;
      stdout.push(null);
      const killedBy = signal ? (signalName(signal) ?? null) : null;
      done(killedBy ? { code: 128 + (signal ?? 0), signal: killedBy } : { code: exitCode, signal: null });
    });
  });
  // node-pty's queue of unwritten input, to wait on (without it input is not held back).
  const writeQueue = patchTerminal(() => ptyInputQueue(term));
  // Everything printed before the exit is delivered, even when paused or late on a loaded host.
  patchTerminal(() => drainPtyOnClose(term));
  const stdin = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (hasExited) return callback();
      term.write(chunk);
      const waitForQueue = () => {
        if (hasExited || !writeQueue || writeQueue.length < PTY_INPUT_QUEUE_CHUNKS) return callback();
        setTimeout(waitForQueue, PTY_INPUT_POLL_MS);
      };
      waitForQueue();
    },
  });
  return {
    pid: term.pid,
    tty: true,
    stdout,
    stderr: null,
    stdin,
    exited,
    resize(cols, rows) {
      if (hasExited || !(cols > 0) || !(rows > 0)) return;
      // The terminal may have closed between the exit and this request.
      orElse(undefined, () => term.resize(cols, rows));
    },
    signal(signal) {
      signalGroup(term.pid, signal);
    },
  };
}

const unavailableReported = new Set<string>();

/** Runs a per-terminal patch; one whose internal is missing is reported once on the agent's stderr (its supervisor logs it). */
function patchTerminal<T>(patch: () => T): T | undefined {
  try {
    return patch();
  } catch (error) {
    if (!(error instanceof PatchUnavailable)) throw error;
    if (!unavailableReported.has(error.patch)) process.stderr.write(`openshell agent: ${error.message}\n`);
    unavailableReported.add(error.patch);
    return undefined;
  }
}

function positiveOr(value: number, fallback: number): number {
  return Number.isInteger(value) && value > 0 ? value : fallback;
}
