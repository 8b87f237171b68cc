// `sandbox wait NAME [--timeout S] [--logs]`: waits on WatchSandbox for the
// main command to complete and exits with its status, so a script that
// created the sandbox detached still learns how its command ended. With
// --logs, the command's output (stdout to stdout, stderr to stderr, from the
// first line the gateway still holds) is streamed until then.
//
// Like exec, it passes a remote status through, so its own failures use
// 240–245: a sandbox stopped, failed or deleted before its command completed
// is 243, a --timeout that ran out 244.

import { OpenShellError, usageError } from "../../core/errors.js";
import { mainExitStatus, readyFalseMessage } from "../../core/phases.js";
import { type Sandbox, SandboxPhase, type SandboxStreamEvent } from "../../gen/openshell.js";
import { mapGrpcError } from "../../transport/grpc.js";
import type { CommandContext } from "../context.js";

export interface WaitOptions {
  name?: string | undefined;
  /** Seconds; 0 waits for as long as it takes. */
  timeout: number;
  logs: boolean;
}

/** As many past lines as a gateway keeps: the whole output, from its start, where it is still held. */
const ALL_LINES = 1_000_000;

/** The command's exit status once completed; a failure when it never can; undefined while it runs. */
function outcome(name: string, sandbox: Sandbox): number | OpenShellError | undefined {
  const status = mainExitStatus(sandbox);
  if (status !== undefined) return status;
  const phase = sandbox.status?.phase;
  switch (phase) {
    case SandboxPhase.SANDBOX_PHASE_ERROR:
      return new OpenShellError(
        "sandbox_error",
        `sandbox '${name}' failed before its command completed: ${readyFalseMessage(sandbox) || "phase Error"}`,
      );
    case SandboxPhase.SANDBOX_PHASE_STOPPING:
    case SandboxPhase.SANDBOX_PHASE_STOPPED:
      return new OpenShellError("not_ready", `sandbox '${name}' was stopped before its command completed`, {
        hint: `Start it again (the command runs anew) with: openshell sandbox start ${name}`,
      });
    case SandboxPhase.SANDBOX_PHASE_DELETING:
      return new OpenShellError(
        "not_found",
        `sandbox '${name}' is being deleted; its command did not complete`,
      );
    default:
      return undefined;
  }
}

export async function sandboxWait(ctx: CommandContext, options: WaitOptions): Promise<number> {
  if (!Number.isInteger(options.timeout) || options.timeout < 0) {
    throw usageError(`--timeout ${options.timeout}: expected whole seconds (0 = no timeout)`);
  }
  const name = await ctx.sandboxName(options.name);
  const gateway = await ctx.gateway();
  const id = (await gateway.sandbox(name)).metadata!.id;
  const { io } = ctx;
  return new Promise<number>((resolve, reject) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    // The gateway sends the held lines before the sandbox's state, and each
    // line before the state change that follows it: the output is complete
    // when the status says the command completed.
    const stream = gateway.client.watchSandbox({
      id,
      followStatus: true,
      followLogs: options.logs,
      followEvents: false,
      logTailLines: options.logs ? ALL_LINES : 0,
      eventTail: 0,
      stopOnTerminal: false,
      logSinceMs: 0,
      logSources: ["sandbox"],
      logMinLevel: "",
    });
    const settle = (result: number | OpenShellError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ctx.signal.removeEventListener("abort", onAbort);
      stream.cancel();
      if (typeof result === "number") resolve(result);
      else reject(result);
    };
    const onAbort = (): void => settle(new OpenShellError("connection_lost", "interrupted"));
    ctx.signal.addEventListener("abort", onAbort);
    if (options.timeout > 0) {
      timer = setTimeout(
        () =>
          settle(
            new OpenShellError(
              "timeout",
              `sandbox '${name}': its command did not complete within ${options.timeout} s`,
            ),
          ),
        options.timeout * 1000,
      );
    }
    stream.on("data", (event: SandboxStreamEvent) => {
      const payload = event.payload;
      if (payload?.$case === "sandbox") {
        const result = outcome(name, payload.value);
        if (result !== undefined) settle(result);
      } else if (payload?.$case === "log") {
        // The command's own lines, as it wrote them; not the proxy's decisions.
        const line = payload.value;
        const out = line.target === "stdout" ? io.stdout : line.target === "stderr" ? io.stderr : undefined;
        // A slow reader holds the stream (the gateway then skips lines and says how many), not memory here.
        if (out && !out.write(`${line.message}\n`)) {
          stream.pause();
          out.once("drain", () => stream.resume());
        }
      } else if (payload?.$case === "warning") ctx.ui.warn(payload.value.message);
    });
    stream.on("end", () =>
      settle(new OpenShellError("not_found", `sandbox '${name}' was deleted before its command completed`)),
    );
    stream.on("error", (error: Error & { code?: number }) => {
      if (!settled) settle(mapGrpcError(error, gateway.target));
    });
  });
}
