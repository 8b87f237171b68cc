// The package version, injected by the build (scripts/build.mjs); source runs
// (tests through tsx) fall back to reading package.json.

import { readFileSync } from "node:fs";

declare const __OPENSHELL_VERSION__: string | undefined;

function fromPackageJson(): string {
  try {
    const url = new URL("../../package.json", import.meta.url);
    return (JSON.parse(readFileSync(url, "utf8")) as { version: string }).version;
  } catch {
    return "0.0.0";
  }
}

export const VERSION: string =
  typeof __OPENSHELL_VERSION__ === "string" ? __OPENSHELL_VERSION__ : fromPackageJson();
