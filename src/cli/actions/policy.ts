// `policy get` and `policy set`: a sandbox's policy revisions through the API
// (Sandbox.policy / Sandbox.setPolicy).

import { stringify as toYaml } from "yaml";
import { usageError } from "../../core/errors.js";
import { loadPolicyFile } from "../../host/policy-file.js";
import type { CommandContext } from "../context.js";
import { type OutputFormat, printDocument } from "../output/present.js";

export async function policyGet(
  ctx: CommandContext,
  options: { name?: string | undefined; revision?: number | undefined; output: OutputFormat },
): Promise<number> {
  if (options.revision !== undefined && options.revision < 1)
    throw usageError(`--rev ${options.revision}: expected 1 or more`);
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = await api.get(name, { signal: ctx.signal });
  const info = await sandbox.policy({
    ...(options.revision ? { revision: options.revision } : {}),
    signal: ctx.signal,
  });
  if (options.output !== "table") {
    printDocument(ctx.ui, options.output, {
      scope: "sandbox",
      sandbox: name,
      version: info.revision,
      active_version: info.activeRevision,
      hash: info.hash,
      status: info.status,
      ...(info.loadError ? { load_error: info.loadError } : {}),
      policy_source: "sandbox",
      policy: info.policy,
    });
    return 0;
  }
  const { ui } = ctx;
  const label = (text: string): string => ui.out.dim(text.padEnd(13));
  ui.data(`${label("Revision:")} ${info.revision}`);
  ui.data(`${label("In force:")} ${info.activeRevision || "none yet"}`);
  ui.data(`${label("Status:")} ${info.status}`);
  ui.data(`${label("Hash:")} ${info.hash}`);
  if (info.loadError) ui.data(`${label("Error:")} ${info.loadError}`);
  ui.data("---");
  ctx.io.stdout.write(toYaml(info.policy));
  return 0;
}

export async function policySet(
  ctx: CommandContext,
  options: { name?: string | undefined; file: string; wait: boolean; timeout: number },
): Promise<number> {
  if (options.timeout < 1) throw usageError(`--timeout ${options.timeout}: expected 1 or more seconds`);
  // A bad file is reported before any gateway is asked (the API reads it again to send it).
  await loadPolicyFile(options.file);
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = await api.get(name, { signal: ctx.signal });
  const result = await sandbox.setPolicy(options.file, {
    wait: options.wait,
    timeoutMs: options.timeout * 1000,
    signal: ctx.signal,
  });
  const hash = result.hash.slice(0, 12);
  if (!result.changed) {
    ctx.ui.note(`${ctx.ui.err.dim("·")} Policy unchanged (revision ${result.revision}, hash: ${hash})`);
  } else if (options.wait) {
    ctx.ui.success(`Policy revision ${result.revision} in force on sandbox ${name} (hash: ${hash})`);
  } else {
    ctx.ui.success(`Policy revision ${result.revision} submitted (hash: ${hash})`);
  }
  return 0;
}
