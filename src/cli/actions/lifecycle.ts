// `sandbox stop`, `sandbox start`, `sandbox renew`: a sandbox's processes
// ended and booted again, and its lifetime extended.

import { OpenShellError, usageError } from "../../core/errors.js";
import { formatTtl, parseTtl, ttlError } from "../../core/lifetime.js";
import { readyFalseMessage } from "../../core/phases.js";
import { CAPABILITY_SANDBOX_TTL } from "../../core/protocol.js";
import { escapeForTerminal } from "../../core/terminal-text.js";
import { SandboxPhase, type SandboxStreamEvent, WatchSandboxRequest } from "../../gen/openshell.js";
import { mapGrpcError } from "../../transport/grpc.js";
import type { CommandContext, ConnectedGateway } from "../context.js";
import { formatTimestamp } from "../output/present.js";
import { waitForReady } from "../wait.js";

/** Stopping waits for every process of the sandbox to end (the supervisor's grace, then a kill). */
const STOP_DEADLINE_MS = 60_000;

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

export async function sandboxStop(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = await ctx.sandboxName(options.name);
  const gateway = await ctx.gateway();
  const { sandbox } = await gateway.call(
    gateway.client.stopSandbox,
    { name, workspace: gateway.workspace },
    { deadlineMs: STOP_DEADLINE_MS },
  );
  // Ours answers once stopped; an OpenShell gateway answers while stopping.
  if (sandbox?.metadata && sandbox.status?.phase !== SandboxPhase.SANDBOX_PHASE_STOPPED) {
    await waitForStopped(ctx, gateway, sandbox.metadata.id);
  }
  ctx.ui.success(`Stopped sandbox ${name}`);
  return 0;
}

/** Waits on WatchSandbox for Stopped, as upstream's CLI does (OPENSHELL_LIFECYCLE_TIMEOUT, 300 s). */
function waitForStopped(ctx: CommandContext, gateway: ConnectedGateway, id: string): Promise<void> {
  const value = Number(ctx.env.OPENSHELL_LIFECYCLE_TIMEOUT);
  const timeoutSecs = Number.isFinite(value) && value > 0 ? value : 300;
  const stream = gateway.client.watchSandbox(WatchSandboxRequest.fromPartial({ id, followStatus: true }));
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const settle = (error?: OpenShellError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ctx.signal.removeEventListener("abort", onAbort);
      stream.cancel();
      if (error) reject(error);
      else resolve();
    };
    const timer = setTimeout(
      () =>
        settle(
          new OpenShellError("timeout", `timed out after ${timeoutSecs}s waiting for the sandbox to stop`),
        ),
      timeoutSecs * 1000,
    );
    const onAbort = (): void =>
      settle(new OpenShellError("connection_lost", "interrupted while the sandbox stops"));
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    stream.on("data", (event: SandboxStreamEvent) => {
      if (event.payload?.$case !== "sandbox") return;
      const phase = event.payload.value.status?.phase;
      if (phase === SandboxPhase.SANDBOX_PHASE_STOPPED) settle();
      else if (phase === SandboxPhase.SANDBOX_PHASE_ERROR) {
        const reason = escapeForTerminal(readyFalseMessage(event.payload.value)) || "sandbox entered Error";
        settle(new OpenShellError("sandbox_error", reason));
      }
    });
    stream.on("error", (error) => settle(mapGrpcError(error, gateway.target)));
    stream.on("end", () =>
      settle(new OpenShellError("connection_lost", "the sandbox watch ended before it was stopped")),
    );
  });
}

export async function sandboxStart(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = await ctx.sandboxName(options.name);
  const gateway = await ctx.gateway();
  const { sandbox } = await gateway.call(
    gateway.client.startSandbox,
    { name, workspace: gateway.workspace },
    { deadlineMs: STOP_DEADLINE_MS },
  );
  if (!sandbox?.metadata) throw new OpenShellError("internal", "sandbox missing from response");
  if (sandbox.status?.phase === SandboxPhase.SANDBOX_PHASE_READY) {
    ctx.ui.success(`Sandbox ${name} is already running`);
    return 0;
  }
  const mode = ctx.ui.interactive ? "interactive" : "plain";
  await waitForReady(ctx.ui, gateway, sandbox, { mode, signal: ctx.signal, env: ctx.env, eventTail: 0 });
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
  const gateway = await ctx.gateway();
  const info = await gateway.call(gateway.client.getGatewayInfo, {});
  if (!info.capabilities.includes(CAPABILITY_SANDBOX_TTL))
    throw ttlUnsupported(gateway.name, "sandbox renew");
  const { sandbox } = await gateway.call(gateway.client.renewSandbox, {
    name,
    workspace: gateway.workspace,
    ttlSeconds: seconds,
  });
  const at = sandbox?.status?.expiresAtMs ?? 0;
  ctx.ui.success(`Renewed sandbox ${name}: expires at ${formatTimestamp(at)} (in ${formatTtl(seconds)})`);
  return 0;
}
