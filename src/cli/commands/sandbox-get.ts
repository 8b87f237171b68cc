// `openshell sandbox get [NAME] [--policy-only] [-o FORMAT]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxGet(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("get")
    .description("show one sandbox (defaults to the last used)")
    .argument("[name]")
    .option("--policy-only", "print only the effective policy, as YAML that --policy accepts")
    .addOption(outputOption())
    .addHelpText(
      "after",
      examples(
        "openshell sandbox get demo",
        "openshell sandbox get demo -o json",
        "openshell sandbox get --policy-only",
      ),
    )
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { sandboxGet } = await import("../actions/sandbox.js");
        return sandboxGet(ctx, { name, output: opts.output, policyOnly: opts.policyOnly === true });
      }),
    );
}
