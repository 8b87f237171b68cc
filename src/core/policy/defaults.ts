// The policy a sandbox gets when none is given: upstream's restrictive default, adapted to how this
// project runs sandboxes — bubblewrap over the host's own root filesystem rather than a container
// image built for the purpose.

import type { SandboxPolicy } from "../../gen/sandbox.js";

/**
 * Compared with upstream's default (`/usr /lib /proc /dev/urandom /app /etc /var/log` read-only):
 * - `/app` and `/var/log` are dropped. In upstream's container they belong to the image; here they
 *   are the host's, and the host's logs (auth, journal, other services) must not leak into a sandbox.
 * - `/bin`, `/sbin` and `/lib64` are added. On merged-usr hosts (Debian, Ubuntu, Fedora) they are
 *   symlinks into `/usr`; without them `/bin/sh` and the dynamic loader (`/lib64/ld-linux-x86-64.so.2`)
 *   do not resolve and nothing starts. A path that does not exist on a host is the runtime's to skip.
 * Everything else is upstream's: the workspace read-write through `include_workdir`, private `/tmp`,
 * Landlock best effort, the process identity left to the runtime, and no network policies at all,
 * so every egress connection is denied.
 */
export function defaultPolicy(): SandboxPolicy {
  return {
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
  };
}

/**
 * Where an image carries its own policy, used when a create gives none (as upstream's supervisor
 * looks): upstream's path first, then its legacy one, which community images still use.
 */
export const IMAGE_POLICY_PATHS: readonly string[] = [
  "/etc/openshell/policy.yaml",
  "/etc/navigator/policy.yaml",
];

/** The default policy as a frozen value; use `defaultPolicy()` for a copy to modify. */
export const DEFAULT_POLICY: Readonly<SandboxPolicy> = deepFreeze(defaultPolicy());

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
