// `openshell sandbox wait [NAME] [--timeout S] [--logs]`: exits with the main
// command's status, so the CLI's own failures use 240–245.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, integer } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxWait(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("wait")
    .description("wait for a sandbox's main command to complete; exits with its status")
    .argument("[name]")
    .option(
      "--timeout <seconds>",
      "give up after this long and exit 244 (0 = never)",
      integer("--timeout"),
      0,
    )
    .option("--logs", "stream the command's output (stdout and stderr) until it completes")
    .addHelpText(
      "after",
      examples(
        "openshell sandbox create --name job -- make test </dev/null",
        "openshell sandbox wait job --logs",
        "openshell sandbox wait job --timeout 600 && openshell sandbox download job /sandbox/out ./out",
      ),
    )
    .action((name, opts) =>
      runner.run(async (ctx) => {
        ctx.markPassthrough();
        const { sandboxWait } = await import("../actions/wait.js");
        return sandboxWait(ctx, { name, timeout: opts.timeout, logs: opts.logs === true });
      }),
    );
}
