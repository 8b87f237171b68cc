// A sandbox's policy through the API: what is stored and in force
// (GetSandboxConfig, GetSandboxPolicyStatus), a new policy for a running
// sandbox (UpdateConfig, as upstream's clients send it), and the wait for the
// sandbox to apply it. Internal; `Sandbox.policy()` and `Sandbox.setPolicy()`
// are the public face.

import { stringify as stringifyYaml } from "yaml";
import { OpenShellError } from "../core/errors.js";
import { parsePolicyYaml } from "../core/policy/parse.js";
import { policyToDocument } from "../core/policy/serialize.js";
import { formatPolicyViolations, validatePolicy } from "../core/policy/validate.js";
import { PolicyStatus, SandboxPhase, UpdateConfigRequest, WatchSandboxRequest } from "../gen/openshell.js";
import type { SandboxPolicy } from "../gen/sandbox.js";
import { loadPolicyFile } from "../host/policy-file.js";
import { InvalidArgumentError, TimeoutError } from "./errors.js";
import type { Link } from "./link.js";

/** A policy as the API takes it: a policy file's path, or the document as an object (the YAML file's shape). */
export type PolicyInput = string | Record<string, unknown>;

/** What became of a policy revision: stored, in force, refused by the sandbox, or replaced before it was applied. */
export type PolicyRevisionStatus = "pending" | "loaded" | "failed" | "superseded" | "unknown";

export interface PolicyInfo {
  /** The revision stored now: 1 is the policy the sandbox was created with, each accepted change adds one. */
  revision: number;
  /** The revision the sandbox has in force (0 until it first started). */
  activeRevision: number;
  /** What became of `revision`. */
  status: PolicyRevisionStatus;
  /** Lowercase hex SHA-256 of the policy's canonical form. */
  hash: string;
  /** Why the sandbox did not apply `revision` (status `failed`). */
  loadError: string;
  /** The policy of `revision`, in the YAML file's shape. */
  policy: Record<string, unknown>;
}

export interface SetPolicyResult {
  revision: number;
  hash: string;
  /** False when the policy was the one stored already (no new revision). */
  changed: boolean;
}

export interface SetPolicyOptions {
  /** Resolve only once the sandbox has the new revision in force (or reject when it could not apply it). */
  wait?: boolean;
  /** Bounds the wait; 60 s by default, as upstream's `--timeout`. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

const STATUS_NAMES: Record<number, PolicyRevisionStatus> = {
  [PolicyStatus.POLICY_STATUS_PENDING]: "pending",
  [PolicyStatus.POLICY_STATUS_LOADED]: "loaded",
  [PolicyStatus.POLICY_STATUS_FAILED]: "failed",
  [PolicyStatus.POLICY_STATUS_SUPERSEDED]: "superseded",
};

/** The policy a caller gave, through the same parser and safety checks as a policy file. */
export async function policyOf(policy: PolicyInput | undefined): Promise<SandboxPolicy | undefined> {
  if (policy === undefined) return undefined;
  if (typeof policy === "string") return loadPolicyFile(policy);
  const parsed = parsePolicyYaml(stringifyYaml(policy), "policy");
  const violations = validatePolicy(parsed);
  if (violations.length > 0) {
    throw new InvalidArgumentError(`policy: ${formatPolicyViolations(violations)}`, { field: "policy" });
  }
  return parsed;
}

/** The sandbox's stored policy and what it has in force. */
export async function readPolicy(
  link: Link,
  name: string,
  id: string,
  options: { signal?: AbortSignal | undefined; revision?: number | undefined },
): Promise<PolicyInfo> {
  const { client, target } = await link.grpc();
  const call = options.signal ? { signal: options.signal } : {};
  const { revision, activeVersion } = await link.call(
    target,
    client.getSandboxPolicyStatus.bind(client),
    { name, version: options.revision ?? 0, global: false, workspace: link.workspace },
    call,
  );
  let policy = revision?.policy;
  if (policy === undefined && !options.revision) {
    policy = (await link.call(target, client.getSandboxConfig.bind(client), { sandboxId: id }, call)).policy;
  }
  if (revision === undefined || policy === undefined) {
    throw new OpenShellError("internal", `the gateway has no policy for sandbox '${name}'`);
  }
  return {
    revision: revision.version,
    activeRevision: activeVersion,
    status: STATUS_NAMES[revision.status] ?? "unknown",
    hash: revision.policyHash,
    loadError: revision.loadError,
    policy: policyToDocument(policy) as Record<string, unknown>,
  };
}

/** UpdateConfig with the whole policy, as upstream's CLI and SDK send it; with `wait`, until it is in force. */
export async function writePolicy(
  link: Link,
  name: string,
  id: string,
  input: PolicyInput,
  options: SetPolicyOptions,
): Promise<SetPolicyResult> {
  const policy = await policyOf(input);
  const { client, target } = await link.grpc();
  const call = options.signal ? { signal: options.signal } : {};
  const before = await readPolicy(link, name, id, options);
  const response = await link.call(
    target,
    client.updateConfig.bind(client),
    UpdateConfigRequest.fromPartial({ name, policy, global: false, workspace: link.workspace }),
    call,
  );
  const result = {
    revision: response.version,
    hash: response.policyHash,
    changed: response.version !== before.revision,
  };
  if (options.wait) await waitApplied(link, name, id, result.revision, options);
  return result;
}

/**
 * Waits until revision `revision` is in force: checked at once and again
 * after each change the gateway announces on the sandbox's watch (and each
 * second, for a gateway that announces none).
 */
async function waitApplied(
  link: Link,
  name: string,
  id: string,
  revision: number,
  options: SetPolicyOptions,
): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), timeoutMs);
  const signal = AbortSignal.any([stop.signal, ...(options.signal ? [options.signal] : [])]);
  let wake: (() => void) | undefined;
  /** Set by each change announced; a check starting after it has seen it. */
  let changed = false;
  const watching = (async () => {
    const request = WatchSandboxRequest.fromPartial({ id, followStatus: true });
    for await (const _event of link.watch(request, signal)) {
      changed = true;
      wake?.();
    }
  })();
  watching.catch(() => {}); // the second's tick stands in for a watch that fails
  signal.addEventListener("abort", () => wake?.(), { once: true });
  try {
    for (;;) {
      changed = false;
      const info = await readPolicy(link, name, id, { revision, signal: options.signal });
      if (info.activeRevision >= revision && info.status === "loaded") return;
      if (info.status === "failed") {
        throw new OpenShellError(
          "failed_precondition",
          `sandbox '${name}' did not apply policy revision ${revision}: ${info.loadError}`,
          {
            hint: `Revision ${info.activeRevision} stays in force; see it with \`openshell policy get ${name}\`.`,
          },
        );
      }
      if (info.status === "superseded") return;
      if (signal.aborted) break;
      // A change announced while this check ran: check again at once.
      if (changed) continue;
      await new Promise<void>((resolve) => {
        const tick = setTimeout(resolve, 1000);
        wake = () => {
          clearTimeout(tick);
          resolve();
        };
      });
    }
    options.signal?.throwIfAborted();
    const sandbox = await link.sandbox(name, options.signal ? { signal: options.signal } : {});
    const running = sandbox.status?.phase === SandboxPhase.SANDBOX_PHASE_READY;
    throw new TimeoutError(
      `sandbox '${name}' did not apply policy revision ${revision} within ${timeoutMs / 1000} s${running ? "" : " (it is not running: it applies it when it starts)"}`,
    );
  } finally {
    clearTimeout(timer);
    stop.abort();
  }
}
