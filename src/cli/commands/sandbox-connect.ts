// `openshell sandbox connect [NAME]`: an interactive shell; exits with its status.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxConnect(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("connect")
    .description("open an interactive shell in a sandbox")
    .argument("[name]")
    .addHelpText(
      "after",
      examples("openshell sandbox connect demo", "openshell sandbox connect  # the last-used sandbox"),
    )
    .action((name) =>
      runner.run(async (ctx) => {
        ctx.markPassthrough();
        const { sandboxConnect } = await import("../actions/connect.js");
        return sandboxConnect(ctx, { name });
      }),
    );
}
