// `openshell status [-o FORMAT]`: is the active gateway reachable, and does it accept us.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addStatus(program: CommandUnknownOpts, runner: Runner): void {
  program
    .command("status")
    .description("show whether the active gateway is reachable and accepts our credentials")
    .addOption(outputOption())
    .addHelpText(
      "after",
      examples("openshell status", "openshell status -o json", "openshell -g other status"),
    )
    .action((opts) =>
      runner.run(async (ctx) => {
        const { status } = await import("../actions/gateway.js");
        return status(ctx, { output: opts.output });
      }),
    );
}
