// `gateway start --foreground` hosts the gateway in the CLI's own process, the
// same way the background gateway process does (src/gateway/host.ts): it
// records itself once it listens, refuses a second gateway on the same state
// directory, serves sandboxes, and removes its record when SIGTERM stops it.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { collect, TestEnv, waitForOutput } from "../helpers/cli.js";

describe("gateway start --foreground", () => {
  const env = new TestEnv();
  afterAll(() => env.dispose());

  it("records itself, serves a sandbox, refuses a second start, and on SIGTERM exits 0 without a record", async () => {
    const stateDir = join(env.stateHome, "openshell", "gateways", "local");
    const host = env.spawn(["gateway", "start", "--foreground", "--port", "0"]);
    const done = collect(host, "gateway start --foreground", { timeoutMs: 120_000 });
    await waitForOutput(
      host.stderr!,
      /Gateway 'local' listening at http:\/\/127\.0\.0\.1:\d+ \(foreground; Ctrl-C stops it\)/,
      "foreground gateway listening",
    );
    const record = JSON.parse(readFileSync(join(stateDir, "gateway.json"), "utf8")) as { pid: number };
    expect(record.pid).toBe(host.pid);
    expect(readFileSync(join(stateDir, "gateway.pid"), "utf8")).toBe(`${host.pid}\n`);

    const status = await env.run(["status"], { timeoutMs: 30_000 });
    expect(status.code, status.stderr).toBe(0);
    const created = await env.createIdle("fg-one", { timeoutMs: 60_000 });
    expect(created.code, created.stderr).toBe(0);
    const exec = await env.run(["sandbox", "exec", "-n", "fg-one", "--", "echo", "hosted"], {
      timeoutMs: 30_000,
    });
    expect(exec.stdout).toBe("hosted\n");

    const second = await env.run(["gateway", "start", "--foreground", "--port", "0"], { timeoutMs: 30_000 });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`Gateway 'local' is already running (pid ${host.pid}).`);

    host.kill("SIGTERM");
    const result = await done;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain("Gateway 'local' stopped");
    expect(existsSync(join(stateDir, "gateway.json"))).toBe(false);
    expect(existsSync(join(stateDir, "gateway.pid"))).toBe(false);
  });
});
