// The package as another project uses it: `npm pack`, the tarball installed
// into a temporary project, examples/harness.ts type-checked there with
// strict settings against the published declarations, compiled, and run
// against a real gateway: a sandbox with a file and a policy, commands, an
// upload, a download, and its deletion.

import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collect, ROOT, TestEnv } from "../helpers/cli.js";

const STEP_MS = 180_000;

describe("a consumer project of the npm package", () => {
  const env = new TestEnv("openshell-consumer-");
  const project = join(env.root, "consumer");

  beforeAll(async () => {
    await env.startGateway();
  }, 60_000);

  afterAll(async () => {
    await env.dispose();
  }, 60_000);

  it(
    "type-checks and runs the harness example from the packed tarball",
    async () => {
      mkdirSync(project);
      // dist/ is built before e2e tests run; packing must not rebuild it.
      execFileSync("npm", ["pack", "--ignore-scripts", "--pack-destination", env.root], {
        cwd: ROOT,
        stdio: "pipe",
      });
      const tarball = readdirSync(env.root).find((file) => file.endsWith(".tgz"))!;
      const ours = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
        devDependencies: Record<string, string>;
      };
      writeFileSync(
        join(project, "package.json"),
        JSON.stringify({
          name: "consumer",
          private: true,
          type: "module",
          dependencies: { openshell: `file:${join(env.root, tarball)}` },
          devDependencies: {
            typescript: ours.devDependencies.typescript,
            "@types/node": ours.devDependencies["@types/node"],
          },
        }),
      );
      writeFileSync(
        join(project, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            lib: ["ES2023", "ESNext.Disposable"],
            types: ["node"],
            strict: true,
            outDir: ".",
          },
          files: ["harness.ts"],
        }),
      );
      copyFileSync(join(ROOT, "examples", "harness.ts"), join(project, "harness.ts"));
      // The API needs none of the native modules' builds (they serve the gateway and the CLI's terminal).
      const run = (command: string, args: string[], extra: NodeJS.ProcessEnv = {}) =>
        collect(
          spawn(command, args, { cwd: project, env: { ...process.env, ...extra } }),
          `${command} ${args.join(" ")}`,
          {
            timeoutMs: STEP_MS,
          },
        );
      const install = await run("npm", [
        "install",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
      ]);
      expect(install.code, install.stderr).toBe(0);
      const tsc = await run("npx", ["tsc", "-p", "."]);
      expect(tsc.code, tsc.stdout + tsc.stderr).toBe(0);

      const harness = await run("node", ["harness.js"], env.env());
      expect(harness.code, harness.stderr).toBe(0);
      expect(harness.stdout).toMatch(/^sandbox \S+ is Ready$/m);
      expect(harness.stdout).toContain("task: summarize the project");
      expect(harness.stdout).toContain("print('hello from the project')");
      expect(harness.stdout).toContain("exit status 3");
      expect(harness.stdout).toContain("timed out as asked");
      expect(harness.stdout).toContain("downloaded 2 files; report: all good");
      expect(harness.stdout).toMatch(/done\n$/);
      expect(harness.stderr).toContain("[create] Created sandbox:");
      // Deleted at the end of its scope.
      const list = await env.run(["sandbox", "list", "--names"]);
      expect(list.stdout.trim()).toBe("");
    },
    4 * STEP_MS,
  );
});
