// Interactive access: `sandbox connect` (a shell on a pty), attaching to the
// main command after create, `sandbox ssh-config` for OpenSSH and editors,
// and the hidden `ssh-proxy` that OpenSSH runs as its ProxyCommand.

import { realpathSync } from "node:fs";
import { feedInput } from "../../api/interactive.js";
import type { Sandbox, SandboxInfo, SessionChannel } from "../../api/sandbox.js";
import { OpenShellError } from "../../core/errors.js";
import { shellEscape } from "../../core/shell.js";
import type { CommandContext } from "../context.js";
import type { Io } from "../output/ui.js";
import { enterRawMode, onEndingSignal } from "../terminal.js";

/** The handle of sandbox `name` (a missing one is a not_found error that names it). */
async function sandboxHandle(ctx: CommandContext, name: string): Promise<Sandbox> {
  return (await ctx.api()).get(name, { signal: ctx.signal });
}

/** How long a session stopped by a signal or Ctrl-C waits for the sandbox to confirm the close. */
const STOP_GRACE_MS = 2000;

/**
 * Joins the local terminal (or pipes) to a session until it exits:
 * raw mode and resizes on a terminal, restored on every way out. Resolves
 * with the remote status; 130 if the command was cancelled (SIGINT), 128+N if
 * this process got SIGTERM or SIGHUP.
 */
async function pumpChannel(
  io: Io,
  session: SessionChannel,
  options: { tty: boolean; signal: AbortSignal },
): Promise<number> {
  const channel = session.stream;
  const { stdin, stdout, stderr } = io;
  const undo: (() => void)[] = [];
  let stopped: number | undefined;
  let markStopped: () => void = () => {};
  const stoppedWithGrace = new Promise<void>((resolve) => {
    markStopped = resolve;
  }).then(
    () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, STOP_GRACE_MS);
        undo.push(() => clearTimeout(timer));
      }),
  );
  const stop = (status: number): void => {
    if (stopped !== undefined) return;
    stopped = status;
    session.close();
    markStopped();
  };
  try {
    if (options.tty) {
      const restore = enterRawMode(io);
      undo.push(restore);
      undo.push(onEndingSignal(stop, restore));
    }
    if (options.tty && stdout.isTTY) {
      const resize = (): void => {
        session.resize(stdout.rows ?? 24, stdout.columns ?? 80);
      };
      resize();
      process.on("SIGWINCH", resize);
      undo.push(() => process.off("SIGWINCH", resize));
    }
    undo.push(feedInput(stdin, channel));
    channel.pipe(stdout, { end: false });
    session.stderr.pipe(stderr, { end: false });
    // The signal's reason is the status to report (130 for Ctrl-C, 143 for SIGTERM).
    const onAbort = (): void => stop(typeof options.signal.reason === "number" ? options.signal.reason : 130);
    options.signal.addEventListener("abort", onAbort, { once: true });
    undo.push(() => options.signal.removeEventListener("abort", onAbort));
    const exited = session.exit;
    try {
      // A stopped session still waits (briefly) for the close, so the remote
      // side has ended it before this process exits.
      const code = await Promise.race([exited, stoppedWithGrace.then(() => undefined)]);
      return stopped ?? code ?? 1;
    } catch (error) {
      if (stopped !== undefined) return stopped;
      throw error;
    }
  } finally {
    for (const step of undo.reverse()) step();
  }
}

export async function sandboxConnect(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = await ctx.sandboxName(options.name);
  const handle = await sandboxHandle(ctx, name);
  try {
    await handle.open({ signal: ctx.signal });
    // Remember before the session: it may end with the terminal closed.
    await ctx.rememberSandbox(name);
    const { stdout } = ctx.io;
    const tty = ctx.io.stdin.isTTY === true;
    const session = await handle.session({
      shell: tty
        ? { term: ctx.env.TERM || "xterm-256color", rows: stdout.rows ?? 24, cols: stdout.columns ?? 80 }
        : false,
    });
    return await pumpChannel(ctx.io, session, { tty, signal: ctx.signal });
  } finally {
    await handle.close();
  }
}

/** Attaches to the sandbox's main command (starting it if it was held). */
export async function attachMain(
  ctx: CommandContext,
  sandbox: SandboxInfo,
  options: { tty: boolean },
): Promise<number> {
  const handle = (await ctx.api()).handle(sandbox);
  try {
    await handle.open({ signal: ctx.signal });
    const session = await handle.session("main");
    return await pumpChannel(ctx.io, session, { tty: options.tty, signal: ctx.signal });
  } finally {
    await handle.close();
  }
}

/** The command OpenSSH should run to reach a sandbox: this CLI's ssh-proxy. */
function selfCommand(): string[] {
  const script = process.argv[1] ? realpathSync(process.argv[1]) : "openshell";
  return [process.execPath, script];
}

export async function sandboxSshConfig(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  // Fail now, not at `ssh` time, if the sandbox does not exist.
  await api.get(name, { signal: ctx.signal });
  const proxy = [
    ...selfCommand(),
    "ssh-proxy",
    "--gateway-name",
    api.gateway.name,
    "--name",
    name,
    "--workspace",
    api.workspace,
  ]
    .map(shellEscape)
    .join(" ");
  const lines = [
    `Host openshell-${name}.${api.workspace}`,
    "    User sandbox",
    "    StrictHostKeyChecking no",
    "    UserKnownHostsFile /dev/null",
    "    GlobalKnownHostsFile /dev/null",
    "    LogLevel ERROR",
    "    ServerAliveInterval 15",
    "    ServerAliveCountMax 3",
    `    ProxyCommand ${proxy}`,
  ];
  ctx.io.stdout.write(`${lines.join("\n")}\n`);
  return 0;
}

export interface SshProxyOptions {
  gatewayName?: string | undefined;
  name?: string | undefined;
  sandboxId?: string | undefined;
  token?: string | undefined;
  /** Gateway endpoint overriding the recorded one (OpenShell's `--server`). */
  server?: string | undefined;
}

/**
 * Bridges stdin/stdout to the sandbox's SSH server over ForwardTcp. Exits
 * non-zero with the gateway's reason when the stream fails (OpenShell's
 * proxy exits 0 and leaves ssh to report a bare connection close).
 */
export async function sshProxy(ctx: CommandContext, options: SshProxyOptions): Promise<number> {
  if (options.gatewayName) ctx.globals.gateway = options.gatewayName;
  if (options.server) ctx.globals.gatewayEndpoint = options.server;
  const api = await ctx.api({ autoStart: false });
  let id = options.sandboxId;
  let token = options.token;
  if (!id || !token) {
    if (!options.name) {
      throw new OpenShellError("usage", "provide --gateway-name and --name, or --sandbox-id and --token");
    }
    id = (await api.get(options.name, { signal: ctx.signal })).id;
    // A new session for this connection.
    token = undefined;
  }
  const stream = await api.sshRelay(id, token);
  return new Promise<number>((resolve) => {
    let failed: OpenShellError | undefined;
    stream.on("gateway-error", (error: OpenShellError) => {
      failed = error;
    });
    ctx.io.stdin.pipe(stream);
    stream.pipe(ctx.io.stdout);
    stream.on("error", (error) => {
      const reason = failed ?? new OpenShellError("connection_lost", error.message);
      ctx.ui.note(`openshell ssh-proxy: ${reason.message}`);
      resolve(1);
    });
    stream.on("end", () => {
      ctx.io.stdin.unpipe(stream);
      resolve(failed ? 1 : 0);
    });
  });
}
