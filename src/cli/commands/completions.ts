// `openshell completions bash|zsh|fish`: a script the shell sources once; on
// each TAB it runs the hidden `openshell complete -- WORDS...`, which answers
// from this program's own commands and options, and sandbox and gateway
// names from the active gateway and the local configuration.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { Argument as CommandArgument } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export const COMPLETION_SHELLS = ["bash", "zsh", "fish"] as const;

export function addCompletions(program: CommandUnknownOpts, runner: Runner): void {
  program
    .command("completions")
    .description("print a shell completion script")
    .addArgument(new CommandArgument("<shell>", "the shell").choices(COMPLETION_SHELLS))
    .addHelpText(
      "after",
      examples(
        "source <(openshell completions bash)      # in ~/.bashrc",
        "source <(openshell completions zsh)       # in ~/.zshrc, after compinit",
        "openshell completions fish > ~/.config/fish/completions/openshell.fish",
      ),
    )
    .action((shell) =>
      runner.run(async (ctx) => {
        const { completionScript } = await import("../actions/completions.js");
        return completionScript(ctx, shell);
      }),
    );
  program
    .command("complete", { hidden: true })
    .description("complete a command line (the completion scripts call it)")
    .argument("[words...]")
    .helpOption(false)
    .allowUnknownOption()
    .action((words) =>
      runner.run(async (ctx) => {
        const { complete } = await import("../actions/completions.js");
        return complete(ctx, program, words);
      }),
    );
}
