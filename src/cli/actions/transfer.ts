// `sandbox upload`, `sandbox download`, and the uploads of `create --upload`,
// on the API: tar over one SSH connection through the gateway. An upload counts as done
// only when the sandbox's tar reports every entry and every byte; a download
// is extracted locally by a extractor that refuses anything landing outside
// DEST.

import type { Sandbox, SandboxInfo } from "../../api/sandbox.js";
import { OpenShellError } from "../../core/errors.js";
import { notReadyMessage } from "../../core/phases.js";
import { SandboxPhase } from "../../gen/openshell.js";
import { planUpload, type UploadPlan } from "../../transport/tar/upload.js";
import type { CommandContext } from "../context.js";
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

async function uploadOne(ui: Ui, handle: Sandbox, plan: UploadPlan): Promise<TransferSummary> {
  if (plan.warning) ui.warn(plan.warning);
  const what = `upload of ${plan.local} to ${plan.remotePath}`;
  const progress = new TransferProgress(ui, "Uploading");
  try {
    await handle.uploadPlans([plan], {
      onProgress: (p) =>
        progress.update({
          bytes: p.bytes,
          totalBytes: p.totalBytes,
          files: p.files,
          totalFiles: p.totalFiles,
        }),
    });
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

/** Uploads each plan in order over one SSH connection: `create --upload`'s, to the sandbox it made. */
export async function uploadPlans(
  ctx: CommandContext,
  sandbox: SandboxInfo,
  plans: UploadPlan[],
): Promise<TransferSummary[]> {
  const handle = (await ctx.api()).handle(sandbox);
  await handle.open({ signal: ctx.signal });
  try {
    const summaries: TransferSummary[] = [];
    for (const plan of plans) summaries.push(await uploadOne(ctx.ui, handle, plan));
    return summaries;
  } finally {
    await handle.close();
  }
}

/** The handle of sandbox `name`, which must be Ready, with its SSH connection open. */
async function readySandbox(ctx: CommandContext, name: string): Promise<Sandbox> {
  const api = await ctx.api();
  const handle = await api.get(name, { signal: ctx.signal });
  const phase = handle.info.status?.phase;
  if (phase !== SandboxPhase.SANDBOX_PHASE_READY) {
    throw new OpenShellError("not_ready", notReadyMessage(name, phase));
  }
  await handle.open({ signal: ctx.signal });
  return handle;
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
  const handle = await readySandbox(ctx, options.name);
  try {
    const summary = await uploadOne(ctx.ui, handle, plan);
    if (options.output === "json") printSummary(ctx, options.name, "upload", summary);
    return 0;
  } finally {
    await handle.close();
  }
}

export async function sandboxDownload(
  ctx: CommandContext,
  options: { name: string; path: string; dest: string; output?: "text" | "json" | undefined },
): Promise<number> {
  const handle = await readySandbox(ctx, options.name);
  const what = `download of sandbox:${options.path} to ${options.dest}`;
  const progress = new TransferProgress(ctx.ui, "Downloading");
  try {
    const result = await handle.download(options.path, options.dest, {
      onProgress: (p) => progress.update({ bytes: p.bytes }),
    });
    progress.clear();
    ctx.ui.success(`Downloaded ${count(result.files, "file")}, ${megabytes(result.bytes)} to ${result.path}`);
    if (options.output === "json") printSummary(ctx, options.name, "download", result);
    return 0;
  } catch (error) {
    progress.clear();
    throw transferLost(what, error);
  } finally {
    await handle.close();
  }
}
