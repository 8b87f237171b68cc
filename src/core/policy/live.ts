// What a running sandbox's policy may become without a restart, and the
// policy's digest. The gateway refuses an update that breaks these rules
// before storing it, and the supervisor checks them again before applying
// what it is sent, so a change that only a restart could bring is never
// reported as in force.
//
// Only the network rules change on a running sandbox: the egress proxy reads
// them for each new connection. The filesystem (the pod's mounts), Landlock
// and the process identity are set when the pod starts. Upstream's gateway
// accepts paths added to the filesystem section and applies them only at the
// next start; here any filesystem change is refused, so what the policy says
// is what runs. Network rules cannot appear on a sandbox running without any
// either: such a sandbox has no egress proxy and no way out at all (see
// supervisor/egress/proxy.ts), and only a new pod gets one.

import { createHash } from "node:crypto";
import { SandboxPolicy } from "../../gen/sandbox.js";

const RESTART =
  "it is applied when the sandbox starts; keep that section as `openshell policy get NAME` shows it, or create a new sandbox with the new policy";

/** Why `next` cannot replace `current` on a running sandbox; undefined when it can. */
export function liveChangeProblem(current: SandboxPolicy, next: SandboxPolicy): string | undefined {
  const section = staticSectionChanged(current, next);
  if (section !== undefined) return `${section} cannot change on a running sandbox: ${RESTART}`;
  if (!hasNetworkRules(current) && hasNetworkRules(next)) {
    return "network rules cannot be added to a sandbox running without any: it has no egress proxy (no way out at all) until it starts with them; create a new sandbox with the new policy";
  }
  return undefined;
}

export function hasNetworkRules(policy: SandboxPolicy): boolean {
  return Object.keys(policy.networkPolicies).length > 0;
}

/** The first section that differs, as the policy file names it. */
function staticSectionChanged(a: SandboxPolicy, b: SandboxPolicy): string | undefined {
  const fs = (p: SandboxPolicy) =>
    p.filesystem === undefined
      ? null
      : {
          includeWorkdir: p.filesystem.includeWorkdir,
          readOnly: [...new Set(p.filesystem.readOnly)].sort(),
          readWrite: [...new Set(p.filesystem.readWrite)].sort(),
        };
  if (canonicalJson(fs(a)) !== canonicalJson(fs(b))) return "filesystem_policy";
  const landlock = (p: SandboxPolicy) => p.landlock?.compatibility || "best_effort";
  if (landlock(a) !== landlock(b)) return "landlock";
  const user = (p: SandboxPolicy) => [p.process?.runAsUser ?? "", p.process?.runAsGroup ?? ""].join(":");
  if (user(a) !== user(b)) return "process (run_as_user, run_as_group)";
  return undefined;
}

/** Lowercase hex SHA-256 of the policy's canonical JSON: equal policies, equal digests, whatever their map order. */
export function policyHash(policy: SandboxPolicy): string {
  return createHash("sha256")
    .update(canonicalJson(SandboxPolicy.toJSON(policy)))
    .digest("hex");
}

/** JSON with object keys sorted at every depth. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)))
      : v,
  );
}
