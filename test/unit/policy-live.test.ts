// What a running sandbox's policy may become (core/policy/live.ts), and the
// policy digest both ends compare.

import { describe, expect, it } from "vitest";
import { defaultPolicy, liveChangeProblem, parsePolicyYaml, policyHash } from "../../src/core/policy.js";
import type { SandboxPolicy } from "../../src/gen/sandbox.js";

const BASE = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /etc]
  read_write: [/tmp]
landlock:
  compatibility: best_effort
network_policies:
  a:
    name: a
    endpoints:
      - { host: a.example.test, port: 443 }
`;

const parse = (text: string): SandboxPolicy => parsePolicyYaml(text, "policy.yaml");

describe("liveChangeProblem", () => {
  const base = parse(BASE);

  it("accepts new, changed and removed network rules", () => {
    const changed = parse(BASE.replace("a.example.test, port: 443", "b.example.test, port: 8443"));
    expect(liveChangeProblem(base, changed)).toBeUndefined();
    const none = parse(BASE.slice(0, BASE.indexOf("network_policies:")));
    expect(liveChangeProblem(base, none)).toBeUndefined();
  });

  it("accepts the filesystem paths in another order or repeated", () => {
    const reordered = parse(BASE.replace("read_only: [/usr, /etc]", "read_only: [/etc, /usr, /etc]"));
    expect(liveChangeProblem(base, reordered)).toBeUndefined();
  });

  it("refuses a path added, a path removed, include_workdir, a missing filesystem section, naming it", () => {
    for (const text of [
      BASE.replace("read_only: [/usr, /etc]", "read_only: [/usr, /etc, /var]"),
      BASE.replace("read_write: [/tmp]", "read_write: []"),
      BASE.replace("include_workdir: true", "include_workdir: false"),
      BASE.replace(/filesystem_policy:\n( {2}.*\n)+/, ""),
    ]) {
      expect(liveChangeProblem(base, parse(text))).toBe(
        "filesystem_policy cannot change on a running sandbox: it is applied when the sandbox starts; keep that section as `openshell policy get NAME` shows it, or create a new sandbox with the new policy",
      );
    }
  });

  it("refuses landlock and the process identity; an unset landlock is best_effort", () => {
    expect(liveChangeProblem(base, parse(BASE.replace("best_effort", "hard_requirement")))).toMatch(
      /^landlock cannot change on a running sandbox/,
    );
    expect(liveChangeProblem(base, parse(BASE.replace(/landlock:\n.*\n/, "")))).toBeUndefined();
    expect(liveChangeProblem(base, parse(`${BASE}process:\n  run_as_user: "1000"\n`))).toMatch(
      /^process \(run_as_user, run_as_group\) cannot change on a running sandbox/,
    );
  });

  it("refuses network rules for a sandbox running without any: it has no proxy", () => {
    const none = parse(BASE.slice(0, BASE.indexOf("network_policies:")));
    expect(liveChangeProblem(none, base)).toMatch(
      /^network rules cannot be added to a sandbox running without any: it has no egress proxy/,
    );
    expect(liveChangeProblem(defaultPolicy(), defaultPolicy())).toBeUndefined();
  });
});

describe("policyHash", () => {
  it("is the same for the same rules in another order, and differs when a rule does", () => {
    const two = `${BASE}  b:\n    name: b\n    endpoints:\n      - { host: b.example.test, port: 443 }\n`;
    const swapped = BASE.replace(
      "network_policies:\n",
      `network_policies:\n  b:\n    name: b\n    endpoints:\n      - { host: b.example.test, port: 443 }\n`,
    );
    expect(policyHash(parse(two))).toBe(policyHash(parse(swapped)));
    expect(policyHash(parse(two))).toMatch(/^[0-9a-f]{64}$/);
    expect(policyHash(parse(two))).not.toBe(policyHash(parse(BASE)));
  });
});
