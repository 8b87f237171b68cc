// Requests the gateway refuses before acting on them, over gRPC as any client
// could send them: workspace names that are not names (`../../etc`, a NUL),
// and 64-bit numbers past what the gateway can hold, each answered with
// INVALID_ARGUMENT naming the field (not INTERNAL, not accepted). The CLI
// refuses the same workspaces before it reaches (or starts) a gateway.

import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parsePolicyYaml } from "../../src/core/policy/parse.js";
import {
  type CreateSandboxRequest,
  type OpenShellClient,
  SandboxPhase,
  SandboxTemplate,
} from "../../src/gen/openshell.js";
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
type Spec = NonNullable<CreateSandboxRequest["spec"]>;

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
    "refuses workspace %j on create, get, list, delete, stop, start, renew and logs with INVALID_ARGUMENT",
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
        answer((cb) => client.stopSandbox({ name: "x", workspace }, cb)),
        answer((cb) => client.startSandbox({ name: "x", workspace }, cb)),
        answer((cb) => client.renewSandbox({ name: "x", workspace, ttlSeconds: 60 }, cb)),
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

  const template = (fields: Partial<SandboxTemplate>) => (spec: Spec) => {
    spec.template = { ...SandboxTemplate.fromPartial({}), ...fields };
  };
  const gpu = (count?: number) => (spec: Spec) => {
    spec.resourceRequirements = { gpu: count === undefined ? {} : { count } };
  };
  it.each([
    ["resource_requirements.gpu", gpu(), 12],
    ["resource_requirements.gpu", gpu(2), 12],
    ["resource_requirements.gpu", gpu(0), INVALID_ARGUMENT],
    ["template.runtime_class_name", template({ runtimeClassName: "kata" }), 12],
    ["template.agent_socket", template({ agentSocket: "/run/agent.sock" }), 12],
    [
      "template.driver_config",
      template({ driverConfig: { kubernetes: { pod: { priority_class_name: "batch-low" } } } }),
      12,
    ],
    ["template.image", template({ image: "x".repeat(1025) }), INVALID_ARGUMENT],
  ] as const)(
    "refuses spec.%s it cannot honour, naming it, creating nothing (%#)",
    async (field, change, code) => {
      const request = createRequest("");
      change(request.spec!);
      const result = await answer((cb) => client.createSandbox(request, cb));
      expect(result.code, result.details).toBe(code);
      expect(result.details.startsWith(`spec.${field}`), result.details).toBe(true);
      expect(await allSandboxes()).toBe(0);
    },
  );

  it("refuses a lifetime over a year, and a renew without one, with INVALID_ARGUMENT naming the field", async () => {
    const long = createRequest("");
    long.spec!.ttlSeconds = 2 ** 32 - 1;
    expect(await answer((cb) => client.createSandbox(long, cb))).toEqual({
      code: INVALID_ARGUMENT,
      details: "spec.ttl_seconds 4294967295 exceeds 31622400 (366 days)",
    });
    expect(await allSandboxes()).toBe(0);
    expect(
      await answer((cb) => client.renewSandbox({ name: "x", workspace: "", ttlSeconds: 0 }, cb)),
    ).toEqual({
      code: INVALID_ARGUMENT,
      details: "ttl_seconds is required",
    });
    for (const call of [
      (cb: (error: { code?: number } | null) => void) =>
        client.stopSandbox({ name: "nope", workspace: "" }, cb),
      (cb: (error: { code?: number } | null) => void) =>
        client.startSandbox({ name: "nope", workspace: "" }, cb),
      (cb: (error: { code?: number } | null) => void) =>
        client.renewSandbox({ name: "nope", workspace: "", ttlSeconds: 60 }, cb),
    ]) {
      expect((await answer(call)).code).toBe(5); // NOT_FOUND
    }
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

  it("refuses a file at /tmp and a policy reading / with INVALID_ARGUMENT naming each, creating nothing", async () => {
    const atTmp = createRequest("", "1");
    atTmp.spec!.files[0]!.path = "/tmp";
    atTmp.spec!.files[0]!.size = 1;
    const file = await answer((cb) => client.createSandbox(atTmp, cb));
    expect(file).toEqual({
      code: INVALID_ARGUMENT,
      details:
        "spec.files[0].path is the sandbox's private /tmp directory; name a file inside it (e.g. /tmp/app.conf)",
    });
    const rootPolicy = createRequest("");
    rootPolicy.spec!.policy = parsePolicyYaml("version: 1\nfilesystem_policy:\n  read_only: [/]\n", "p.yaml");
    const policy = await answer((cb) => client.createSandbox(rootPolicy, cb));
    expect(policy.code).toBe(INVALID_ARGUMENT);
    expect(policy.details).toContain(
      `filesystem_policy.read_only[0]: read_only "/" would expose the host's whole filesystem`,
    );
    expect(await allSandboxes()).toBe(0);
  });

  it("the CLI refuses --file to /sandbox and /etc/passwd, and a policy reading /, before create, leaving no sandbox", async () => {
    writeFileSync(join(env.root, "a.txt"), "a\n");
    writeFileSync(join(env.root, "root.yaml"), "version: 1\nfilesystem_policy:\n  read_only: [/]\n");
    const cases: [string[], string][] = [
      [
        ["--file", "./a.txt:/sandbox"],
        "error: --file ./a.txt:/sandbox: REMOTE is the sandbox's workspace directory",
      ],
      [
        ["--file", "./a.txt:/etc/passwd"],
        "error: --file ./a.txt:/etc/passwd: REMOTE is generated by the supervisor",
      ],
      [
        ["--policy", "./root.yaml"],
        `error: ./root.yaml: policy contains unsafe content: filesystem_policy.read_only[0]: read_only "/"`,
      ],
    ];
    for (const [flags, message] of cases) {
      const result = await env.run(["sandbox", "create", "--detach", ...flags, "--", "true"], {
        cwd: env.root,
      });
      expect(result.code, describeRun(result)).toBe(1);
      expect(result.stderr).toContain(message);
    }
    expect(await allSandboxes()).toBe(0);
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
