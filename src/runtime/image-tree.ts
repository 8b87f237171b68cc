// Paths in an unpacked image, looked up as the pod would see them. An image
// is hostile input: its links may point anywhere (`/etc -> /host/etc`,
// `../../../..`), and a link followed on the host would read or write the
// host's files. Here every link is followed inside the image: an absolute
// target starts again at the image's root and `..` stops at it, so a path
// never leaves the tree. Both the gateway (an image's baked-in policy) and the
// supervisor (the pod's shell, mount points) look paths up this way.

import { readlinkSync } from "node:fs";
import { join } from "node:path";
import { lstatIfExists } from "../host/fs.js";

/** How many links a path in an image may pass through before it is taken as missing. */
const IMAGE_LINK_HOPS = 40;

/**
 * Where `path` of the image whose root is `imageRoot` is on the host, every
 * link on its way (the last one included) followed inside the image; not a
 * link itself. Undefined when it is missing or its links go round.
 */
export function resolveInImage(imageRoot: string, path: string): string | undefined {
  let pending = path.split("/").filter(Boolean);
  let at: string[] = [];
  for (let hops = 0; pending.length > 0; ) {
    const name = pending.shift()!;
    if (name === ".") continue;
    if (name === "..") {
      at.pop();
      continue;
    }
    const entry = lstatIfExists(join(imageRoot, ...at, name));
    if (!entry) return undefined;
    if (!entry.isSymbolicLink()) {
      at.push(name);
      continue;
    }
    if (++hops > IMAGE_LINK_HOPS) return undefined;
    const target = readlinkSync(join(imageRoot, ...at, name));
    if (target.startsWith("/")) at = [];
    pending = [...target.split("/").filter(Boolean), ...pending];
  }
  return join(imageRoot, ...at);
}
