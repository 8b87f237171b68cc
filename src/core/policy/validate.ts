// Whether a policy is safe to enforce: the rules upstream's gateway applies to every policy it
// receives (`validate_sandbox_policy` plus the reserved-key check), run by our CLI before sending
// and by our gateway on receipt. Every violation is reported, each prefixed with where it is
// (`network_policies.pypi.endpoints[0]: ...`), the rest in upstream's words.

import { isIP } from "node:net";
import { posix } from "node:path";
import { type FilesystemPolicy, type NetworkEndpoint, SandboxPolicy } from "../../gen/sandbox.js";
import { HostPattern, HostSelector } from "./host-pattern.js";
import { isExplicitTcp, l7EndpointErrors } from "./l7.js";
import { indexPath, keyPath, sortedEntries } from "./location.js";

export const MAX_FILESYSTEM_PATHS = 256;
export const MAX_PATH_BYTES = 4096;
export const MIN_SANDBOX_ID = 1;
/** 4294967295 (u32 max) is the "no change / invalid" identity in Linux APIs, so it is refused. */
export const MAX_SANDBOX_ID = 4_294_967_294;
export const MAX_MIDDLEWARE_CONFIGS = 10;
export const MAX_MIDDLEWARE_SELECTOR_PATTERNS = 32;
/** Upstream's limit on `CreateSandboxRequest.spec.policy`, encoded. */
export const MAX_POLICY_ENCODED_BYTES = 262_144;
/** Network policy keys the gateway reserves for rules it derives from providers. */
export const PROVIDER_RULE_PREFIX = "_provider_";

/** The gateway's INVALID_ARGUMENT message for a policy with violations. */
export function formatPolicyViolations(violations: readonly string[]): string {
  return `policy contains unsafe content: ${violations.join("; ")}`;
}

/** Every safety violation in `policy`; empty when it may be enforced. */
export function validatePolicy(policy: SandboxPolicy): string[] {
  const violations: string[] = [];

  for (const key of Object.keys(policy.networkPolicies).sort()) {
    if (key.startsWith(PROVIDER_RULE_PREFIX)) {
      violations.push(
        `network_policies key '${key}' uses reserved '${PROVIDER_RULE_PREFIX}' prefix for provider composition; rename it`,
      );
    }
  }

  // Omitted identities are left to the runtime; explicit ones must be `sandbox` or a non-root id.
  if (policy.process !== undefined) {
    for (const [field, value] of [
      ["run_as_user", policy.process.runAsUser],
      ["run_as_group", policy.process.runAsGroup],
    ] as const) {
      if (value !== "" && !isValidSandboxIdentity(value)) {
        violations.push(
          `process.${field} must be 'sandbox' or a numeric UID/GID in range [${MIN_SANDBOX_ID}, ${MAX_SANDBOX_ID}], got '${value}'`,
        );
      }
    }
  }

  if (policy.filesystem !== undefined) violations.push(...filesystemViolations(policy.filesystem));

  for (const [key, rule] of sortedEntries(policy.networkPolicies)) {
    // Upstream names the rule by its `name`; we name the key, which is what the policy file shows.
    rule.endpoints.forEach((endpoint, index) => {
      const where = indexPath(keyPath(keyPath("network_policies", key), "endpoints"), index);
      for (const reason of endpointViolations(endpoint)) violations.push(`${where}: ${reason}`);
    });
  }

  violations.push(...middlewareViolations(policy));
  return violations;
}

/** Where the shell every exec, connect and command-less sandbox runs is, with its merged-usr home. */
const SHELL_PATHS = ["/bin/bash", "/usr/bin/bash"];

/**
 * This runtime's rule on top of upstream's: nothing outside the policy exists in a pod and
 * `read_write` paths start as empty private directories, so a filesystem policy whose `read_only`
 * paths hold no shell (`read_write: [/etc]` alone) makes a sandbox that would report Ready and fail
 * at its first command. Undefined when some `read_only` path covers the shell (whether its
 * libraries are there too is tried in the pod, before Ready).
 */
export function shelllessFilesystemViolation(fs: FilesystemPolicy | undefined): string | undefined {
  if (fs === undefined) return undefined;
  const readOnly = fs.readOnly.map((path) => posix.normalize(path).replace(/(.)\/+$/, "$1"));
  const covered = SHELL_PATHS.some((shell) =>
    readOnly.some((dir) => shell === dir || shell.startsWith(`${dir}/`)),
  );
  if (covered) return undefined;
  return "filesystem_policy.read_only: covers neither /usr nor /bin, so the sandbox has no shell (/bin/bash) for its command, exec or connect (read_write paths start empty); add /usr, /bin, /lib and /lib64";
}

/** The one policy schema version there is. */
export const POLICY_VERSION = 1;

/**
 * What to tell the user about a policy `version` other than 1. Upstream checks the value nowhere,
 * so a policy saying `version: 2` is accepted, and read as version 1: a warning, not a refusal.
 * 0 is a request that left the field unset (protobuf's default), not a version.
 */
export function policyVersionWarning(policy: SandboxPolicy): string | undefined {
  if (policy.version === 0 || policy.version === POLICY_VERSION) return undefined;
  return `version: ${policy.version} is unknown; it is read as version ${POLICY_VERSION}, the only version there is (set version: ${POLICY_VERSION})`;
}

/** Upstream's size cap on the policy in a create request, as a violation, or undefined. */
export function policySizeViolation(policy: SandboxPolicy): string | undefined {
  const size = SandboxPolicy.encode(policy).finish().length;
  return size > MAX_POLICY_ENCODED_BYTES
    ? `policy serialized size exceeds maximum (${size} > ${MAX_POLICY_ENCODED_BYTES})`
    : undefined;
}

/** `sandbox`, or a decimal id in [1, 4294967294] (Rust's u32 parsing: digits, optional leading `+`). */
export function isValidSandboxIdentity(value: string): boolean {
  if (value === "sandbox") return true;
  if (!/^\+?[0-9]+$/.test(value)) return false;
  const id = Number(value);
  return id >= MIN_SANDBOX_ID && id <= MAX_SANDBOX_ID;
}

/**
 * Why the root cannot be a policy path (the mount planner refuses it with
 * these words too): a bind of the host's `/` is the host, not a sandbox.
 */
export function wholeFilesystemReason(list: "read_only" | "read_write"): string {
  return `${list} "/" would expose the host's whole filesystem; list the directories the sandbox needs`;
}

function filesystemViolations(fs: { readOnly: string[]; readWrite: string[] }): string[] {
  const violations: string[] = [];
  const total = fs.readOnly.length + fs.readWrite.length;
  if (total > MAX_FILESYSTEM_PATHS) {
    violations.push(`filesystem_policy: too many filesystem paths (${total} > ${MAX_FILESYSTEM_PATHS})`);
  }
  const lists = [
    ["read_only", fs.readOnly],
    ["read_write", fs.readWrite],
  ] as const;
  for (const [list, paths] of lists) {
    paths.forEach((path, index) => {
      const where = indexPath(`filesystem_policy.${list}`, index);
      const bytes = Buffer.byteLength(path, "utf8");
      if (bytes > MAX_PATH_BYTES) {
        violations.push(
          `${where}: path exceeds maximum length (${bytes} > ${MAX_PATH_BYTES}): ${truncateForDisplay(path)}`,
        );
        return;
      }
      if (!path.startsWith("/")) violations.push(`${where}: path must be absolute (start with '/'): ${path}`);
      if (path.split("/").includes("..")) {
        violations.push(`${where}: path contains '..' traversal component: ${path}`);
      }
      if (list === "read_only" && path.startsWith("/") && path.replace(/\/+$/, "") === "") {
        violations.push(`${where}: ${wholeFilesystemReason(list)}`);
      }
    });
  }
  fs.readWrite.forEach((path, index) => {
    // `/`, `//`, ... : the whole filesystem writable is never what a sandbox should get.
    if (path.replace(/\/+$/, "") === "") {
      violations.push(
        `${indexPath("filesystem_policy.read_write", index)}: read-write path is overly broad: ${path}`,
      );
    }
  });
  return violations;
}

function endpointViolations(ep: NetworkEndpoint): string[] {
  const violations: string[] = [];
  const host = ep.host;
  const explicitTcp = isExplicitTcp(ep.protocol);
  const hostless = host.trim() === "";

  if (hostless && explicitTcp) {
    violations.push(
      "protocol tcp requires a DNS hostname; hostless allowed_ips endpoints are supported only by the forward proxy",
    );
  } else if (hostless && ep.allowedIps.length === 0) {
    violations.push("endpoint host must not be empty unless allowed_ips constrains a non-TCP proxy endpoint");
  } else if (explicitTcp) {
    if (isIP(host) !== 0) {
      violations.push(
        `protocol tcp endpoint '${host}' must use a DNS hostname, not an IP literal; direct IP connections bypass policy DNS and are blocked`,
      );
    } else {
      const reason = tcpDnsHostProblem(host);
      if (reason !== undefined) {
        violations.push(`protocol tcp endpoint has invalid DNS host selector '${host}': ${reason}`);
      }
    }
  }

  const ports = ep.ports.length > 0 ? ep.ports : ep.port !== 0 ? [ep.port] : [];
  if (ports.length === 0) violations.push(`endpoint '${host}' must declare at least one port`);
  for (const port of ports) {
    if (port < 1 || port > 65_535)
      violations.push(`endpoint '${host}' has invalid port ${port}; expected 1..=65535`);
  }

  // `*.com` or `**.com` would open a whole top-level domain.
  if ((host.startsWith("*.") || host.startsWith("**.")) && host.split(".").length <= 2) {
    violations.push(
      `TLD wildcard '${host}' is not allowed; use subdomain wildcards like '*.example.com' instead`,
    );
  }
  if (hostWildcardShapeInvalid(host)) {
    violations.push(
      `invalid host wildcard '${host}'; middle DNS label wildcards must be the entire label '*' and recursive '**' is only allowed as the entire first label`,
    );
  }

  if (ep.credentialSigning !== "") {
    if (!["sigv4", "sigv4:body", "sigv4:no_body"].includes(ep.credentialSigning)) {
      violations.push(
        `endpoint '${host}' has unrecognized credential_signing value '${ep.credentialSigning}' (expected sigv4, sigv4:body, or sigv4:no_body)`,
      );
    }
    if (ep.signingService === "") {
      violations.push(`endpoint '${host}' has credential_signing set but signing_service is empty`);
    }
    if (ep.requestBodyCredentialRewrite) {
      violations.push(
        `endpoint '${host}' has both credential_signing and request_body_credential_rewrite set; these options are mutually exclusive`,
      );
    }
  }

  for (const reason of l7EndpointErrors(ep)) violations.push(`invalid L7 configuration: ${reason}`);
  return violations;
}

/**
 * Wildcards must match what the runtime does: `*` and `**` alone match nothing sensible, `**` is
 * only the whole first label, and a later label may only be a bare `*`.
 */
function hostWildcardShapeInvalid(host: string): boolean {
  if (host === "*" || host === "**") return true;
  if (!host.includes("*")) return false;
  const [first = "", ...rest] = host.split(".");
  if (first.includes("**") && first !== "**") return true;
  return rest.some((label) => label.includes("**") || (label.includes("*") && label !== "*"));
}

/** Why policy DNS could not resolve names matching this explicit-TCP host selector, if it could not. */
function tcpDnsHostProblem(host: string): string | undefined {
  if (host.trim() !== host) return "leading or trailing whitespace is not allowed";
  if (host.endsWith(".")) return "omit the trailing DNS root dot";
  const pattern = HostPattern.compile(host);
  if (typeof pattern === "string") return pattern;
  // Wildcards stand for some label; check the name they would produce.
  const representative = host
    .split(".")
    .map((label) => (label === "**" ? "x" : label.replaceAll("*", "x")))
    .join(".");
  if (!/^[\x21-\x7e]*$/.test(representative)) {
    return "selector cannot represent a valid DNS name: labels must be ASCII (use the punycode form)";
  }
  const longLabel = representative.split(".").find((label) => label.length > 63);
  if (longLabel !== undefined) {
    return `selector cannot represent a valid DNS name: label exceeds 63 characters: ${truncateForDisplay(longLabel)}`;
  }
  if (representative.length > 253) {
    return "selector cannot represent a valid DNS name: name exceeds 253 characters";
  }
  return undefined;
}

function middlewareViolations(policy: SandboxPolicy): string[] {
  const violations: string[] = [];
  const middlewares = sortedEntries(policy.networkMiddlewares);
  if (middlewares.length > MAX_MIDDLEWARE_CONFIGS) {
    violations.push(
      `network_middlewares: too many middleware configs (${middlewares.length} > ${MAX_MIDDLEWARE_CONFIGS})`,
    );
  }
  const orders = new Map<number, string>();
  for (const [name, config] of middlewares) {
    const where = name === "" ? "network_middlewares" : keyPath("network_middlewares", name);
    const invalid = (reason: string) =>
      violations.push(`${where}: middleware config '${name}' is invalid: ${reason}`);
    if (name === "") invalid("name must not be empty");

    const first = orders.get(config.order);
    if (first === undefined) orders.set(config.order, name);
    else {
      violations.push(
        `${where}: middleware configs '${first}' and '${name}' use duplicate order ${config.order}`,
      );
    }

    if (config.middleware === "") invalid("middleware must not be empty");
    if (!["", "fail_closed", "fail_open"].includes(config.onError))
      invalid(`invalid on_error '${config.onError}'`);

    const selector = config.endpoints;
    if (selector === undefined) {
      invalid("endpoint selector is required");
      continue;
    }
    if (selector.include.length === 0) invalid("endpoint selector must include at least one host pattern");
    const patternCount = selector.include.length + selector.exclude.length;
    if (patternCount > MAX_MIDDLEWARE_SELECTOR_PATTERNS) {
      violations.push(
        `${where}: middleware config '${name}' has too many selector patterns (${patternCount} > ${MAX_MIDDLEWARE_SELECTOR_PATTERNS})`,
      );
      continue;
    }
    let selectorValid = selector.include.length > 0;
    for (const pattern of [...selector.include, ...selector.exclude]) {
      const compiled = HostPattern.compile(pattern);
      if (typeof compiled === "string") {
        selectorValid = false;
        invalid(`endpoint selector pattern '${pattern}' is invalid: ${compiled}`);
      }
    }
    const compiledSelector = selectorValid
      ? HostSelector.compile(selector.include, selector.exclude)
      : undefined;

    // A fail-closed middleware must inspect what it selects; an endpoint with `tls: skip` is never
    // decrypted, so selecting it would block its traffic.
    const requiresInspection = config.onError === "" || config.onError === "fail_closed";
    if (!requiresInspection || compiledSelector === undefined || typeof compiledSelector === "string")
      continue;
    for (const [key, rule] of sortedEntries(policy.networkPolicies)) {
      const policyName = rule.name === "" ? key : rule.name;
      for (const endpoint of rule.endpoints) {
        if (endpoint.tls !== "skip") continue;
        const endpointPattern = HostPattern.compile(endpoint.host);
        if (typeof endpointPattern !== "string" && compiledSelector.mayMatchPattern(endpointPattern)) {
          violations.push(
            `${where}: middleware config '${name}' selects network policy '${policyName}' tls: skip endpoint '${endpoint.host}'`,
          );
        }
      }
    }
  }
  return violations;
}

/** At most 80 characters, cut at a character boundary, for long values in messages. */
function truncateForDisplay(text: string): string {
  if (Buffer.byteLength(text, "utf8") <= 80) return text;
  let cut = "";
  for (const ch of text) {
    if (Buffer.byteLength(cut + ch, "utf8") > 77) break;
    cut += ch;
  }
  return `${cut}...`;
}
