// A handle on one sandbox: its commands (over one shared SSH connection),
// its files (the CLI's upload and download engine), its logs, and its
// lifecycle. `await using sandbox = await client.create(...)` deletes it
// when the scope ends, however it ends.

import { basename } from "node:path";
import type { Duplex, Readable } from "node:stream";
import type { Client, ClientChannel } from "ssh2";
import { OpenShellError } from "../core/errors.js";
import { normalizeSandboxPath } from "../core/files.js";
import { parseTtl, ttlError } from "../core/lifetime.js";
import { mainExitStatus, phaseName, readyFalseMessage } from "../core/phases.js";
import { CAPABILITY_SANDBOX_TTL, SUBSYSTEM_MAIN, SUBSYSTEM_START } from "../core/protocol.js";
import { shellEscape } from "../core/shell.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import {
  type Sandbox as SandboxInfo,
  type SandboxLogLine,
  SandboxPhase,
  WatchSandboxRequest,
} from "../gen/openshell.js";
import { collectBounded } from "../transport/bridge.js";
import { channelExit, sshExec, sshSubsystem } from "../transport/ssh.js";
import type { UploadPlan, UploadProgress } from "../transport/tar/upload.js";
import {
  type CommandOptions,
  type CommandProcess,
  type ExecOptions,
  type ExecResult,
  runCommand,
  SshLink,
  spawnCommand,
} from "./commands.js";
import {
  AbortError,
  InvalidArgumentError,
  NotFoundError,
  SandboxFailedError,
  TimeoutError,
  toApiError,
  typed,
} from "./errors.js";
import { type ForwardOptions, type PortForward, startForward } from "./forward.js";
import type { Link } from "./link.js";
import type { PolicyInfo, PolicyInput, SetPolicyOptions, SetPolicyResult } from "./policy.js";

export type { SandboxInfo, SandboxLogLine };

// The tar engine (and tar-stream) loads with the first transfer: the commands
// that move no files never pay for it.
const uploadEngine = () => import("../transport/tar/upload.js");
const downloadEngine = () => import("../transport/tar/download.js");

/** @internal An interactive session's channel: its input and output, its terminal's size, its end. */
export interface SessionChannel {
  /** What the session reads (ending it closes the remote stdin), and its stdout. */
  readonly stream: Duplex;
  readonly stderr: Readable;
  /** A new terminal size. */
  resize(rows: number, cols: number): void;
  /** Ends the session; the sandbox ends what runs in it. */
  close(): void;
  /** The exit status (128 + N for a signal) once it closes; rejects when it closed without one. */
  readonly exit: Promise<number>;
}

/** What one upload or download moved. */
export interface TransferSummary {
  files: number;
  bytes: number;
  /** Where it landed: the sandbox path of an upload, the local path of a download. */
  path: string;
}

export interface TransferProgress {
  bytes: number;
  totalBytes?: number | undefined;
  files?: number | undefined;
  totalFiles?: number | undefined;
}

export interface TransferOptions {
  signal?: AbortSignal | undefined;
  /** Bytes so far; an upload also says its total and its files so far and in all. */
  onProgress?: ((progress: TransferProgress) => void) | undefined;
}

export interface UploadOptions extends TransferOptions {
  /** Skip what .gitignore files ignore (default true), as `sandbox upload` does. */
  gitIgnore?: boolean | undefined;
  /** Upload a git work tree's files only (tracked and untracked, not ignored). */
  git?: boolean | undefined;
}

export interface LogOptions {
  /** Keep following new lines until the signal aborts or the sandbox is deleted. */
  follow?: boolean | undefined;
  /** Only lines from this time on: a Date, milliseconds since the epoch, or a duration back from now ("5m"). */
  since?: Date | number | string | undefined;
  /** How many of the latest lines to start with (default 200). */
  lines?: number | undefined;
  /** `gateway`, `sandbox`, or both (default). */
  sources?: ("gateway" | "sandbox")[] | undefined;
  /** Only lines at this level or above: ERROR, WARN, INFO, DEBUG, TRACE. */
  minLevel?: string | undefined;
  /** Called with what the gateway warns about: dropped lines, a lagging stream. */
  onWarning?: ((message: string) => void) | undefined;
  signal?: AbortSignal | undefined;
}

/** Output of the sandbox's probes and tar, which print a path or an error line; the rest is dropped. */
const CAPTURE_LIMIT = 64 * 1024;
/** Stopping waits for every process of the sandbox to end (the supervisor's grace, then a kill). */
const LIFECYCLE_DEADLINE_MS = 60_000;

function sinceMs(since: LogOptions["since"]): number {
  if (since === undefined) return 0;
  if (since instanceof Date) return since.getTime();
  if (typeof since === "number") return since;
  const match = /^(\d+)([smh])$/.exec(since.trim());
  if (!match)
    throw new InvalidArgumentError(`since ${since}: expected a duration like 30s, 5m or 1h`, {
      field: "since",
    });
  return Date.now() - Number(match[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[match[2] as "s" | "m" | "h"];
}

function stderrLines(stderr: Buffer): string[] {
  return escapeForTerminal(stderr)
    .split("\\n")
    .map((line) => line.trim())
    .filter((line) => line !== "");
}

export class Sandbox {
  #link: Link;
  #info: SandboxInfo;
  #ssh: SshLink;
  #deleteOnDispose: boolean;

  /** @internal Handles come from `OpenShell.create` and `OpenShell.get`. */
  constructor(link: Link, info: SandboxInfo, options: { deleteOnDispose?: boolean } = {}) {
    this.#link = link;
    this.#info = info;
    this.#ssh = new SshLink(() => link.grpc(), info.metadata!.id);
    this.#deleteOnDispose = options.deleteOnDispose ?? true;
  }

  get name(): string {
    return this.#info.metadata!.name;
  }

  get id(): string {
    return this.#info.metadata!.id;
  }

  /** The sandbox as the gateway last described it (`refresh()` asks again). */
  get info(): SandboxInfo {
    return this.#info;
  }

  /** Its phase as `sandbox list` shows it: Provisioning, Ready, Error, Stopped, ... */
  get phase(): string {
    return phaseName(this.#info.status?.phase);
  }

  /** Asks the gateway for the sandbox's current state. */
  refresh(options: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    return typed(async () => {
      this.#info = await this.#link.sandbox(this.name, options);
      return this.#info;
    });
  }

  /** Opens the handle's SSH connection now, instead of on the first command or transfer. */
  async open(options: { signal?: AbortSignal } = {}): Promise<void> {
    await typed(() => this.#ssh.client(options.signal));
  }

  // ---- commands ----

  /**
   * Runs a command and resolves with its exit status and output; a non-zero
   * exit is not an error. A string runs in the sandbox's shell, an array as
   * its words. Abort and `timeoutMs` end the process in the sandbox.
   */
  async exec(command: string | readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const result = await typed(() => runCommand(this.#ssh, command, options));
    return { ...result, stdout: result.stdout.toString("utf8"), stderr: result.stderr.toString("utf8") };
  }

  /** Starts a command and hands over its streams: write stdin, read stdout and stderr, `wait()` for the end. */
  spawn(
    command: string | readonly string[],
    options: CommandOptions & { tty?: { cols: number; rows: number; term?: string } } = {},
  ): Promise<CommandProcess> {
    return typed(() => spawnCommand(this.#ssh, command, options));
  }

  // ---- files ----

  /** Reads a file of the sandbox (at most `maxBytes`, default 16 MiB; a longer file is an error). */
  async readFile(path: string, options: { maxBytes?: number; signal?: AbortSignal } = {}): Promise<Buffer> {
    const maxBytes = options.maxBytes ?? 16 * 1024 * 1024;
    const result = await typed(() =>
      runCommand(this.#ssh, ["cat", "--", path], {
        maxOutputBytes: maxBytes,
        ...(options.signal ? { signal: options.signal } : {}),
      }),
    );
    if (result.exitCode !== 0) {
      const reason = stderrLines(result.stderr).pop() ?? `cat exited with status ${result.exitCode}`;
      throw new NotFoundError(`cannot read sandbox:${path}: ${reason}`);
    }
    if (result.truncated) {
      throw new InvalidArgumentError(`sandbox:${path} is larger than maxBytes (${maxBytes})`, {
        field: "maxBytes",
      });
    }
    return result.stdout;
  }

  /** Writes a file in the sandbox, creating its directory; `mode` as chmod takes it (e.g. 0o644). */
  async writeFile(
    path: string,
    data: string | Uint8Array,
    options: { mode?: number; signal?: AbortSignal } = {},
  ): Promise<void> {
    const normalized = normalizeSandboxPath(path);
    if (!normalized) {
      throw new InvalidArgumentError(`path ${path}: expected an absolute path without '..'`, {
        field: "path",
      });
    }
    const dir = normalized.slice(0, normalized.lastIndexOf("/")) || "/";
    const q = shellEscape(normalized);
    const chmod = options.mode !== undefined ? ` && chmod ${(options.mode & 0o7777).toString(8)} ${q}` : "";
    const result = await typed(() =>
      runCommand(this.#ssh, `mkdir -p ${shellEscape(dir)} && cat > ${q}${chmod}`, {
        stdin: data,
        maxOutputBytes: CAPTURE_LIMIT,
        ...(options.signal ? { signal: options.signal } : {}),
      }),
    );
    if (result.exitCode !== 0) {
      const reason = stderrLines(result.stderr).pop() ?? `exit status ${result.exitCode}`;
      throw new OpenShellError("failed_precondition", `cannot write sandbox:${path}: ${reason}`);
    }
  }

  /** Uploads a local file or directory to `dest` in the sandbox (default /sandbox), as `sandbox upload` does. */
  upload(local: string, dest?: string, options: UploadOptions = {}): Promise<TransferSummary> {
    return typed(async () => {
      const { planUpload } = await uploadEngine();
      const plan = await planUpload(local, dest, {
        gitIgnore: options.gitIgnore ?? true,
        git: options.git === true,
      });
      return uploadPlan(await this.#ssh.client(options.signal), plan, options);
    });
  }

  /** @internal Uploads planned transfers in order over this handle's connection (`create`'s, the CLI's). */
  async uploadPlans(plans: UploadPlan[], options: TransferOptions = {}): Promise<TransferSummary[]> {
    const client = await this.#ssh.client(options.signal);
    const summaries: TransferSummary[] = [];
    for (const plan of plans) summaries.push(await uploadPlan(client, plan, options));
    return summaries;
  }

  /** Downloads a sandbox file or directory into local `dest`, as `sandbox download` does. */
  download(path: string, dest: string, options: TransferOptions = {}): Promise<TransferSummary> {
    return typed(() => this.#download(path, dest, options));
  }

  async #download(path: string, dest: string, options: TransferOptions): Promise<TransferSummary> {
    const {
      decodeTypeProbe,
      downloadTarCommand,
      extractDownload,
      probeCommand,
      resolveDownloadSource,
      typeProbeCommand,
    } = await downloadEngine();
    const client = await this.#ssh.client(options.signal);
    const probe = await capture(client, probeCommand(path));
    if (probe.code !== 0) {
      const reason = stderrLines(probe.stderr).pop() ?? "";
      throw new NotFoundError(
        `failed to resolve sandbox source path '${path}'${reason ? `: ${reason}` : ""}`,
      );
    }
    const resolved = resolveDownloadSource(probe.stdout, path);
    const type = await capture(client, typeProbeCommand(resolved));
    const kind = decodeTypeProbe(type.stdout, path);
    const channel = await sshExec(client, downloadTarCommand(resolved));
    channel.end();
    const onAbort = (): void => {
      channel.close();
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const err = collectBounded(channel.stderr, CAPTURE_LIMIT);
    const exit = channelExit(channel);
    let received = 0;
    if (options.onProgress) {
      channel.on("data", (d: Buffer) => {
        received += d.length;
        options.onProgress?.({ bytes: received });
      });
    }
    try {
      const [result] = await Promise.all([
        extractDownload(channel, dest, { kind, name: basename(resolved), source: path }),
        exit.then((code) => {
          if (code !== 0) {
            throw new OpenShellError(
              "sandbox_error",
              `ssh tar create exited with status ${code}: ${stderrLines(err()).join("; ")}`,
            );
          }
        }),
      ]);
      return { files: result.files, bytes: result.bytes, path: result.path };
    } catch (error) {
      if (options.signal?.aborted) throw new AbortError("the download was aborted", { cause: error });
      throw error;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /** The sandbox's log lines; with `follow`, new ones as they come, until the signal aborts. */
  logs(options: LogOptions = {}): AsyncIterable<SandboxLogLine> {
    const link = this.#link;
    const id = this.id;
    const since = sinceMs(options.since);
    const lines = options.lines ?? 200;
    const sources = options.sources ?? [];
    return {
      [Symbol.asyncIterator]: async function* () {
        if (!options.follow) {
          const response = await typed(async () => {
            const { client, target } = await link.grpc();
            return link.call(
              target,
              client.getSandboxLogs.bind(client),
              {
                sandboxId: id,
                lines,
                sinceMs: since,
                sources,
                minLevel: "",
                workspace: link.workspace,
              },
              options.signal ? { signal: options.signal } : {},
            );
          });
          yield* response.logs;
          // Only when lines this request asked for are gone: a short answer to since or lines is otherwise complete.
          if (response.earlierLinesDropped) {
            options.onWarning?.(
              `earlier log lines were dropped: these are the latest ${response.bufferTotal} the gateway keeps.`,
            );
          }
          return;
        }
        const request = WatchSandboxRequest.fromPartial({
          id,
          followLogs: true,
          logTailLines: lines,
          logSinceMs: since,
          logSources: sources,
          logMinLevel: options.minLevel ?? "",
        });
        try {
          for await (const event of link.watch(request, options.signal)) {
            if (event.payload?.$case === "log") yield event.payload.value;
            else if (event.payload?.$case === "warning") options.onWarning?.(event.payload.value.message);
          }
        } catch (error) {
          throw toApiError(error);
        }
      },
    };
  }

  /**
   * Waits for the main command to complete and resolves with its exit
   * status. `onOutput` gets the command's lines (from the first one the
   * gateway still holds) as they come; the stream waits for a promise it
   * returns. A sandbox stopped, failed or deleted first rejects.
   */
  wait(
    options: {
      signal?: AbortSignal | undefined;
      timeoutMs?: number | undefined;
      onOutput?: ((line: SandboxLogLine) => void | Promise<void>) | undefined;
      /** What the gateway warns about: lines skipped for a slow reader. */
      onWarning?: ((message: string) => void) | undefined;
      /** @internal The timeout's message (the CLI names its flag). */
      timeoutMessage?: string | undefined;
    } = {},
  ): Promise<number> {
    return typed(() => waitMain(this.#link, this.name, this.id, options));
  }

  // ---- ports ----

  /**
   * Forwards a local port to `port` on the sandbox's loopback (a dev server,
   * a notebook): resolves once it listens, with its address and `close()`.
   * Each connection is carried on its own; it ends by itself when the
   * sandbox is deleted or stopped.
   */
  forward(port: number, options: ForwardOptions = {}): Promise<PortForward> {
    return typed(async () => {
      const info = await this.refresh(options.signal ? { signal: options.signal } : {});
      if (info.status?.phase !== SandboxPhase.SANDBOX_PHASE_READY) {
        throw new OpenShellError(
          "not_ready",
          `sandbox '${this.name}' is not ready (phase: ${this.phase}); forwards reach Ready sandboxes only`,
        );
      }
      return startForward(this.#link, { id: this.id, name: this.name }, port, options);
    });
  }

  // ---- lifecycle ----

  /** Ends the sandbox's processes; it keeps its files and can be started again. Resolves once Stopped. */
  stop(options: { signal?: AbortSignal } = {}): Promise<void> {
    return typed(async () => {
      await this.#ssh.close();
      this.#ssh = new SshLink(() => this.#link.grpc(), this.id);
      this.#info = (await stopSandbox(this.#link, this.name, options)) ?? this.#info;
    });
  }

  /** Boots a stopped sandbox again; resolves once it is Ready. */
  start(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<void> {
    return typed(async () => {
      const sandbox = await startSandbox(this.#link, this.name, options);
      this.#info = sandbox;
      if (sandbox.status?.phase !== SandboxPhase.SANDBOX_PHASE_READY) {
        this.#info = await this.#link.waitReady(sandbox, { ...options, eventTail: 0 });
      }
    });
  }

  /** Extends the sandbox's lifetime to `ttl` from now (seconds, or "30m", "2h", "1d"). */
  renew(ttl: number | string, options: { signal?: AbortSignal } = {}): Promise<void> {
    return typed(async () => {
      this.#info = (await renewSandbox(this.#link, this.name, ttl, options)) ?? this.#info;
    });
  }

  // ---- policy ----

  /**
   * The sandbox's policy: the revision stored now and the one in force
   * (`revision` asks for an earlier one).
   */
  policy(options: { revision?: number; signal?: AbortSignal } = {}): Promise<PolicyInfo> {
    return typed(async () =>
      (await import("./policy.js")).readPolicy(this.#link, this.name, this.id, options),
    );
  }

  /**
   * Gives the running sandbox a new policy (a file's path, or the document as
   * an object): its network rules apply to new connections at once, open ones
   * keep going. A change only a restart could bring (filesystem, landlock,
   * process) is refused. With `wait`, resolves once the sandbox has it in force.
   */
  setPolicy(policy: PolicyInput, options: SetPolicyOptions = {}): Promise<SetPolicyResult> {
    return typed(async () =>
      (await import("./policy.js")).writePolicy(this.#link, this.name, this.id, policy, options),
    );
  }

  /** Releases the main command held for uploads (`create` with `uploads` and a command does this itself). */
  async startMain(): Promise<void> {
    await typed(async () => {
      const channel = await sshSubsystem(await this.#ssh.client(), SUBSYSTEM_START);
      channel.resume();
      const code = await channelExit(channel);
      if (code !== 0)
        throw new SandboxFailedError(`the sandbox could not start its command (status ${code})`, {
          reason: "MainCommandStart",
        });
    });
  }

  /**
   * @internal An interactive session over this handle's connection (the
   * CLI's connect and attach): a login shell, on a terminal (`pty`) or on
   * pipes (`false`), or the main command (`"main"`, started if it was held).
   */
  session(
    kind: { shell: { term: string; rows: number; cols: number } | false } | "main",
  ): Promise<SessionChannel> {
    return typed(async () => {
      const client = await this.#ssh.client();
      const channel =
        kind === "main"
          ? await sshSubsystem(client, SUBSYSTEM_MAIN)
          : await new Promise<ClientChannel>((resolve, reject) => {
              const done = (error: Error | undefined, opened: ClientChannel): void =>
                error
                  ? reject(new OpenShellError("connection_lost", `cannot open a shell: ${error.message}`))
                  : resolve(opened);
              if (kind.shell) client.shell(kind.shell, done);
              else client.shell(false, done);
            });
      // Listened for at once: the status can arrive with the channel's confirmation.
      const exit = typed(() => channelExit(channel));
      exit.catch(() => {});
      return {
        stream: channel,
        stderr: channel.stderr,
        resize: (rows, cols) => {
          channel.setWindow(rows, cols, 0, 0);
        },
        close: () => {
          channel.close();
        },
        exit,
      };
    });
  }

  /** Deletes the sandbox; resolves false when it was already gone. */
  async delete(options: { signal?: AbortSignal } = {}): Promise<boolean> {
    await this.close();
    return this.#link.delete(this.name, options);
  }

  /** Closes this handle's SSH connection (running commands end with it); the sandbox stays. */
  close(): Promise<void> {
    return this.#ssh.close();
  }

  /** `await using`: deletes the sandbox (or, for a handle from `get`, closes only the connection). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#deleteOnDispose) await this.delete();
    else await this.close();
  }
}

/** @internal Runs a probe command and collects its (bounded) output and status. */
async function capture(
  client: Client,
  command: string,
): Promise<{ stdout: Buffer; stderr: Buffer; code: number }> {
  const channel = await sshExec(client, command);
  channel.end();
  const stdout = collectBounded(channel, CAPTURE_LIMIT);
  const stderr = collectBounded(channel.stderr, CAPTURE_LIMIT);
  const code = await channelExit(channel);
  return { stdout: stdout(), stderr: stderr(), code };
}

/** @internal Uploads one plan over an SSH connection: counted done only when the sandbox's tar reports every entry and byte. */
export async function uploadPlan(
  client: Client,
  plan: UploadPlan,
  options: TransferOptions = {},
): Promise<TransferSummary> {
  const { packUpload, remoteExtractCommand, verifyExtraction } = await uploadEngine();
  const channel = await sshExec(client, remoteExtractCommand(plan));
  const limit = plan.entries.reduce((n, entry) => n + 4 * Buffer.byteLength(entry.name) + 256, CAPTURE_LIMIT);
  const out = collectBounded(channel, limit);
  const err = collectBounded(channel.stderr, limit);
  const exit = channelExit(channel);
  const onAbort = (): void => {
    channel.close();
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const done = packUpload(plan, channel, (p: UploadProgress) =>
    options.onProgress?.({
      bytes: p.bytes,
      totalBytes: p.totalBytes,
      files: p.files,
      totalFiles: p.totalFiles,
    }),
  );
  try {
    const [code] = await Promise.all([
      exit,
      done.catch((error: unknown) => {
        // The archive will not be complete: the sandbox's tar must not take it as such.
        channel.close();
        throw error;
      }),
    ]);
    verifyExtraction(plan, out(), err(), code);
  } catch (error) {
    if (options.signal?.aborted) throw new AbortError("the upload was aborted", { cause: error });
    throw error;
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
  }
  return { files: plan.totals.files, bytes: plan.totals.bytes, path: plan.remotePath };
}

/** @internal StopSandbox by name, then the wait for Stopped (ours answers once stopped, upstream's while stopping). */
export async function stopSandbox(
  link: Link,
  name: string,
  options: { signal?: AbortSignal | undefined },
): Promise<SandboxInfo | undefined> {
  const { client, target } = await link.grpc();
  const { sandbox } = await link.call(
    target,
    client.stopSandbox.bind(client),
    { name, workspace: link.workspace },
    { deadlineMs: LIFECYCLE_DEADLINE_MS, ...(options.signal ? { signal: options.signal } : {}) },
  );
  if (sandbox?.metadata && sandbox.status?.phase !== SandboxPhase.SANDBOX_PHASE_STOPPED) {
    return link.waitStopped(sandbox.metadata.id, options);
  }
  return sandbox;
}

/** A gateway that lacks sandbox lifetimes would create the sandbox without one: refused instead. */
export function ttlUnsupported(gateway: string, flag: string): OpenShellError {
  return new OpenShellError(
    "unsupported",
    `gateway '${gateway}' does not support ${flag}: it keeps no sandbox lifetimes (an OpenShell gateway ignores SandboxSpec.ttl_seconds)`,
    {
      hint: "Use an openshell gateway (`openshell gateway start`), or delete the sandbox yourself when done.",
    },
  );
}

/** @internal RenewSandbox by name, after checking the gateway keeps lifetimes. */
export async function renewSandbox(
  link: Link,
  name: string,
  ttl: number | string,
  options: { signal?: AbortSignal | undefined; what?: string },
): Promise<SandboxInfo | undefined> {
  const seconds = typeof ttl === "number" ? ttl : parseTtl(ttl);
  if (seconds === undefined || !Number.isInteger(seconds) || seconds <= 0) {
    throw new InvalidArgumentError(ttlError("ttl", String(ttl)), { field: "ttl" });
  }
  await link.requireCapability(CAPABILITY_SANDBOX_TTL, "renew", () =>
    ttlUnsupported(link.gateway().name, options.what ?? "sandbox renew"),
  );
  const { client, target } = await link.grpc();
  const { sandbox } = await link.call(
    target,
    client.renewSandbox.bind(client),
    { name, workspace: link.workspace, ttlSeconds: seconds },
    options.signal ? { signal: options.signal } : {},
  );
  return sandbox;
}

/** As many past lines as a gateway keeps: the whole output, from its start, where it is still held. */
const ALL_LINES = 1_000_000;

/** The main command's exit status once completed; a failure when it never can; undefined while it runs. */
function mainOutcome(name: string, sandbox: SandboxInfo): number | OpenShellError | undefined {
  const status = mainExitStatus(sandbox);
  if (status !== undefined) return status;
  switch (sandbox.status?.phase) {
    case SandboxPhase.SANDBOX_PHASE_ERROR: {
      const reason = readyFalseMessage(sandbox);
      return new SandboxFailedError(
        `sandbox '${name}' failed before its command completed: ${reason || "phase Error"}`,
        { reason },
      );
    }
    case SandboxPhase.SANDBOX_PHASE_STOPPING:
    case SandboxPhase.SANDBOX_PHASE_STOPPED:
      return new OpenShellError("not_ready", `sandbox '${name}' was stopped before its command completed`, {
        hint: `Start it again (the command runs anew) with: openshell sandbox start ${name}`,
      });
    case SandboxPhase.SANDBOX_PHASE_DELETING:
      return new NotFoundError(`sandbox '${name}' is being deleted; its command did not complete`);
    default:
      return undefined;
  }
}

/** @internal WatchSandbox until the main command completes; its lines to `onOutput` on the way. */
export async function waitMain(
  link: Link,
  name: string,
  id: string,
  options: {
    signal?: AbortSignal | undefined;
    timeoutMs?: number | undefined;
    onOutput?: ((line: SandboxLogLine) => void | Promise<void>) | undefined;
    onWarning?: ((message: string) => void) | undefined;
    timeoutMessage?: string | undefined;
  },
): Promise<number> {
  const timeout = new AbortController();
  const timer =
    options.timeoutMs !== undefined && options.timeoutMs > 0
      ? setTimeout(() => timeout.abort(), options.timeoutMs)
      : undefined;
  const stop = AbortSignal.any([timeout.signal, ...(options.signal ? [options.signal] : [])]);
  const logs = options.onOutput !== undefined;
  // The gateway sends the held lines before the sandbox's state, and each line
  // before the state change that follows it: the output is complete when the
  // status says the command completed.
  const request = WatchSandboxRequest.fromPartial({
    id,
    followStatus: true,
    followLogs: logs,
    logTailLines: logs ? ALL_LINES : 0,
    logSources: ["sandbox"],
  });
  try {
    for await (const event of link.watch(request, stop)) {
      const payload = event.payload;
      if (payload?.$case === "sandbox") {
        const result = mainOutcome(name, payload.value);
        if (typeof result === "number") return result;
        if (result) throw result;
      } else if (payload?.$case === "log") {
        // A slow consumer holds the stream (the gateway then skips lines and says how many), not memory here.
        await options.onOutput?.(payload.value);
      } else if (payload?.$case === "warning") {
        options.onWarning?.(payload.value.message);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  if (options.signal?.aborted) throw new AbortError("interrupted", { cause: options.signal.reason });
  if (timeout.signal.aborted) {
    throw new TimeoutError(
      options.timeoutMessage ??
        `sandbox '${name}': its command did not complete within ${options.timeoutMs} ms`,
    );
  }
  throw new NotFoundError(`sandbox '${name}' was deleted before its command completed`);
}

/** @internal StartSandbox by name: the sandbox as the gateway answers (Ready already, or booting). */
export async function startSandbox(
  link: Link,
  name: string,
  options: { signal?: AbortSignal | undefined },
): Promise<SandboxInfo> {
  const { client, target } = await link.grpc();
  const { sandbox } = await link.call(
    target,
    client.startSandbox.bind(client),
    { name, workspace: link.workspace },
    { deadlineMs: LIFECYCLE_DEADLINE_MS, ...(options.signal ? { signal: options.signal } : {}) },
  );
  if (!sandbox?.metadata) throw new OpenShellError("internal", "sandbox missing from response");
  return sandbox;
}
