// Requests the gateway refuses before acting on them, over gRPC as any client
// could send them: workspace names that are not names (`../../etc`, a NUL),
// and 64-bit numbers past what the gateway can hold, each answered with
// INVALID_ARGUMENT naming the field (not INTERNAL, not accepted). The CLI
// refuses the same workspaces before it reaches (or starts) a gateway.

import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CreateSandboxRequest, type OpenShellClient, SandboxPhase } from "../../src/gen/openshell.js";
import { gatewayClient, TestEnv } from "../helpers/cli.js";
import { describeRun } from "../helpers/tree.js";

interface Answer {
  code: number;
  details: string;
}

function answer(run: (callback: (error: { code?: number; details?: string } | null) => void) => void) {
  return new Promise<Answer>((resolve) =>
    run((error) => resolve({ code: error?.code ?? 0, details: error?.details ?? "" })),
  );
}

const INVALID_ARGUMENT = 3;

function createRequest(workspace: string, size?: string): CreateSandboxRequest {
  return {
    spec: {
      logLevel: "",
      environment: {},
      providers: [],
      command: ["sleep", "infinity"],
      tty: false,
      files:
        size === undefined
          ? []
          : [
              {
                path: "/sandbox/a.txt",
                content: Buffer.from("x"),
                mode: 0o444,
                // Encoded as given: a value no JavaScript number holds.
                size: size as unknown as number,
                sha256: "",
              },
            ],
    },
    name: "",
    labels: {},
    annotations: {},
    workspace,
  };
}

describe("requests the gateway refuses", () => {
  const env = new TestEnv("openshell-request-checks-");
  let client: OpenShellClient;

  beforeAll(async () => {
    await env.startGateway();
    client = gatewayClient(env);
  }, 60_000);

  afterAll(async () => {
    client.close();
    await env.dispose();
  }, 120_000);

  async function allSandboxes(): Promise<number> {
    const listed = await new Promise<number>((resolve, reject) =>
      client.listSandboxes(
        { limit: 0, offset: 0, labelSelector: "", workspace: "", allWorkspaces: true },
        (error, response) => (error ? reject(error) : resolve(response.sandboxes.length)),
      ),
    );
    return listed;
  }

  it.each([
    ["../../etc", "workspace must contain only lowercase alphanumeric characters or hyphens"],
    ["a\u0000b", "workspace must contain only lowercase alphanumeric characters or hyphens"],
    ["a-very-long-workspace-name", "workspace exceeds maximum length (26 > 19)"],
  ])(
    "refuses workspace %j on create, get, list, delete and logs with INVALID_ARGUMENT",
    async (workspace, message) => {
      const answers = await Promise.all([
        answer((cb) => client.createSandbox(createRequest(workspace), cb)),
        answer((cb) => client.getSandbox({ name: "x", workspace }, cb)),
        answer((cb) =>
          client.listSandboxes(
            { limit: 0, offset: 0, labelSelector: "", workspace, allWorkspaces: false },
            cb,
          ),
        ),
        answer((cb) => client.deleteSandbox({ name: "x", workspace }, cb)),
        answer((cb) =>
          client.getSandboxLogs(
            { sandboxId: "x", lines: 0, sinceMs: 0, sources: [], minLevel: "", workspace },
            cb,
          ),
        ),
      ]);
      for (const a of answers) expect(a).toEqual({ code: INVALID_ARGUMENT, details: message });
      expect(await allSandboxes()).toBe(0);
    },
  );

  it("answers a file size of 2^64 - 1 with INVALID_ARGUMENT naming spec.files[].size, creating nothing", async () => {
    const result = await answer((cb) => client.createSandbox(createRequest("", "18446744073709551615"), cb));
    expect(result.code).toBe(INVALID_ARGUMENT);
    expect(result.details).toBe(
      "spec.files[].size is out of range: at most 9007199254740991 (2^53 - 1) is supported",
    );
    expect(await allSandboxes()).toBe(0);
  });

  it("answers since_ms of 2^63 - 1 with INVALID_ARGUMENT naming since_ms", async () => {
    const result = await answer((cb) =>
      client.getSandboxLogs(
        {
          sandboxId: "x",
          lines: 0,
          sinceMs: "9223372036854775807" as unknown as number,
          sources: [],
          minLevel: "",
          workspace: "",
        },
        cb,
      ),
    );
    expect(result.code).toBe(INVALID_ARGUMENT);
    expect(result.details).toMatch(/^since_ms is out of range/);
  });

  it("still creates in a valid workspace (the checks refuse only what is wrong)", async () => {
    const result = await new Promise<SandboxPhase | undefined>((resolve, reject) =>
      client.createSandbox(createRequest("team-a"), (error, response) =>
        error ? reject(error) : resolve(response.sandbox?.status?.phase),
      ),
    );
    expect(result).toBe(SandboxPhase.SANDBOX_PHASE_PROVISIONING);
    const list = await env.run(["--workspace", "team-a", "sandbox", "list", "-o", "json"]);
    expect(list.code, describeRun(list)).toBe(0);
    expect((JSON.parse(list.stdout) as unknown[]).length).toBe(1);
  });
});

describe("the CLI refuses a bad workspace before any RPC", () => {
  const env = new TestEnv("openshell-workspace-cli-");
  afterAll(() => env.dispose(), 60_000);

  it("exits 1 naming --workspace and OPENSHELL_WORKSPACE, and starts no gateway", async () => {
    const flag = await env.run(["--workspace", "../../etc", "sandbox", "list"]);
    expect(flag.code, describeRun(flag)).toBe(1);
    expect(flag.stderr).toContain(
      'error: --workspace "../../etc": workspace must contain only lowercase alphanumeric characters or hyphens',
    );
    const variable = await env.run(["sandbox", "get", "x"], { env: { OPENSHELL_WORKSPACE: "a\tb" } });
    expect(variable.code, describeRun(variable)).toBe(1);
    expect(variable.stderr).toContain('error: OPENSHELL_WORKSPACE="a\\tb": workspace must contain only');
    expect(existsSync(join(env.stateHome, "openshell"))).toBe(false);
  });
});
