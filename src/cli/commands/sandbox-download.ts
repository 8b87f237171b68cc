// `openshell sandbox download NAME PATH [DEST]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, jsonOutputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxDownload(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("download")
    .description("copy a file or directory out of a sandbox's working directory")
    .argument("<name>")
    .argument("<path>")
    .argument("[dest]", "local destination", ".")
    .addOption(jsonOutputOption())
    .addHelpText(
      "after",
      examples(
        "openshell sandbox download demo results ./results -o json",
        "openshell sandbox download demo build/out.tar ./out.tar",
        "openshell sandbox download demo results ./results",
      ),
    )
    .action((name, path, dest, opts) =>
      runner.run(async (ctx) => {
        const { sandboxDownload } = await import("../actions/transfer.js");
        return sandboxDownload(ctx, { name, path, dest, output: opts.output });
      }),
    );
}
