// What `openshell image ...` does, through the API.

import type { ImageInfo } from "../../api/index.js";
import type { CommandContext } from "../context.js";
import { formatTimestamp, isoTime, printDocument } from "../output/present.js";
import { table } from "../output/ui.js";
import { imageSource } from "./create.js";

function imageDocument(image: ImageInfo): Record<string, unknown> {
  return {
    digest: image.digest,
    references: image.references,
    size_bytes: image.sizeBytes,
    pulled_at: isoTime(image.pulledAtMs),
    sandboxes: image.sandboxes,
  };
}

const MiB = 1024 * 1024;
const size = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

export async function imageList(
  ctx: CommandContext,
  options: { output: "table" | "json" | "yaml" },
): Promise<number> {
  const images = await (await ctx.api()).listImages({ signal: ctx.signal });
  if (options.output !== "table") {
    printDocument(ctx.ui, options.output, images.map(imageDocument));
    return 0;
  }
  if (images.length === 0) {
    ctx.ui.note("No images stored.");
    return 0;
  }
  const rows = images.map((image) => [
    image.digest.slice(0, 19),
    size(image.sizeBytes),
    formatTimestamp(image.pulledAtMs),
    image.references[0] ?? "",
    image.sandboxes.join(",") || "-",
  ]);
  for (const line of table(["DIGEST", "SIZE", "PULLED", "SOURCE", "SANDBOXES"], rows, (h) =>
    ctx.ui.out.bold(h),
  ))
    ctx.ui.data(line);
  return 0;
}

export async function imagePull(
  ctx: CommandContext,
  options: { source: string; output?: "text" | "json" | undefined },
): Promise<number> {
  const source = imageSource(options.source) ?? options.source;
  const image = await (await ctx.api()).pullImage(source, { signal: ctx.signal });
  if (options.output === "json") printDocument(ctx.ui, "json", imageDocument(image));
  else ctx.ui.success(`Pulled ${source}: ${image.digest} (${size(image.sizeBytes)})`);
  return 0;
}

export async function imageRemove(
  ctx: CommandContext,
  options: { image: string; output?: "text" | "json" | undefined },
): Promise<number> {
  const given = options.image.startsWith("sha256:")
    ? options.image
    : (imageSource(options.image) ?? options.image);
  const digest = await (await ctx.api()).removeImage(given, { signal: ctx.signal });
  if (options.output === "json") printDocument(ctx.ui, "json", { removed: digest });
  else ctx.ui.success(`Removed image ${digest}`);
  return 0;
}

export async function imagePrune(
  ctx: CommandContext,
  options: { output?: "text" | "json" | undefined },
): Promise<number> {
  const { digests, freedBytes } = await (await ctx.api()).pruneImages({ signal: ctx.signal });
  if (options.output === "json") printDocument(ctx.ui, "json", { removed: digests, freed_bytes: freedBytes });
  else ctx.ui.success(`Removed ${digests.length} image(s), ${size(freedBytes)} freed`);
  return 0;
}
