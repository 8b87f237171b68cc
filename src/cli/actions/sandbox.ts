// `sandbox get`, `sandbox list`, `sandbox delete`, on the API.

import { OpenShellError, usageError } from "../../core/errors.js";
import { parseSelector } from "../../core/names.js";
import { policyToYaml } from "../../core/policy.js";
import { clearLastSandbox } from "../../host/config.js";
import type { CommandContext } from "../context.js";
import {
  type OutputFormat,
  printDocument,
  printSandboxDetails,
  printSandboxList,
  sandboxDocument,
} from "../output/present.js";
import { stopSandboxForwards } from "./forward.js";

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

export interface GetOptions {
  name?: string | undefined;
  output: OutputFormat;
  policyOnly: boolean;
}

export async function sandboxGet(ctx: CommandContext, options: GetOptions): Promise<number> {
  if (options.policyOnly && options.output !== "table")
    throw usageError("--policy-only cannot be combined with -o");
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const { info: sandbox } = await api.get(name, { signal: ctx.signal });
  if (options.policyOnly) {
    if (!sandbox.spec?.policy)
      throw new OpenShellError("not_found", "no active policy configured for this sandbox");
    ctx.io.stdout.write(policyToYaml(sandbox.spec.policy));
    return 0;
  }
  if (options.output === "table") printSandboxDetails(ctx.ui, sandbox);
  else printDocument(ctx.ui, options.output, sandboxDocument(sandbox, { full: true }));
  return 0;
}

export interface ListOptions {
  limit: number;
  offset: number;
  selector?: string | undefined;
  ids: boolean;
  names: boolean;
  output: OutputFormat;
}

export async function sandboxList(ctx: CommandContext, options: ListOptions): Promise<number> {
  const exclusive = [options.ids, options.names, options.output !== "table"].filter(Boolean).length;
  if (exclusive > 1) throw usageError("--ids, --names and -o cannot be combined");
  if (!Number.isInteger(options.limit) || options.limit < 1 || options.limit > 1000) {
    throw usageError(`--limit ${options.limit}: expected a whole number from 1 to 1000`);
  }
  if (!Number.isInteger(options.offset) || options.offset < 0) {
    throw usageError(`--offset ${options.offset}: expected a whole number from 0`);
  }
  if (options.selector) parseSelector(options.selector);
  const api = await ctx.api();
  const sandboxes = await collect(
    api.list({
      limit: options.limit,
      offset: options.offset,
      selector: options.selector,
      signal: ctx.signal,
    }),
  );
  if (options.ids) for (const s of sandboxes) ctx.ui.data(s.metadata?.id ?? "");
  else if (options.names) for (const s of sandboxes) ctx.ui.data(s.metadata?.name ?? "");
  else if (options.output === "table") printSandboxList(ctx.ui, sandboxes);
  else
    printDocument(
      ctx.ui,
      options.output,
      sandboxes.map((s) => sandboxDocument(s)),
    );
  return 0;
}

export interface DeleteOptions {
  names: string[];
  all: boolean;
  /** json: `{"deleted": [...], "not_found": [...]}` on stdout. */
  output?: "text" | "json" | undefined;
}

export async function sandboxDelete(ctx: CommandContext, options: DeleteOptions): Promise<number> {
  if (options.all && options.names.length > 0) throw usageError("give sandbox names or --all, not both");
  if (!options.all && options.names.length === 0) {
    throw usageError(
      "sandbox delete: missing sandbox name",
      "Name the sandboxes to delete (`openshell sandbox delete NAME...`), or pass --all.",
    );
  }
  const api = await ctx.api();
  const gatewayName = api.gateway.name;
  let names = options.names;
  if (options.all) {
    const sandboxes = await collect(api.list({ limit: 1000, signal: ctx.signal }));
    names = sandboxes.map((s) => s.metadata?.name ?? "").filter((n) => n !== "");
    if (names.length === 0) ctx.ui.note("No sandboxes to delete.");
  }
  const deletedNames: string[] = [];
  const missingNames: string[] = [];
  for (const name of names) {
    await stopSandboxForwards(ctx, gatewayName, api.workspace, name);
    try {
      const deleted = await api.delete(name, { signal: ctx.signal });
      if (deleted) {
        clearLastSandbox(gatewayName, name);
        deletedNames.push(name);
        ctx.ui.success(`Deleted sandbox ${name}`);
      } else {
        missingNames.push(name);
        ctx.ui.warn(`Sandbox ${name} not found`);
      }
    } catch (error) {
      if (error instanceof OpenShellError && error.code === "not_found") {
        missingNames.push(name);
        ctx.ui.warn(`Sandbox ${name} not found`);
        continue;
      }
      throw error;
    }
  }
  if (options.output === "json") {
    ctx.io.stdout.write(`${JSON.stringify({ deleted: deletedNames, not_found: missingNames }, null, 2)}\n`);
  }
  return missingNames.length > 0 ? 1 : 0;
}
