import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  DEFAULT_POLICY,
  defaultPolicy,
  formatPolicyViolations,
  parsePolicyYaml,
  policySizeViolation,
  policyToYaml,
  policyVersionWarning,
  shelllessFilesystemViolation,
  validatePolicy,
} from "../../src/core/policy.js";
import { SandboxPolicy } from "../../src/gen/sandbox.js";
import { loadPolicyFile } from "../../src/host/policy-file.js";

const here = new URL(".", import.meta.url).pathname;
const fixtureDir = join(here, "../fixtures/policies");
const exampleDir = join(here, "../../examples/policies");
const fixtures = readdirSync(fixtureDir).filter((name) => name.endsWith(".yaml"));
const examples = readdirSync(exampleDir).filter((name) => name.endsWith(".yaml"));

const scratch = mkdtempSync(join(tmpdir(), "openshell-policy-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function parse(text: string) {
  return parsePolicyYaml(text, "policy.yaml");
}

function parseError(text: string): string {
  try {
    parse(text);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error(`expected the policy to be refused:\n${text}`);
}

/** Violations of a policy given as YAML (which must itself parse). */
function violationsOf(text: string): string[] {
  return validatePolicy(parse(text));
}

function roundTrip(policy: SandboxPolicy): SandboxPolicy {
  return parsePolicyYaml(policyToYaml(policy), "round-trip.yaml");
}

/** What a gateway sees after the policy crossed the wire. */
function overTheWire(policy: SandboxPolicy): SandboxPolicy {
  return SandboxPolicy.decode(SandboxPolicy.encode(policy).finish());
}

describe("upstream policy files", () => {
  it("are all present", () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(6);
  });

  it.each(fixtures)("%s parses, validates clean and round-trips", (name) => {
    const policy = parsePolicyYaml(readFileSync(join(fixtureDir, name), "utf8"), name);
    expect(policy.version).toBe(1);
    expect(validatePolicy(policy)).toEqual([]);
    expect(policyVersionWarning(policy)).toBeUndefined();
    expect(shelllessFilesystemViolation(policy.filesystem)).toBeUndefined();
    expect(roundTrip(policy)).toStrictEqual(policy);
    expect(roundTrip(overTheWire(policy))).toStrictEqual(policy);
  });

  it("maps the OPA test fixture as upstream does", () => {
    const policy = parsePolicyYaml(
      readFileSync(join(fixtureDir, "crates_openshell-supervisor-network_testdata.yaml"), "utf8"),
      "testdata.yaml",
    );
    expect(policy.filesystem?.readWrite).toEqual(["/sandbox", "/tmp", "/dev/null"]);
    expect(policy.process).toEqual({ runAsUser: "sandbox", runAsGroup: "sandbox" });
    const github = policy.networkPolicies.github_ssh_over_https!;
    expect(github.name).toBe("github-ssh-over-https");
    expect(github.endpoints[0]).toMatchObject({
      host: "github.com",
      port: 443,
      ports: [443],
      protocol: "rest",
    });
    expect(github.endpoints[0]!.rules[1]!.allow).toMatchObject({
      method: "POST",
      path: "/**/git-upload-pack",
    });
    expect(github.binaries).toEqual([{ path: "/usr/bin/git", harness: false }]);
  });

  it("writes the schema's key names back", () => {
    const yaml = policyToYaml(
      parsePolicyYaml(readFileSync(join(fixtureDir, "examples_local-inference.yaml"), "utf8"), "x"),
    );
    expect(yaml).toContain("filesystem_policy:");
    expect(yaml).not.toMatch(/^filesystem:/m);
    expect(yaml).toContain("network_policies:");
    expect(yaml).not.toContain("networkPolicies");
  });
});

describe("example policies", () => {
  it.each(examples)("%s parses, validates clean and round-trips", (name) => {
    const policy = parsePolicyYaml(readFileSync(join(exampleDir, name), "utf8"), name);
    expect(validatePolicy(policy)).toEqual([]);
    expect(roundTrip(policy)).toStrictEqual(policy);
  });

  it("python-agent-pypi reaches only the package index on 443", async () => {
    const policy = await loadPolicyFile(join(exampleDir, "python-agent-pypi.yaml"));
    expect(policy.filesystem?.includeWorkdir).toBe(true);
    expect(policy.filesystem?.readWrite).toContain("/tmp");
    const endpoints = Object.values(policy.networkPolicies).flatMap((rule) => rule.endpoints);
    expect(endpoints.map((endpoint) => [endpoint.host, endpoint.ports])).toEqual([
      ["pypi.org", [443]],
      ["files.pythonhosted.org", [443]],
    ]);
  });

  it("readonly-reviewer has no network and a read-only workspace", async () => {
    const policy = await loadPolicyFile(join(exampleDir, "readonly-reviewer.yaml"));
    expect(policy.networkPolicies).toEqual({});
    expect(policy.filesystem?.includeWorkdir).toBe(false);
    expect(policy.filesystem?.readOnly).toContain("/sandbox");
    expect(policy.filesystem?.readWrite).not.toContain("/sandbox");
  });
});

describe("parsePolicyYaml: structure", () => {
  it("requires version, naming it", () => {
    expect(parseError("filesystem_policy:\n  include_workdir: true\n")).toBe(
      "policy.yaml:1:1: missing required key 'version'",
    );
    expect(parseError("")).toContain("missing required key 'version'");
    expect(parseError("# only a comment\n")).toContain("missing required key 'version'");
  });

  it("accepts a minimal policy", () => {
    const policy = parse("version: 1\n");
    expect(policy).toStrictEqual({
      version: 1,
      filesystem: undefined,
      landlock: undefined,
      process: undefined,
      networkPolicies: {},
      networkMiddlewares: {},
    });
  });

  it("refuses unknown keys at every depth, naming the path and line", () => {
    expect(parseError("version: 1\nbogus_field: true\n")).toMatch(
      /^policy\.yaml:2:1: bogus_field: unknown key/,
    );
    expect(parseError("version: 1\nfilesystem_policy:\n  bogus_key: 1\n")).toMatch(
      /^policy\.yaml:3:3: filesystem_policy\.bogus_key: unknown key \(expected one of: include_workdir, read_only, read_write\)/,
    );
    const endpoint = [
      "version: 1",
      "network_policies:",
      "  pypi:",
      "    endpoints:",
      "      - host: pypi.org",
      "        port: 443",
      "        bogus: true",
      "",
    ].join("\n");
    expect(parseError(endpoint)).toMatch(
      /^policy\.yaml:7:9: network_policies\.pypi\.endpoints\[0\]\.bogus: unknown key/,
    );
    const allow = [
      "version: 1",
      "network_policies:",
      "  api:",
      "    endpoints:",
      "      - host: api.example.com",
      "        port: 443",
      "        protocol: rest",
      "        rules:",
      "          - allow: { method: GET, verb: GET }",
      "",
    ].join("\n");
    expect(parseError(allow)).toContain("network_policies.api.endpoints[0].rules[0].allow.verb: unknown key");
    expect(
      parseError(
        "version: 1\nnetwork_middlewares:\n  r:\n    middleware: m\n    endpoints: { include: [a.b], only: [] }\n",
      ),
    ).toContain("network_middlewares.r.endpoints.only: unknown key");
    // Middleware attachments on policies are not part of the schema.
    expect(parseError("version: 1\nnetwork_policies:\n  api:\n    middleware: [redact]\n")).toContain(
      "network_policies.api.middleware: unknown key",
    );
  });

  it("refuses wrong types, naming the path", () => {
    expect(parseError("version: 1\nfilesystem_policy:\n  include_workdir: maybe\n")).toContain(
      'filesystem_policy.include_workdir: expected true or false, got the string "maybe"',
    );
    expect(parseError("version: 1\nfilesystem_policy:\n  read_only: /usr\n")).toContain(
      "filesystem_policy.read_only: expected a list",
    );
    expect(parseError("version: one\n")).toContain("version: expected an integer");
    expect(parseError("version: 1.0\n")).toContain(
      "version: expected an integer from 0 to 4294967295, got the number 1.0",
    );
    expect(parseError("version: 1\nnetwork_policies: [a]\n")).toContain(
      "network_policies: expected a mapping",
    );
    expect(parseError("- version: 1\n")).toContain("a policy must be a mapping");
    expect(
      parseError("version: 1\nnetwork_policies:\n  p:\n    binaries:\n      - { harness: true }\n"),
    ).toContain("network_policies.p.binaries[0]: missing required key 'path'");
  });

  it("shows the line and the parser's reason for broken YAML", () => {
    const message = parseError("version: 1\nfilesystem_policy:\n  read_only: [/usr, /lib\nlandlock: {}\n");
    expect(message).toMatch(/^policy\.yaml:\d+:\d+: invalid YAML: /);
    expect(parseError("version: 1\nversion: 2\n")).toBe(
      "policy.yaml:2:1: invalid YAML: Map keys must be unique",
    );
    expect(parseError("version: 1\nprocess:\n\trun_as_user: sandbox\n")).toMatch(
      /^policy\.yaml:3:\d+: invalid YAML/,
    );
  });

  it("refuses ports above 65535 at parse time", () => {
    const message = parseError(
      "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - { host: example.com, port: 70000 }\n",
    );
    expect(message).toContain(
      "network_policies.p.endpoints[0].port: 70000 is out of range (expected 0 to 65535)",
    );
    expect(
      parseError(
        "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - { host: a.example, ports: [443, 65536] }\n",
      ),
    ).toContain("network_policies.p.endpoints[0].ports[1]: 65536 is out of range");
  });

  it("normalises port and ports as upstream does", () => {
    const policy = parse(
      [
        "version: 1",
        "network_policies:",
        "  p:",
        "    endpoints:",
        "      - { host: a.example.com, port: 443 }",
        "      - { host: b.example.com, port: 443, ports: [8080, 8443] }",
        "      - { host: c.example.com, allowed_ips: [10.0.0.0/8] }",
        "",
      ].join("\n"),
    );
    const [a, b, c] = policy.networkPolicies.p!.endpoints;
    expect([a?.port, a?.ports]).toEqual([443, [443]]);
    expect([b?.port, b?.ports]).toEqual([8080, [8080, 8443]]);
    expect([c?.port, c?.ports]).toEqual([0, []]);
    expect(roundTrip(policy)).toStrictEqual(policy);
  });

  it("defaults a network policy's name to its key", () => {
    const policy = parse(
      "version: 1\nnetwork_policies:\n  my_api:\n    endpoints: [{ host: a.example.com, port: 1 }]\n",
    );
    expect(policy.networkPolicies.my_api?.name).toBe("my_api");
  });

  it("reads numbers as strings where the schema has strings", () => {
    const policy = parse("version: 1\nprocess:\n  run_as_user: 4321\n");
    expect(policy.process).toEqual({ runAsUser: "4321", runAsGroup: "" });
    expect(validatePolicy(policy)).toEqual([]);
    // The omitted group stays omitted through a round trip.
    expect(policyToYaml(policy)).not.toContain("run_as_group");
    expect(roundTrip(policy)).toStrictEqual(policy);
  });

  it("reads query matchers, MCP tools, nested params and body limits", () => {
    const policy = parse(
      [
        "version: 1",
        "network_policies:",
        "  tools:",
        "    endpoints:",
        "      - host: api.example.com",
        "        port: 8080",
        "        protocol: rest",
        "        rules:",
        "          - allow:",
        "              method: GET",
        "              path: /download",
        "              query:",
        '                slug: "my-*"',
        '                tag: { any: ["foo-*", "bar-*"] }',
        "        json_rpc: { max_body_bytes: 1024 }",
        "      - host: mcp.example.com",
        "        port: 443",
        "        protocol: mcp",
        "        rules:",
        "          - allow:",
        "              tool: read_*",
        "              params:",
        "                arguments:",
        '                  path: "/docs/*"',
        "                  mode: { any: [r, ro] }",
        "        deny_rules:",
        "          - { tool: delete_everything }",
        "        mcp: { max_body_bytes: 65536, strict_tool_names: false }",
        "",
      ].join("\n"),
    );
    const [rest, mcp] = policy.networkPolicies.tools!.endpoints;
    expect(rest!.rules[0]!.allow!.query).toEqual({
      slug: { glob: "my-*", any: [] },
      tag: { glob: "", any: ["foo-*", "bar-*"] },
    });
    expect(rest!.jsonRpcMaxBodyBytes).toBe(1024);
    expect(mcp!.rules[0]!.allow!.params).toEqual({
      "arguments.mode": { glob: "", any: ["r", "ro"] },
      "arguments.path": { glob: "/docs/*", any: [] },
      name: { glob: "read_*", any: [] },
    });
    expect(mcp!.denyRules[0]!.params).toEqual({ name: { glob: "delete_everything", any: [] } });
    expect(mcp!.jsonRpcMaxBodyBytes).toBe(65536);
    expect(mcp!.mcp).toEqual({ strictToolNames: false, allowAllKnownMcpMethods: undefined });
    expect(validatePolicy(policy)).toEqual([]);
    expect(roundTrip(policy)).toStrictEqual(policy);
    expect(roundTrip(overTheWire(policy))).toStrictEqual(policy);
  });

  it("reads every endpoint key and middleware config, and writes them back losslessly", () => {
    const policy = parse(
      [
        "version: 7",
        "network_policies:",
        "  everything:",
        "    name: Every field",
        "    endpoints:",
        "      - host: api.example.com",
        "        path: /v1/**",
        "        ports: [443, 8443]",
        "        protocol: graphql",
        "        tls: terminate",
        "        enforcement: audit",
        "        rules:",
        "          - allow: { operation_type: query, operation_name: GetUser, fields: [user, id] }",
        "        deny_rules:",
        "          - { operation_type: mutation, fields: [deleteUser] }",
        "        allowed_ips: [10.1.0.0/16]",
        "        allow_encoded_slash: true",
        "        websocket_credential_rewrite: true",
        "        allow_uninspected_credentials: true",
        "        persisted_queries: allow_registered",
        "        graphql_persisted_queries:",
        "          abc123: { operation_type: query, operation_name: Q, fields: [a] }",
        "        graphql_max_body_bytes: 4096",
        "        credential_signing: sigv4",
        "        signing_service: execute-api",
        "        signing_region: eu-west-1",
        "        credential_binding: { provider: aws }",
        "    binaries:",
        "      - { path: /usr/bin/curl, harness: true }",
        "network_middlewares:",
        "  redactor:",
        "    name: Global redactor",
        "    middleware: openshell/regex",
        "    order: -3",
        "    on_error: fail_open",
        "    config:",
        "      mode: redact",
        "      patterns: [{ name: key, regex: 'sk-[a-z]+' }]",
        "      limit: 2.5",
        "      enabled: true",
        "      nothing: ~",
        "    endpoints: { include: [api.example.com, '*.service.test'], exclude: [internal.example.com] }",
        "  plain:",
        "    middleware: openshell/log",
        "    endpoints: {}",
        "",
      ].join("\n"),
    );
    const endpoint = policy.networkPolicies.everything!.endpoints[0]!;
    expect(endpoint).toMatchObject({
      port: 443,
      ports: [443, 8443],
      allowEncodedSlash: true,
      persistedQueries: "allow_registered",
      graphqlMaxBodyBytes: 4096,
      credentialBinding: { provider: "aws" },
      providerCredentialed: false,
      advisorProposed: false,
    });
    expect(policy.networkPolicies.everything!.binaries).toEqual([{ path: "/usr/bin/curl", harness: false }]);
    const redactor = policy.networkMiddlewares.redactor!;
    expect(redactor).toMatchObject({ name: "Global redactor", order: -3, onError: "fail_open" });
    expect(redactor.config).toEqual({
      mode: "redact",
      patterns: [{ name: "key", regex: "sk-[a-z]+" }],
      limit: 2.5,
      enabled: true,
      nothing: null,
    });
    expect(policy.networkMiddlewares.plain).toMatchObject({
      name: "plain",
      order: 0,
      config: {},
      endpoints: { include: [], exclude: [] },
    });
    expect(roundTrip(policy)).toStrictEqual(policy);
    expect(roundTrip(overTheWire(policy))).toStrictEqual(policy);
  });
});

describe("validatePolicy: filesystem and process", () => {
  it("refuses a writable root", () => {
    const violations = violationsOf("version: 1\nfilesystem_policy:\n  read_write: [/tmp, /]\n");
    expect(violations).toEqual(["filesystem_policy.read_write[1]: read-write path is overly broad: /"]);
    expect(violationsOf("version: 1\nfilesystem_policy:\n  read_write: ['//']\n")[0]).toContain(
      "read-write path is overly broad: //",
    );
    // Reading all of it is refused too, with the words the mount planner uses.
    expect(violationsOf("version: 1\nfilesystem_policy:\n  read_only: [/usr, /]\n")).toEqual([
      `filesystem_policy.read_only[1]: read_only "/" would expose the host's whole filesystem; list the directories the sandbox needs`,
    ]);
  });

  it("refuses relative paths and '..' components", () => {
    expect(violationsOf("version: 1\nfilesystem_policy:\n  read_only: [usr/lib]\n")).toEqual([
      "filesystem_policy.read_only[0]: path must be absolute (start with '/'): usr/lib",
    ]);
    expect(violationsOf("version: 1\nfilesystem_policy:\n  read_write: [/sandbox/../etc]\n")).toEqual([
      "filesystem_policy.read_write[0]: path contains '..' traversal component: /sandbox/../etc",
    ]);
    expect(violationsOf("version: 1\nfilesystem_policy:\n  read_only: [/a/..b/c]\n")).toEqual([]);
  });

  it("refuses more than 256 paths and paths over 4096 bytes", () => {
    const policy = defaultPolicy();
    policy.filesystem!.readOnly = Array.from({ length: 250 }, (_, i) => `/opt/${i}`);
    policy.filesystem!.readWrite = Array.from({ length: 7 }, (_, i) => `/var/${i}`);
    expect(validatePolicy(policy)).toEqual(["filesystem_policy: too many filesystem paths (257 > 256)"]);
    policy.filesystem!.readWrite.pop();
    expect(validatePolicy(policy)).toEqual([]);

    policy.filesystem!.readOnly = [`/${"x".repeat(4096)}`];
    const [long] = validatePolicy(policy);
    expect(long).toMatch(
      /^filesystem_policy\.read_only\[0\]: path exceeds maximum length \(4097 > 4096\): \/x+\.\.\.$/,
    );
  });

  it("accepts 'sandbox' or a non-root id in range as run_as_user and run_as_group", () => {
    const check = (value: string) =>
      validatePolicy({ ...defaultPolicy(), process: { runAsUser: value, runAsGroup: "" } });
    expect(check("sandbox")).toEqual([]);
    expect(check("4321")).toEqual([]);
    expect(check("4294967294")).toEqual([]);
    expect(check("0")).toEqual([
      "process.run_as_user must be 'sandbox' or a numeric UID/GID in range [1, 4294967294], got '0'",
    ]);
    expect(check("4294967295")).toEqual([
      "process.run_as_user must be 'sandbox' or a numeric UID/GID in range [1, 4294967294], got '4294967295'",
    ]);
    expect(check("root")).toHaveLength(1);
    expect(check("-1")).toHaveLength(1);
    expect(violationsOf('version: 1\nprocess:\n  run_as_user: sandbox\n  run_as_group: "0"\n')).toEqual([
      "process.run_as_group must be 'sandbox' or a numeric UID/GID in range [1, 4294967294], got '0'",
    ]);
  });
});

describe("validatePolicy: network", () => {
  const withEndpoint = (endpoint: string) =>
    violationsOf(`version: 1\nnetwork_policies:\n  pypi:\n    endpoints:\n      - ${endpoint}\n`);

  it("refuses TLD wildcards", () => {
    expect(withEndpoint("{ host: '*.com', port: 443 }")).toEqual([
      "network_policies.pypi.endpoints[0]: TLD wildcard '*.com' is not allowed; use subdomain wildcards like '*.example.com' instead",
    ]);
    expect(withEndpoint("{ host: '**.org', port: 443 }")[0]).toContain("TLD wildcard '**.org'");
    expect(withEndpoint("{ host: '*.pythonhosted.org', port: 443 }")).toEqual([]);
  });

  it("refuses bad wildcard shapes", () => {
    expect(withEndpoint("{ host: 'api.*-x.example.com', port: 443 }")[0]).toContain("invalid host wildcard");
    expect(withEndpoint("{ host: '*', port: 443 }")[0]).toContain("invalid host wildcard '*'");
    expect(withEndpoint("{ host: '**.example.com', port: 443 }")).toEqual([]);
  });

  it("requires a host and a port in range", () => {
    expect(withEndpoint("{ port: 443 }")).toEqual([
      "network_policies.pypi.endpoints[0]: endpoint host must not be empty unless allowed_ips constrains a non-TCP proxy endpoint",
    ]);
    expect(withEndpoint("{ allowed_ips: [10.0.0.0/8], port: 443 }")).toEqual([]);
    expect(withEndpoint("{ host: pypi.org }")).toEqual([
      "network_policies.pypi.endpoints[0]: endpoint 'pypi.org' must declare at least one port",
    ]);
    expect(withEndpoint("{ host: pypi.org, ports: [0] }")).toEqual([
      "network_policies.pypi.endpoints[0]: endpoint 'pypi.org' has invalid port 0; expected 1..=65535",
    ]);
  });

  it("requires a DNS name, not an IP literal, for protocol tcp", () => {
    expect(withEndpoint("{ host: 10.0.0.5, port: 6379, protocol: tcp }")[0]).toContain(
      "protocol tcp endpoint '10.0.0.5' must use a DNS hostname, not an IP literal",
    );
    expect(withEndpoint("{ port: 6379, protocol: tcp, allowed_ips: [10.0.0.0/8] }")[0]).toContain(
      "protocol tcp requires a DNS hostname",
    );
    expect(withEndpoint("{ host: 'redis.example.', port: 6379, protocol: tcp }")[0]).toContain(
      "omit the trailing DNS root dot",
    );
    expect(withEndpoint("{ host: redis.example, port: 6379, protocol: tcp, path: /x }")[0]).toContain(
      "protocol tcp does not support L7-only fields: path",
    );
  });

  it("applies the L7 semantic rules", () => {
    expect(
      withEndpoint(
        "{ host: a.example.com, port: 443, protocol: rest, access: full, rules: [{ allow: { method: GET } }] }",
      ),
    ).toEqual([
      "network_policies.pypi.endpoints[0]: invalid L7 configuration: rules and access are mutually exclusive",
    ]);
    expect(withEndpoint("{ host: a.example.com, port: 443, protocol: rest, rules: [] }")).toEqual([
      "network_policies.pypi.endpoints[0]: invalid L7 configuration: protocol requires rules or access to define allowed traffic",
    ]);
    expect(withEndpoint("{ host: a.example.com, port: 443, protocol: ftp }")[0]).toContain(
      "unknown protocol 'ftp'",
    );
    expect(
      withEndpoint("{ host: a.example.com, port: 443, protocol: rest, rules: [{ allow: {} }] }")[0],
    ).toContain("rules would deny all traffic");
    expect(withEndpoint("{ host: a.example.com, port: 443, deny_rules: [{ method: POST }] }")).toContain(
      "network_policies.pypi.endpoints[0]: invalid L7 configuration: deny_rules require protocol (L7 inspection must be enabled)",
    );
    expect(withEndpoint("{ host: a.example.com, port: 443, protocol: mcp }")[0]).toContain(
      "protocol mcp requires rules when mcp.allow_all_known_mcp_methods is false",
    );
    expect(
      withEndpoint(
        "{ host: a.example.com, port: 443, protocol: mcp, mcp: { allow_all_known_mcp_methods: true } }",
      ),
    ).toEqual([]);
    expect(
      withEndpoint(
        "{ host: a.example.com, port: 443, credential_signing: sigv5, request_body_credential_rewrite: true }",
      ),
    ).toEqual([
      "network_policies.pypi.endpoints[0]: endpoint 'a.example.com' has unrecognized credential_signing value 'sigv5' (expected sigv4, sigv4:body, or sigv4:no_body)",
      "network_policies.pypi.endpoints[0]: endpoint 'a.example.com' has credential_signing set but signing_service is empty",
      "network_policies.pypi.endpoints[0]: endpoint 'a.example.com' has both credential_signing and request_body_credential_rewrite set; these options are mutually exclusive",
    ]);
  });

  it("reserves the _provider_ key prefix", () => {
    expect(
      violationsOf(
        "version: 1\nnetwork_policies:\n  _provider_github:\n    endpoints: [{ host: github.com, port: 443 }]\n",
      ),
    ).toEqual([
      "network_policies key '_provider_github' uses reserved '_provider_' prefix for provider composition; rename it",
    ]);
  });

  it("checks middleware configs", () => {
    const violations = violationsOf(
      [
        "version: 1",
        "network_policies:",
        "  raw:",
        "    endpoints: [{ host: api.example.com, port: 443, tls: skip }]",
        "network_middlewares:",
        "  a: { middleware: openshell/regex, endpoints: { include: ['*.example.com'] } }",
        "  b: { middleware: '', on_error: explode }",
        "  c: { middleware: m, order: 1, endpoints: { include: ['bad..pattern'] } }",
        "",
      ].join("\n"),
    );
    expect(violations).toEqual([
      "network_middlewares.a: middleware config 'a' selects network policy 'raw' tls: skip endpoint 'api.example.com'",
      "network_middlewares.b: middleware configs 'a' and 'b' use duplicate order 0",
      "network_middlewares.b: middleware config 'b' is invalid: middleware must not be empty",
      "network_middlewares.b: middleware config 'b' is invalid: invalid on_error 'explode'",
      "network_middlewares.b: middleware config 'b' is invalid: endpoint selector is required",
      "network_middlewares.c: middleware config 'c' is invalid: endpoint selector pattern 'bad..pattern' is invalid: host pattern must not contain empty DNS labels",
    ]);
  });

  it("reports every violation at once, in the gateway's format", () => {
    const violations = violationsOf(
      [
        "version: 1",
        "filesystem_policy:",
        "  read_write: [/, tmp]",
        "process: { run_as_user: '0' }",
        "network_policies:",
        "  pypi:",
        "    endpoints: [{ host: '*.com', port: 443 }]",
        "",
      ].join("\n"),
    );
    expect(violations).toHaveLength(4);
    expect(formatPolicyViolations(violations)).toBe(
      "policy contains unsafe content: " +
        "process.run_as_user must be 'sandbox' or a numeric UID/GID in range [1, 4294967294], got '0'; " +
        "filesystem_policy.read_write[1]: path must be absolute (start with '/'): tmp; " +
        "filesystem_policy.read_write[0]: read-write path is overly broad: /; " +
        "network_policies.pypi.endpoints[0]: TLD wildcard '*.com' is not allowed; use subdomain wildcards like '*.example.com' instead",
    );
  });

  it("caps the encoded policy size as the gateway does", () => {
    expect(policySizeViolation(defaultPolicy())).toBeUndefined();
    const big = defaultPolicy();
    big.networkPolicies = { huge: { name: "x".repeat(262_144), endpoints: [], binaries: [] } };
    expect(policySizeViolation(big)).toMatch(/^policy serialized size exceeds maximum \(\d+ > 262144\)$/);
  });
});

describe("policyVersionWarning", () => {
  it("warns about a version other than 1, naming the key, and accepts the policy", () => {
    const policy = parsePolicyYaml("version: 2\n", "v2.yaml");
    expect(validatePolicy(policy)).toEqual([]);
    expect(policyVersionWarning(policy)).toBe(
      "version: 2 is unknown; it is read as version 1, the only version there is (set version: 1)",
    );
  });

  it("says nothing for version 1, nor for a request that left the field unset (0)", () => {
    expect(policyVersionWarning(parsePolicyYaml("version: 1\n", "v1.yaml"))).toBeUndefined();
    expect(policyVersionWarning({ ...defaultPolicy(), version: 0 })).toBeUndefined();
  });
});

describe("shelllessFilesystemViolation", () => {
  const fs = (readOnly: string[], readWrite: string[] = []) => ({
    includeWorkdir: true,
    readOnly,
    readWrite,
  });

  it.each([[["/usr"]], [["/usr/"]], [["/bin"]], [["/usr/bin"]], [["/usr/bin/bash"]], [["//usr//bin/"]]])(
    "a read_only %j covers the shell",
    (readOnly) => {
      expect(shelllessFilesystemViolation(fs(readOnly))).toBeUndefined();
    },
  );

  it("no filesystem section means the default, which has a shell", () => {
    expect(shelllessFilesystemViolation(undefined)).toBeUndefined();
    expect(shelllessFilesystemViolation(defaultPolicy().filesystem)).toBeUndefined();
  });

  it.each([
    ["read_write only", fs([], ["/etc"])],
    ["/usr read-write (an empty private directory)", fs([], ["/usr", "/bin"])],
    ["unrelated read_only paths", fs(["/etc", "/usr/share", "/usrx"])],
  ])("%s is refused, naming filesystem_policy.read_only", (_label, policy) => {
    expect(shelllessFilesystemViolation(policy)).toMatch(
      /^filesystem_policy\.read_only: covers neither \/usr nor \/bin/,
    );
  });
});

describe("default policy", () => {
  it("is upstream's restrictive default adapted to a host root", () => {
    expect(defaultPolicy()).toStrictEqual({
      version: 1,
      filesystem: {
        includeWorkdir: true,
        readOnly: ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/dev/urandom"],
        readWrite: ["/tmp", "/dev/null"],
      },
      landlock: { compatibility: "best_effort" },
      process: undefined,
      networkPolicies: {},
      networkMiddlewares: {},
    });
    expect(DEFAULT_POLICY).toStrictEqual(defaultPolicy());
  });

  it("does not expose host logs or /app", () => {
    const paths = [...defaultPolicy().filesystem!.readOnly, ...defaultPolicy().filesystem!.readWrite];
    expect(paths).not.toContain("/var/log");
    expect(paths).not.toContain("/app");
  });

  it("validates clean and round-trips", () => {
    expect(validatePolicy(defaultPolicy())).toEqual([]);
    expect(roundTrip(defaultPolicy())).toStrictEqual(defaultPolicy());
    expect(policyToYaml(defaultPolicy())).toContain("compatibility: best_effort");
  });

  it("cannot be changed by accident", () => {
    expect(() => {
      DEFAULT_POLICY.filesystem!.readWrite.push("/");
    }).toThrow(TypeError);
    const copy = defaultPolicy();
    copy.filesystem!.readWrite.push("/srv");
    expect(DEFAULT_POLICY.filesystem!.readWrite).toEqual(["/tmp", "/dev/null"]);
  });
});

describe("loadPolicyFile", () => {
  it("names the file when it cannot be read", async () => {
    const missing = join(scratch, "missing.yaml");
    await expect(loadPolicyFile(missing)).rejects.toThrow(
      `failed to read sandbox policy from ${missing}: no such file`,
    );
    await expect(loadPolicyFile(scratch)).rejects.toThrow(
      `failed to read sandbox policy from ${scratch}: is a directory, not a file`,
    );
  });

  it("keeps the line of a parse error", async () => {
    const file = join(scratch, "typo.yaml");
    writeFileSync(file, "version: 1\nfilesystem_policy:\n  read_onyl: [/usr]\n");
    await expect(loadPolicyFile(file)).rejects.toThrow(
      `${file}:3:3: filesystem_policy.read_onyl: unknown key`,
    );
  });

  it("lists every violation in one error", async () => {
    const file = join(scratch, "unsafe.yaml");
    writeFileSync(file, "version: 1\nfilesystem_policy:\n  read_only: [etc]\n  read_write: [/]\n");
    const error = await loadPolicyFile(file).catch((caught: unknown) => caught);
    expect(error).toMatchObject({
      code: "invalid_input",
      exitCode: 1,
      message:
        `${file}: policy contains unsafe content: ` +
        "filesystem_policy.read_only[0]: path must be absolute (start with '/'): etc; " +
        "filesystem_policy.read_write[0]: read-write path is overly broad: /",
    });
  });
});

describe("parsePolicyYaml: nesting", () => {
  const thrownBy = (text: string): string => {
    try {
      parsePolicyYaml(text, "p.yaml");
    } catch (error) {
      return (error as Error).message;
    }
    return "";
  };

  it("refuses 65 levels with its position, and lets 64 through to the ordinary checks", () => {
    // The top-level mapping is level 1; each `[` adds one.
    expect(thrownBy(`version: 1\nx: ${"[".repeat(64)}${"]".repeat(64)}\n`)).toBe(
      "p.yaml:2:67: policy nesting exceeds 64 levels",
    );
    const at64 = thrownBy(`version: 1\nx: ${"[".repeat(63)}${"]".repeat(63)}\n`);
    expect(at64).not.toContain("nesting");
    expect(at64).toContain("x");
  });

  it("refuses 20,000 nested flow sequences and 3,000 nested block mappings without overflowing the stack", () => {
    expect(thrownBy(`version: 1\nx: ${"[".repeat(20_000)}${"]".repeat(20_000)}\n`)).toBe(
      "p.yaml:2:67: policy nesting exceeds 64 levels",
    );
    const block = Array.from({ length: 3000 }, (_, i) => `${" ".repeat(i + 1)}a:`).join("\n");
    expect(thrownBy(`version: 1\nfilesystem_policy:\n${block}\n`)).toBe(
      "p.yaml:66:65: policy nesting exceeds 64 levels",
    );
  });
});
