// `openshell sandbox delete NAME...|--all`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, jsonOutputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxDelete(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("delete")
    .alias("rm")
    .description("delete sandboxes and everything in them")
    .argument("[names...]")
    .option("--all", "delete every sandbox in the workspace")
    .addOption(jsonOutputOption())
    .addHelpText(
      "after",
      examples(
        "openshell sandbox delete --all -o json",
        "openshell sandbox delete demo",
        "openshell sandbox delete a b c",
        "openshell sandbox delete --all",
      ),
    )
    .action((names, opts) =>
      runner.run(async (ctx) => {
        const { sandboxDelete } = await import("../actions/sandbox.js");
        return sandboxDelete(ctx, { names, all: opts.all === true, output: opts.output });
      }),
    );
}
