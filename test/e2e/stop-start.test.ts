// `sandbox stop` / `sandbox start` through the real CLI, gateway, supervisor
// and bubblewrap: stop ends every process and frees the runtime while the
// workspace and injected files stay; exec and download on a stopped sandbox
// fail at once naming `sandbox start`; a stopped sandbox stays stopped across
// a gateway restart; start reruns the main command, from Stopped or Error.

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { json, TestEnv, uniqueName, waitFor, waitForPhase } from "../helpers/cli.js";

interface SandboxDoc {
  id: string;
  phase: string;
  reason?: string;
  files: { path: string; sha256: string }[];
}

/** Host processes whose command line contains `marker`. */
function processesWith(marker: string): string[] {
  let out = "";
  try {
    out = execFileSync("pgrep", ["-a", "-f", marker], { encoding: "utf8" });
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
  return out.split("\n").filter((line) => line !== "" && !line.includes("pgrep"));
}

describe("sandbox stop and start", () => {
  const env = new TestEnv();
  const name = uniqueName("stopstart");
  // A number no other process of the host has on its command line.
  const marker = `9999.${process.pid}${Date.now() % 100_000}`;
  const injected = "injected content\n";
  const injectedSha = createHash("sha256").update(injected).digest("hex");

  const get = async (): Promise<SandboxDoc> =>
    json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
  const execOut = async (script: string): Promise<string> => {
    const result = await env.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", script]);
    expect(result.code, result.stderr).toBe(0);
    return result.stdout;
  };
  /** Runs of the main command so far, waiting until there are at least `count`. */
  const runs = async (count: number): Promise<number> => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const lines = (await execOut("cat /sandbox/runs 2>/dev/null || true")).split("\n").filter(Boolean);
      if (lines.length >= count || Date.now() > deadline) return lines.length;
    }
  };

  beforeAll(async () => {
    await env.startGateway();
    writeFileSync(join(env.root, "cfg"), injected);
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--detach",
        "--file",
        "./cfg:/etc/app/cfg",
        "--",
        "sh",
        "-c",
        "echo run >> /sandbox/runs; exec sleep infinity",
      ],
      { cwd: env.root, timeoutMs: 60_000 },
    );
    expect(created.code, created.stderr).toBe(0);
  });
  afterAll(() => env.dispose());

  it("stop ends every process and keeps the workspace and files; start reruns the main command", async () => {
    expect(await runs(1)).toBe(1);
    await execOut("head -c 100000 /dev/urandom > /sandbox/data; sha256sum /sandbox/data > /sandbox/data.sum");
    const before = await execOut("sha256sum /sandbox/data /etc/app/cfg");
    expect(before).toContain(injectedSha);
    // A running exec and a process it started in a session of its own: stop ends both.
    const running = env.spawn([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      `setsid sleep ${marker} & wait`,
    ]);
    const execEnded = new Promise<number | null>((resolve) => running.once("exit", resolve));
    await waitFor("the exec's background process", 30_000, () =>
      processesWith(`sleep ${marker}`).length === 1 ? true : undefined,
    );
    const id = (await get()).id;
    expect(processesWith(id).length).toBeGreaterThan(0);

    const stopped = await env.run(["sandbox", "stop", name]);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.stderr).toContain(`Stopped sandbox ${name}`);
    const doc = await get();
    expect(doc.phase).toBe("Stopped");
    expect(doc.reason).toContain(`openshell sandbox start ${name}`);
    expect(doc.files.map((f) => f.sha256)).toEqual([injectedSha]);
    // No process of the sandbox is left, its supervisor neither.
    expect(processesWith(`sleep ${marker}`)).toEqual([]);
    expect(processesWith(id)).toEqual([]);
    expect(await execEnded).toBe(244);

    const started = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(started.code, started.stderr).toBe(0);
    expect(started.stderr).toContain(`Started sandbox ${name}`);
    expect((await get()).phase).toBe("Ready");
    expect(await execOut("sha256sum /sandbox/data /etc/app/cfg")).toBe(before);
    expect(await execOut("sha256sum -c /sandbox/data.sum")).toContain("OK");
    expect(await runs(2)).toBe(2);
  });

  it("exec and download on a stopped sandbox fail at once, naming sandbox start", async () => {
    expect((await env.run(["sandbox", "stop", name])).code).toBe(0);
    const began = Date.now();
    const exec = await env.run(["sandbox", "exec", "-n", name, "--", "true"]);
    expect(Date.now() - began).toBeLessThan(5000);
    expect(exec.code).toBe(243);
    expect(exec.stderr).toContain(
      `sandbox '${name}' is stopped; start it with: openshell sandbox start ${name}`,
    );
    const download = await env.run(["sandbox", "download", name, "data", join(env.root, "out")]);
    expect(download.code).toBe(1);
    expect(download.stderr).toContain(`openshell sandbox start ${name}`);
    expect(existsSync(join(env.root, "out"))).toBe(false);
    // Stopping again is no error.
    expect((await env.run(["sandbox", "stop", name])).code).toBe(0);
  });

  it("a stopped sandbox stays stopped across a gateway restart, and starts after it", async () => {
    const id = (await get()).id;
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    await env.startGateway();
    const doc = await get();
    expect(doc.phase).toBe("Stopped");
    expect(processesWith(id)).toEqual([]);
    const started = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(started.code, started.stderr).toBe(0);
    expect(await execOut("sha256sum -c /sandbox/data.sum")).toContain("OK");
    expect(await runs(3)).toBe(3);
  });

  it("a sandbox in Error starts again; its results are refused for download only until then", async () => {
    const crash = uniqueName("crashonce");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        crash,
        "--detach",
        "--",
        "sh",
        "-c",
        // The first run leaves a result and, once Ready, takes its sandbox
        // down (its agent, the command's parent, killed); every later one
        // idles. A command that merely exits is no failure (wait.test.ts).
        "test -f /sandbox/result && exec sleep infinity; echo result > /sandbox/result; until [ -e /sandbox/go ]; do sleep 0.05; done; kill -KILL $PPID",
      ],
      { timeoutMs: 60_000 },
    );
    expect(created.code, created.stderr).toBe(0);
    // The command kills the agent as soon as it sees the file, which can be
    // before the agent has sent this exec its status: then the exec reports
    // the lost connection (244), as it must.
    const go = await env.run(["sandbox", "exec", "-n", crash, "--", "touch", "/sandbox/go"]);
    expect([0, 244], go.stderr).toContain(go.code);
    await waitForPhase(env, crash, "Error");
    const refused = await env.run(["sandbox", "download", crash, "result", join(env.root, "result")]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`start it again with: openshell sandbox start ${crash}`);
    const started = await env.run(["sandbox", "start", crash], { timeoutMs: 60_000 });
    expect(started.code, started.stderr).toBe(0);
    const download = await env.run(["sandbox", "download", crash, "result", join(env.root, "result")]);
    expect(download.code, download.stderr).toBe(0);
    expect(readFileSync(join(env.root, "result"), "utf8")).toBe("result\n");
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", crash, "-o", "json"]));
    expect(existsSync(join(env.stateHome, "openshell", "gateways", "local", "sandboxes", doc.id))).toBe(true);
    expect(doc.phase).toBe("Ready");
    // A stopped sandbox deletes as any other: nothing of it is left.
    expect((await env.run(["sandbox", "stop", crash])).code).toBe(0);
    expect((await env.run(["sandbox", "delete", crash])).code).toBe(0);
    expect(existsSync(join(env.stateHome, "openshell", "gateways", "local", "sandboxes", doc.id))).toBe(
      false,
    );
  });
});
