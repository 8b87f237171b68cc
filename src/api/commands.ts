// Commands in a sandbox over SSH: one connection per sandbox handle, opened
// on first use and again after it is lost, and one channel per command, so a
// command costs a channel open, not a handshake. Closing a command's channel
// ends the remote process: the sandbox's agent kills the command's whole
// process tree (its cgroup) when the channel closes, which is what an abort
// or a timeout does.
//
// Every byte from the sandbox is hostile: output is kept only up to a bound
// (the rest is counted and passed to callbacks, never buffered), and every
// wait ends with the channel's close, an abort, or a timeout.

import type { Readable, Writable } from "node:stream";
import { StringDecoder } from "node:string_decoder";
import type { Client, ClientChannel } from "ssh2";
import { OpenShellError } from "../core/errors.js";
import { validateEnvironment } from "../core/names.js";
import { shellEscape } from "../core/shell.js";
import { exitCodeOf } from "../core/signals.js";
import type { OpenShellClient } from "../gen/openshell.js";
import type { GatewayTarget } from "../transport/grpc.js";
import { connectSandboxSsh, type SandboxSsh } from "../transport/ssh.js";
import { AbortError, InvalidArgumentError, TimeoutError, UnavailableError } from "./errors.js";

/** What a command's output is kept to by default (each of stdout and stderr). */
export const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

export interface CommandOptions {
  /** Environment variables for the command (names: letters, digits, `_`; `OPENSHELL_*` is reserved). */
  env?: Record<string, string> | undefined;
  /** Directory the command starts in (default: the sandbox's workdir, /sandbox). */
  workdir?: string | undefined;
  /** Kills the command (its whole process tree, in the sandbox) and rejects with `TimeoutError` after this long. */
  timeoutMs?: number | undefined;
  /** Aborting kills the command in the sandbox and rejects with `AbortError`. */
  signal?: AbortSignal | undefined;
}

export interface ExecOptions extends CommandOptions {
  /** Called with each piece of stdout as it arrives (UTF-8, never split inside a character). */
  onStdout?: ((text: string) => void) | undefined;
  onStderr?: ((text: string) => void) | undefined;
  /** Bytes of stdout, and of stderr, kept in the result (default 16 MiB); the rest is dropped and `truncated` set. */
  maxOutputBytes?: number | undefined;
  /** Written to the command's stdin, which is then closed (by default stdin is closed at once). */
  stdin?: string | Uint8Array | undefined;
}

export interface ExecResult {
  /** The exit status; 128 + N for a command killed by signal N (as a shell reports it). */
  exitCode: number;
  /** The signal that killed the command (`"SIGKILL"`), or null. */
  signal: string | null;
  stdout: string;
  stderr: string;
  /** True when stdout or stderr exceeded `maxOutputBytes` and was cut there. */
  truncated: boolean;
}

export interface ExecBytesResult {
  exitCode: number;
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
  truncated: boolean;
}

/** A command started with `spawn`: its streams, its end, and a way to signal it. */
export interface CommandProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Resolves with the exit status once the command ends; rejects on abort, timeout or a lost connection. */
  wait(): Promise<{ exitCode: number; signal: string | null }>;
  /** Sends a signal to the command (default SIGTERM). */
  kill(signal?: NodeJS.Signals | string): void;
  /** Ends the command at once: its channel closes and the sandbox kills its process tree. */
  close(): void;
}

/** The shell command line for `command` with `workdir`: a string runs as written, an array as its words. */
export function commandLine(command: string | readonly string[], workdir: string | undefined): string {
  let line: string;
  if (typeof command === "string") {
    if (command.trim() === "") throw new InvalidArgumentError("command is empty", { field: "command" });
    line = command;
  } else {
    if (command.length === 0) throw new InvalidArgumentError("command is empty", { field: "command" });
    try {
      line = command.map(shellEscape).join(" ");
    } catch (error) {
      throw new InvalidArgumentError(`command: ${(error as Error).message}`, { field: "command" });
    }
  }
  if (line.includes("\0"))
    throw new InvalidArgumentError("command contains a NUL byte", { field: "command" });
  if (workdir === undefined || workdir === "") return line;
  if (workdir.includes("\0"))
    throw new InvalidArgumentError("workdir contains a NUL byte", { field: "workdir" });
  // The command on lines of its own, so a `#` comment or a trailing `&` in it stays its own.
  return `cd ${shellEscape(workdir)} || exit 1\n${line}`;
}

function checkEnv(env: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!env || Object.keys(env).length === 0) return undefined;
  const problem = validateEnvironment(env, "env");
  if (problem) throw new InvalidArgumentError(problem, { field: "env" });
  for (const key of Object.keys(env)) {
    if (key.startsWith("OPENSHELL_")) {
      throw new InvalidArgumentError(`env ${key}: OPENSHELL_* names are reserved for the platform`, {
        field: "env",
      });
    }
  }
  return env;
}

function checkTimeout(timeoutMs: number | undefined): void {
  if (timeoutMs !== undefined && !(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
    throw new InvalidArgumentError(`timeoutMs ${timeoutMs}: expected a positive number of milliseconds`, {
      field: "timeoutMs",
    });
  }
}

/**
 * @internal
 * The SSH connection of one sandbox, shared by its commands: opened on the
 * first call, opened again on the next call after it is lost.
 */
export class SshLink {
  #open: Promise<SandboxSsh> | undefined;
  #closed = false;

  constructor(
    private readonly grpc: () => Promise<{ client: OpenShellClient; target: GatewayTarget }>,
    private readonly sandboxId: string,
  ) {}

  /** The connected client, (re)opening the connection when there is none. */
  async client(signal?: AbortSignal): Promise<Client> {
    if (this.#closed) throw new OpenShellError("failed_precondition", "this sandbox handle is closed");
    if (!this.#open) {
      const opening = this.grpc().then(({ client, target }) =>
        connectSandboxSsh(client, target, this.sandboxId, signal ? { signal } : {}),
      );
      this.#open = opening;
      opening.then(
        (ssh) => {
          const forget = (): void => {
            if (this.#open === opening) this.#open = undefined;
          };
          ssh.client.once("close", forget);
          ssh.client.once("end", forget);
          ssh.client.on("error", forget);
        },
        () => {
          if (this.#open === opening) this.#open = undefined;
        },
      );
    }
    return (await this.#open).client;
  }

  /** Closes the connection (its commands end with it) and revokes its session. */
  async close(): Promise<void> {
    this.#closed = true;
    const open = this.#open;
    this.#open = undefined;
    if (open) await open.then((ssh) => ssh.close()).catch(() => undefined);
  }

  /** Opens a channel for `command`; once the connection is lost, the next call opens a new one. */
  async channel(
    line: string,
    env: Record<string, string> | undefined,
    signal?: AbortSignal,
  ): Promise<ClientChannel> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.client(signal);
      try {
        return await new Promise<ClientChannel>((resolve, reject) => {
          client.exec(line, env ? { env } : {}, (error, channel) =>
            error ? reject(error) : resolve(channel),
          );
        });
      } catch (error) {
        // A connection that died between uses ("No response from server", "Not connected"): once more on a new one.
        const stale = this.#open;
        this.#open = undefined;
        if (stale) void stale.then((ssh) => ssh.client.end()).catch(() => undefined);
        if (attempt === 0 && !signal?.aborted) continue;
        throw new UnavailableError(`cannot start a command in the sandbox: ${(error as Error).message}`, {
          code: "connection_lost",
          cause: error,
        });
      }
    }
  }
}

interface RunEnds {
  exitCode: number;
  signal: string | null;
}

/**
 * Waits for a channel's exit status, ending the channel (so the sandbox
 * kills the command) on abort or timeout. ssh2 repeats the status in its
 * close event, which matters when it arrives in the same read as the open.
 */
function channelEnds(channel: ClientChannel, options: CommandOptions, what: string): Promise<RunEnds> {
  return new Promise<RunEnds>((resolve, reject) => {
    let ends: RunEnds | undefined;
    let failure: Error | undefined;
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      failure ??= new AbortError(`${what} was aborted; it was ended in the sandbox`, {
        cause: options.signal?.reason,
      });
      channel.close();
    };
    const done = (): void => {
      if (timer) clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    };
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener("abort", onAbort, { once: true });
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        failure ??= new TimeoutError(
          `${what} did not end within its timeout of ${options.timeoutMs} ms; it was ended in the sandbox`,
        );
        channel.close();
      }, options.timeoutMs);
    }
    const record = (code: number | null | undefined, signal: string | null | undefined): void => {
      if (ends || (typeof code !== "number" && !signal)) return;
      ends = {
        exitCode: exitCodeOf(code, signal),
        signal: typeof code === "number" || !signal ? null : `SIG${signal.replace(/^SIG/, "")}`,
      };
    };
    channel.on("exit", (code: number | null, signal?: string) => record(code, signal));
    channel.on("error", () => {});
    channel.on("close", (code?: number | null, signal?: string) => {
      record(code, signal);
      done();
      if (failure) reject(failure);
      else if (ends) resolve(ends);
      else
        reject(
          new UnavailableError(
            `${what}: the sandbox connection closed before the command reported an exit status`,
            {
              code: "connection_lost",
            },
          ),
        );
    });
  });
}

/** Keeps the first `limit` bytes of a stream and passes every chunk to `each`. */
function keep(stream: Readable, limit: number, each: ((chunk: Buffer) => void) | undefined) {
  const chunks: Buffer[] = [];
  let kept = 0;
  let cut = false;
  stream.on("data", (chunk: Buffer) => {
    each?.(chunk);
    if (kept >= limit) {
      cut ||= chunk.length > 0;
      return;
    }
    const part = chunk.length <= limit - kept ? chunk : chunk.subarray(0, limit - kept);
    if (part.length < chunk.length) cut = true;
    chunks.push(part);
    kept += part.length;
  });
  return { bytes: () => Buffer.concat(chunks, kept), truncated: () => cut };
}

function textSink(callback: ((text: string) => void) | undefined): ((chunk: Buffer) => void) | undefined {
  if (!callback) return undefined;
  const decoder = new StringDecoder("utf8");
  return (chunk) => {
    const text = decoder.write(chunk);
    if (text !== "") callback(text);
  };
}

/** @internal Runs a command to its end and collects its output as bytes. */
export async function runCommand(
  link: SshLink,
  command: string | readonly string[],
  options: ExecOptions,
): Promise<ExecBytesResult> {
  const line = commandLine(command, options.workdir);
  const env = checkEnv(options.env);
  checkTimeout(options.timeoutMs);
  const limit = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  if (!(Number.isInteger(limit) && limit >= 0)) {
    throw new InvalidArgumentError(`maxOutputBytes ${limit}: expected a whole number of bytes`, {
      field: "maxOutputBytes",
    });
  }
  if (options.signal?.aborted) throw new AbortError("the command was aborted before it started");
  const channel = await link.channel(line, env, options.signal);
  const ends = channelEnds(channel, options, "the command");
  const stdout = keep(channel, limit, textSink(options.onStdout));
  const stderr = keep(channel.stderr, limit, textSink(options.onStderr));
  if (options.stdin !== undefined) channel.end(options.stdin);
  else channel.end();
  const { exitCode, signal } = await ends;
  return {
    exitCode,
    signal,
    stdout: stdout.bytes(),
    stderr: stderr.bytes(),
    truncated: stdout.truncated() || stderr.truncated(),
  };
}

/** @internal Starts a command with its streams handed to the caller. */
export async function spawnCommand(
  link: SshLink,
  command: string | readonly string[],
  options: CommandOptions & { tty?: { cols: number; rows: number; term?: string } | undefined },
): Promise<CommandProcess> {
  const line = commandLine(command, options.workdir);
  const env = checkEnv(options.env);
  checkTimeout(options.timeoutMs);
  if (options.signal?.aborted) throw new AbortError("the command was aborted before it started");
  const client = await link.client(options.signal);
  const channel = await new Promise<ClientChannel>((resolve, reject) => {
    const pty = options.tty
      ? {
          pty: { cols: options.tty.cols, rows: options.tty.rows, term: options.tty.term ?? "xterm-256color" },
        }
      : {};
    client.exec(line, { ...pty, ...(env ? { env } : {}) }, (error, ch) =>
      error
        ? reject(
            new UnavailableError(`cannot start a command in the sandbox: ${error.message}`, {
              code: "connection_lost",
            }),
          )
        : resolve(ch),
    );
  });
  const ends = channelEnds(channel, options, "the command");
  ends.catch(() => {}); // the caller's wait() reports it
  return {
    stdin: channel,
    stdout: channel,
    stderr: channel.stderr,
    wait: () => ends,
    kill: (signal = "SIGTERM") => {
      channel.signal(String(signal).replace(/^SIG/, ""));
    },
    close: () => channel.close(),
  };
}
