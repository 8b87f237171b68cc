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
    .option(
      "--from <source>",
      "run from an image: a reference (registry/repo:tag or @sha256:...), a community name (base), a local OCI/docker archive, OCI layout or root filesystem directory, or a Dockerfile (or a directory holding one; built with buildah)",
    )
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
    .option("--cpu <cores>", "cpu limit in cores or millicores, e.g. 0.5, 2 or 500m")
    .option("--memory <bytes>", "memory limit, e.g. 512Mi or 4Gi; past it a process is killed (137)")
    .option("--pids <count>", "most processes and threads at once (the gateway's default otherwise)")
    .option(
      "--disk <bytes>",
      "size of the sandbox's own filesystem (workspace and writable paths), e.g. 10Gi",
    )
    .option("--detach", "return once Ready; do not attach to the command")
    .option("--attach", "attach to the command even when not on a terminal")
    .option("--no-keep", "delete the sandbox when the attached command ends")
    .option("--ttl <duration>", "delete the sandbox this long after create, e.g. 30m, 1h, 1h30m")
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
  openshell sandbox create --no-keep --policy ./policy.yaml -- make test
  openshell sandbox create --from registry.example.com/team/tools:1.4 -- make test`,
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
          ttl: opts.ttl,
          from: opts.from,
          output: opts.output,
          command,
          cpu: opts.cpu,
          memory: opts.memory,
          pids: opts.pids,
          disk: opts.disk,
        });
      }),
    );
}
