// `openshell logs [NAME] [-n N] [--tail] [--since D] [--source S] [--level L] [--raw | -o json]`.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { collect, examples, integer, jsonOutputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addLogs(program: CommandUnknownOpts, runner: Runner): void {
  program
    .command("logs")
    .alias("lg")
    .description("show a sandbox's log lines (its main process output and gateway notes)")
    .argument("[name]")
    .option("-n, --lines <n>", "how many lines", integer("-n"), 200)
    .option("--tail", "keep following new lines")
    .option("--since <duration>", "only lines newer than this (30s, 5m, 1h)")
    .option("--source <source>", "gateway, sandbox or all (repeatable)", collect, [])
    .option("--level <level>", "minimum level: error, warn, info, debug, trace")
    .option(
      "--raw",
      "print only the main command's output lines, exactly as sent (control characters included)",
    )
    .addOption(jsonOutputOption("json: one JSON object per line (time, source, stream, level, message)"))
    .addHelpText(
      "after",
      examples(
        "openshell logs demo",
        "openshell logs demo --tail --source sandbox",
        "openshell logs demo --since 5m --level warn",
        "openshell logs demo --raw > output.txt",
        "openshell logs demo -o json | jq -r 'select(.stream == \"stderr\") | .message'",
      ),
    )
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { logs } = await import("../actions/logs.js");
        return logs(ctx, {
          name,
          lines: opts.lines,
          tail: opts.tail === true,
          since: opts.since,
          source: opts.source,
          level: opts.level,
          raw: opts.raw === true,
          output: opts.output,
        });
      }),
    );
}
