// `sandbox wait NAME [--timeout S] [--logs]`: waits on WatchSandbox for the
// main command to complete and exits with its status, so a script that
// created the sandbox detached still learns how its command ended. With
// --logs, the command's output (stdout to stdout, stderr to stderr, from the
// first line the gateway still holds) is streamed until then.
//
// Like exec, it passes a remote status through, so its own failures use
// 240–245: a sandbox stopped, failed or deleted before its command completed
// is 243, a --timeout that ran out 244. The waiting is the API's (Sandbox.wait).

import { once } from "node:events";
import { usageError } from "../../core/errors.js";
import type { SandboxLogLine } from "../../gen/openshell.js";
import type { CommandContext } from "../context.js";

export interface WaitOptions {
  name?: string | undefined;
  /** Seconds; 0 waits for as long as it takes. */
  timeout: number;
  logs: boolean;
}

export async function sandboxWait(ctx: CommandContext, options: WaitOptions): Promise<number> {
  if (!Number.isInteger(options.timeout) || options.timeout < 0) {
    throw usageError(`--timeout ${options.timeout}: expected whole seconds (0 = no timeout)`);
  }
  const name = await ctx.sandboxName(options.name);
  const api = await ctx.api();
  const sandbox = await api.get(name, { signal: ctx.signal });
  const { io } = ctx;
  return sandbox.wait({
    signal: ctx.signal,
    timeoutMs: options.timeout * 1000,
    timeoutMessage: `sandbox '${name}': its command did not complete within ${options.timeout} s`,
    onWarning: (message) => ctx.ui.warn(message),
    ...(options.logs
      ? {
          // The command's own lines, as it wrote them; not the proxy's decisions.
          onOutput: async (line: SandboxLogLine) => {
            const out =
              line.target === "stdout" ? io.stdout : line.target === "stderr" ? io.stderr : undefined;
            // A slow reader holds the stream (the gateway then skips lines and says how many), not memory here.
            if (out && !out.write(`${line.message}\n`)) await once(out, "drain");
          },
        }
      : {}),
  });
}
