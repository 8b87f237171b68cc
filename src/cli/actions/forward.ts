// `forward start|stop|list|service` and `sandbox create --forward`: local
// ports forwarded to ports inside sandboxes, through the API's forward (no
// system `ssh`). In the foreground a forward runs until Ctrl-C or until its
// sandbox is deleted or stopped; with -d the CLI starts itself again as a
// background process, which records itself (host/forwards.ts) once it
// listens and says so on a pipe, and the CLI returns. `forward list` and
// `forward stop` read those records; `sandbox delete` and `sandbox stop`
// end the forwards of the sandbox first.

import { spawn } from "node:child_process";
import { closeSync, writeSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { PortForward } from "../../api/forward.js";
import { messageOf, OpenShellError, usageError } from "../../core/errors.js";
import {
  type ForwardSpec,
  forwardUrl,
  hostPort,
  loopbackAddress,
  parseForwardSpec,
} from "../../core/forward.js";
import { type ForwardRecord, liveForwards, recordForward, stopForwardProcess } from "../../host/forwards.js";
import { mallocTunables } from "../../host/process.js";
import type { CommandContext } from "../context.js";
import { appRoot } from "../gateways.js";
import { printDocument } from "../output/present.js";
import { table } from "../output/ui.js";

/** The descriptor on which a background forward tells the CLI that started it whether it listens. */
const READY_FD = 3;
/** How long the CLI waits for a background forward to listen. */
const BACKGROUND_START_MS = 30_000;

/** A `[BIND:]PORT` argument, or a usage error naming it. */
export function forwardSpec(what: string, value: string, options: { allowZero?: boolean } = {}): ForwardSpec {
  const spec = parseForwardSpec(what, value, options);
  if (typeof spec === "string") throw usageError(spec);
  return spec;
}

/** The same local port on an address that overlaps (the same one, or a wildcard on either side). */
function overlaps(a: string, b: string): boolean {
  const wildcard = (bind: string): boolean => bind === "0.0.0.0" || bind === "::" || bind === "0";
  return a === b || wildcard(a) || wildcard(b);
}

/**
 * Refuses a local port that a background forward holds, or that anything
 * else listens on, before a sandbox is created for it or a forward started.
 */
export async function checkPortFree(spec: ForwardSpec): Promise<void> {
  const probe = createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once("error", (error: NodeJS.ErrnoException) => reject(portError(spec, error)));
    probe.listen({ host: spec.bind, port: spec.port, exclusive: true }, () => probe.close(() => resolve()));
  });
}

/** A failure to listen on `spec`, naming the background forward or saying another process holds it. */
function portError(spec: ForwardSpec, error: NodeJS.ErrnoException | OpenShellError): OpenShellError {
  const inUse =
    (error as NodeJS.ErrnoException).code === "EADDRINUSE" || /already in use/.test(messageOf(error));
  if (!inUse) {
    return error instanceof OpenShellError
      ? error
      : new OpenShellError("failed_precondition", messageOf(error));
  }
  const owner = liveForwards().find((r) => r.port === spec.port && overlaps(r.bind, spec.bind));
  if (owner) {
    return new OpenShellError(
      "failed_precondition",
      `Port ${spec.port} is already forwarded to sandbox '${owner.sandbox}'.`,
      { hint: `Stop it with: openshell forward stop ${spec.port} ${owner.sandbox}` },
    );
  }
  return new OpenShellError(
    "failed_precondition",
    `Port ${spec.port} is already in use by another process.`,
    {
      hint: `Find it with: lsof -i :${spec.port} -sTCP:LISTEN (or ss -ltnp), then end it, or forward another port.`,
    },
  );
}

// ---- forward start / service -------------------------------------------

export interface StartOptions {
  spec: string;
  name?: string | undefined;
  background: boolean;
  /** This process is the background forward a `-d` started (hidden flag). */
  backgroundChild: boolean;
}

export async function forwardStart(ctx: CommandContext, o: StartOptions): Promise<number> {
  const spec = forwardSpec("PORT", o.spec);
  if (o.backgroundChild) return serveInBackground(ctx, spec, o.name);
  const name = await ctx.sandboxName(o.name);
  if (o.background) {
    await checkPortFree(spec);
    await startInBackground(ctx, spec, name);
    backgroundStarted(ctx, spec, name);
    return 0;
  }
  const { forward } = await openForward(ctx, name, spec, spec.port);
  ctx.ui.success(`Forwarding port ${spec.port} to sandbox ${name}`);
  ctx.ui.note(`  Access at: ${forward.url}`);
  ctx.ui.note("  Press Ctrl+C to stop");
  ctx.ui.note(ctx.ui.err.dim("  Hint: pass -d to run it in the background"));
  return untilClosed(forward);
}

export interface ServiceOptions {
  name?: string | undefined;
  targetPort: number;
  targetHost: string;
  local?: string | undefined;
}

export async function forwardService(ctx: CommandContext, o: ServiceOptions): Promise<number> {
  if (loopbackAddress(o.targetHost) === undefined) {
    throw usageError(
      `--target-host ${o.targetHost}: only the sandbox's loopback can be reached (127.0.0.1, ::1, localhost)`,
    );
  }
  const spec =
    o.local === undefined
      ? { bind: "127.0.0.1", port: o.targetPort }
      : forwardSpec("--local", o.local, { allowZero: true });
  const name = await ctx.sandboxName(o.name);
  const { forward } = await openForward(ctx, name, spec, o.targetPort, o.targetHost);
  ctx.ui.success(
    `Forwarding ${hostPort(forward.host, forward.port)} -> ${hostPort(forward.targetHost, forward.targetPort)} in sandbox ${name}`,
  );
  ctx.ui.note("  Press Ctrl+C to stop");
  return untilClosed(forward);
}

async function openForward(
  ctx: CommandContext,
  name: string,
  spec: ForwardSpec,
  targetPort: number,
  targetHost?: string,
): Promise<{ forward: PortForward; sandboxId: string }> {
  const api = await ctx.api();
  const sandbox = await api.get(name, { signal: ctx.signal });
  await ctx.rememberSandbox(name);
  try {
    const forward = await sandbox.forward(targetPort, {
      localHost: spec.bind,
      localPort: spec.port,
      ...(targetHost !== undefined ? { targetHost } : {}),
      signal: ctx.signal,
      onConnectionError: (error) => ctx.ui.warn(error.message),
    });
    return { forward, sandboxId: sandbox.id };
  } catch (error) {
    throw error instanceof OpenShellError ? portError(spec, error) : error;
  }
}

/** Runs until Ctrl-C (0) or the sandbox's end (1, with the reason). */
async function untilClosed(forward: PortForward): Promise<number> {
  const reason = await forward.closed;
  if (reason !== undefined) {
    throw new OpenShellError("not_ready", `forward stopped: ${reason}`);
  }
  return 0;
}

// ---- in the background -----------------------------------------------

export function backgroundStarted(ctx: CommandContext, spec: ForwardSpec, name: string): void {
  ctx.ui.success(`Forwarding port ${spec.port} to sandbox ${name} in the background`);
  ctx.ui.note(`  Access at: ${forwardUrl(spec.bind, spec.port)}`);
  ctx.ui.note(`  Stop with: openshell forward stop ${spec.port} ${name}`);
}

/** The global options this command line was given, for the background process. */
function globalArgs(ctx: CommandContext): string[] {
  const g = ctx.globals;
  return [
    ...(g.gateway !== undefined ? ["--gateway", g.gateway] : []),
    ...(g.gatewayEndpoint !== undefined ? ["--gateway-endpoint", g.gatewayEndpoint] : []),
    ...(g.gatewayInsecure ? ["--gateway-insecure"] : []),
    ...(g.workspace !== undefined ? ["--workspace", g.workspace] : []),
  ];
}

/**
 * Starts `openshell forward start SPEC NAME` as a background process of its
 * own session and waits until it says it listens (or why it cannot).
 */
export async function startInBackground(ctx: CommandContext, spec: ForwardSpec, name: string): Promise<void> {
  const child = spawn(
    process.execPath,
    [
      join(appRoot(), "dist", "cli.mjs"),
      ...globalArgs(ctx),
      "forward",
      "start",
      `${spec.bind}:${spec.port}`,
      name,
      "--background-child",
    ],
    {
      detached: true,
      stdio: ["ignore", "ignore", "ignore", "pipe"],
      env: { ...ctx.env, ...mallocTunables(ctx.env) },
    },
  );
  const pipe = child.stdio[READY_FD] as NodeJS.ReadableStream;
  const answer = await new Promise<{ ready?: boolean; error?: string; hint?: string }>((resolve) => {
    const timer = setTimeout(() => {
      resolve({ error: `the background forward did not listen within ${BACKGROUND_START_MS / 1000} s` });
    }, BACKGROUND_START_MS);
    const lines = createInterface({ input: pipe });
    const settle = (value: { ready?: boolean; error?: string; hint?: string }): void => {
      clearTimeout(timer);
      lines.close();
      resolve(value);
    };
    lines.once("line", (line) => {
      try {
        settle(JSON.parse(line));
      } catch {
        settle({ error: "the background forward said something else" });
      }
    });
    child.once("exit", (code) =>
      settle({ error: `the background forward exited (status ${code}) before it listened` }),
    );
    ctx.signal.addEventListener("abort", () => settle({ error: "interrupted" }), { once: true });
  });
  (pipe as NodeJS.ReadableStream & { destroy(): void }).destroy();
  if (!answer.ready) {
    if (child.exitCode === null) child.kill("SIGKILL");
    throw new OpenShellError("failed_precondition", answer.error ?? "the background forward failed", {
      ...(answer.hint ? { hint: answer.hint } : {}),
    });
  }
  child.unref();
}

/** The background process: listen, record itself, tell the CLI, serve until stopped or the sandbox ends. */
async function serveInBackground(
  ctx: CommandContext,
  spec: ForwardSpec,
  name: string | undefined,
): Promise<number> {
  const tell = (message: object): void => {
    try {
      writeSync(READY_FD, `${JSON.stringify(message)}\n`);
      closeSync(READY_FD);
    } catch {
      // Run by hand, without the pipe: nothing to tell.
    }
  };
  let forward: PortForward;
  let removeRecord: () => void;
  try {
    if (name === undefined) throw usageError("a background forward needs its sandbox's name");
    const opened = await openForward(ctx, name, spec, spec.port);
    forward = opened.forward;
    const api = await ctx.api();
    removeRecord = recordForward({
      gateway: api.gateway.name,
      workspace: api.workspace,
      sandbox: name,
      sandboxId: opened.sandboxId,
      bind: spec.bind,
      port: forward.port,
      targetPort: forward.targetPort,
    });
  } catch (error) {
    tell({ error: messageOf(error), hint: error instanceof OpenShellError ? error.hint : undefined });
    throw error;
  }
  tell({ ready: true });
  try {
    await forward.closed;
  } finally {
    removeRecord();
  }
  return 0;
}

// ---- stop, list, and a sandbox's end -------------------------------------

export async function forwardStop(
  ctx: CommandContext,
  o: { port: number; name?: string | undefined },
): Promise<number> {
  const matches = liveForwards().filter(
    (r) => r.port === o.port && (o.name === undefined || r.sandbox === o.name),
  );
  if (matches.length === 0) {
    throw new OpenShellError(
      "not_found",
      o.name === undefined
        ? `No active forward found for port ${o.port}`
        : `No active forward found for port ${o.port} on sandbox ${o.name}`,
      { hint: "See the forwards running with: openshell forward list" },
    );
  }
  if (o.name === undefined)
    ctx.ui.note(`${ctx.ui.err.bold("→")} Found forward on sandbox '${matches[0]!.sandbox}'`);
  for (const record of matches) {
    await stopForwardProcess(record);
    ctx.ui.success(`Stopped forward of port ${record.port} for sandbox ${record.sandbox}`);
  }
  return 0;
}

function forwardDocument(r: ForwardRecord): Record<string, unknown> {
  return {
    sandbox: r.sandbox,
    sandbox_id: r.sandboxId,
    gateway: r.gateway,
    workspace: r.workspace,
    bind: r.bind,
    port: r.port,
    target_port: r.targetPort,
    pid: r.pid,
    started_at: r.startedAt,
  };
}

export async function forwardList(ctx: CommandContext, o: { output: "table" | "json" }): Promise<number> {
  const forwards = liveForwards((stale) =>
    ctx.ui.note(
      ctx.ui.err.dim(
        `Removed the record of a forward that no longer runs (port ${stale.port}, sandbox ${stale.sandbox}, pid ${stale.pid})`,
      ),
    ),
  );
  if (o.output === "json") {
    printDocument(ctx.ui, "json", forwards.map(forwardDocument));
    return 0;
  }
  if (forwards.length === 0) {
    ctx.ui.note("No active forwards.");
    return 0;
  }
  const rows = forwards.map((r) => [r.sandbox, r.bind, String(r.port), String(r.pid), r.startedAt]);
  for (const line of table(["SANDBOX", "BIND", "PORT", "PID", "STARTED"], rows, (h) => ctx.ui.out.bold(h)))
    ctx.ui.data(line);
  return 0;
}

/** Ends the background forwards of sandbox `name` on this command line's gateway (before a delete or a stop). */
export async function stopSandboxForwards(
  ctx: CommandContext,
  gateway: string,
  workspace: string,
  name: string,
): Promise<void> {
  for (const record of liveForwards()) {
    if (record.gateway !== gateway || record.workspace !== workspace || record.sandbox !== name) continue;
    await stopForwardProcess(record);
    ctx.ui.success(`Stopped forward of port ${record.port} for sandbox ${name}`);
  }
}
