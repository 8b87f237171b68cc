// `sandbox exec [-n NAME] [--workdir P] [--env K=V]... [--timeout S] [--tty|--no-tty] -- CMD...`
//
// Runs one command in a Ready sandbox over the API's interactive exec (the
// gateway's ExecSandboxInteractive), so stdin streams live (no buffering, no
// size cap; EOF is passed on; an idle pipe does not hold the CLI once the
// command exits), stdout and stderr stay apart, and the CLI exits with the command's status (128 + N for a death by
// signal N, 124 on --timeout). `--timeout N` bounds the whole exec, whatever
// the sandbox does: the gateway's deadline covers reaching the sandbox and
// starting the command as well as running it, and the CLI holds its own
// deadline half a second later in case the gateway does not answer either.

import { OpenShellError, usageError } from "../../core/errors.js";
import { parseEnvFlag, validateEnvironment, validateExecRequest } from "../../core/names.js";
import { notReadyMessage } from "../../core/phases.js";
import { EXEC_TIMEOUT_EXIT } from "../../core/signals.js";
import { SandboxPhase } from "../../gen/openshell.js";
import type { CommandContext } from "../context.js";
import { enterRawMode, onEndingSignal } from "../terminal.js";

/** How long past `--timeout` the CLI waits for the gateway's answer before it gives up itself. */
const BACKSTOP_GRACE_MS = 500;

export interface ExecOptions {
  name?: string | undefined;
  workdir?: string | undefined;
  env: string[];
  timeout: number;
  tty?: boolean | undefined;
  /** json: after the command's output, one JSON document (status, byte counts, times) as the last line of stderr. */
  output?: "text" | "json" | undefined;
  command: string[];
}

export function parseEnvFlags(flags: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const flag of flags) {
    const [key, value] = parseEnvFlag(flag);
    env[key] = value;
  }
  const violation = validateEnvironment(env, "--env");
  if (violation) throw usageError(violation);
  return env;
}

export async function sandboxExec(ctx: CommandContext, options: ExecOptions): Promise<number> {
  if (options.command.length === 0)
    throw usageError("no command given", "Put the command after --: openshell sandbox exec -- ls -la");
  if (!Number.isInteger(options.timeout) || options.timeout < 0) {
    throw usageError(`--timeout ${options.timeout}: expected whole seconds (0 = no timeout)`);
  }
  const environment = parseEnvFlags(options.env);
  const workdir = options.workdir ?? "";
  const violation = validateExecRequest({ command: options.command, workdir, environment });
  if (violation) throw usageError(violation);
  const { stdin, stdout, stderr } = ctx.io;
  const tty = options.tty ?? (stdin.isTTY === true && stdout.isTTY === true);

  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = (
    await api.get(name, {
      signal: ctx.signal,
      ...(options.timeout > 0 ? { timeoutMs: options.timeout * 1000 + BACKSTOP_GRACE_MS } : {}),
    })
  ).info;
  const phase = sandbox.status?.phase;
  if (phase !== SandboxPhase.SANDBOX_PHASE_READY) {
    const waitable =
      phase === SandboxPhase.SANDBOX_PHASE_PROVISIONING || phase === SandboxPhase.SANDBOX_PHASE_STARTING;
    throw new OpenShellError(
      "not_ready",
      notReadyMessage(name, phase) + (waitable ? "; wait for it to reach Ready state" : ""),
    );
  }

  const startedAt = Date.now();
  const counted = { stdout: 0, stderr: 0, stderrEndsLine: true };
  const exec = await api.execInteractive({
    name,
    sandboxId: sandbox.metadata!.id,
    command: options.command,
    workdir,
    environment,
    timeoutSeconds: options.timeout,
    tty: tty ? { cols: stdout.columns ?? 80, rows: stdout.rows ?? 24 } : undefined,
    stdin,
    stdout: {
      write: (data) => {
        counted.stdout += data.length;
        return stdout.write(data);
      },
      once: (event, listener) => stdout.once(event, listener),
    },
    stderr: {
      write: (data) => {
        counted.stderr += data.length;
        if (data.length > 0) counted.stderrEndsLine = data.at(-1) === 0x0a;
        return stderr.write(data);
      },
      once: (event, listener) => stderr.once(event, listener),
    },
  });

  const restore: (() => void)[] = [];
  // Ends the call early (Ctrl-C, SIGTERM, SIGHUP): the gateway kills the
  // command, and the CLI exits with the status a shell would report.
  let stop: (status: number) => void = () => {};
  if (tty) {
    const restoreTerminal = enterRawMode(ctx.io);
    restore.push(restoreTerminal);
    restore.push(onEndingSignal((status) => stop(status), restoreTerminal));
    const onResize = (): void => exec.resize(stdout.columns ?? 80, stdout.rows ?? 24);
    process.on("SIGWINCH", onResize);
    restore.push(() => process.off("SIGWINCH", onResize));
  }

  try {
    const code = await new Promise<number>((resolve, reject) => {
      stop = (status) => {
        exec.cancel();
        resolve(status);
      };
      const onAbort = (): void => stop(ctx.interruptStatus ?? 130);
      ctx.signal.addEventListener("abort", onAbort, { once: true });
      restore.push(() => ctx.signal.removeEventListener("abort", onAbort));
      exec.exit.then(resolve, reject);
      if (options.timeout > 0) {
        // The gateway ends the call at the deadline whatever the sandbox does;
        // this is the backstop should the gateway not answer in time either.
        const backstop = setTimeout(
          () => {
            exec.cancel();
            ctx.ui.warn(
              `sandbox '${name}': no exit status within the ${options.timeout} s timeout; the command was cancelled`,
            );
            resolve(EXEC_TIMEOUT_EXIT);
          },
          options.timeout * 1000 + BACKSTOP_GRACE_MS,
        );
        restore.push(() => clearTimeout(backstop));
      }
    });
    await ctx.rememberSandbox(name);
    if (options.output === "json") {
      const document = {
        sandbox: name,
        exit_status: code,
        stdout_bytes: counted.stdout,
        stderr_bytes: counted.stderr,
        started_at: new Date(startedAt).toISOString(),
        ended_at: new Date().toISOString(),
      };
      // On a line of its own, whatever the command left unfinished.
      stderr.write(`${counted.stderrEndsLine ? "" : "\n"}${JSON.stringify(document)}\n`);
    }
    return code;
  } finally {
    for (const undo of restore.reverse()) undo();
  }
}
