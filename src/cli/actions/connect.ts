// Interactive access: `sandbox connect` (a shell on a pty), attaching to the
// main command after create, `sandbox ssh-config` for OpenSSH and editors,
// and the hidden `ssh-proxy` that OpenSSH runs as its ProxyCommand.

import { realpathSync } from "node:fs";
import type { ClientChannel } from "ssh2";
import { feedInput } from "../../api/interactive.js";
import { OpenShellError } from "../../core/errors.js";
import { SUBSYSTEM_MAIN } from "../../core/protocol.js";
import { shellEscape } from "../../core/shell.js";
import { unary } from "../../transport/grpc.js";
import { channelExit, connectSandboxSsh, forwardSsh, sshSubsystem } from "../../transport/ssh.js";
import type { CommandContext, ConnectedGateway } from "../context.js";
import type { Io } from "../output/ui.js";
import { enterRawMode, onEndingSignal } from "../terminal.js";

async function sandboxId(ctx: CommandContext, gateway: ConnectedGateway, name: string): Promise<string> {
  void ctx;
  return (await gateway.sandbox(name)).metadata!.id;
}

/** How long a session stopped by a signal or Ctrl-C waits for the sandbox to confirm the close. */
const STOP_GRACE_MS = 2000;

/**
 * Joins the local terminal (or pipes) to an SSH channel until it exits:
 * raw mode and resizes on a terminal, restored on every way out. Resolves
 * with the remote status; 130 if the command was cancelled (SIGINT), 128+N if
 * this process got SIGTERM or SIGHUP.
 */
async function pumpChannel(
  io: Io,
  channel: ClientChannel,
  options: { tty: boolean; signal: AbortSignal },
): Promise<number> {
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
    channel.close();
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
        channel.setWindow(stdout.rows ?? 24, stdout.columns ?? 80, 0, 0);
      };
      resize();
      process.on("SIGWINCH", resize);
      undo.push(() => process.off("SIGWINCH", resize));
    }
    undo.push(feedInput(stdin, channel));
    channel.pipe(stdout, { end: false });
    channel.stderr.pipe(stderr, { end: false });
    // The signal's reason is the status to report (130 for Ctrl-C, 143 for SIGTERM).
    const onAbort = (): void => stop(typeof options.signal.reason === "number" ? options.signal.reason : 130);
    options.signal.addEventListener("abort", onAbort, { once: true });
    undo.push(() => options.signal.removeEventListener("abort", onAbort));
    const exited = channelExit(channel);
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
  const gateway = await ctx.gateway();
  const id = await sandboxId(ctx, gateway, name);
  const ssh = await connectSandboxSsh(gateway.client, gateway.target, id, { signal: ctx.signal });
  // Remember before the session: it may end with the terminal closed.
  await ctx.rememberSandbox(name);
  try {
    const { stdout } = ctx.io;
    const tty = ctx.io.stdin.isTTY === true;
    const channel = await new Promise<ClientChannel>((resolve, reject) => {
      const done = (error: Error | undefined, ch: ClientChannel): void =>
        error
          ? reject(new OpenShellError("connection_lost", `cannot open a shell: ${error.message}`))
          : resolve(ch);
      if (tty) {
        ssh.client.shell(
          { term: ctx.env.TERM || "xterm-256color", rows: stdout.rows ?? 24, cols: stdout.columns ?? 80 },
          done,
        );
      } else ssh.client.shell(false, done);
    });
    return await pumpChannel(ctx.io, channel, { tty, signal: ctx.signal });
  } finally {
    await ssh.close();
  }
}

/** Attaches to the sandbox's main command (starting it if it was held). */
export async function attachMain(
  ctx: CommandContext,
  gateway: ConnectedGateway,
  id: string,
  options: { tty: boolean },
): Promise<number> {
  const ssh = await connectSandboxSsh(gateway.client, gateway.target, id, { signal: ctx.signal });
  try {
    const channel = await sshSubsystem(ssh.client, SUBSYSTEM_MAIN);
    return await pumpChannel(ctx.io, channel, { tty: options.tty, signal: ctx.signal });
  } finally {
    await ssh.close();
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
  const gateway = await ctx.gateway();
  // Fail now, not at `ssh` time, if the sandbox does not exist.
  await sandboxId(ctx, gateway, name);
  const proxy = [
    ...selfCommand(),
    "ssh-proxy",
    "--gateway-name",
    gateway.name,
    "--name",
    name,
    "--workspace",
    gateway.workspace,
  ]
    .map(shellEscape)
    .join(" ");
  const lines = [
    `Host openshell-${name}.${gateway.workspace}`,
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
  const gateway = await ctx.gateway({ autoStart: false });
  let id = options.sandboxId;
  let token = options.token;
  if (!id || !token) {
    if (!options.name) {
      throw new OpenShellError("usage", "provide --gateway-name and --name, or --sandbox-id and --token");
    }
    id = await sandboxId(ctx, gateway, options.name);
    const session = await unary(gateway.target, gateway.client.createSshSession.bind(gateway.client), {
      sandboxId: id,
    });
    token = session.token;
  }
  const stream = forwardSsh(gateway.client, gateway.target, id, token);
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
