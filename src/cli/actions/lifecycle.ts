// `sandbox stop`, `sandbox start`, `sandbox renew`: a sandbox's processes
// ended and booted again, and its lifetime extended. stop and renew are on
// the API; start still waits for Ready with the CLI's own progress display.

import { ttlUnsupported } from "../../api/sandbox.js";
import { usageError } from "../../core/errors.js";
import { formatTtl, parseTtl, ttlError } from "../../core/lifetime.js";
import { SandboxPhase } from "../../gen/openshell.js";
import type { CommandContext } from "../context.js";
import { formatTimestamp } from "../output/present.js";
import { waitForReady } from "../wait.js";
import { stopSandboxForwards } from "./forward.js";

/** Stopping waits for every process of the sandbox to end (the supervisor's grace, then a kill). */
const _STOP_DEADLINE_MS = 60_000;

export { ttlUnsupported };

export async function sandboxStop(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  await stopSandboxForwards(ctx, api.gateway.name, api.workspace, name);
  await api.stop(name, { signal: ctx.signal });
  ctx.ui.success(`Stopped sandbox ${name}`);
  return 0;
}

export async function sandboxStart(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = await api.requestStart(name, { signal: ctx.signal });
  if (sandbox.status?.phase === SandboxPhase.SANDBOX_PHASE_READY) {
    ctx.ui.success(`Sandbox ${name} is already running`);
    return 0;
  }
  const mode = ctx.ui.interactive ? "interactive" : "plain";
  await waitForReady(ctx.ui, api, sandbox, { mode, signal: ctx.signal, env: ctx.env, eventTail: 0 });
  ctx.ui.success(`Started sandbox ${name}`);
  return 0;
}

export async function sandboxRenew(
  ctx: CommandContext,
  options: { name?: string | undefined; ttl: string },
): Promise<number> {
  const seconds = parseTtl(options.ttl);
  if (seconds === undefined) throw usageError(ttlError("--ttl", options.ttl));
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = await api.renew(name, seconds, { signal: ctx.signal });
  const at = sandbox?.status?.expiresAtMs ?? 0;
  ctx.ui.success(`Renewed sandbox ${name}: expires at ${formatTimestamp(at)} (in ${formatTtl(seconds)})`);
  return 0;
}
