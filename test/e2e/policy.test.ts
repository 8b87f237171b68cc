// `--policy`: filesystem and identity enforcement for the main process and
// every exec, refusals before anything is created, the effective policy read
// back, upstream's own policy files, and the examples.

import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parsePolicyYaml } from "../../src/core/policy.js";
import { json, ROOT, TestEnv, uniqueName, waitForPhase } from "../helpers/cli.js";

/**
 * What the CLI prints once a sandbox is Ready. Not just the word: a generated
 * sandbox name can hold it ("ready-owl").
 */
const READY_REPORT = /Sandbox '[^']*' ready/;

const RESTRICTED = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib, /lib64, /bin, /etc]
  read_write: [/tmp, /data]
process:
  run_as_user: "4321"
  run_as_group: "4321"
landlock:
  compatibility: best_effort
`;

describe("a restricted filesystem and identity policy", () => {
  const env = new TestEnv();
  const name = uniqueName("pol");
  // The main process records what it sees, then stays up.
  const probe =
    'id -u; id -g; if touch /data/w 2>/dev/null; then echo data-writable; fi; if touch /etc/w 2>/dev/null; then echo etc-writable; else echo etc-readonly; fi; for p in /opt /var /root /home; do [ -e "$p" ] && echo "exists $p" || echo "absent $p"; done';

  beforeAll(async () => {
    await env.startGateway();
    writeFileSync(join(env.root, "policy.yaml"), RESTRICTED);
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--policy",
        "./policy.yaml",
        "--detach",
        "--",
        "sh",
        "-c",
        `(${probe}) > /tmp/main-probe 2>&1; touch /tmp/main-done; sleep infinity`,
      ],
      { cwd: env.root },
    );
    expect(created.code, created.stderr).toBe(0);
  });
  afterAll(() => env.dispose());

  const expected = [
    "4321",
    "4321",
    "data-writable",
    "etc-readonly",
    "absent /opt",
    "absent /var",
    "absent /root",
    "absent /home",
  ].join("\n");

  it("applies to an exec", async () => {
    const result = await env.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", probe]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim()).toBe(expected);
  });

  it("applies to the main process", async () => {
    const result = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "until [ -e /tmp/main-done ]; do sleep 0.05; done; cat /tmp/main-probe",
    ]);
    expect(result.stdout.trim()).toBe(expected);
  });

  it("--policy-only prints the effective policy, and feeding it back gives the same policy", async () => {
    const first = await env.run(["sandbox", "get", name, "--policy-only"]);
    expect(first.code, first.stderr).toBe(0);
    expect(parsePolicyYaml(first.stdout, "out")).toEqual(parsePolicyYaml(RESTRICTED, "in"));
    writeFileSync(join(env.root, "roundtrip.yaml"), first.stdout);
    const again = uniqueName("pol-rt");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        again,
        "--policy",
        "./roundtrip.yaml",
        "--detach",
        "--",
        "sleep",
        "infinity",
      ],
      {
        cwd: env.root,
      },
    );
    expect(created.code, created.stderr).toBe(0);
    const second = await env.run(["sandbox", "get", again, "--policy-only"]);
    expect(second.stdout).toBe(first.stdout);
  });

  it("OPENSHELL_SANDBOX_POLICY is used when --policy is not given", async () => {
    const other = uniqueName("pol-env");
    const created = await env.run(
      ["sandbox", "create", "--name", other, "--detach", "--", "sleep", "infinity"],
      {
        cwd: env.root,
        env: { OPENSHELL_SANDBOX_POLICY: join(env.root, "policy.yaml") },
      },
    );
    expect(created.code, created.stderr).toBe(0);
    const id = await env.run(["sandbox", "exec", "-n", other, "--", "id", "-u"]);
    expect(id.stdout).toBe("4321\n");
  });
});

describe("with no policy", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  it("the restrictive default applies and `sandbox get` shows it", async () => {
    const name = uniqueName("nopol");
    const created = await env.createIdle(name);
    expect(created.code, created.stderr).toBe(0);
    const policy = parsePolicyYaml(
      (await env.run(["sandbox", "get", name, "--policy-only"])).stdout,
      "default",
    );
    expect(policy.filesystem?.readOnly).toEqual(expect.arrayContaining(["/usr", "/etc"]));
    expect(policy.filesystem?.readWrite).toContain("/tmp");
    expect(policy.networkPolicies).toEqual({});
    const table = await env.run(["sandbox", "get", name]);
    expect(table.stdout).toContain("Policy:");
    expect(table.stdout).toContain("read_only:");
  });
});

describe("policies refused before anything is created", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  it.each([
    ["an unknown key", "version: 1\nfilesystem_policy:\n  bogus_key: true\n", /filesystem_policy\.bogus_key/],
    ["read_write: [/]", "version: 1\nfilesystem_policy:\n  read_write: [/]\n", /overly broad: \//],
    ["a relative path", "version: 1\nfilesystem_policy:\n  read_only: [usr]\n", /absolute/],
    ['run_as_user: "0"', 'version: 1\nprocess:\n  run_as_user: "0"\n', /run_as_user/],
    ["broken YAML", "version: 1\nfilesystem_policy: [unclosed\n", /policy\.yaml:\d+/],
    ["a missing version", "filesystem_policy:\n  read_only: [/usr]\n", /version/],
  ])("%s is refused, naming the problem", async (_label, text, message) => {
    writeFileSync(join(env.root, "policy.yaml"), text);
    const result = await env.run(
      ["sandbox", "create", "--policy", "./policy.yaml", "--detach", "--", "true"],
      {
        cwd: env.root,
      },
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(message);
    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(json(list)).toEqual([]);
  });

  it("a hard_requirement the host cannot meet fails the sandbox; best_effort degrades with a warning", async () => {
    const missing = "/nonexistent-openshell-path";
    writeFileSync(
      join(env.root, "hard.yaml"),
      `version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_only: [/usr, /bin, /lib, /lib64, /etc, ${missing}]\n  read_write: [/tmp]\nlandlock:\n  compatibility: hard_requirement\n`,
    );
    const hard = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        "hard",
        "--policy",
        "./hard.yaml",
        "--detach",
        "--",
        "sleep",
        "infinity",
      ],
      {
        cwd: env.root,
      },
    );
    expect(hard.code).toBe(1);
    expect(hard.stderr).toContain(missing);
    expect(hard.stderr).toContain("hard_requirement");
    writeFileSync(
      join(env.root, "soft.yaml"),
      readFileSync(join(env.root, "hard.yaml"), "utf8").replace("hard_requirement", "best_effort"),
    );
    const soft = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        "soft",
        "--policy",
        "./soft.yaml",
        "--detach",
        "--",
        "sleep",
        "infinity",
      ],
      {
        cwd: env.root,
      },
    );
    expect(soft.code, soft.stderr).toBe(0);
    expect(soft.stderr).toContain(missing);
  });
});

describe("policies that would fail later fail or warn at create", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  const create = (policy: string, extra: string[] = [], command = ["sleep", "infinity"]) => {
    writeFileSync(join(env.root, "late.yaml"), policy);
    return env.run(["sandbox", "create", "--policy", "./late.yaml", ...extra, "--", ...command], {
      cwd: env.root,
    });
  };

  it.each([
    [
      "read_write: [/etc] alone",
      "version: 1\nfilesystem_policy:\n  read_write: [/etc]\n",
      ["sleep", "infinity"],
    ],
    ["read_write: [/etc] alone, for a shell", "version: 1\nfilesystem_policy:\n  read_write: [/etc]\n", []],
    ["only the workspace", "version: 1\nfilesystem_policy:\n  include_workdir: true\n", ["true"]],
    ["/usr read-write (empty)", "version: 1\nfilesystem_policy:\n  read_write: [/usr, /bin]\n", ["true"]],
  ])(
    "%s: refused at create, naming filesystem_policy.read_only, nothing created",
    async (_label, policy, command) => {
      const result = await create(policy, ["--detach"], command);
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr).toMatch(
        /^error: policy refused: filesystem_policy\.read_only: covers neither \/usr nor \/bin, so the sandbox has no shell/m,
      );
      expect(result.stderr).not.toMatch(READY_REPORT);
      const list = await env.run(["sandbox", "list", "-o", "json"]);
      expect(json(list)).toEqual([]);
    },
  );

  it("a shell without its libraries (read_only: [/usr/bin]) fails create before Ready, naming filesystem_policy", async () => {
    const name = uniqueName("late");
    const result = await create("version: 1\nfilesystem_policy:\n  read_only: [/usr/bin]\n", [
      "--name",
      name,
    ]);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toMatch(/ShellUnavailable: .*filesystem_policy\.read_only/);
    expect(result.stderr).not.toMatch(READY_REPORT);
    const got = await env.run(["sandbox", "get", name, "-o", "json"]);
    expect(json<{ phase: string }>(got).phase).toBe("Error");
    await env.run(["sandbox", "delete", name]);
  });

  it("a main command the sandbox does not have fails create, never Ready", async () => {
    const result = await create("version: 1\n", ["--detach"], ["no-such-command-here"]);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toContain("no-such-command-here: command not found");
    expect(result.stderr).not.toMatch(READY_REPORT);
  });

  it("version: 2 is accepted, as upstream accepts it, with a warning on stderr naming the key", async () => {
    const result = await create("version: 2\n", ["--no-keep"], ["true"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/version: 2 is unknown.*set version: 1/);
  });

  it("version: 1 draws no such warning", async () => {
    const result = await create("version: 1\n", ["--no-keep"], ["true"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).not.toContain("version");
  });

  const enforced = `version: 1
network_policies:
  github:
    endpoints:
      - { host: api.github.com, port: 443, protocol: rest, enforcement: enforce, access: read-only }
`;
  it.each([
    ["plain", ["--no-keep"]],
    ["-o json", ["-o", "json", "--detach"]],
  ])(
    "an enforced L7 endpoint that grants nothing here is warned about on stderr at create (%s)",
    async (_label, extra) => {
      const result = await create(enforced, extra, ["true"]);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toMatch(
        /network_policies\.github\.endpoints\[0\] \(api\.github\.com:443\) allows nothing here: requires enforced rest rules/,
      );
    },
  );
});

describe("real policy files", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  const fixtures = readdirSync(join(ROOT, "test", "fixtures", "policies")).filter((f) => f.endsWith(".yaml"));

  it.each(fixtures)("upstream's %s is accepted unchanged and the sandbox runs", async (file) => {
    const name = uniqueName("fx");
    const result = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--policy",
      join(ROOT, "test", "fixtures", "policies", file),
      "--detach",
      "--",
      "sleep",
      "infinity",
    ]);
    expect(result.code, result.stderr).toBe(0);
    await waitForPhase(env, name, "Ready");
    const back = await env.run(["sandbox", "get", name, "--policy-only"]);
    const original = parsePolicyYaml(
      readFileSync(join(ROOT, "test", "fixtures", "policies", file), "utf8"),
      file,
    );
    expect(parsePolicyYaml(back.stdout, "back")).toEqual(original);
  });

  it("the read-only reviewer example: the workspace is readable, injected code present, nothing writable but /tmp", async () => {
    writeFileSync(join(env.root, "app.py"), "# TODO: review me\n");
    const name = uniqueName("review");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--policy",
        join(ROOT, "examples", "policies", "readonly-reviewer.yaml"),
        "--file",
        "./app.py:/sandbox/src/app.py",
        "--detach",
        "--",
        "sleep",
        "infinity",
      ],
      { cwd: env.root },
    );
    expect(created.code, created.stderr).toBe(0);
    const result = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "grep -rn TODO /sandbox/src; touch /sandbox/x 2>/dev/null && echo ws-writable; touch /tmp/x && echo tmp-writable",
    ]);
    expect(result.stdout).toBe("/sandbox/src/app.py:1:# TODO: review me\ntmp-writable\n");
  });

  it("the Python agent example: proxy settings present, workspace writable, nothing else reachable", async () => {
    const name = uniqueName("pyagent");
    const created = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--policy",
      join(ROOT, "examples", "policies", "python-agent-pypi.yaml"),
      "--detach",
      "--",
      "sleep",
      "infinity",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const result = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "echo $HTTPS_PROXY; touch /sandbox/ok && echo ws-writable",
    ]);
    expect(result.stdout).toMatch(/^http:\/\/127\.0\.0\.1:\d+\nws-writable\n$/);
  });
});
