// The supervisor bundle as tests get it: made by the same script the image
// build runs (scripts/bundle.mjs) from this checkout's dist/.

import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "./cli.js";

/** Makes the bundle in `out`; throws with the script's output when it fails. */
export function makeBundle(out: string): string {
  execFileSync(process.execPath, [join(ROOT, "scripts", "bundle.mjs"), out], {
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 120_000,
  });
  return out;
}

/** An environment with nothing of this process's in it: what a container starts with, plus `vars`. */
export function containerEnv(vars: Record<string, string> = {}): string[] {
  return [
    "env",
    "-i",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ...Object.entries(vars).map(([name, value]) => `${name}=${value}`),
  ];
}
