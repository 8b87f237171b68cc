// `openshell ssh-proxy` (hidden): the ProxyCommand `sandbox ssh-config` writes
// for OpenSSH, bridging stdin/stdout to a sandbox's SSH server.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples } from "../flags.js";
import type { Runner } from "../program.js";

export function addSshProxy(program: CommandUnknownOpts, runner: Runner): void {
  program
    .command("ssh-proxy", { hidden: true })
    .description("OpenSSH ProxyCommand: bridges stdin/stdout to a sandbox's SSH server")
    .option("--gateway-name <name>")
    .option("--name <sandbox>")
    .option("--sandbox-id <id>")
    .option("--token <token>")
    .option("--server <url>", "gateway endpoint, instead of the one recorded for --gateway-name")
    .addHelpText(
      "after",
      examples("openshell sandbox ssh-config demo  # prints the ProxyCommand line that runs ssh-proxy"),
    )
    .action((opts) =>
      runner.run(async (ctx) => {
        const { sshProxy } = await import("../actions/connect.js");
        return sshProxy(ctx, {
          gatewayName: opts.gatewayName,
          name: opts.name,
          sandboxId: opts.sandboxId,
          token: opts.token,
          server: opts.server,
        });
      }),
    );
}
