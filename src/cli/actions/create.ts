// `sandbox create`: check everything local first (names, labels, env, files,
// policy, uploads) so bad input never leaves a sandbox behind; read the
// injected files straight into the request while asking the gateway whether
// it takes them; create; check the injected files' digests; wait for Ready;
// upload; then attach to the command, or return.
//
// The main command is held until the CLI is ready for it when it attaches
// or uploads (annotation openshell.dev/start-on-attach), so the command
// starts only after the files are in place and none of its output is missed.

import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { resolve } from "node:path";
import { invalidInput, OpenShellError, usageError } from "../../core/errors.js";
import { modeWarnings, normalizeSandboxPath, parseFileFlag } from "../../core/files.js";
import { parseTtl, ttlError } from "../../core/lifetime.js";
import { type Limits, limitsToResources, parseCpu, parsePids, parseQuantity } from "../../core/limits.js";
import { parseLabelFlag, validateCommand, validateSandboxName } from "../../core/names.js";
import { ANNOTATION_START_ON_ATTACH, ANNOTATION_TTY_SIZE } from "../../core/protocol.js";
import { type Sandbox, SandboxTemplate } from "../../gen/openshell.js";
import { checkFileSpecs, readFileContents } from "../../host/local-files.js";
import { loadPolicyFile } from "../../host/policy-file.js";
import type { UploadPlan } from "../../transport/tar/upload.js";
import type { CommandContext } from "../context.js";
import { createAttaches } from "../flags.js";
import { type OutputFormat, printDocument, sandboxDocument } from "../output/present.js";
import { type ProgressMode, waitForReady } from "../wait.js";
import { parseEnvFlags } from "./exec.js";
import { ttlUnsupported } from "./lifecycle.js";

export interface CreateOptions {
  name?: string | undefined;
  labels: string[];
  env: string[];
  files: string[];
  uploads: string[];
  gitIgnore: boolean;
  uploadGit?: boolean | undefined;
  policy?: string | undefined;
  detach: boolean;
  attach: boolean;
  keep: boolean;
  tty?: boolean | undefined;
  /** `--ttl`: the sandbox's lifetime, e.g. 30m. */
  ttl?: string | undefined;
  /** `--from`: the image the sandbox runs (a reference, a community name, or a local archive or directory). */
  from?: string | undefined;
  output: OutputFormat;
  command: string[];
  cpu?: string | undefined;
  memory?: string | undefined;
  pids?: string | undefined;
  disk?: string | undefined;
}

/**
 * `template.image` from --from: a local archive or directory (a path that
 * exists here, or one written as a path) goes as its absolute path, which a
 * gateway on this machine reads; anything else is an image reference.
 */
export function imageSource(from: string | undefined): string | undefined {
  const source = from?.trim();
  if (source === undefined) return undefined;
  if (source === "")
    throw invalidInput("--from: expected an image reference or a local archive or directory");
  return /^(\.{0,2}\/|~\/)/.test(source) || existsSync(source)
    ? resolve(source.replace(/^~(?=\/)/, homedir()))
    : source;
}

/** `template.resources` from --cpu, --memory, --pids and --disk, as upstream sends cpu and memory; undefined when none is given. */
function resourcesFlags(o: CreateOptions): Record<string, unknown> | undefined {
  const limits: Limits = {};
  const take = (value: number | string): number => {
    if (typeof value === "string") throw invalidInput(value);
    return value;
  };
  if (o.cpu !== undefined) limits.cpuMillis = take(parseCpu(o.cpu));
  if (o.memory !== undefined) limits.memoryBytes = take(parseQuantity(o.memory, "--memory"));
  if (o.pids !== undefined) limits.pids = take(parsePids(o.pids));
  if (o.disk !== undefined) limits.diskBytes = take(parseQuantity(o.disk, "--disk"));
  if (Object.keys(limits).length === 0) return undefined;
  // Upstream's spelling for what it has: `cpu` and `memory` as given.
  const resources = limitsToResources(limits) as { limits: Record<string, string> };
  if (o.cpu !== undefined) resources.limits.cpu = o.cpu.trim();
  if (o.memory !== undefined) resources.limits.memory = o.memory.trim();
  return resources;
}

function checkFlags(o: CreateOptions): void {
  if (!o.keep && o.detach) throw usageError("--no-keep cannot be combined with --detach");
  if (!o.keep && o.output !== "table") throw usageError("--no-keep cannot be combined with -o");
  if (o.attach && o.detach) throw usageError("--attach cannot be combined with --detach");
  if (o.attach && o.output !== "table") throw usageError("--attach cannot be combined with -o");
  if (!o.gitIgnore && o.uploads.length === 0) throw usageError("--no-git-ignore needs --upload");
  if (o.uploadGit && o.uploads.length === 0) throw usageError("--upload-git needs --upload");
}

export async function sandboxCreate(ctx: CommandContext, o: CreateOptions): Promise<number> {
  checkFlags(o);
  const { ui, io } = ctx;
  const terminal = io.stdin.isTTY === true && io.stdout.isTTY === true;
  const attach = createAttaches(o, terminal);
  // Bad input included: from here on, failures take the pass-through codes.
  if (attach) ctx.markPassthrough();

  // ---- everything local, before any RPC ----
  if (o.name !== undefined) {
    const problem = validateSandboxName(o.name);
    if (problem) throw invalidInput(`--name ${o.name}: ${problem}`);
  }
  const labels: Record<string, string> = {};
  for (const flag of o.labels) {
    const [key, value] = parseLabelFlag(flag);
    labels[key] = value;
  }
  const environment = parseEnvFlags(o.env);
  const ttlSeconds = o.ttl === undefined ? undefined : parseTtl(o.ttl);
  if (o.ttl !== undefined && ttlSeconds === undefined) throw usageError(ttlError("--ttl", o.ttl));
  const resources = resourcesFlags(o);
  const image = imageSource(o.from);
  if (o.command.length > 0) {
    const problem = validateCommand(o.command, "command");
    if (problem) throw invalidInput(problem);
  }
  const fileSpecs = o.files.map(parseFileFlag);
  const fileSizes = checkFileSpecs(fileSpecs);
  for (const spec of fileSpecs)
    for (const warning of modeWarnings(spec.mode)) ui.warn(`--file ${spec.raw}: ${warning}`);
  const policyPath = o.policy ?? (ctx.env.OPENSHELL_SANDBOX_POLICY?.trim() || undefined);
  const policy = policyPath ? await loadPolicyFile(policyPath) : undefined;
  const uploads = await planUploadFlags(o.uploads, { gitIgnore: o.gitIgnore, git: o.uploadGit === true });

  const shell = o.command.length === 0;
  const tty = o.tty ?? (shell ? terminal || attach : terminal && attach);
  const gated = attach || (uploads.length > 0 && !shell);

  // ---- the gateway ----
  const api = await ctx.api();
  const created = await api.submitCreate({
    request: {
      spec: {
        logLevel: "",
        environment,
        policy,
        providers: [],
        command: o.command,
        tty,
        ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
        ...(resources || image
          ? { template: SandboxTemplate.fromPartial({ ...(resources ? { resources } : {}), image }) }
          : {}),
        files: fileSpecs.map((spec, i) => ({
          path: normalizeSandboxPath(spec.remote) ?? spec.remote,
          content: Buffer.alloc(0),
          mode: spec.mode,
          size: fileSizes[i]!,
          // The gateway computes it; the API checks what it returns.
          sha256: "",
        })),
      },
      name: o.name ?? "",
      labels,
      annotations: {
        ...(gated ? { [ANNOTATION_START_ON_ATTACH]: "true" } : {}),
        ...(attach && tty && io.stdout.isTTY && io.stdout.columns && io.stdout.rows
          ? { [ANNOTATION_TTY_SIZE]: `${io.stdout.columns}x${io.stdout.rows}` }
          : {}),
      },
      workspace: api.workspace,
    },
    sizes: fileSizes,
    fill: (slots) => readFileContents(fileSpecs, slots),
    holdsForUploads: gated && uploads.length > 0,
    refuseTtl: () => ttlUnsupported(api.gateway.name, "--ttl"),
    refuseFiles: () =>
      new OpenShellError(
        "unsupported",
        `gateway '${api.gateway.name}' does not support --file: it would silently drop the files (an OpenShell gateway ignores SandboxSpec.files)`,
        {
          hint: "Use an openshell gateway (`openshell gateway start`), or --upload for files the sandbox may change.",
        },
      ),
    signal: ctx.signal,
  });
  const name = created.metadata!.name;
  const deleteQuietly = (): Promise<unknown> =>
    api.delete(name, { signal: ctx.signal }).catch(() => undefined);

  if (o.keep) await ctx.rememberSandbox(name);

  const mode: ProgressMode = o.output !== "table" ? "silent" : ui.interactive ? "interactive" : "plain";
  if (mode !== "silent") ui.note(`${ui.err.cyan.bold("Created sandbox:")} ${name}`);
  let ready: Sandbox;
  try {
    ready = await waitForReady(ui, api, created, { mode, signal: ctx.signal, env: ctx.env });
  } catch (error) {
    if (!o.keep) {
      await deleteQuietly();
      ui.note(ui.err.dim(`Deleted sandbox ${name} (--no-keep).`));
    } else if (ctx.signal.aborted) {
      ui.note(ui.err.dim(`Sandbox ${name} was kept; delete it with \`openshell sandbox delete ${name}\`.`));
    }
    throw error;
  }

  try {
    if (uploads.length > 0) {
      const { uploadPlans } = await import("./transfer.js");
      await uploadPlans(ctx, ready, uploads);
    }
    if (gated && !attach) {
      const handle = api.handle(ready);
      try {
        await handle.open({ signal: ctx.signal });
        await handle.startMain();
      } finally {
        await handle.close();
      }
    }
  } catch (error) {
    if (!o.keep) await deleteQuietly();
    throw error;
  }

  if (o.output !== "table") {
    printDocument(ui, o.output, sandboxDocument(ready));
    return 0;
  }
  if (!attach) {
    if (!shell && !o.detach && !terminal) {
      ui.note(
        ui.err.dim(
          `The command runs in the background; see its output with \`openshell logs ${name}\`, or wait for its exit status with \`openshell sandbox wait ${name} --logs\`.`,
        ),
      );
    }
    return 0;
  }
  const { attachMain } = await import("./connect.js");
  let code: number;
  try {
    code = await attachMain(ctx, ready, { tty });
  } finally {
    if (!o.keep) {
      await deleteQuietly();
      ui.note(ui.err.dim(`Deleted sandbox ${name} (--no-keep).`));
    }
  }
  return code;
}

/** Plans `--upload` flags in order; the tar engine loads only when there are some. */
async function planUploadFlags(
  flags: string[],
  options: { gitIgnore: boolean; git: boolean },
): Promise<UploadPlan[]> {
  if (flags.length === 0) return [];
  const { parseUploadFlag, planUpload } = await import("../../transport/tar/upload.js");
  const plans: UploadPlan[] = [];
  for (const flag of flags) {
    const spec = parseUploadFlag(flag);
    plans.push(await planUpload(spec.local, spec.dest, options));
  }
  return plans;
}
