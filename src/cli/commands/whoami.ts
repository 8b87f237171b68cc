// `openshell whoami [-o FORMAT]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addWhoami(program: CommandUnknownOpts, runner: Runner): void {
  program
    .command("whoami")
    .description("show who the active gateway takes you for")
    .addOption(outputOption())
    .addHelpText("after", examples("openshell whoami", "openshell -g other whoami -o json"))
    .action((opts) =>
      runner.run(async (ctx) => {
        const { whoami } = await import("../actions/whoami.js");
        return whoami(ctx, { output: opts.output });
      }),
    );
}
