// `openshell sandbox start [NAME]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxStart(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("start")
    .description("boot a stopped sandbox (or one in Error) again and rerun its command; waits for Ready")
    .argument("[name]")
    .addHelpText("after", examples("openshell sandbox start demo"))
    .action((name) =>
      runner.run(async (ctx) => {
        const { sandboxStart } = await import("../actions/lifecycle.js");
        return sandboxStart(ctx, { name });
      }),
    );
}
