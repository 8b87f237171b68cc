// Who may connect where: a sandbox's `network_policies` compiled for the
// egress proxy. A connection to host:port is allowed when some rule has an
// endpoint matching the host and port, the rule's `binaries` (if it lists any)
// match the connecting process, and every address the host resolves to passes
// that endpoint's address rule. Upstream's semantics, endpoint by endpoint:
//
// - host: without `*` an exact, case-insensitive name (or an IP literal); with
//   `*` a glob over DNS labels (`*.example.com` one label, `**.example.com` one
//   or more); empty only with `allowed_ips`, and then any host on the port;
// - ports: `ports`, or `port` when `ports` is empty;
// - addresses: loopback, link-local and unspecified never; with `allowed_ips`
//   every address must lie in one of its entries; an IP-literal host grants
//   that address; an exact host name may resolve to internal (private)
//   addresses, which upstream allows because the policy names that host
//   exactly; a wildcard host only to public ones. Outside the public-only
//   case, a few control-plane ports (etcd, Kubernetes API, kubelet) are refused.
// - binaries: exact paths, or globs when they contain `*` (`*` stays within a
//   path component, `**` crosses them), matched against the connecting
//   process's executable or an ancestor's.
//
// Where we differ from upstream: a rule that lists no `binaries` allows every
// process (upstream's allows none), and an endpoint whose L7 rules must be
// enforced (`enforcement: enforce`) allows nothing here, since this proxy does
// not inspect requests: failing closed is the only honest reading.

import { HostPattern } from "../../core/policy/host-pattern.js";
import { indexPath, keyPath } from "../../core/policy/location.js";
import type { NetworkEndpoint, NetworkPolicyRule } from "../../gen/sandbox.js";
import {
  type Cidr,
  cidrContains,
  formatIp,
  type IpAddress,
  isAlwaysBlocked,
  isInternal,
  overlapsAlwaysBlocked,
  parseCidr,
  parseIp,
  unmapped,
} from "./ip.js";

/** The process behind a connection, as the agent identified it inside the pod. */
export interface EgressPeer {
  /** `/proc/<pid>/exe`, as a path inside the sandbox. */
  exe: string;
  /** The executables of its parent, grandparent, ... up to (not including) the agent. */
  ancestors: string[];
}

export interface EgressTarget {
  /** Lower case, no trailing dot; an IP literal in canonical form without brackets. */
  host: string;
  port: number;
}

/** Ports of control-plane services a sandbox must never reach on an internal address. */
export const CONTROL_PLANE_PORTS: ReadonlySet<number> = new Set([2379, 2380, 6443, 10250, 10255]);

type AddressRule =
  | { kind: "allowed_ips"; ranges: Cidr[] }
  | { kind: "ip_literal"; ip: IpAddress }
  | { kind: "exact_host" }
  | { kind: "public_only" };

type HostMatcher =
  | { kind: "any" }
  | { kind: "ip"; ip: IpAddress }
  | { kind: "exact"; name: string }
  | { kind: "glob"; pattern: HostPattern };

interface CompiledEndpoint {
  label: string;
  host: HostMatcher;
  ports: ReadonlySet<number>;
  /** Either how resolved addresses are judged, or why this endpoint can grant nothing here. */
  address: AddressRule | { kind: "unusable"; reason: string };
}

interface CompiledRule {
  name: string;
  endpoints: CompiledEndpoint[];
  /** Empty: any process. */
  binaries: BinaryPattern[];
}

/** An endpoint that admits the target for this peer, pending its address rule. */
export interface Grant {
  policy: string;
  endpoint: string;
  address: AddressRule;
}

export type MatchResult = { allowed: true; grants: Grant[] } | { allowed: false; reason: string };

export type AddressDecision = { allowed: true; grant: Grant } | { allowed: false; reason: string };

export class EgressPolicy {
  private constructor(
    private readonly rules: CompiledRule[],
    /** Endpoints that can grant nothing here, one line each, for the sandbox log at start. */
    readonly warnings: string[],
  ) {}

  static compile(networkPolicies: { [key: string]: NetworkPolicyRule }): EgressPolicy {
    const warnings: string[] = [];
    const rules = Object.keys(networkPolicies)
      .sort()
      .map((key): CompiledRule => {
        const rule = networkPolicies[key]!;
        const name = rule.name || key;
        const endpoints = rule.endpoints.map((ep) => compileEndpoint(ep));
        endpoints.forEach((ep, index) => {
          if (ep.address.kind === "unusable") {
            const where = indexPath(keyPath(keyPath("network_policies", key), "endpoints"), index);
            warnings.push(`${where} (${ep.label}) allows nothing here: ${ep.address.reason}`);
          }
        });
        return { name, endpoints, binaries: rule.binaries.map((b) => BinaryPattern.compile(b.path)) };
      });
    return new EgressPolicy(rules, warnings);
  }

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /**
   * The endpoints that admit `target` for the connecting process(es), before
   * any DNS lookup. `peers` are every process holding the connection (usually
   * one); undefined or empty when they could not be identified.
   */
  match(target: EgressTarget, peers: readonly EgressPeer[] | undefined): MatchResult {
    const targetIp = parseIp(target.host);
    const grants: Grant[] = [];
    const binaryMisses: string[] = [];
    const unusable: string[] = [];
    for (const rule of this.rules) {
      const endpoints = rule.endpoints.filter(
        (ep) => ep.ports.has(target.port) && hostMatches(ep.host, target.host, targetIp),
      );
      if (endpoints.length === 0) continue;
      if (!binariesAllow(rule.binaries, peers)) {
        binaryMisses.push(rule.name);
        continue;
      }
      for (const ep of endpoints) {
        if (ep.address.kind === "unusable") {
          unusable.push(
            `endpoint ${ep.label} of network policy '${rule.name}' allows nothing: ${ep.address.reason}`,
          );
        } else grants.push({ policy: rule.name, endpoint: ep.label, address: ep.address });
      }
    }
    if (grants.length > 0) return { allowed: true, grants };
    const names = `network policy '${binaryMisses.join("', '")}'`;
    if (binaryMisses.length > 0) {
      return {
        allowed: false,
        reason:
          peers === undefined || peers.length === 0
            ? `the connecting process could not be identified, and ${names} allows only its listed binaries`
            : `binary '${peers.map((p) => p.exe).join("', '")}' is not listed in ${names}`,
      };
    }
    if (unusable.length > 0) return { allowed: false, reason: unusable[0]! };
    return { allowed: false, reason: "not allowed by any network policy" };
  }
}

/**
 * Whether the addresses `target.host` resolved to may be opened under one of
 * the grants; every address must pass (all or nothing), so the proxy never
 * dials an address the policy refused.
 */
export function authorizeAddresses(
  grants: readonly Grant[],
  target: EgressTarget,
  addresses: readonly IpAddress[],
): AddressDecision {
  if (addresses.length === 0) {
    return { allowed: false, reason: `${target.host} resolved to no addresses` };
  }
  let firstRefusal: string | undefined;
  for (const grant of grants) {
    const refusal = addressRefusal(grant.address, target, addresses);
    if (refusal === undefined) return { allowed: true, grant };
    firstRefusal ??= refusal;
  }
  return { allowed: false, reason: firstRefusal! };
}

function addressRefusal(
  rule: AddressRule,
  target: EgressTarget,
  addresses: readonly IpAddress[],
): string | undefined {
  const host = target.host;
  for (const address of addresses) {
    const ip = formatIp(unmapped(address));
    const shown = parseIp(host) === undefined ? `${host} resolves to ${ip}` : ip;
    if (isAlwaysBlocked(address)) {
      return `${shown}; loopback, link-local and unspecified addresses are always blocked`;
    }
    switch (rule.kind) {
      case "allowed_ips":
        if (!rule.ranges.some((range) => cidrContains(range, address))) {
          return `${shown}, which is not in the endpoint's allowed_ips`;
        }
        break;
      case "ip_literal":
        if (!sameIp(rule.ip, address)) return `${shown}, which is not the endpoint's address`;
        break;
      case "exact_host":
        break;
      case "public_only":
        if (isInternal(address)) {
          return `${shown}, an internal address; a wildcard endpoint reaches internal addresses only through allowed_ips`;
        }
        break;
    }
  }
  if (rule.kind !== "public_only" && CONTROL_PLANE_PORTS.has(target.port)) {
    return `port ${target.port} belongs to a control-plane service and is always blocked on internal hosts`;
  }
  return undefined;
}

function compileEndpoint(ep: NetworkEndpoint): CompiledEndpoint {
  const ports = new Set(ep.ports.length > 0 ? ep.ports : ep.port !== 0 ? [ep.port] : []);
  const rawHost = ep.host.trim();
  const label = formatHostPort(rawHost === "" ? "*" : rawHost.toLowerCase(), [...ports].join(","));
  let host: HostMatcher;
  const hostIp = parseIp(rawHost);
  if (rawHost === "") host = { kind: "any" };
  else if (hostIp !== undefined) host = { kind: "ip", ip: hostIp };
  else if (!rawHost.includes("*")) host = { kind: "exact", name: normalizeName(rawHost) };
  else {
    const pattern = HostPattern.compile(normalizeName(rawHost));
    if (typeof pattern === "string") {
      // Matched by its literal text, so a connection to it is refused with the reason.
      const literal: HostMatcher = { kind: "exact", name: normalizeName(rawHost) };
      return { label, host: literal, ports, address: { kind: "unusable", reason: pattern } };
    }
    host = { kind: "glob", pattern };
  }
  const unusable = (reason: string): CompiledEndpoint => ({
    label,
    host,
    ports,
    address: { kind: "unusable", reason },
  });

  const l7 = unenforceableL7(ep);
  if (l7 !== undefined) return unusable(l7);

  let address: AddressRule;
  if (ep.allowedIps.length > 0) {
    const ranges: Cidr[] = [];
    for (const entry of ep.allowedIps) {
      const range = parseCidr(entry);
      if (range === undefined)
        return unusable(`allowed_ips entry '${entry}' is not an IP address or CIDR range`);
      if (overlapsAlwaysBlocked(range)) {
        return unusable(
          `allowed_ips entry '${entry}' includes loopback, link-local or unspecified addresses, which are always blocked`,
        );
      }
      ranges.push(range);
    }
    address = { kind: "allowed_ips", ranges };
  } else if (host.kind === "any") {
    return unusable("an endpoint without a host needs allowed_ips");
  } else if (host.kind === "ip") {
    address = { kind: "ip_literal", ip: host.ip };
  } else if (host.kind === "exact") {
    address = { kind: "exact_host" };
  } else {
    address = { kind: "public_only" };
  }
  return { label, host, ports, address };
}

const L7_PROTOCOLS = new Set(["rest", "websocket", "graphql", "sql", "json-rpc", "mcp"]);

/** Why the endpoint's L7 rules cannot be honoured by an L4 proxy, when they must be. */
function unenforceableL7(ep: NetworkEndpoint): string | undefined {
  if (!L7_PROTOCOLS.has(ep.protocol.toLowerCase())) return undefined;
  // Upstream's default, `audit`, only logs L7 violations: an L4 grant lets through what it would.
  if (ep.enforcement.toLowerCase() !== "enforce") return undefined;
  if (ep.access === "full" && ep.denyRules.length === 0) return undefined;
  return `requires enforced ${ep.protocol} rules, which this runtime does not inspect`;
}

function hostMatches(matcher: HostMatcher, host: string, hostIp: IpAddress | undefined): boolean {
  switch (matcher.kind) {
    case "any":
      return true;
    case "ip":
      return hostIp !== undefined && sameIp(matcher.ip, hostIp);
    case "exact":
      return hostIp === undefined && matcher.name === host;
    case "glob":
      return hostIp === undefined && matcher.pattern.matches(host);
  }
}

function sameIp(a: IpAddress, b: IpAddress): boolean {
  const x = unmapped(a);
  const y = unmapped(b);
  return x.family === y.family && x.value === y.value;
}

function normalizeName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/**
 * A target host as the proxy compares and resolves it: lower case without a
 * trailing dot, or an IP literal in canonical form. Undefined when empty or
 * not a plausible host name.
 */
export function normalizeTargetHost(host: string): string | undefined {
  const ip = parseIp(host);
  if (ip !== undefined) return formatIp(ip);
  const name = normalizeName(host);
  if (name === "" || name.length > 253 || !/^[a-z0-9_.-]+$/.test(name) || name.includes("..")) {
    return undefined;
  }
  return name;
}

export function formatHostPort(host: string, port: number | string): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

function binariesAllow(
  binaries: readonly BinaryPattern[],
  peers: readonly EgressPeer[] | undefined,
): boolean {
  if (binaries.length === 0) return true;
  if (peers === undefined || peers.length === 0) return false;
  // Every holder of the connection must be allowed: a listed binary cannot lend its socket to another.
  return peers.every((peer) =>
    [peer.exe, ...peer.ancestors].some((path) => binaries.some((b) => b.matches(path))),
  );
}

/** A `binaries[].path`: exact unless it contains `*`; then `*` is one path component's worth, `**` any. */
export class BinaryPattern {
  private constructor(
    readonly source: string,
    private readonly regex: RegExp | undefined,
  ) {}

  static compile(path: string): BinaryPattern {
    if (!path.includes("*")) return new BinaryPattern(path, undefined);
    return new BinaryPattern(path, pathGlobToRegex(path));
  }

  matches(path: string): boolean {
    return this.regex === undefined ? path === this.source : this.regex.test(path);
  }
}

function pathGlobToRegex(glob: string): RegExp {
  let out = "";
  let braces = 0;
  for (let i = 0; i < glob.length; i++) {
    const ch = glob[i]!;
    if (ch === "*") {
      if (glob[i + 1] === "*") {
        out += ".*";
        i++;
      } else out += "[^/]*";
    } else if (ch === "?") {
      out += "[^/]";
    } else if (ch === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) out += "\\[";
      else {
        let members = glob.slice(i + 1, end);
        const negated = members.startsWith("!");
        if (negated) members = members.slice(1);
        out += `[${negated ? "^" : ""}${members.replace(/[\\\]^]/g, (m) => `\\${m}`)}]`;
        i = end;
      }
    } else if (ch === "{") {
      braces++;
      out += "(?:";
    } else if (ch === "}" && braces > 0) {
      braces--;
      out += ")";
    } else if (ch === "," && braces > 0) {
      out += "|";
    } else {
      out += ch.replace(/[.*+?^${}()|[\]\\/]/g, (m) => `\\${m}`);
    }
  }
  try {
    return new RegExp(`^${out + ")".repeat(braces)}$`, "u");
  } catch {
    // A malformed class such as `[z-a]`: match nothing rather than fail the whole policy.
    return /(?!)/;
  }
}
