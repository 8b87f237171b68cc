// A sandbox's policy over its life: the revisions the gateway stores (1 is
// the policy it was created with), what a user reads and changes
// (GetSandboxConfig, UpdateConfig, GetSandboxPolicyStatus), and what its
// supervisor is sent and reports back (WatchSandboxConfig, ReportPolicyStatus).
//
//   UpdateConfig accepted       → revision N+1 stored PENDING (older pending ones SUPERSEDED),
//                                 the sandbox's spec.policy is N+1, its watchers are told
//   supervisor applied it        → LOADED; status.current_policy_version = N+1 (in force)
//   supervisor could not         → FAILED with its words; the revision in force stays
//
// Only network rules change on a running sandbox (core/policy/live.ts); an
// update that needs a restart is refused before anything is stored. A
// stopped sandbox takes the update too, and starts with it. The revisions are
// in the store, so a gateway restart keeps them and what is in force.

import { status } from "@grpc/grpc-js";
import { defaultPolicy, liveChangeProblem, policyHash } from "../core/policy.js";
import {
  type GetSandboxPolicyStatusRequest,
  type GetSandboxPolicyStatusResponse,
  PolicyStatus,
  type ReportPolicyStatusRequest,
  type Sandbox,
  type SandboxPolicyRevision,
  type UpdateConfigRequest,
  type UpdateConfigResponse,
} from "../gen/openshell.js";
import { type GetSandboxConfigResponse, PolicySource } from "../gen/sandbox.js";
import { REPORT_TEXT_MAX } from "../runtime/contract.js";
import type { SandboxBus } from "./bus.js";
import { checkPolicy, type Sandboxes } from "./sandboxes.js";
import { invalidArgument, StatusError } from "./status.js";
import type { Store, StoredPolicyRevision } from "./store.js";

const unimplemented = (details: string): StatusError => new StatusError(status.UNIMPLEMENTED, details);

export class Policies {
  constructor(
    private readonly store: Store,
    private readonly bus: SandboxBus,
    private readonly sandboxes: Sandboxes,
  ) {}

  /** The latest revision; a sandbox stored before revisions were kept gets its policy as revision 1. */
  latest(sandbox: Sandbox): StoredPolicyRevision {
    const id = sandbox.metadata!.id;
    const stored = this.store.policyRevision(id);
    if (stored) return stored;
    const policy = sandbox.spec?.policy ?? defaultPolicy();
    const first: StoredPolicyRevision = {
      version: 1,
      hash: policyHash(policy),
      policy,
      status: PolicyStatus.POLICY_STATUS_PENDING,
      loadError: "",
      createdAtMs: sandbox.metadata!.createdAtMs,
      loadedAtMs: 0,
    };
    this.store.addPolicyRevision(sandbox, first);
    return first;
  }

  config(sandbox: Sandbox): GetSandboxConfigResponse {
    const revision = this.latest(sandbox);
    return {
      policy: revision.policy,
      version: revision.version,
      policyHash: revision.hash,
      settings: {},
      configRevision: revision.version,
      policySource: PolicySource.POLICY_SOURCE_SANDBOX,
      globalPolicyVersion: 0,
      workspace: sandbox.metadata!.workspace,
    };
  }

  update(request: UpdateConfigRequest): UpdateConfigResponse {
    const policy = request.policy;
    const hasSetting = request.settingKey.trim() !== "" || request.deleteSetting;
    const mutations = [policy !== undefined, hasSetting, request.mergeOperations.length > 0];
    if (mutations.filter(Boolean).length > 1) {
      throw invalidArgument("policy, setting_key, and merge_operations are mutually exclusive");
    }
    if (request.global) {
      throw unimplemented("this gateway has no gateway-global policy or settings: update a sandbox's policy");
    }
    if (hasSetting)
      throw unimplemented("this gateway has no settings: only a sandbox's policy can be updated");
    if (request.mergeOperations.length > 0) {
      throw unimplemented("merge_operations are not supported by this gateway: send the whole policy");
    }
    if (policy === undefined) {
      throw invalidArgument("one of policy, setting_key, or merge_operations must be provided");
    }
    if (Object.keys(request.annotations).length > 0) {
      throw unimplemented("this gateway keeps no annotations with a policy revision: send none");
    }
    if (request.name === "") throw invalidArgument("name is required for sandbox-scoped updates");
    const sandbox = this.sandboxes.get(request.workspace, request.name);
    const meta = sandbox.metadata!;
    if (request.expectedResourceVersion !== 0 && request.expectedResourceVersion !== meta.resourceVersion) {
      throw new StatusError(
        status.ABORTED,
        `sandbox '${meta.name}' is at resource version ${meta.resourceVersion}, not ${request.expectedResourceVersion}: read it again`,
      );
    }
    checkPolicy(policy);
    const current = this.latest(sandbox);
    const hash = policyHash(policy);
    if (hash === current.hash) return this.answer(sandbox, current);
    const problem = liveChangeProblem(current.policy, policy);
    if (problem) throw new StatusError(status.FAILED_PRECONDITION, problem);
    const revision: StoredPolicyRevision = {
      version: current.version + 1,
      hash,
      policy,
      status: PolicyStatus.POLICY_STATUS_PENDING,
      loadError: "",
      createdAtMs: Date.now(),
      loadedAtMs: 0,
    };
    meta.resourceVersion += 1;
    sandbox.spec = { ...sandbox.spec!, policy };
    this.store.addPolicyRevision(sandbox, revision);
    this.bus.publishStatus(meta.id);
    this.sandboxes.event(
      meta.id,
      "PolicyUpdated",
      `policy revision ${revision.version} stored (sha256 ${hash.slice(0, 12)})`,
    );
    return this.answer(sandbox, revision);
  }

  private answer(sandbox: Sandbox, revision: StoredPolicyRevision): UpdateConfigResponse {
    return {
      version: revision.version,
      policyHash: revision.hash,
      settingsRevision: 0,
      deleted: false,
      annotations: sandbox.metadata!.annotations,
    };
  }

  status(request: GetSandboxPolicyStatusRequest): GetSandboxPolicyStatusResponse {
    if (request.global) throw unimplemented("this gateway has no gateway-global policy");
    if (request.name === "") throw invalidArgument("name is required");
    const sandbox = this.sandboxes.get(request.workspace, request.name);
    const latest = this.latest(sandbox);
    const revision =
      request.version === 0 ? latest : this.store.policyRevision(sandbox.metadata!.id, request.version);
    if (!revision) {
      throw new StatusError(
        status.NOT_FOUND,
        `no policy revision ${request.version} for this sandbox (the latest is ${latest.version})`,
      );
    }
    return {
      revision: wireRevision(revision),
      activeVersion: sandbox.status?.currentPolicyVersion ?? 0,
    };
  }

  /** What the supervisor made of a revision it was sent. */
  report(sandboxId: string, request: ReportPolicyStatusRequest): void {
    const loaded = request.status === PolicyStatus.POLICY_STATUS_LOADED;
    if (!loaded && request.status !== PolicyStatus.POLICY_STATUS_FAILED) {
      throw invalidArgument("status must be POLICY_STATUS_LOADED or POLICY_STATUS_FAILED");
    }
    const loadError = loaded ? "" : request.loadError.slice(0, REPORT_TEXT_MAX);
    if (!this.store.setPolicyStatus(sandboxId, request.version, request.status, loadError, Date.now())) {
      throw new StatusError(status.NOT_FOUND, `no policy revision ${request.version} for this sandbox`);
    }
    const sandbox = this.store.getSandbox(sandboxId);
    if (!sandbox?.status) return;
    if (loaded && sandbox.status.currentPolicyVersion !== request.version) {
      sandbox.status.currentPolicyVersion = request.version;
      this.store.updateSandbox(sandbox);
    }
    this.bus.publishStatus(sandboxId);
    if (!loaded) {
      this.sandboxes.event(
        sandboxId,
        "PolicyFailed",
        `policy revision ${request.version} was not applied: ${loadError}`,
        {},
        "Warning",
      );
    }
  }

  /**
   * Sends the sandbox's configuration now and again whenever its policy
   * revision changes, until the returned function is called or the sandbox
   * is deleted (`ended`).
   */
  watch(id: string, send: (config: GetSandboxConfigResponse) => void, ended: () => void): () => void {
    let sent = 0;
    const push = (): void => {
      const sandbox = this.store.getSandbox(id);
      if (!sandbox) return;
      const config = this.config(sandbox);
      if (config.version === sent) return;
      sent = config.version;
      send(config);
    };
    const unsubscribe = this.bus.subscribe(id, { status: push, deleted: ended });
    push();
    return unsubscribe;
  }
}

function wireRevision(revision: StoredPolicyRevision): SandboxPolicyRevision {
  return {
    version: revision.version,
    policyHash: revision.hash,
    status: revision.status,
    loadError: revision.loadError,
    createdAtMs: revision.createdAtMs,
    loadedAtMs: revision.loadedAtMs,
    policy: revision.policy,
    provenance: {},
  };
}
