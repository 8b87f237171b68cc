// `sandbox upload`, `sandbox download`, and the uploads of `create --upload`:
// tar over one SSH connection through the gateway. An upload counts as done
// only when the sandbox's tar reports every entry and every byte; a download
// is extracted locally by a extractor that refuses anything landing outside
// DEST.

import { basename } from "node:path";
import type { Client } from "ssh2";
import { OpenShellError } from "../../core/errors.js";
import { notReadyMessage } from "../../core/phases.js";
import { escapeForTerminal } from "../../core/terminal-text.js";
import { SandboxPhase } from "../../gen/openshell.js";
import { collectBounded } from "../../transport/bridge.js";
import { channelExit, connectSandboxSsh, sshExec } from "../../transport/ssh.js";
import {
  decodeTypeProbe,
  downloadTarCommand,
  extractDownload,
  probeCommand,
  resolveDownloadSource,
  typeProbeCommand,
} from "../../transport/tar/download.js";
import {
  packUpload,
  planUpload,
  remoteExtractCommand,
  type UploadPlan,
  type UploadProgress,
  verifyExtraction,
} from "../../transport/tar/upload.js";
import type { CommandContext, ConnectedGateway } from "../context.js";
import type { Ui } from "../output/ui.js";

const PROGRESS_INTERVAL_MS = 200;

function megabytes(bytes: number): string {
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

interface ProgressState {
  bytes: number;
  totalBytes?: number;
  files?: number;
  totalFiles?: number;
}

/**
 * A self-overwriting progress line on a terminal (bytes, rate, files);
 * nothing otherwise, so scripts see only the summary line on stderr.
 */
class TransferProgress {
  private readonly started = Date.now();
  private last = 0;
  private shown = false;

  constructor(
    private readonly ui: Ui,
    private readonly verb: string,
  ) {}

  update(state: ProgressState): void {
    if (!this.ui.interactive) return;
    const now = Date.now();
    if (now - this.last < PROGRESS_INTERVAL_MS) return;
    this.last = now;
    const seconds = Math.max((now - this.started) / 1000, 0.001);
    const total = state.totalBytes ? ` / ${megabytes(state.totalBytes)}` : "";
    const files =
      state.files === undefined
        ? ""
        : state.totalFiles === undefined
          ? `, ${count(state.files, "file")}`
          : `, ${state.files}/${count(state.totalFiles, "file")}`;
    this.ui.io.stderr.write(
      `\r\x1b[2K  ${this.verb} ${megabytes(state.bytes)}${total}${files}, ${megabytes(state.bytes / seconds)}/s`,
    );
    this.shown = true;
  }

  clear(): void {
    if (this.shown) this.ui.io.stderr.write("\r\x1b[2K");
    this.shown = false;
  }
}

/**
 * The connection to the sandbox dropped mid-transfer (gateway gone, network
 * down): say what was being transferred and that it was not confirmed.
 */
function transferLost(what: string, error: unknown): unknown {
  if (!(error instanceof OpenShellError) || error.code !== "connection_lost") return error;
  return new OpenShellError(
    "connection_lost",
    `${what} failed: the connection to the sandbox was lost before the transfer completed (${error.message})`,
    {
      hint: "Nothing was confirmed as transferred. Check the gateway with `openshell status` and run the command again.",
      cause: error,
    },
  );
}

/** The non-blank lines a sandbox command wrote on stderr, escaped for the terminal. */
function stderrLines(stderr: Buffer): string[] {
  return escapeForTerminal(stderr)
    .split("\\n")
    .map((line) => line.trim())
    .filter((line) => line !== "");
}

/** Runs a command in the sandbox and collects its output and status. */
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

// What the sandbox's probes and tar print is a path or an error line; past
// this, the rest is dropped, so a sandbox cannot make the CLI buffer without end.
const CAPTURE_LIMIT = 64 * 1024;

/** What one transfer moved, as `-o json` reports it. */
export interface TransferSummary {
  files: number;
  bytes: number;
  path: string;
}

function printSummary(
  ctx: CommandContext,
  sandbox: string,
  direction: "upload" | "download",
  summary: TransferSummary,
): void {
  const document = { sandbox, direction, ...summary, completed_at: new Date().toISOString() };
  ctx.io.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
}

async function uploadOne(ui: Ui, client: Client, plan: UploadPlan): Promise<TransferSummary> {
  if (plan.warning) ui.warn(plan.warning);
  const what = `upload of ${plan.local} to ${plan.remotePath}`;
  const progress = new TransferProgress(ui, "Uploading");
  const channel = await sshExec(client, remoteExtractCommand(plan)).catch((error: unknown) => {
    throw transferLost(what, error);
  });
  // The sandbox's tar lists every entry (escaped, at most 4 bytes a byte) and may warn about each.
  const limit = plan.entries.reduce((n, entry) => n + 4 * Buffer.byteLength(entry.name) + 256, CAPTURE_LIMIT);
  const out = collectBounded(channel, limit);
  const err = collectBounded(channel.stderr, limit);
  const exit = channelExit(channel);
  const done = packUpload(plan, channel, (p: UploadProgress) =>
    progress.update({ bytes: p.bytes, totalBytes: p.totalBytes, files: p.files, totalFiles: p.totalFiles }),
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
    throw transferLost(what, error);
  } finally {
    progress.clear();
  }
  ui.success(
    `Uploaded ${count(plan.totals.files, "file")}, ${megabytes(plan.totals.bytes)} to ${plan.remotePath}`,
  );
  return { files: plan.totals.files, bytes: plan.totals.bytes, path: plan.remotePath };
}

/** Uploads each plan in order over one SSH connection. */
export async function uploadPlans(
  ctx: CommandContext,
  gateway: ConnectedGateway,
  sandboxId: string,
  plans: UploadPlan[],
): Promise<TransferSummary[]> {
  const ssh = await connectSandboxSsh(gateway.client, gateway.target, sandboxId, { signal: ctx.signal });
  try {
    const summaries: TransferSummary[] = [];
    for (const plan of plans) summaries.push(await uploadOne(ctx.ui, ssh.client, plan));
    return summaries;
  } finally {
    await ssh.close();
  }
}

async function readySandboxId(gateway: ConnectedGateway, name: string): Promise<string> {
  const sandbox = await gateway.sandbox(name);
  const phase = sandbox?.status?.phase;
  if (phase !== SandboxPhase.SANDBOX_PHASE_READY) {
    throw new OpenShellError("not_ready", notReadyMessage(name, phase));
  }
  return sandbox!.metadata!.id;
}

export async function sandboxUpload(
  ctx: CommandContext,
  options: {
    name: string;
    local: string;
    dest: string | undefined;
    gitIgnore: boolean;
    git?: boolean;
    output?: "text" | "json" | undefined;
  },
): Promise<number> {
  const plan = await planUpload(options.local, options.dest, {
    gitIgnore: options.gitIgnore,
    git: options.git === true,
  });
  const gateway = await ctx.gateway();
  const id = await readySandboxId(gateway, options.name);
  const [summary] = await uploadPlans(ctx, gateway, id, [plan]);
  if (options.output === "json") printSummary(ctx, options.name, "upload", summary!);
  return 0;
}

export async function sandboxDownload(
  ctx: CommandContext,
  options: { name: string; path: string; dest: string; output?: "text" | "json" | undefined },
): Promise<number> {
  const gateway = await ctx.gateway();
  const id = await readySandboxId(gateway, options.name);
  const ssh = await connectSandboxSsh(gateway.client, gateway.target, id, { signal: ctx.signal });
  const what = `download of sandbox:${options.path} to ${options.dest}`;
  try {
    const probe = await capture(ssh.client, probeCommand(options.path));
    if (probe.code !== 0) {
      const reason = stderrLines(probe.stderr).pop() ?? "";
      throw new OpenShellError(
        "not_found",
        `failed to resolve sandbox source path '${options.path}'${reason ? `: ${reason}` : ""}`,
      );
    }
    const resolved = resolveDownloadSource(probe.stdout, options.path);
    const type = await capture(ssh.client, typeProbeCommand(resolved));
    const kind = decodeTypeProbe(type.stdout, options.path);
    const channel = await sshExec(ssh.client, downloadTarCommand(resolved));
    channel.end();
    const err = collectBounded(channel.stderr, CAPTURE_LIMIT);
    const exit = channelExit(channel);
    const progress = new TransferProgress(ctx.ui, "Downloading");
    let received = 0;
    channel.on("data", (d: Buffer) => {
      received += d.length;
      progress.update({ bytes: received });
    });
    let result: Awaited<ReturnType<typeof extractDownload>>;
    try {
      [result] = await Promise.all([
        extractDownload(channel, options.dest, { kind, name: basename(resolved), source: options.path }),
        exit.then((code) => {
          if (code !== 0) {
            throw new OpenShellError(
              "sandbox_error",
              `ssh tar create exited with status ${code}: ${stderrLines(err()).join("; ")}`,
            );
          }
        }),
      ]);
    } finally {
      progress.clear();
    }
    ctx.ui.success(`Downloaded ${count(result.files, "file")}, ${megabytes(result.bytes)} to ${result.path}`);
    if (options.output === "json") printSummary(ctx, options.name, "download", result);
    return 0;
  } catch (error) {
    throw transferLost(what, error);
  } finally {
    await ssh.close();
  }
}
