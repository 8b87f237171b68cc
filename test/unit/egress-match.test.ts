// The egress proxy's decisions, without sockets: which endpoints admit a
// host:port, which resolved addresses an endpoint lets the proxy dial, and
// which processes a rule's `binaries` admit.

import { describe, expect, it } from "vitest";
import { NetworkEndpoint, type NetworkPolicyRule } from "../../src/gen/sandbox.js";
import { findSocketInode } from "../../src/supervisor/agent/egress.js";
import { formatIp, isAlwaysBlocked, isInternal, parseCidr, parseIp } from "../../src/supervisor/egress/ip.js";
import {
  authorizeAddresses,
  BinaryPattern,
  type EgressPeer,
  EgressPolicy,
  normalizeTargetHost,
} from "../../src/supervisor/egress/match.js";
import { decodePreamble, encodePreamble } from "../../src/supervisor/egress/protocol.js";
import { parseAbsoluteHttp, parseAuthority } from "../../src/supervisor/egress/proxy.js";

type EndpointSpec = Partial<NetworkEndpoint>;

function rule(endpoints: EndpointSpec[], binaries: string[] = [], name = ""): NetworkPolicyRule {
  return {
    name,
    endpoints: endpoints.map((ep) => NetworkEndpoint.fromPartial(ep)),
    binaries: binaries.map((path) => ({ path, harness: false })),
  };
}

const CURL: EgressPeer = { exe: "/usr/bin/curl", ancestors: ["/usr/bin/bash"] };

function ips(...list: string[]) {
  return list.map((ip) => parseIp(ip)!);
}

/** The full decision: policy match, then the addresses the host resolved to. */
function decide(
  policy: EgressPolicy,
  host: string,
  port: number,
  resolved: string[],
  peers: EgressPeer[] = [CURL],
): { allowed: boolean; reason?: string; policy?: string } {
  const target = { host: normalizeTargetHost(host)!, port };
  const match = policy.match(target, peers);
  if (!match.allowed) return { allowed: false, reason: match.reason };
  const decision = authorizeAddresses(match.grants, target, ips(...resolved));
  return decision.allowed
    ? { allowed: true, policy: decision.grant.policy }
    : { allowed: false, reason: decision.reason };
}

const PUBLIC = "93.184.215.14";

describe("host and port matching", () => {
  const policy = EgressPolicy.compile({
    exact: rule([{ host: "API.Example.com", port: 443 }]),
    single: rule([{ host: "*.single.test", ports: [443, 8443] }]),
    deep: rule([{ host: "**.deep.test", port: 443 }]),
    inlabel: rule([{ host: "api-*.inlabel.test", port: 443 }]),
    both: rule([{ host: "both.test", port: 80, ports: [8080] }]),
  });

  it("matches an exact host case-insensitively, with or without the root dot", () => {
    expect(decide(policy, "api.example.com", 443, [PUBLIC])).toMatchObject({
      allowed: true,
      policy: "exact",
    });
    expect(decide(policy, "API.EXAMPLE.COM.", 443, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "www.api.example.com", 443, [PUBLIC])).toEqual({
      allowed: false,
      reason: "not allowed by any network policy",
    });
  });

  it("refuses the right host on another port", () => {
    expect(decide(policy, "api.example.com", 80, [PUBLIC]).allowed).toBe(false);
  });

  it("lets `*` stand for exactly one label", () => {
    expect(decide(policy, "a.single.test", 443, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "a.single.test", 8443, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "a.b.single.test", 443, [PUBLIC]).allowed).toBe(false);
    expect(decide(policy, "single.test", 443, [PUBLIC]).allowed).toBe(false);
  });

  it("lets `**` stand for one or more labels", () => {
    expect(decide(policy, "a.deep.test", 443, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "a.b.c.deep.test", 443, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "deep.test", 443, [PUBLIC]).allowed).toBe(false);
    expect(decide(policy, "a.deep.test.evil.test", 443, [PUBLIC]).allowed).toBe(false);
  });

  it("matches a wildcard inside a label within that label", () => {
    expect(decide(policy, "api-eu.inlabel.test", 443, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "web.inlabel.test", 443, [PUBLIC]).allowed).toBe(false);
  });

  it("uses `ports` over `port` when both are set", () => {
    expect(decide(policy, "both.test", 8080, [PUBLIC]).allowed).toBe(true);
    expect(decide(policy, "both.test", 80, [PUBLIC]).allowed).toBe(false);
  });

  it("has no rules, and so allows nothing, for an empty policy", () => {
    const empty = EgressPolicy.compile({});
    expect(empty.empty).toBe(true);
    expect(decide(empty, "api.example.com", 443, [PUBLIC]).allowed).toBe(false);
  });
});

describe("resolved addresses", () => {
  const policy = EgressPolicy.compile({
    exact: rule([{ host: "internal.corp.test", port: 443 }]),
    wild: rule([{ host: "*.wild.test", port: 443 }]),
    literal: rule([{ host: "10.0.5.20", port: 8080 }]),
    literal6: rule([{ host: "fd00::0:5", port: 8080 }]),
    cidr: rule([{ host: "db.cidr.test", port: 5432, allowedIps: ["10.0.5.0/24", "192.168.1.7"] }]),
    hostless: rule([{ port: 9000, allowedIps: ["172.16.0.0/12"] }]),
    k8s: rule([{ host: "k8s.corp.test", port: 6443 }]),
  });

  it("always refuses loopback, link-local and unspecified addresses", () => {
    for (const address of ["127.0.0.1", "127.9.9.9", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "::"]) {
      const result = decide(policy, "internal.corp.test", 443, [address]);
      expect(result.allowed, address).toBe(false);
      expect(result.reason).toContain("always blocked");
    }
  });

  it("sees through IPv4-mapped IPv6 addresses", () => {
    expect(decide(policy, "internal.corp.test", 443, ["::ffff:127.0.0.1"]).allowed).toBe(false);
    expect(decide(policy, "a.wild.test", 443, ["::ffff:10.1.2.3"]).allowed).toBe(false);
  });

  it("refuses the whole host when any one of its addresses is refused", () => {
    expect(decide(policy, "internal.corp.test", 443, [PUBLIC, "127.0.0.1"]).allowed).toBe(false);
    expect(decide(policy, "a.wild.test", 443, [PUBLIC, "10.0.0.1"]).allowed).toBe(false);
  });

  it("lets an exactly named host reach internal addresses, as upstream does", () => {
    expect(decide(policy, "internal.corp.test", 443, ["10.1.2.3", "192.168.0.9"]).allowed).toBe(true);
  });

  it("keeps a wildcard host to public addresses", () => {
    expect(decide(policy, "a.wild.test", 443, [PUBLIC]).allowed).toBe(true);
    for (const address of ["10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "fd12::1"]) {
      const result = decide(policy, "a.wild.test", 443, [address]);
      expect(result.allowed, address).toBe(false);
      expect(result.reason).toContain("internal address");
    }
  });

  it("grants an IP-literal host that address, private or not", () => {
    expect(decide(policy, "10.0.5.20", 8080, ["10.0.5.20"]).allowed).toBe(true);
    expect(decide(policy, "10.0.5.21", 8080, ["10.0.5.21"]).allowed).toBe(false);
    // The same IPv6 address however it is written.
    expect(decide(policy, "[fd00:0::5]", 8080, ["fd00::5"]).allowed).toBe(true);
  });

  it("requires every address inside allowed_ips when it is set", () => {
    expect(decide(policy, "db.cidr.test", 5432, ["10.0.5.99", "192.168.1.7"]).allowed).toBe(true);
    const outside = decide(policy, "db.cidr.test", 5432, ["10.0.5.99", "10.0.6.1"]);
    expect(outside.allowed).toBe(false);
    expect(outside.reason).toContain(
      "db.cidr.test resolves to 10.0.6.1, which is not in the endpoint's allowed_ips",
    );
    expect(decide(policy, "db.cidr.test", 5432, [PUBLIC]).allowed).toBe(false);
  });

  it("lets a hostless endpoint admit any host on its port, by address only", () => {
    expect(decide(policy, "anything.test", 9000, ["172.17.0.5"]).allowed).toBe(true);
    expect(decide(policy, "anything.test", 9000, [PUBLIC]).allowed).toBe(false);
    expect(decide(policy, "anything.test", 9001, ["172.17.0.5"]).allowed).toBe(false);
  });

  it("refuses control-plane ports on internal hosts", () => {
    const result = decide(policy, "k8s.corp.test", 6443, ["10.0.0.1"]);
    expect(result.allowed).toBe(false);
    expect(result.reason).toContain("control-plane");
  });

  it("refuses a host that resolved to nothing", () => {
    expect(decide(policy, "internal.corp.test", 443, []).allowed).toBe(false);
  });
});

describe("endpoints that can grant nothing here", () => {
  const policy = EgressPolicy.compile({
    badips: rule([{ host: "a.test", port: 443, allowedIps: ["10.0.0.0/33"] }]),
    loopips: rule([{ host: "b.test", port: 443, allowedIps: ["127.0.0.0/8"] }]),
    wideips: rule([{ host: "c.test", port: 443, allowedIps: ["0.0.0.0/0"] }]),
    enforced: rule([
      { host: "d.test", port: 443, protocol: "rest", enforcement: "enforce", access: "read-only" },
    ]),
    audited: rule([{ host: "e.test", port: 443, protocol: "rest", access: "read-only" }]),
  });

  it("warns about each at start", () => {
    expect(policy.warnings).toHaveLength(4);
    expect(policy.warnings.join("\n")).toContain(
      "allowed_ips entry '10.0.0.0/33' is not an IP address or CIDR range",
    );
    expect(policy.warnings.join("\n")).toContain("allowed_ips entry '127.0.0.0/8' includes loopback");
    expect(policy.warnings.join("\n")).toContain("allowed_ips entry '0.0.0.0/0' includes loopback");
    expect(policy.warnings.join("\n")).toContain("requires enforced rest rules");
  });

  it("refuses their connections with the reason", () => {
    const result = decide(policy, "d.test", 443, [PUBLIC]);
    expect(result.allowed).toBe(false);
    expect(result.reason).toContain("allows nothing: requires enforced rest rules");
    expect(decide(policy, "a.test", 443, ["10.0.0.1"]).allowed).toBe(false);
  });

  it("lets audit-mode L7 endpoints through at L4, as upstream's default audit mode does", () => {
    expect(decide(policy, "e.test", 443, [PUBLIC]).allowed).toBe(true);
  });
});

describe("binaries", () => {
  const policy = EgressPolicy.compile({
    python: rule(
      [{ host: "pypi.org", port: 443 }],
      ["/usr/bin/python3*", "/sandbox/**/bin/python*", "/opt/tool"],
      "pypi",
    ),
    anyone: rule([{ host: "open.test", port: 443 }]),
  });
  const python: EgressPeer = { exe: "/usr/bin/python3.11", ancestors: ["/usr/bin/bash"] };

  it("admits a listed binary and refuses others, naming both", () => {
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [python]).allowed).toBe(true);
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [CURL])).toEqual({
      allowed: false,
      reason: "binary '/usr/bin/curl' is not listed in network policy 'pypi'",
    });
  });

  it("keeps `*` within one path component and lets `**` cross them", () => {
    const venv: EgressPeer = { exe: "/sandbox/proj/.venv/bin/python3", ancestors: [] };
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [venv]).allowed).toBe(true);
    const nested: EgressPeer = { exe: "/usr/bin/python3.11/../../evil", ancestors: [] };
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [nested]).allowed).toBe(false);
    expect(BinaryPattern.compile("/usr/bin/*").matches("/usr/bin/x/y")).toBe(false);
    expect(BinaryPattern.compile("/usr/**").matches("/usr/bin/x/y")).toBe(true);
    expect(BinaryPattern.compile("/usr/*/{curl,wget}").matches("/usr/bin/wget")).toBe(true);
    expect(BinaryPattern.compile("/usr/*/{curl,wget}").matches("/usr/bin/nc")).toBe(false);
  });

  it("matches exact paths literally", () => {
    expect(BinaryPattern.compile("/opt/tool").matches("/opt/tool")).toBe(true);
    expect(BinaryPattern.compile("/opt/t?ol").matches("/opt/tool")).toBe(false);
  });

  it("admits a process whose ancestor is listed", () => {
    const child: EgressPeer = { exe: "/usr/bin/curl", ancestors: ["/usr/bin/bash", "/opt/tool"] };
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [child]).allowed).toBe(true);
  });

  it("requires every process holding the connection to be admitted", () => {
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [python, CURL]).allowed).toBe(false);
  });

  it("refuses an unidentified process where binaries are listed, and admits it where none are", () => {
    const result = decide(policy, "pypi.org", 443, [PUBLIC], []);
    expect(result.allowed).toBe(false);
    expect(result.reason).toContain("could not be identified");
    expect(decide(policy, "open.test", 443, [PUBLIC], []).allowed).toBe(true);
  });
});

describe("the example policy python-agent-pypi.yaml", async () => {
  const { readFileSync } = await import("node:fs");
  const { parsePolicyYaml } = await import("../../src/core/policy.js");
  const { ROOT } = await import("../helpers/cli.js");
  const text = readFileSync(`${ROOT}/examples/policies/python-agent-pypi.yaml`, "utf8");
  const parsed = parsePolicyYaml(text, "python-agent-pypi.yaml");

  it("admits pip's interpreter to PyPI over HTTPS and nothing else", () => {
    const policy = EgressPolicy.compile(parsed.networkPolicies);
    const python: EgressPeer = { exe: "/usr/bin/python3.11", ancestors: [] };
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [python]).allowed).toBe(true);
    expect(decide(policy, "files.pythonhosted.org", 443, [PUBLIC], [python]).allowed).toBe(true);
    expect(decide(policy, "pypi.org", 80, [PUBLIC], [python]).allowed).toBe(false);
    expect(decide(policy, "github.com", 443, [PUBLIC], [python]).allowed).toBe(false);
    expect(decide(policy, "pypi.org", 443, [PUBLIC], [CURL]).allowed).toBe(false);
  });
});

describe("addresses and ranges", () => {
  it("parses and prints addresses canonically", () => {
    expect(formatIp(parseIp("fd00:0:0::0:5")!)).toBe("fd00::5");
    expect(formatIp(parseIp("[2001:db8::1]")!)).toBe("2001:db8::1");
    expect(formatIp(parseIp("::ffff:10.0.0.1")!)).toBe("::ffff:10.0.0.1");
    expect(parseIp("example.com")).toBeUndefined();
    expect(parseIp("10.0.0.256")).toBeUndefined();
  });

  it("parses CIDR ranges and refuses malformed ones", () => {
    expect(parseCidr("10.0.5.20/24")).toMatchObject({ family: 4, prefix: 24 });
    expect(parseCidr("fd00::/8")).toMatchObject({ family: 6, prefix: 8 });
    for (const bad of ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "example.com/8", "fd00::/129"]) {
      expect(parseCidr(bad), bad).toBeUndefined();
    }
  });

  it("classifies addresses", () => {
    expect(isAlwaysBlocked(parseIp("127.0.0.53")!)).toBe(true);
    expect(isAlwaysBlocked(parseIp("10.0.0.1")!)).toBe(false);
    expect(isInternal(parseIp("10.0.0.1")!)).toBe(true);
    expect(isInternal(parseIp("203.0.113.9")!)).toBe(true);
    expect(isInternal(parseIp(PUBLIC)!)).toBe(false);
    expect(isInternal(parseIp("2606:4700::1111")!)).toBe(false);
  });
});

describe("proxy request targets", () => {
  it("reads CONNECT's host:port", () => {
    expect(parseAuthority("Example.COM:443")).toEqual({ host: "example.com", port: 443 });
    expect(parseAuthority("[::FFFF:10.0.0.1]:80")).toEqual({ host: "::ffff:10.0.0.1", port: 80 });
    for (const bad of ["example.com", "example.com:0", "example.com:70000", "user@example.com:443", ":443"]) {
      expect(parseAuthority(bad), bad).toBeUndefined();
    }
  });

  it("reads absolute-form http:// targets and refuses anything else", () => {
    expect(parseAbsoluteHttp("http://Example.com/a?b=1")).toEqual({
      target: { host: "example.com", port: 80 },
      path: "/a?b=1",
      authority: "example.com",
    });
    expect(parseAbsoluteHttp("http://10.0.0.1:8080")?.target).toEqual({ host: "10.0.0.1", port: 8080 });
    expect(parseAbsoluteHttp("/origin-form")).toBeUndefined();
    expect(parseAbsoluteHttp("https://example.com/")).toBeUndefined();
    expect(parseAbsoluteHttp("http://user:pw@example.com/")).toBeUndefined();
  });
});

describe("the forwarder's side", () => {
  it("finds the client socket's inode in /proc/net/tcp", () => {
    const table = [
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
      "   0: 0100007F:0C38 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1",
      "   1: 0100007F:0C38 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 222 1",
      "   2: 0100007F:D431 0100007F:0C38 01 00000000:00000000 00:00000000 00000000  1000        0 333 1",
    ].join("\n");
    expect(findSocketInode(table, 0xd431, 3128)).toBe("333");
    expect(findSocketInode(table, 0xd432, 3128)).toBeUndefined();
  });

  it("round-trips the preamble and refuses anything else", () => {
    const preamble = { peers: [{ exe: "/usr/bin/curl", ancestors: ["/usr/bin/bash"] }] };
    expect(decodePreamble(encodePreamble(preamble).trimEnd())).toEqual(preamble);
    expect(decodePreamble("GET http://example.com/ HTTP/1.1")).toBeUndefined();
    expect(decodePreamble('openshell-egress/1 {"peers":[{"exe":1}]}')).toBeUndefined();
  });
});
