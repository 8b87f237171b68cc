// `openshell policy get [NAME]` and `openshell policy set [NAME] --policy FILE [--wait]`.

import { type CommandUnknownOpts, Option } from "@commander-js/extra-typings";
import { examples, integer, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addPolicy(program: CommandUnknownOpts, runner: Runner): void {
  const policy = program
    .command("policy")
    .description("show and change a sandbox's policy while it runs")
    .addHelpText(
      "after",
      examples("openshell policy get demo", "openshell policy set demo --policy ./policy.yaml --wait"),
    );

  policy
    .command("get")
    .description("show a sandbox's policy: the revision stored, the one in force, and the policy")
    .argument("[name]", "the sandbox (defaults to the last used)")
    .addOption(
      new Option("--rev <n>", "an earlier revision instead of the latest").argParser(integer("--rev")),
    )
    .addOption(outputOption())
    .addHelpText("after", examples("openshell policy get demo", "openshell policy get demo --rev 1 -o json"))
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { policyGet } = await import("../actions/policy.js");
        return policyGet(ctx, { name, revision: opts.rev, output: opts.output });
      }),
    );

  policy
    .command("set")
    .description(
      "give a running sandbox a new policy: network rules apply to new connections at once; filesystem, landlock and process changes are refused",
    )
    .argument("[name]", "the sandbox (defaults to the last used)")
    .requiredOption("--policy <file>", "the policy YAML file (as `sandbox create --policy` takes)")
    .option("--wait", "return once the sandbox has the new revision in force")
    .addOption(
      new Option("--timeout <seconds>", "how long --wait waits").argParser(integer("--timeout")).default(60),
    )
    .addHelpText(
      "after",
      examples(
        "openshell sandbox get demo --policy-only > policy.yaml   # edit its network_policies, then",
        "openshell policy set demo --policy policy.yaml --wait",
      ),
    )
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { policySet } = await import("../actions/policy.js");
        return policySet(ctx, { name, file: opts.policy, wait: opts.wait === true, timeout: opts.timeout });
      }),
    );
}
