// `openshell sandbox stop [NAME]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxStop(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("stop")
    .description("end every process of a sandbox, keeping its workspace, files, policy and limits")
    .argument("[name]")
    .addHelpText(
      "after",
      examples("openshell sandbox stop demo", "openshell sandbox stop          # the last sandbox used"),
    )
    .action((name) =>
      runner.run(async (ctx) => {
        const { sandboxStop } = await import("../actions/lifecycle.js");
        return sandboxStop(ctx, { name });
      }),
    );
}
