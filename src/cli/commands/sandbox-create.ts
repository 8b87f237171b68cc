// `openshell sandbox create [flags] [-- CMD...]`: create a sandbox, wait until
// it is Ready, and attach to its command or return (actions/create.ts).

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { collect, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addSandboxCreate(sandbox: CommandUnknownOpts, runner: Runner): void {
  sandbox
    .command("create")
    .description("create a sandbox, wait until it is Ready, optionally run a command in it")
    .option("--name <name>", "sandbox name (lowercase letters, digits, hyphens; at most 19)")
    .option("--label <key=value>", "label (repeatable)", collect, [])
    .option(
      "--env <key=value>",
      "environment variable for every process in the sandbox (repeatable)",
      collect,
      [],
    )
    .option(
      "--file <local:remote[:mode]>",
      "inject a read-only file at create time, e.g. ./cfg.yaml:/etc/app/cfg.yaml:0444 (repeatable)",
      collect,
      [],
    )
    .option("--upload <local[:dest]>", "upload a file or directory once Ready (repeatable)", collect, [])
    .option("--no-git-ignore", "with --upload: include files that .gitignore excludes")
    .option("--upload-git", "with --upload of a repository: include its .git (history, config, hooks)")
    .option("--policy <file>", "sandbox policy YAML (env OPENSHELL_SANDBOX_POLICY)")
    .option("--detach", "return once Ready; do not attach to the command")
    .option("--attach", "attach to the command even when not on a terminal")
    .option("--no-keep", "delete the sandbox when the attached command ends")
    .option("--tty", "run the command on a pseudo-terminal")
    .option("--no-tty", "run the command without a pseudo-terminal")
    .addOption(outputOption())
    .argument("[command...]", "command to run as the sandbox's main process (after --)")
    .passThroughOptions()
    .addHelpText(
      "after",
      `
Examples:
  openshell sandbox create --name demo -- sh -c 'id -u; sleep infinity'
  openshell sandbox create --file ./SOUL.md:/sandbox/.agent/SOUL.md --upload ./src -- python main.py
  openshell sandbox create --no-keep --policy ./policy.yaml -- make test`,
    )
    .action((command, opts) =>
      runner.run(async (ctx) => {
        const { sandboxCreate } = await import("../actions/create.js");
        return sandboxCreate(ctx, {
          name: opts.name,
          labels: opts.label,
          env: opts.env,
          files: opts.file,
          uploads: opts.upload,
          gitIgnore: opts.gitIgnore,
          uploadGit: opts.uploadGit,
          policy: opts.policy,
          detach: opts.detach === true,
          attach: opts.attach === true,
          keep: opts.keep,
          tty: opts.tty,
          output: opts.output,
          command,
        });
      }),
    );
}
