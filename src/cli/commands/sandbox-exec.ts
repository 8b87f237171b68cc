// `openshell sandbox exec [-n NAME] [flags] -- CMD...`: exits with the remote
// command's status, so the CLI's own failures once it runs use 240–245.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { collect, integer, jsonOutputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxExec(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("exec")
    .description("run a command in a sandbox; exits with its status")
    .option("-n, --name <name>", "sandbox (defaults to the last used)")
    .option("--workdir <path>", "working directory inside the sandbox")
    .option("--env <key=value>", "environment variable (repeatable)", collect, [])
    .option(
      "--timeout <seconds>",
      "kill the command after this long and exit 124 (0 = never)",
      integer("--timeout"),
      0,
    )
    .option("--tty", "allocate a pseudo-terminal")
    .option("--no-tty", "never allocate a pseudo-terminal")
    .addOption(
      jsonOutputOption(
        "json: after the output, the exit status and byte counts as one JSON line, the last on stderr",
      ),
    )
    .argument("<command...>", "command and arguments (after --)")
    .passThroughOptions()
    .addHelpText(
      "after",
      `
Examples:
  openshell sandbox exec -n demo -- ls -la
  tar c src | openshell sandbox exec -- tar x -C /sandbox
  openshell sandbox exec --timeout 60 --env DEBUG=1 -- make test
  openshell sandbox exec -o json -- make 2>err.log; tail -n 1 err.log | jq .exit_status`,
    )
    .action((command, opts) =>
      runner.run(async (ctx) => {
        ctx.markPassthrough();
        const { sandboxExec } = await import("../actions/exec.js");
        return sandboxExec(ctx, {
          name: opts.name,
          workdir: opts.workdir,
          env: opts.env,
          timeout: opts.timeout,
          tty: opts.tty,
          output: opts.output,
          command,
        });
      }),
    );
}
