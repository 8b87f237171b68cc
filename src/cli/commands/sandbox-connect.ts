// `openshell sandbox connect [NAME]`: an interactive shell; exits with its status.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import type { Runner } from "../program.js";

export function addSandboxConnect(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("connect")
    .description("open an interactive shell in a sandbox")
    .argument("[name]")
    .action((name) =>
      runner.run(async (ctx) => {
        ctx.markPassthrough();
        const { sandboxConnect } = await import("../actions/connect.js");
        return sandboxConnect(ctx, { name });
      }),
    );
}
