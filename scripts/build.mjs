// Builds dist/ from src/ with esbuild: one ESM bundle per entry point, with
// shared chunks split out so each command loads only what it runs. Native
// modules, and the Kubernetes client (loaded only by `gateway start --driver
// kubernetes`, 4 MiB bundled), stay external and load from node_modules. The API's entry
// (dist/api.mjs) gets its declarations from tsc, in dist/types/.

import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
// Built beside dist/ and swapped in with renames, so a CLI or gateway that
// starts during a rebuild never finds dist/ half written.
const out = join(root, `dist.build-${process.pid}`);
rmSync(out, { recursive: true, force: true });
const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
await build({
  absWorkingDir: root,
  entryPoints: {
    cli: "src/cli/cli.ts",
    gateway: "src/gateway/main.ts",
    supervisor: "src/supervisor/main.ts",
    agent: "src/supervisor/agent/main.ts",
    api: "src/api/index.ts",
  },
  outdir: out,
  outExtension: { ".js": ".mjs" },
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  sourcemap: "linked",
  chunkNames: "chunks/[name]-[hash]",
  external: ["better-sqlite3", "node-pty", "ssh2", "cpu-features", "@kubernetes/client-node"],
  banner: {
    js: "import { createRequire as __openshellCreateRequire } from 'node:module'; const require = __openshellCreateRequire(import.meta.url);",
  },
  define: { __OPENSHELL_VERSION__: JSON.stringify(version) },
  logLevel: "warning",
});
// The API's declarations: tsc, as esbuild emits none.
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const types = spawnSync(
  process.execPath,
  [tsc, "-p", join(root, "tsconfig.types.json"), "--outDir", join(out, "types")],
  { stdio: "inherit" },
);
if (types.status !== 0) {
  rmSync(out, { recursive: true, force: true });
  throw new Error(`tsc (declarations) exited with status ${types.status}`);
}
const old = join(root, `dist.old-${process.pid}`);
if (existsSync(join(root, "dist"))) renameSync(join(root, "dist"), old);
renameSync(out, join(root, "dist"));
rmSync(old, { recursive: true, force: true });
