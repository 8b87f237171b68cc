// `openshell image list|pull|rm|prune`: the gateway's image store (`sandbox create --from`).

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, jsonOutputOption, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addImage(program: CommandUnknownOpts, runner: Runner): void {
  const image = program
    .command("image")
    .description("the images the gateway keeps for sandbox create --from")
    .addHelpText(
      "after",
      examples(
        "openshell image pull registry.example.com/team/tools:1.4",
        "openshell image list",
        "openshell image prune",
      ),
    );

  image
    .command("list")
    .alias("ls")
    .description("list stored images: digest, size, sources, the sandboxes that run each")
    .addOption(outputOption())
    .addHelpText("after", examples("openshell image list", "openshell image list -o json"))
    .action((opts) =>
      runner.run(async (ctx) => {
        const { imageList } = await import("../actions/image.js");
        return imageList(ctx, { output: opts.output });
      }),
    );

  image
    .command("pull")
    .description("pull an image into the gateway now (again, when stored: its tag may have moved)")
    .argument("<source>", "an image reference, a community name, or a local archive or directory")
    .addOption(jsonOutputOption())
    .addHelpText(
      "after",
      examples("openshell image pull registry.example.com/team/tools:1.4", "openshell image pull ./img.tar"),
    )
    .action((source, opts) =>
      runner.run(async (ctx) => {
        const { imagePull } = await import("../actions/image.js");
        return imagePull(ctx, { source, output: opts.output });
      }),
    );

  image
    .command("rm")
    .alias("remove")
    .description("remove a stored image no sandbox runs")
    .argument("<image>", "its digest (sha256:...) or a source it was pulled as")
    .addOption(jsonOutputOption())
    .addHelpText("after", examples("openshell image rm registry.example.com/team/tools:1.4"))
    .action((name, opts) =>
      runner.run(async (ctx) => {
        const { imageRemove } = await import("../actions/image.js");
        return imageRemove(ctx, { image: name, output: opts.output });
      }),
    );

  image
    .command("prune")
    .description("remove every stored image no sandbox runs")
    .addOption(jsonOutputOption())
    .addHelpText("after", examples("openshell image prune", "openshell image prune -o json"))
    .action((opts) =>
      runner.run(async (ctx) => {
        const { imagePrune } = await import("../actions/image.js");
        return imagePrune(ctx, { output: opts.output });
      }),
    );
}
