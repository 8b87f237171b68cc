// `openshell sandbox renew [NAME] --ttl DURATION`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxRenew(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("renew")
    .description("give a sandbox a new lifetime, counted from now")
    .argument("[name]")
    .requiredOption("--ttl <duration>", "the new lifetime, e.g. 30m, 1h, 1h30m")
    .addHelpText("after", examples("openshell sandbox renew demo --ttl 1h"))
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { sandboxRenew } = await import("../actions/lifecycle.js");
        return sandboxRenew(ctx, { name, ttl: opts.ttl });
      }),
    );
}
