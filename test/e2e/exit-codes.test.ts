// Every exit code the README's "Exit codes" section documents, each driven
// by a command line that must produce it, against a real gateway and sandbox:
// in-process (runCli) where the code comes from one command line, spawned
// where a signal or a second command has to land while it runs. The README's
// table is read, so a row added there without a case here fails.

import type { ChildProcess } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Http2Server } from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { collect, documentedExitCodes, TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import { runCli } from "../helpers/run-cli.js";

interface Outcome {
  exitCode: number | null;
  stderr: string;
}

describe("every documented exit code", () => {
  const env = new TestEnv("openshell-exit-codes-");
  const name = uniqueName("codes");
  const children: ChildProcess[] = [];
  let gatewayPid = 0;
  let notGrpc: Http2Server;
  let notGrpcEndpoint = "";

  beforeAll(async () => {
    vi.stubEnv("XDG_CONFIG_HOME", env.configHome);
    vi.stubEnv("XDG_STATE_HOME", env.stateHome);
    await env.startGateway();
    gatewayPid = Number(
      readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.pid"), "utf8").trim(),
    );
    const created = await env.createIdle(name, { timeoutMs: 60_000 });
    expect(created.code, created.stderr).toBe(0);
    // Speaks HTTP/2 but not gRPC: every call gets HTTP 400, which gRPC reads as INTERNAL.
    notGrpc = createServer((_request, response) => {
      response.writeHead(400);
      response.end();
    });
    await new Promise<void>((resolve) => notGrpc.listen(0, "127.0.0.1", resolve));
    notGrpcEndpoint = `http://127.0.0.1:${(notGrpc.address() as AddressInfo).port}`;
  }, 120_000);

  afterAll(async () => {
    try {
      process.kill(gatewayPid, "SIGCONT");
    } catch {
      // Gone already.
    }
    for (const child of children) child.kill("SIGKILL");
    notGrpc?.close();
    vi.unstubAllEnvs();
    await env.run(["sandbox", "delete", "--all"], { timeoutMs: 60_000 }).catch(() => undefined);
    await env.dispose();
  }, 120_000);

  const cli = (args: string[], extra: Record<string, string> = {}): Promise<Outcome> =>
    runCli(args, { env: { HOME: env.home, ...extra } });

  /** `sandbox create` held at the wait for Ready (the gateway stopped), then sent `signal`. */
  const interruptedCreate = async (signal: NodeJS.Signals, how = "--detach"): Promise<Outcome> => {
    const child = env.spawn([
      "sandbox",
      "create",
      "--name",
      uniqueName("int"),
      how,
      "--",
      "sleep",
      "infinity",
    ]);
    children.push(child);
    const done = collect(child, `create, then ${signal}`, { timeoutMs: 30_000 });
    await waitForOutput(child.stderr!, "Created sandbox:", "the create returned");
    process.kill(gatewayPid, "SIGSTOP");
    try {
      child.kill(signal);
      const result = await done;
      expect(result.stderr).toMatch(/interrupted while waiting for the sandbox to be ready/);
      return { exitCode: result.code, stderr: result.stderr };
    } finally {
      process.kill(gatewayPid, "SIGCONT");
    }
  };

  /** [code, what produces it, how] */
  const cases: [number, string, () => Promise<Outcome>][] = [
    [0, "sandbox get NAME", () => cli(["sandbox", "get", name])],
    [
      1,
      "sandbox get of a missing sandbox, named in the error",
      async () => {
        const outcome = await cli(["sandbox", "get", "nope"]);
        expect(outcome.stderr).toContain("error: sandbox 'nope' not found in workspace 'default'");
        return outcome;
      },
    ],
    [
      1,
      "sandbox exec refused by the gateway (a stranger's token)",
      async () => {
        const endpoint = JSON.parse(
          readFileSync(join(env.configHome, "openshell", "gateways", "local", "metadata.json"), "utf8"),
        ).gateway_endpoint as string;
        const tokenFile = join(env.root, "stranger-token");
        writeFileSync(tokenFile, "not-the-token\n");
        const added = await cli([
          "gateway",
          "add",
          endpoint,
          "--name",
          "stranger",
          "--token-file",
          tokenFile,
        ]);
        expect(added.exitCode, added.stderr).toBe(0);
        const outcome = await cli(["-g", "stranger", "sandbox", "exec", "-n", name, "--", "true"]);
        expect(outcome.stderr).toMatch(/not authorized by gateway 'stranger'/);
        await cli(["gateway", "select", "local"]);
        return outcome;
      },
    ],
    [2, "sandbox list --limit 0", () => cli(["sandbox", "list", "--limit", "0"])],
    [130, "Ctrl-C while create waits for Ready", () => interruptedCreate("SIGINT")],
    [
      130,
      "Ctrl-C while an attaching create waits for Ready (not 244)",
      () => interruptedCreate("SIGINT", "--attach"),
    ],
    [143, "SIGTERM while create waits for Ready", () => interruptedCreate("SIGTERM")],
    [240, "sandbox exec with no command", () => cli(["sandbox", "exec", "-n", name])],
    [240, "sandbox exec --timeout abc", () => cli(["sandbox", "exec", "--timeout", "abc", "--", "true"])],
    [240, "sandbox connect with two names", () => cli(["sandbox", "connect", "a", "b"])],
    [240, "attached create with an unknown flag", () => cli(["sandbox", "create", "--attach", "--bogus"])],
    [
      241,
      "sandbox exec with the gateway unreachable",
      () =>
        cli(["sandbox", "exec", "-n", name, "--", "true"], {
          OPENSHELL_GATEWAY_ENDPOINT: "http://127.0.0.1:1",
        }),
    ],
    [
      243,
      "sandbox exec in a missing sandbox, named in the error",
      async () => {
        const outcome = await cli(["sandbox", "exec", "-n", "nope", "--", "true"]);
        expect(outcome.stderr).toContain("error: sandbox 'nope' not found in workspace 'default'");
        return outcome;
      },
    ],
    [
      244,
      "sandbox exec whose sandbox is deleted while the command runs",
      async () => {
        const victim = uniqueName("cut");
        const created = await env.createIdle(victim, { timeoutMs: 60_000 });
        expect(created.code, created.stderr).toBe(0);
        const child = env.spawn([
          "sandbox",
          "exec",
          "-n",
          victim,
          "--",
          "sh",
          "-c",
          "echo started; sleep 60",
        ]);
        children.push(child);
        const done = collect(child, "exec cut short", { timeoutMs: 30_000 });
        await waitForOutput(child.stdout!, "started", "the command started");
        const deleted = await cli(["sandbox", "delete", victim]);
        expect(deleted.exitCode, deleted.stderr).toBe(0);
        const result = await done;
        return { exitCode: result.code, stderr: result.stderr };
      },
    ],
    [
      245,
      "sandbox exec against an HTTP/2 server that is not a gateway",
      () =>
        cli(["sandbox", "exec", "-n", name, "--", "true"], { OPENSHELL_GATEWAY_ENDPOINT: notGrpcEndpoint }),
    ],
    // The remote command's own statuses, passed through.
    [
      7,
      "sandbox exec -- sh -c 'exit 7'",
      () => cli(["sandbox", "exec", "-n", name, "--", "sh", "-c", "exit 7"]),
    ],
    [
      143,
      "sandbox exec of a command that dies of SIGTERM",
      () => cli(["sandbox", "exec", "-n", name, "--", "sh", "-c", "kill -TERM $$"]),
    ],
    [
      124,
      "sandbox exec --timeout 1 -- sleep 30",
      () => cli(["sandbox", "exec", "-n", name, "--timeout", "1", "--", "sleep", "30"]),
    ],
  ];

  it("covers every code in the README's tables", () => {
    const documented = documentedExitCodes();
    expect(documented).toEqual(expect.arrayContaining([0, 1, 2, 130, 240, 241, 243, 244, 245]));
    const driven = new Set(cases.map(([code]) => code));
    expect(documented.filter((code) => !driven.has(code))).toEqual([]);
  });

  it.each(cases)(
    "exits %i: %s",
    async (code, _what, run) => {
      const outcome = await run();
      expect(outcome.exitCode, outcome.stderr).toBe(code);
      if (code === 1 || code === 2 || code >= 240) expect(outcome.stderr).toMatch(/error: /);
    },
    90_000,
  );
});
