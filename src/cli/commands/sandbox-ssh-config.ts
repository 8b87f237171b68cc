// `openshell sandbox ssh-config [NAME]`: an OpenSSH Host block.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxSshConfig(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("ssh-config")
    .description("print an OpenSSH Host block for ssh, scp, sftp and editors")
    .argument("[name]")
    .addHelpText(
      "after",
      examples("ssh -F <(openshell sandbox ssh-config demo) openshell-demo.default 'uname -a'"),
    )
    .action((name) =>
      runner.run(async (ctx) => {
        const { sandboxSshConfig } = await import("../actions/connect.js");
        return sandboxSshConfig(ctx, { name });
      }),
    );
}
