// `openshell forward start|stop|list|service` (alias `fwd`): local ports
// forwarded to ports inside sandboxes (actions/forward.ts).

import { type CommandUnknownOpts, Option } from "@commander-js/extra-typings";
import { usageError } from "../../core/errors.js";
import { examples, integer } from "../flags.js";
import type { Runner } from "../program.js";

/** A port argument: a whole number from `low` to 65535, or a usage error naming it. */
function port(what: string, low = 1) {
  const whole = integer(what);
  return (value: string): number => {
    const n = whole(value);
    if (n < low || n > 65535) throw usageError(`${what} ${value}: port must be between ${low} and 65535`);
    return n;
  };
}

export function addForward(program: CommandUnknownOpts, runner: Runner): void {
  const forward = program
    .command("forward")
    .alias("fwd")
    .description("forward local ports to ports inside sandboxes (no ssh needed)")
    .addHelpText(
      "after",
      examples(
        "openshell forward start 8080",
        "openshell forward start 3000 my-sandbox -d",
        "openshell forward service my-sandbox --target-port 8000 --local 0",
        "openshell forward stop 8080",
        "openshell forward list",
      ),
    );

  forward
    .command("start")
    .description("forward a local port to the same port inside a sandbox")
    .argument("<port>", "[bind_address:]port to listen on, e.g. 8080 or 0.0.0.0:8080")
    .argument("[name]", "sandbox (default: the last used)")
    .option("-d, --background", "run in the background and return once it listens")
    .addOption(new Option("--background-child").hideHelp())
    .addHelpText(
      "after",
      examples(
        "openshell forward start 8080 demo            # until Ctrl-C",
        "openshell forward start 0.0.0.0:8888 demo -d # every interface, in the background",
      ),
    )
    .action((spec, name, opts) =>
      runner.run(async (ctx) => {
        const { forwardStart } = await import("../actions/forward.js");
        return forwardStart(ctx, {
          spec,
          name,
          background: opts.background === true,
          backgroundChild: opts.backgroundChild === true,
        });
      }),
    );

  forward
    .command("stop")
    .description("stop a background forward")
    .argument("<port>", "the local port forwarded", port("PORT"))
    .argument("[name]", "sandbox (default: whichever holds the port)")
    .addHelpText("after", examples("openshell forward stop 8080", "openshell forward stop 8080 demo"))
    .action((localPort, name) =>
      runner.run(async (ctx) => {
        const { forwardStop } = await import("../actions/forward.js");
        return forwardStop(ctx, { port: localPort, name });
      }),
    );

  forward
    .command("list")
    .alias("ls")
    .description("list the background forwards running")
    .addOption(
      new Option("-o, --output <format>", "output format")
        .choices(["table", "json"] as const)
        .default("table"),
    )
    .addHelpText("after", examples("openshell forward list", "openshell forward list -o json"))
    .action((opts) =>
      runner.run(async (ctx) => {
        const { forwardList } = await import("../actions/forward.js");
        return forwardList(ctx, { output: opts.output });
      }),
    );

  forward
    .command("service")
    .description("forward a local port to a port on a sandbox's loopback, until Ctrl-C")
    .argument("[name]", "sandbox (default: the last used)")
    .requiredOption("--target-port <port>", "the port inside the sandbox", port("--target-port"))
    .option("--target-host <host>", "the host inside the sandbox: loopback only", "127.0.0.1")
    .option(
      "--local <[bind:]port>",
      "where to listen (default: the target port on 127.0.0.1; 0: any free port)",
    )
    .addHelpText(
      "after",
      examples(
        "openshell forward service demo --target-port 8000",
        "openshell forward service demo --target-port 8888 --local 0.0.0.0:9999",
      ),
    )
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { forwardService } = await import("../actions/forward.js");
        return forwardService(ctx, {
          name,
          targetPort: opts.targetPort,
          targetHost: opts.targetHost,
          local: opts.local,
        });
      }),
    );
}
