// `openshell sandbox upload NAME LOCAL [DEST] [--no-git-ignore] [--git]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, jsonOutputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxUpload(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("upload")
    .description("copy a local file or directory into a sandbox")
    .argument("<name>")
    .argument("<local>")
    .argument("[dest]", "destination in the sandbox (default: its working directory)")
    .option("--no-git-ignore", "include files that .gitignore excludes")
    .option("--git", "of a repository: include its .git (history, config, hooks)")
    .addOption(jsonOutputOption())
    .addHelpText(
      "after",
      examples(
        "openshell sandbox upload demo ./src -o json",
        "openshell sandbox upload demo ./src /sandbox/src",
        "openshell sandbox upload demo ./data.csv",
      ),
    )
    .action((name, local, dest, opts) =>
      runner.run(async (ctx) => {
        const { sandboxUpload } = await import("../actions/transfer.js");
        return sandboxUpload(ctx, {
          name,
          local,
          dest,
          gitIgnore: opts.gitIgnore,
          git: opts.git === true,
          output: opts.output,
        });
      }),
    );
}
