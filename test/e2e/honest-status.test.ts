// Honest status: when what runs a sandbox dies (its bubblewrap, its agent,
// its supervisor), the sandbox leaves Ready within 2 s with a reason naming
// what died, and an exec that was running in it ends within 2 s with a
// connection-lost status instead of hanging.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { json, TestEnv, uniqueName, waitForOutput, waitForPhase } from "../helpers/cli.js";

/** Direct children of `pid` whose command line matches `pattern`. */
function childrenMatching(pid: number, pattern: string): number[] {
  try {
    return execFileSync("pgrep", ["-P", String(pid), "-f", pattern], { encoding: "utf8" })
      .split("\n")
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

interface Victims {
  supervisor: number;
  bwrap: number;
  agent: number;
}

describe("a sandbox whose runtime dies", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  /** The supervisor of sandbox `name`, its outer bubblewrap (the pod's hostname is the name), and the agent. */
  function victims(name: string): Victims {
    const gateway = Number(
      readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.pid"), "utf8").trim(),
    );
    for (const supervisor of childrenMatching(gateway, "supervisor.mjs")) {
      const bwrap = childrenMatching(supervisor, "^bwrap").find((pid) =>
        readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(`\0--hostname\0${name}\0`),
      );
      if (!bwrap) continue;
      // bubblewrap forks once inside its namespaces; the agent is below that.
      const inner = childrenMatching(bwrap, "^bwrap")[0] ?? bwrap;
      const [agent] = childrenMatching(inner, "agent.mjs");
      if (!agent) throw new Error(`no agent under bubblewrap ${bwrap}`);
      return { supervisor, bwrap, agent };
    }
    throw new Error(`no supervisor runs a pod named ${name}`);
  }

  for (const what of ["agent", "bwrap", "supervisor"] as const) {
    it(`kill -9 of its ${what}: Ready → Error within 2 s with a reason; a running exec ends with 243/244 within 2 s`, async () => {
      const name = uniqueName(`dies-${what}`);
      expect((await env.createIdle(name)).code).toBe(0);
      const exec = env.spawn([
        "sandbox",
        "exec",
        "-n",
        name,
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 60",
      ]);
      const ended = new Promise<number | null>((resolve) => exec.once("exit", (code) => resolve(code)));
      let stderr = "";
      exec.stderr!.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      await waitForOutput(exec.stdout!, /started/, "the exec runs", 30_000);

      process.kill(victims(name)[what], "SIGKILL");
      const killedAt = Date.now();
      const code = await Promise.race([
        ended,
        new Promise<"hung">((resolve) => setTimeout(() => resolve("hung"), 2000)),
      ]);
      if (code === "hung") exec.kill("SIGKILL");
      expect(code, `exec after the ${what} died: ${stderr}`).toBeOneOf([243, 244]);
      expect(stderr).toMatch(/\S/);

      await waitForPhase(env, name, "Error", Math.max(0, 2000 - (Date.now() - killedAt)) + 100);
      const { reason } = json<{ reason: string }>(await env.run(["sandbox", "get", name, "-o", "json"]));
      expect(reason).toMatch(
        {
          agent: /^SandboxExited: sandbox pod exited: its agent was killed by SIGKILL$/,
          bwrap: /^SandboxExited: sandbox pod exited: its bubblewrap was killed by SIGKILL$/,
          supervisor: /^SupervisorExited: sandbox supervisor exited on signal SIGKILL$/,
        }[what],
      );
      expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
    });
  }
});
