// `openshell sandbox list [--limit N] [--offset N] [--selector k=v,...] [--ids|--names|-o FORMAT]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, integer, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxList(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("list")
    .alias("ls")
    .description("list sandboxes")
    .option("--limit <n>", "at most this many (1-1000)", integer("--limit"), 100)
    .option("--offset <n>", "skip this many", integer("--offset"), 0)
    // commander reads `<k=v,...>` as one value; the parser says so to the typings, which read "...>" as a list.
    .option("--selector <k=v,...>", "only sandboxes with these labels", (value: string) => value)
    .option("--ids", "print only ids")
    .option("--names", "print only names")
    .addOption(outputOption())
    .addHelpText(
      "after",
      examples(
        "openshell sandbox list",
        "openshell sandbox list --selector team=ml -o json",
        "openshell sandbox list --names",
      ),
    )
    .action((opts) =>
      runner.run(async (ctx) => {
        const { sandboxList } = await import("../actions/sandbox.js");
        return sandboxList(ctx, {
          limit: opts.limit,
          offset: opts.offset,
          selector: opts.selector,
          ids: opts.ids === true,
          names: opts.names === true,
          output: opts.output,
        });
      }),
    );
}
