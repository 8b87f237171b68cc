// A gateway killed (SIGKILL) while a create with 10 MB of injected files is
// in flight leaves nothing the caller did not see created: after a restart,
// either the create had returned and its sandbox runs with its files, or it
// had not and there is no sandbox, no sandbox directory and no half-written
// content. The kill lands when the sandbox's directory appears, while the
// request's files are still being received or stored.

import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, watch, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestEnv, waitForPhase } from "../helpers/cli.js";
import { describeRun } from "../helpers/tree.js";

function everyPath(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true }).map(String);
}

describe("a create interrupted by the gateway's death", () => {
  const env = new TestEnv("openshell-interrupted-create-");
  afterAll(() => env.dispose(), 120_000);

  it("leaves nothing behind after a restart when the gateway is killed mid-create with 10 files of 1,000,000 bytes", async () => {
    await env.startGateway();
    const stateDir = join(env.stateHome, "openshell", "gateways", "local");
    const sandboxesDir = join(stateDir, "sandboxes");
    mkdirSync(sandboxesDir, { recursive: true });
    const files: string[] = [];
    for (let i = 0; i < 10; i++) {
      writeFileSync(join(env.root, `f${i}.bin`), randomBytes(1_000_000));
      files.push("--file", `./f${i}.bin:/etc/app/f${i}.bin`);
    }
    const gatewayPid = Number(readFileSync(join(stateDir, "gateway.pid"), "utf8").trim());

    const dirAppeared = new Promise<void>((resolve, reject) => {
      const watcher = watch(sandboxesDir, () => {
        clearTimeout(timer);
        watcher.close();
        resolve();
      });
      const timer = setTimeout(() => {
        watcher.close();
        reject(new Error("the sandbox's directory did not appear within 30000 ms"));
      }, 30_000);
    });
    const create = env.run(
      ["sandbox", "create", "--name", "cut", "--detach", ...files, "--", "sleep", "infinity"],
      {
        cwd: env.root,
        timeoutMs: 90_000,
      },
    );
    await dirAppeared;
    process.kill(gatewayPid, "SIGKILL");
    const created = await create;

    await env.startGateway();
    expect(everyPath(sandboxesDir).filter((p) => p.endsWith(".tmp"))).toEqual([]);
    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(list.code, describeRun(list)).toBe(0);
    const names = (JSON.parse(list.stdout) as { name: string }[]).map((s) => s.name);
    if (created.code === 0) {
      // The call returned before the kill: the sandbox is the caller's, files and all.
      expect(names).toEqual(["cut"]);
      await waitForPhase(env, "cut", "Ready", 60_000);
      const check = await env.run([
        "sandbox",
        "exec",
        "-n",
        "cut",
        "--",
        "sh",
        "-c",
        "cat /etc/app/f*.bin | wc -c",
      ]);
      expect(check.stdout.trim()).toBe("10000000");
    } else {
      expect(created.stderr).toContain("error:");
      expect(names).toEqual([]);
      expect(readdirSync(sandboxesDir)).toEqual([]);
    }
  }, 240_000);
});
