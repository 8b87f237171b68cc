// Sandbox lifecycle in the gateway: create, look up, list, delete, and every
// phase change, persisted before it is announced on the watch bus.
//
//   create persisted                        → PROVISIONING
//   supervisor session connected            → READY (Ready=True DependenciesReady)
//   session lost while READY                → PROVISIONING (DependenciesNotReady)
//   agent silent for 2 s while READY        → PROVISIONING (AgentUnresponsive)
//   that agent responds again               → READY (DependenciesReady)
//   main process exited (any status)        → phase unchanged; exit_code and
//                                             MainCommand=True Completed "exit status N"
//   supervisor failed (bad file, no binary) → ERROR (its reason)
//   delete                                  → DELETING → row removed
//   stop (from any phase but DELETING)      → STOPPING → STOPPED (Stopped)
//   start (from STOPPED or ERROR)           → STARTING → READY as above
//   lifetime over (expires_at_ms passed)    → deleted, as by delete
//
// A completed main command is not a failure (upstream makes it ERROR, even
// for 0): the pod keeps running, so exec, upload, download and logs still
// serve, and `sandbox wait` reads the status. A new run (start, a relaunch)
// forgets it.
//
// ERROR is sticky: only start (a new run of the main command) or delete
// leave it. STOPPED keeps everything but processes: the workspace, injected
// files, policy and limits; it holds across gateway restarts, as does an
// expiry (an expired sandbox found at start is deleted, not started). A
// sandbox whose command had completed comes back from a gateway restart
// Stopped, its status kept: its command is not run again unasked.
//
// An unresponsive agent (frozen by SIGSTOP, or its event loop stuck) is not
// an error: nothing is lost while it is stopped, and a SIGCONT, or the end of
// a stall on a loaded host, brings it back. Until then exec, connect and
// upload are refused at once ("not ready") instead of hanging.

import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { status } from "@grpc/grpc-js";
import { messageOf } from "../core/errors.js";
import { effectiveMode, normalizeSandboxPath, sha256Hex, validateSandboxFiles } from "../core/files.js";
import { formatTtl, TTL_MAX_SECONDS } from "../core/lifetime.js";
import {
  effectiveLimits,
  formatQuantity,
  type Limits,
  limitsToResources,
  resourcesToLimits,
} from "../core/limits.js";
import {
  generateSandboxName,
  imageReference,
  parseSelector,
  validateCommand,
  validateEnvironment,
  validateLabels,
  validateSandboxName,
} from "../core/names.js";
import {
  clearMainCommand,
  mainExitStatus,
  newSandboxStatus,
  notReadyMessage,
  phaseOf,
  setMainCommandCompleted,
  setPhase,
  setReadyCondition,
} from "../core/phases.js";
import {
  defaultPolicy,
  formatPolicyViolations,
  parsePolicyYaml,
  policySizeViolation,
  policyVersionWarning,
  shelllessFilesystemViolation,
  validatePolicy,
} from "../core/policy.js";
import {
  ANNOTATION_IMAGE_DIGEST,
  ANNOTATION_START_ON_ATTACH,
  ANNOTATION_TTY_SIZE,
  parseTtySize,
} from "../core/protocol.js";
import {
  type CreateSandboxRequest,
  type ImageInfo,
  type PlatformEvent,
  type Sandbox,
  type SandboxFile,
  SandboxPhase,
  type SandboxSpec,
  SandboxTemplate,
  type SandboxUsage,
} from "../gen/openshell.js";
import type { SandboxPolicy } from "../gen/sandbox.js";
import {
  CgroupError,
  cgroupUsage,
  createSandboxCgroups,
  execGroupOf,
  findSandboxCgroups,
  procsFiles,
  type SandboxCgroups,
} from "../runtime/cgroups.js";
import type { SupervisorLaunch, SupervisorReport } from "../runtime/contract.js";
import { fileContentPath, readFileContent, writeFileContent } from "../runtime/file-content.js";
import { guestDiskMountPoint } from "../runtime/guest-disk.js";
import type { SandboxBus } from "./bus.js";
import type { ComputeDriver } from "./driver.js";
import { ImagePullError, type ImageStore, imagePolicyFile, type StoredImage } from "./images.js";
import type { RelayHub } from "./relay.js";
import { failedPrecondition, invalidArgument, notFound, StatusError } from "./status.js";
import type { Store } from "./store.js";
import type { UidHolder, UidLeases } from "./uid-lease.js";

export const DEFAULT_WORKSPACE = "default";
export const DEFAULT_COMMAND = ["/bin/bash", "-l"];
export const LIST_DEFAULT = 100;
export const LIST_MAX = 1000;

/** A sandbox id (randomUUID), as its directory is named. */
const SANDBOX_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const MiB = 1024 * 1024;
const EXT4_SUPER_MAGIC = 0xef53;

export interface SandboxesOptions {
  store: Store;
  bus: SandboxBus;
  relay: RelayHub;
  /** What runs the sandboxes' supervisors (driver.ts). */
  runtime: ComputeDriver;
  appRoot: string;
  /** The size of each sandbox's own filesystem (root gateways; see guest-disk.ts) unless it asks another. */
  diskBytes: number;
  /** Limits a sandbox gets when it asks none (a process limit always), and the most it may ask. */
  limits: { defaults: Limits; maxima: Limits };
  /**
   * Creates are refused while the filesystem holding the gateway's state has
   * less free than this: images are sparse, so sandboxes' disks together may
   * promise more than the host has, and the store must keep room to work.
   */
  minFreeBytes: number;
  /** The host-wide uid ledger; root gateways only. */
  uidLeases?: UidLeases | undefined;
  /** Lifetimes in seconds: given when a create asks for none, and the longest allowed (0: none). */
  ttl?: { defaultSeconds: number; maxSeconds: number } | undefined;
  /** Called when a sandbox's processes go (stop, delete, expiry): connections to it are dropped. */
  released?: ((sandboxId: string) => void) | undefined;
  /**
   * How long a restarted gateway waits for a running sandbox's supervisor to
   * reconnect before it stops it and turns the sandbox to Error
   * (SupervisorLost); 30 s unless set.
   */
  adoptTimeoutMs?: number | undefined;
  /** Where sandboxes' images are pulled and kept (`--from`); without it, a create naming an image is refused. */
  images?: ImageStore | undefined;
  log(level: "INFO" | "WARN" | "ERROR", message: string, sandboxId?: string): void;
}

/** setTimeout's longest delay; a later expiry is waited for in steps. */
const TIMER_MAX_MS = 2 ** 31 - 1;

/** Present in a sandbox's directory while its create call has not returned. */
function creatingMarker(sandboxDir: string): string {
  return join(sandboxDir, "creating");
}

function workspaceOf(value: string): string {
  return value === "" ? DEFAULT_WORKSPACE : value;
}

/** Refuses (INVALID_ARGUMENT) a policy the gateway would not enforce: at create, and for a live update. */
export function checkPolicy(policy: SandboxPolicy): void {
  const problem = policyProblem(policy);
  if (problem) throw invalidArgument(problem);
}

export class Sandboxes {
  private readonly deleting = new Map<string, Promise<void>>();
  /** Set while the gateway stops: supervisors exiting then are expected. */
  private shuttingDown = false;
  /** Sandboxes whose agent their supervisor reports unresponsive. */
  private readonly unresponsive = new Set<string>();
  /** Stops and starts under way, one at a time per sandbox. */
  private readonly transitions = new Map<string, Promise<unknown>>();
  /** One timer per sandbox with an expiry. */
  private readonly expiryTimers = new Map<string, NodeJS.Timeout>();
  /** Creates whose files' content is still being written; GetSandboxFiles waits on them. */
  private readonly storing = new Map<string, Promise<void>>();
  /** Sandboxes' control groups as made at create or start, so an exec or get need not look for them. */
  private readonly cgroups = new Map<string, SandboxCgroups>();
  /** Sandboxes whose supervisor this gateway adopted and awaits, with the bound's timer. */
  private readonly adopting = new Map<string, NodeJS.Timeout>();

  constructor(private readonly o: SandboxesOptions) {}

  // ---- lookups ----------------------------------------------------------

  get(workspace: string, name: string): Sandbox {
    if (name === "") throw invalidArgument("name is required");
    const sandbox = this.o.store.getSandboxByName(workspaceOf(workspace), name);
    if (!sandbox) throw notFound();
    return sandbox;
  }

  byId(id: string): Sandbox {
    if (id === "") throw invalidArgument("sandbox_id is required");
    const sandbox = this.o.store.getSandbox(id);
    if (!sandbox) throw notFound();
    return sandbox;
  }

  list(request: {
    limit: number;
    offset: number;
    labelSelector: string;
    workspace: string;
    allWorkspaces: boolean;
  }): Sandbox[] {
    if (request.allWorkspaces && request.workspace !== "") {
      throw invalidArgument("all_workspaces and workspace are mutually exclusive");
    }
    const limit = request.limit === 0 ? LIST_DEFAULT : Math.min(request.limit, LIST_MAX);
    let labels: Record<string, string> = {};
    if (request.labelSelector.trim() !== "") {
      try {
        labels = parseSelector(request.labelSelector);
      } catch (error) {
        throw invalidArgument((error as Error).message);
      }
    }
    return this.o.store.listSandboxes({
      ...(request.allWorkspaces ? {} : { workspace: workspaceOf(request.workspace) }),
      labels,
      limit,
      offset: request.offset,
    });
  }

  // ---- create -----------------------------------------------------------

  /** Checks a create request with the same rules the CLI applies before sending. */
  validate(request: CreateSandboxRequest): void {
    const spec = request.spec;
    if (!spec) throw invalidArgument("spec is required");
    const checks = [
      request.name === "" ? undefined : validateSandboxName(request.name),
      validateLabels(request.labels),
      validateEnvironment(spec.environment, "spec.environment"),
      spec.command.length === 0 ? undefined : validateCommand(spec.command),
      validateSandboxFiles(spec.files),
      spec.logLevel.length > 32 ? "spec.log_level exceeds 32 bytes" : undefined,
      spec.providers.length > 32 ? "spec.providers exceeds 32 entries" : undefined,
    ];
    const first = checks.find((message) => message !== undefined);
    if (first) throw invalidArgument(first);
    refuseUnhonoured(spec, this.o.images !== undefined || this.o.runtime.pullsImages);
    const unhonoured = this.o.runtime.refuseTemplate({ spec });
    if (unhonoured) throw new StatusError(status.UNIMPLEMENTED, unhonoured);
    this.limitsOf(spec.template?.resources);
    if (spec.providers.length > 0) {
      throw new StatusError(status.FAILED_PRECONDITION, `provider '${spec.providers[0]}' not found`);
    }
    if (spec.policy) checkPolicy(spec.policy);
  }

  /**
   * The policy the image of a create carries (`/etc/openshell/policy.yaml`,
   * as upstream), for a create that gives none; undefined when it has none.
   * One that cannot be used is refused, naming the image and the file, where
   * upstream falls back to its restrictive default: the sandbox would not be
   * the one the image describes.
   */
  private bakedPolicy(
    source: string,
    image: StoredImage,
  ): { policy: SandboxPolicy; path: string } | undefined {
    const refuse = (why: string) =>
      failedPrecondition(`image '${source}': ${why}; fix the image's policy, or give a policy (--policy)`);
    let file: { path: string; text: string } | undefined;
    try {
      file = imagePolicyFile(this.o.images!.root(image.digest));
    } catch (error) {
      throw refuse(messageOf(error));
    }
    if (!file) return undefined;
    let policy: SandboxPolicy;
    try {
      policy = parsePolicyYaml(file.text, file.path);
    } catch (error) {
      throw refuse(messageOf(error));
    }
    const problem = policyProblem(policy);
    if (problem) throw refuse(`${file.path}: ${problem}`);
    return { policy, path: file.path };
  }

  /** The effective limits of a request's `template.resources`; INVALID_ARGUMENT or FAILED_PRECONDITION otherwise. */
  private limitsOf(resources: Record<string, unknown> | undefined): Limits {
    const requested = resourcesToLimits(resources);
    if (typeof requested === "string") throw invalidArgument(requested);
    const limits = effectiveLimits(requested, this.o.limits.defaults, this.o.limits.maxima);
    if (typeof limits === "string") throw failedPrecondition(limits);
    const refused = this.o.runtime.refuseLimits(requested);
    if (refused) throw failedPrecondition(refused);
    return limits;
  }

  /**
   * Makes the sandbox's control groups with its limits in them (again, after
   * a host restart); a limit the host cannot enforce is FAILED_PRECONDITION.
   * Limits no one asked for (the gateway's defaults) are dropped with a
   * warning on a host without writable cgroups, such as an unprivileged gateway.
   */
  private enforce(id: string, sandbox: Sandbox, explicit: boolean): SandboxCgroups | undefined {
    // Another driver enforces limits itself (a pod's).
    if (!this.o.runtime.hostCgroups) return undefined;
    const limits = resourcesToLimits(sandbox.spec!.template?.resources);
    if (typeof limits === "string") throw invalidArgument(limits);
    const { diskBytes: _disk, ...cgroupLimits } = limits;
    try {
      const groups = createSandboxCgroups(id, cgroupLimits);
      this.cgroups.set(id, groups);
      return groups;
    } catch (error) {
      if (!(error instanceof CgroupError)) throw error;
      if (explicit) {
        throw failedPrecondition(`cannot enforce the ${error.limit} limit on this host: ${error.message}`);
      }
      this.o.log("WARN", `default limits not enforced: ${error.limit}: ${error.message}`, id);
      return undefined;
    }
  }

  async create(request: CreateSandboxRequest): Promise<Sandbox> {
    this.validate(request);
    this.checkFreeSpace();
    const spec = request.spec!;
    const limits = this.limitsOf(spec.template?.resources);
    const asked = resourcesToLimits(spec.template?.resources);
    const explicit = typeof asked === "object" && Object.keys(asked).length > 0;
    const workspace = workspaceOf(request.workspace);
    let name = request.name;
    if (name === "") {
      do name = generateSandboxName();
      while (this.o.store.getSandboxByName(workspace, name));
    } else if (this.o.store.getSandboxByName(workspace, name)) {
      throw new StatusError(status.ALREADY_EXISTS, `sandbox '${name}' already exists`);
    }
    const ttlSeconds = this.lifetime(spec.ttlSeconds ?? 0, "spec.ttl_seconds");
    // A community name is stored as the reference it resolved to: `sandbox get` shows what runs.
    const named = spec.template?.image ?? "";
    const source = named === "" ? "" : (this.o.images?.reference(named) ?? imageReference(named));
    // A driver whose nodes pull images gets the reference; the image is not read here.
    const image = source === "" || this.o.runtime.pullsImages ? undefined : await this.image(source);
    if (image) {
      // An image's config is as untrusted as a request: bounded the same way.
      const problem =
        validateEnvironment({ ...imageEnvironment(image), ...spec.environment }, `image '${source}' Env`) ??
        validateCommand(
          [...image.config.entrypoint, ...image.config.cmd],
          `image '${source}' Entrypoint+Cmd`,
        );
      if (problem) throw new StatusError(status.FAILED_PRECONDITION, problem);
    }
    const baked = image && !spec.policy ? this.bakedPolicy(source, image) : undefined;
    const policy = spec.policy ?? baked?.policy;
    // An image's Entrypoint and Cmd are its command when none is given, run as given (no terminal unless asked).
    const imageCommand = image ? [...image.config.entrypoint, ...image.config.cmd] : [];
    // An image with neither gets a shell, as on the host root: sh, which every image with a shell has.
    const command =
      spec.command.length > 0
        ? spec.command
        : imageCommand.length > 0
          ? imageCommand
          : image || source !== ""
            ? ["/bin/sh"]
            : DEFAULT_COMMAND;
    const tty = spec.command.length === 0 && imageCommand.length === 0 ? true : spec.tty;
    // Content stays out of the Sandbox record: every response carries path,
    // mode, size and digest only, so a list of many sandboxes stays small.
    const files: SandboxFile[] = spec.files.map((file) => ({
      // validate() refused any path that does not normalize.
      path: normalizeSandboxPath(file.path) ?? file.path,
      content: Buffer.alloc(0),
      mode: effectiveMode(file.mode),
      size: file.content.length,
      // validate() already checked a digest the client sent against the content.
      sha256: file.sha256.toLowerCase() || sha256Hex(file.content),
    }));
    const id = randomUUID();
    const sandbox: Sandbox = {
      metadata: {
        id,
        name,
        createdAtMs: Date.now(),
        labels: { ...request.labels },
        resourceVersion: 1,
        annotations: {
          ...request.annotations,
          ...(image ? { [ANNOTATION_IMAGE_DIGEST]: image.digest } : {}),
        },
        workspace,
        deletionTimestampMs: 0,
      },
      // The effective policy is stored, so `sandbox get` shows what applies.
      spec: {
        ...spec,
        command,
        tty,
        files,
        policy: policy ?? defaultPolicy(),
        // The effective limits too, defaults included.
        template: {
          ...(spec.template ?? SandboxTemplate.fromPartial({})),
          ...(source !== "" ? { image: source } : {}),
          resources: limitsToResources(limits),
        },
      },
      status: {
        ...newSandboxStatus(name),
        ...(ttlSeconds > 0 ? { expiresAtMs: Date.now() + ttlSeconds * 1000 } : {}),
      },
    };
    let groups: SandboxCgroups | undefined;
    try {
      groups = this.enforce(id, sandbox, explicit);
    } catch (error) {
      this.cgroups.delete(id);
      await this.o.runtime.removeSandboxDir(id);
      throw error;
    }
    // Defaults this host could not enforce are not claimed either.
    if (!groups && this.o.runtime.hostCgroups)
      sandbox.spec!.template!.resources = limitsToResources({ diskBytes: limits.diskBytes });
    const sandboxDir = this.o.runtime.sandboxDir(id);
    let hostIds: { hostUid: number; hostGid: number } | undefined;
    try {
      // The directory first: a uid lease whose sandbox directory is missing is stale.
      this.makeSandboxDir(sandboxDir);
      // Removed once the call is about to succeed; found at start, it marks a
      // create whose caller never saw it succeed (removeUnfinishedCreates).
      writeFileSync(creatingMarker(sandboxDir), "");
      hostIds = this.allocateHostIds({ sandboxDir, sandboxId: id });
      this.o.store.createSandbox(sandbox, {
        sandboxId: id,
        ...hostIds,
        supervisorSecret: randomBytes(32).toString("hex"),
      });
    } catch (error) {
      if (hostIds) this.releaseHostIds(id, hostIds.hostUid);
      this.cgroups.delete(id);
      await this.o.runtime.removeSandboxDir(id);
      if (/UNIQUE/.test((error as Error).message)) {
        throw new StatusError(status.ALREADY_EXISTS, `sandbox '${name}' already exists`);
      }
      throw error;
    }
    this.o.bus.attachLogFile(id, this.logFile(id));
    this.event(id, "Scheduled", `Sandbox accepted by the ${this.o.runtime.kind} driver`, {
      "openshell.progress.complete_step": "requesting_sandbox",
      "openshell.progress.active_step": "starting_sandbox",
    });
    // Accepted as upstream accepts it, and said where the creator sees it (create's stderr).
    if (baked) this.event(id, "PolicyFromImage", `policy from the image's ${baked.path}`);
    const versionWarning = policy ? policyVersionWarning(policy) : undefined;
    if (versionWarning) this.event(id, "Warning", `policy ${versionWarning}`, {}, "Warning");
    // The content is written off this thread while the supervisor starts; its
    // GetSandboxFiles is answered only once the content is stored, and the
    // create call returns only then. A gateway that dies meanwhile leaves a sandbox whose
    // creating marker, which the next start removes (removeUnfinishedCreates).
    const stored =
      files.length > 0
        ? writeFileContent(
            sandboxDir,
            spec.files.map((file, index) => ({
              ...file,
              path: files[index]!.path,
              mode: files[index]!.mode,
            })),
          )
        : undefined;
    stored?.catch(() => {}); // awaited below, after the launch
    if (stored) this.storing.set(id, stored);
    this.launch(sandbox, undefined, groups ?? null);
    if (stored) {
      try {
        await stored;
      } catch (error) {
        await this.discard(id);
        throw error;
      } finally {
        this.storing.delete(id);
      }
    }
    rmSync(creatingMarker(sandboxDir), { force: true });
    this.scheduleExpiry(sandbox);
    return sandbox;
  }

  /**
   * The lifetime a create or renew gets, in seconds (0: none): the one asked
   * for, else the gateway's default, else its maximum; more than the maximum
   * is refused.
   */
  private lifetime(asked: number, field: string): number {
    const { defaultSeconds = 0, maxSeconds = 0 } = this.o.ttl ?? {};
    if (asked > TTL_MAX_SECONDS)
      throw invalidArgument(`${field} ${asked} exceeds ${TTL_MAX_SECONDS} (366 days)`);
    if (maxSeconds > 0 && asked > maxSeconds) {
      throw invalidArgument(
        `${field} ${formatTtl(asked)} exceeds this gateway's maximum lifetime of ${formatTtl(maxSeconds)} (OPENSHELL_GATEWAY_MAX_TTL)`,
      );
    }
    return asked || defaultSeconds || maxSeconds;
  }

  /** Undoes a create that could not store its files: nothing of it is left. */
  private async discard(id: string): Promise<void> {
    await this.o.runtime.stop(id);
    this.releaseHostIds(id);
    await this.o.runtime.removeSandboxDir(id);
    this.o.store.deleteSandbox(id);
    this.o.bus.close(id);
    this.cgroups.delete(id);
  }

  private logFile(id: string): string {
    return join(this.o.runtime.sandboxDir(id), "sandbox.log");
  }

  /** Refuses a create while the gateway's filesystem is short of its margin (see minFreeBytes). */
  private checkFreeSpace(): void {
    let free: number;
    try {
      const fs = statfsSync(this.o.runtime.sandboxesRoot);
      free = fs.bavail * fs.bsize;
    } catch {
      return;
    }
    if (free >= this.o.minFreeBytes) return;
    throw failedPrecondition(
      `the gateway's filesystem has ${Math.floor(free / MiB)} MiB free, below its ${Math.ceil(this.o.minFreeBytes / MiB)} MiB margin ` +
        "(OPENSHELL_GATEWAY_MIN_FREE); delete sandboxes or free space on it, then create again",
    );
  }

  /** A root gateway leases a host-unique uid (see uid-lease.ts); any other runs pods as itself. */
  private allocateHostIds(holder: UidHolder): { hostUid: number; hostGid: number } {
    if (!this.o.uidLeases) {
      return { hostUid: process.getuid?.() ?? 0, hostGid: process.getgid?.() ?? 0 };
    }
    let uid: number;
    try {
      uid = this.o.uidLeases.take(holder);
    } catch (error) {
      throw failedPrecondition(`cannot lease a host uid for the sandbox: ${(error as Error).message}`);
    }
    return { hostUid: uid, hostGid: uid };
  }

  /** Gives the sandbox's uid back to the host; a ledger that fails leaves a stale lease, reclaimed later. */
  private releaseHostIds(id: string, uid = this.o.store.getRuntime(id)?.hostUid): void {
    if (!this.o.uidLeases || uid === undefined) return;
    try {
      this.o.uidLeases.release(uid, { sandboxDir: this.o.runtime.sandboxDir(id), sandboxId: id });
    } catch (error) {
      this.o.log("WARN", `could not release host uid ${uid}: ${(error as Error).message}`, id);
    }
  }

  /**
   * On resume: the sandbox's uid leased to it again. A sandbox made before
   * uids were leased host-wide may find its uid held by another gateway's
   * sandbox; it gets a new one, and its files are given to it before it starts.
   */
  private retakeHostIds(id: string): { uid: number; gid: number } | undefined {
    const leases = this.o.uidLeases;
    const runtime = this.o.store.getRuntime(id);
    if (!leases || !runtime) return undefined;
    const holder = { sandboxDir: this.o.runtime.sandboxDir(id), sandboxId: id };
    if (leases.retake(runtime.hostUid, holder)) return undefined;
    const uid = leases.take(holder);
    this.o.store.setHostIds(id, uid, uid);
    this.o.log(
      "WARN",
      `host uid ${runtime.hostUid} is another sandbox's on this host; this one now runs as ${uid}`,
      id,
    );
    return { uid: runtime.hostUid, gid: runtime.hostGid };
  }

  /** Starts (or restarts) the sandbox's supervisor with a fresh instance id. */
  launch(
    sandbox: Sandbox,
    reownFrom?: { uid: number; gid: number },
    /** The sandbox's control groups as create made them (null: none); made again when absent. */
    cgroups?: SandboxCgroups | null,
  ): void {
    this.unresponsive.delete(sandbox.metadata!.id);
    const meta = sandbox.metadata!;
    let groups = cgroups;
    if (groups === undefined) {
      try {
        groups = this.enforce(meta.id, sandbox, true);
      } catch (error) {
        this.fail(meta.id, "LimitsNotEnforceable", (error as Error).message);
        return;
      }
    }
    const limits = resourcesToLimits(sandbox.spec!.template?.resources);
    const runtime = this.o.store.getRuntime(meta.id);
    if (!runtime) throw new Error(`sandbox ${meta.id} has no runtime record`);
    const image = this.imageLaunch(sandbox);
    if (typeof image === "string") {
      this.fail(meta.id, "ImageMissing", image);
      return;
    }
    const instanceId = randomUUID();
    sandbox.status!.mainProcessInstanceId = instanceId;
    clearMainCommand(sandbox);
    this.o.store.updateSandbox(sandbox);
    const sandboxDir = this.o.runtime.sandboxDir(meta.id);
    this.makeSandboxDir(sandboxDir);
    const ttySize = parseTtySize(meta.annotations[ANNOTATION_TTY_SIZE]);
    const localFiles = sandbox.spec!.files.length > 0 && !this.o.runtime.remote;
    this.o.runtime.start(
      {
        sandboxId: meta.id,
        sandboxName: meta.name,
        workspace: meta.workspace,
        instanceId,
        sandboxDir,
        hostUid: runtime.hostUid,
        hostGid: runtime.hostGid,
        // A supervisor elsewhere (a pod's) has no filesystem of this host's to give the sandbox.
        diskBytes: this.o.runtime.hostCgroups
          ? ((typeof limits === "object" ? limits.diskBytes : undefined) ?? this.o.diskBytes)
          : 0,
        cgroupProcs: groups ? procsFiles(groups) : [],
        execCgroup: groups ? execGroupOf(groups) : undefined,
        shmBytes:
          groups && typeof limits === "object" && limits.memoryBytes !== undefined
            ? Math.max(MiB, Math.floor(limits.memoryBytes / 4))
            : 0,
        reownFrom,
        appRoot: this.o.appRoot,
        command: sandbox.spec!.command,
        tty: sandbox.spec!.tty,
        startOnAttach: meta.annotations[ANNOTATION_START_ON_ATTACH] === "true",
        ttyCols: ttySize?.cols ?? 0,
        ttyRows: ttySize?.rows ?? 0,
        // The local fast path, unless supervisors run as remote ones.
        filesPath: localFiles ? fileContentPath(sandboxDir) : "",
        filePaths: localFiles ? sandbox.spec!.files.map((file) => file.path) : [],
        ...image,
      },
      runtime.supervisorSecret,
      sandbox,
    );
  }

  /**
   * The image a create names: one already stored under that source is used
   * as it is (`image pull` refreshes a tag), else it is pulled now; a source
   * that cannot be had is refused, naming it, before anything is created.
   */
  private async image(source: string): Promise<StoredImage> {
    const images = this.o.images!;
    const stored = images.stored(source);
    if (stored) return stored;
    // Said in the gateway's log: a pull can take minutes, and concurrent creates share one.
    const joining = images.pulling(source);
    this.o.log("INFO", `image '${source}': ${joining ? "waiting for its pull under way" : "pulling"}`);
    try {
      const started = Date.now();
      const image = await images.pull(source);
      if (!joining) {
        this.o.log("INFO", `image '${source}': pulled ${image.digest} in ${Date.now() - started} ms`);
      }
      return image;
    } catch (error) {
      if (error instanceof ImagePullError) throw new StatusError(status.FAILED_PRECONDITION, error.message);
      throw error;
    }
  }

  /**
   * What a sandbox's launch takes from its image: the root, working
   * directory and user, and the image's environment under the sandbox's own;
   * a message when the image is no longer stored.
   */
  private imageLaunch(
    sandbox: Sandbox,
  ): Pick<SupervisorLaunch, "imageRoot" | "workingDir" | "imageUser" | "environment"> | string {
    const environment = sandbox.spec!.environment;
    const digest = sandbox.metadata!.annotations[ANNOTATION_IMAGE_DIGEST];
    if (digest === undefined) return { imageRoot: "", workingDir: "", imageUser: "", environment };
    const image = this.o.images?.get(digest);
    if (!image) {
      return `its image ${sandbox.spec!.template?.image ?? ""} (${digest}) is no longer stored; pull it again`;
    }
    const imageEnv = imageEnvironment(image);
    return {
      imageRoot: this.o.images!.root(digest),
      workingDir: image.config.workingDir,
      imageUser: image.config.user,
      environment: { ...imageEnv, ...environment },
    };
  }

  // ---- images -------------------------------------------------------------

  private imageStore(): ImageStore {
    if (!this.o.images) throw new StatusError(status.UNIMPLEMENTED, "this gateway keeps no images");
    return this.o.images;
  }

  /** The sandboxes (by name) that run each stored image, by digest. */
  private imageUsers(): Map<string, string[]> {
    const users = new Map<string, string[]>();
    for (const sandbox of this.o.store.allSandboxes()) {
      const digest = sandbox.metadata!.annotations[ANNOTATION_IMAGE_DIGEST];
      if (digest !== undefined) users.set(digest, [...(users.get(digest) ?? []), sandbox.metadata!.name]);
    }
    return users;
  }

  private imageInfo(image: StoredImage, users = this.imageUsers()): ImageInfo {
    return {
      digest: image.digest,
      references: image.references,
      sizeBytes: image.sizeBytes,
      pulledAtMs: image.pulledAtMs,
      sandboxes: users.get(image.digest) ?? [],
    };
  }

  listImages(): ImageInfo[] {
    const users = this.imageUsers();
    return this.imageStore()
      .list()
      .map((image) => this.imageInfo(image, users));
  }

  /** Pulls `source` now, stored or not: a tag may name another image since. */
  async pullImage(source: string): Promise<ImageInfo> {
    if (source.trim() === "") throw invalidArgument("source is required");
    if (Buffer.byteLength(source) > TEMPLATE_TEXT_MAX) {
      throw invalidArgument(`source exceeds ${TEMPLATE_TEXT_MAX} bytes`);
    }
    try {
      return this.imageInfo(await this.imageStore().pull(source));
    } catch (error) {
      if (error instanceof ImagePullError) throw new StatusError(status.FAILED_PRECONDITION, error.message);
      throw error;
    }
  }

  /** Removes a stored image (by digest or a source it was pulled as) that no sandbox runs. */
  removeImage(image: string): string {
    const store = this.imageStore();
    const reference = store.reference(image);
    const found = store
      .list()
      .find((stored) => stored.digest === image || stored.references.includes(reference));
    if (!found) throw new StatusError(status.NOT_FOUND, `image '${image}' not found`);
    const users = this.imageUsers().get(found.digest) ?? [];
    if (users.length > 0) {
      throw failedPrecondition(
        `image '${image}' is used by sandbox(es) ${users.join(", ")}; delete them first`,
      );
    }
    store.remove(found.digest);
    return found.digest;
  }

  /** Removes every stored image no sandbox runs. */
  pruneImages(): { digests: string[]; freedBytes: number } {
    const users = this.imageUsers();
    const unused = this.imageStore()
      .list()
      .filter((image) => !users.has(image.digest));
    for (const image of unused) this.imageStore().remove(image.digest);
    return {
      digests: unused.map((image) => image.digest),
      freedBytes: unused.reduce((total, image) => total + image.sizeBytes, 0),
    };
  }

  private makeSandboxDir(sandboxDir: string): void {
    // 0711: the pod (another uid when the gateway is root) must traverse it to its own dirs.
    mkdirSync(sandboxDir, { recursive: true, mode: 0o711 });
  }

  /**
   * The injected files of a sandbox for its supervisor, once their content is
   * stored: with content, or (`withoutContent`, the local fast path) as the
   * sandbox's spec lists them.
   */
  async files(sandboxId: string, withoutContent = false): Promise<SandboxFile[]> {
    await this.storing.get(sandboxId);
    const expected = this.o.store.getSandbox(sandboxId)?.spec?.files ?? [];
    if (expected.length === 0 || withoutContent) return expected;
    try {
      return readFileContent(
        fileContentPath(this.o.runtime.sandboxDir(sandboxId)),
        expected.map((file) => file.path),
      );
    } catch (error) {
      throw new StatusError(status.DATA_LOSS, `injected files' ${(error as Error).message}`);
    }
  }

  /**
   * On gateway start, before anything resumes: a create whose call never
   * returned (the gateway died while storing its files) leaves nothing behind.
   * Its creating marker is removed just before the call returns, so a sandbox
   * that still has one was never created as far as its caller knows: its
   * record, directory and half-written content go. (A sandbox whose stored
   * content went missing later is not one of these: it fails with
   * FileInjectionFailed when it starts.)
   */
  async removeUnfinishedCreates(): Promise<void> {
    // A directory made just before its record was stored has no record.
    const known = new Set(this.o.store.allSandboxes().map((sandbox) => sandbox.metadata!.id));
    const sandboxesDir = dirname(this.o.runtime.sandboxDir(randomUUID()));
    for (const entry of existsSync(sandboxesDir) ? readdirSync(sandboxesDir) : []) {
      if (SANDBOX_ID.test(entry) && !known.has(entry)) await this.o.runtime.removeSandboxDir(entry);
    }
    for (const sandbox of this.o.store.allSandboxes()) {
      const id = sandbox.metadata!.id;
      if (!existsSync(creatingMarker(this.o.runtime.sandboxDir(id)))) continue;
      await this.o.runtime.stop(id);
      this.releaseHostIds(id);
      await this.o.runtime.removeSandboxDir(id);
      this.o.store.deleteSandbox(id);
      this.o.log(
        "WARN",
        "removed a sandbox whose create did not complete (the gateway stopped before the create returned)",
        id,
      );
    }
  }

  /**
   * On gateway start, first: the supervisors an earlier gateway left running
   * are taken on (LocalRuntime.adopt), whatever their sandbox's phase, so
   * that stop, start and delete end them, and nothing of theirs (a mounted
   * disk) is swept as left over.
   */
  adoptSupervisors(): void {
    for (const sandbox of this.o.store.allSandboxes()) {
      this.o.runtime.adopt(sandbox.metadata!.id, sandbox.status?.mainProcessInstanceId ?? "");
    }
  }

  /**
   * On gateway start, after adoptSupervisors: a running sandbox whose
   * supervisor was adopted waits for it to reconnect; one whose supervisor is
   * gone goes to Error (SupervisorLost), or Stopped when its command had
   * completed; deletes, stops and expiries under way finish.
   */
  async resumeAll(): Promise<void> {
    await this.removeUnfinishedCreates();
    for (const sandbox of this.o.store.allSandboxes()) {
      const id = sandbox.metadata!.id;
      this.o.bus.attachLogFile(id, this.logFile(id));
      const phase = phaseOf(sandbox);
      if (phase === SandboxPhase.SANDBOX_PHASE_DELETING) {
        this.finishDelete(sandbox).catch((error: unknown) =>
          this.o.log("ERROR", `could not finish deleting: ${(error as Error).message}`, id),
        );
        continue;
      }
      if (this.expired(sandbox)) {
        await this.expire(sandbox);
        continue;
      }
      this.scheduleExpiry(sandbox);
      // A sandbox in Error keeps an adopted supervisor until it is started again or deleted.
      if (phase === SandboxPhase.SANDBOX_PHASE_ERROR) continue;
      if (phase === SandboxPhase.SANDBOX_PHASE_STOPPING || phase === SandboxPhase.SANDBOX_PHASE_STOPPED) {
        // The gateway stopped mid-stop: the stop finishes.
        await this.freeRuntime(id);
        this.markStopped(id);
        continue;
      }
      // Its supervisor outlived the last gateway: it is adopted, not started again.
      if (this.o.runtime.isRunning(id)) {
        this.awaitAdopted(sandbox, sandbox.status!.mainProcessInstanceId);
        continue;
      }
      if (mainExitStatus(sandbox) !== undefined) {
        // Its command completed before and its pod is gone: it is not run
        // again unasked (start does that), and its exit status stays for
        // `sandbox wait`.
        this.update(id, (s) => {
          setPhase(s, SandboxPhase.SANDBOX_PHASE_STOPPING);
          return true;
        });
        this.markStopped(id);
        continue;
      }
      this.fail(
        id,
        "SupervisorLost",
        "the sandbox's processes are gone (the host restarted, or they were killed while no gateway ran); " +
          `\`openshell sandbox start ${sandbox.metadata!.name}\` runs it again`,
      );
    }
  }

  /**
   * A running sandbox whose supervisor this gateway adopted: not Ready until
   * the supervisor's session reconnects, and stopped, in Error
   * (SupervisorLost), if it has not within the bound.
   */
  private awaitAdopted(sandbox: Sandbox, instanceId: string): void {
    const id = sandbox.metadata!.id;
    this.keepHostIds(id);
    const waiting = "Gateway restarted; waiting for the sandbox's supervisor to reconnect";
    this.update(id, (s) => {
      setPhase(s, SandboxPhase.SANDBOX_PHASE_PROVISIONING);
      setReadyCondition(s, "False", "GatewayRestarted", waiting);
      return true;
    });
    this.event(id, "Adopting", waiting);
    const timeoutMs = this.o.adoptTimeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      this.adopting.delete(id);
      this.supervisorLost(id, timeoutMs).catch((error: unknown) =>
        this.o.log(
          "ERROR",
          `could not stop a supervisor that did not reconnect: ${(error as Error).message}`,
          id,
        ),
      );
    }, timeoutMs);
    timer.unref();
    this.adopting.set(id, timer);
    // It may have reconnected before this gateway got to it.
    if (this.o.relay.hasSession(id)) this.supervisorConnected(id, instanceId);
  }

  /** An adopted supervisor that did not reconnect in time is stopped; its sandbox goes to Error (or Stopped, its command completed). */
  private async supervisorLost(id: string, timeoutMs: number): Promise<void> {
    await this.serialized(id, async () => {
      const sandbox = this.o.store.getSandbox(id);
      if (!sandbox || unmovedByReports(phaseOf(sandbox)) || this.o.relay.hasSession(id)) return;
      const completed = mainExitStatus(sandbox) !== undefined;
      // Out of the phases reports move first, so the supervisor's exit below is no news.
      if (completed) {
        this.update(id, (s) => {
          setPhase(s, SandboxPhase.SANDBOX_PHASE_STOPPING);
          return true;
        });
      } else {
        this.fail(
          id,
          "SupervisorLost",
          `its supervisor did not reconnect within ${Math.round(timeoutMs / 1000)} s of the gateway's start and was stopped; ` +
            `\`openshell sandbox start ${sandbox.metadata!.name}\` runs it again`,
        );
      }
      await this.freeRuntime(id);
      if (completed) this.markStopped(id);
    });
  }

  /** An adopted sandbox's uid, leased to it again; if another sandbox holds it meanwhile, that is logged. */
  private keepHostIds(id: string): void {
    const runtime = this.o.store.getRuntime(id);
    if (!this.o.uidLeases || !runtime) return;
    if (
      this.o.uidLeases.retake(runtime.hostUid, { sandboxDir: this.o.runtime.sandboxDir(id), sandboxId: id })
    )
      return;
    this.o.log("WARN", `host uid ${runtime.hostUid} is leased to another sandbox on this host as well`, id);
  }

  // ---- status changes ---------------------------------------------------

  private update(id: string, change: (sandbox: Sandbox) => boolean): Sandbox | undefined {
    const sandbox = this.o.store.getSandbox(id);
    if (!sandbox) return undefined;
    if (!change(sandbox)) return sandbox;
    this.o.store.updateSandbox(sandbox);
    this.o.bus.publishStatus(id);
    return sandbox;
  }

  event(
    id: string,
    reason: string,
    message: string,
    metadata: Record<string, string> = {},
    type = "Normal",
  ): void {
    const event: PlatformEvent = {
      timestampMs: Date.now(),
      source: "gateway",
      type,
      reason,
      message,
      metadata,
    };
    this.o.bus.publishEvent(id, event);
  }

  /** What the sandbox's running supervisor is to run (GetSupervisorLaunch); NOT_FOUND when none runs. */
  supervisorLaunch(id: string): SupervisorLaunch {
    const launch = this.o.runtime.launchOf(id);
    if (!launch) throw new StatusError(status.NOT_FOUND, `sandbox ${id} has no running supervisor`);
    return launch;
  }

  /** A supervisor fetched its configuration (GetSandboxConfig answered). */
  supervisorConfigured(): void {
    this.o.runtime.configured();
  }

  supervisorConnected(id: string, instanceId: string): void {
    this.update(id, (sandbox) => {
      const phase = phaseOf(sandbox);
      if (unmovedByReports(phase)) return false;
      if (sandbox.status!.mainProcessInstanceId !== instanceId) return false;
      if (this.unresponsive.has(id)) return false;
      clearTimeout(this.adopting.get(id));
      this.adopting.delete(id);
      setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_READY);
      setReadyCondition(sandbox, "True", "DependenciesReady", "Supervisor session connected");
      return true;
    });
    this.event(id, "Ready", "Sandbox ready", { "openshell.progress.complete_step": "starting_sandbox" });
    this.o.runtime.prepareSpare();
  }

  supervisorDisconnected(id: string): void {
    // A gateway that stops cuts its supervisors' sessions; they stay as they were for the next one.
    if (this.shuttingDown) return;
    this.update(id, (sandbox) => {
      if (phaseOf(sandbox) !== SandboxPhase.SANDBOX_PHASE_READY) return false;
      setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_PROVISIONING);
      setReadyCondition(sandbox, "False", "DependenciesNotReady", "Supervisor session disconnected");
      return true;
    });
  }

  mainProcessExited(id: string, instanceId: string, exitCode: number): void {
    // A SIGKILL while the sandbox's memory group counts an OOM kill: the kernel's doing.
    const oom = exitCode === 137 && (this.oomKills(id) ?? 0) > 0;
    this.update(id, (sandbox) => {
      if (sandbox.status!.mainProcessInstanceId !== instanceId) return false;
      const phase = phaseOf(sandbox);
      if (unmovedByReports(phase) || mainExitStatus(sandbox) !== undefined) return false;
      if (oom) {
        // Killed at its memory limit: a failure, not a completion.
        if (phase === SandboxPhase.SANDBOX_PHASE_ERROR) return false;
        setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_ERROR);
        sandbox.status!.exitCode = exitCode;
        setReadyCondition(
          sandbox,
          "False",
          "OOMKilled",
          `Canonical main process was killed by the out-of-memory killer at the sandbox's memory limit (${this.memoryLimit(id)})`,
        );
        return true;
      }
      setMainCommandCompleted(sandbox, exitCode);
      if (sandbox.metadata) sandbox.metadata.resourceVersion += 1;
      return true;
    });
    this.o.log("INFO", `main command completed with exit status ${exitCode}`, id);
  }

  /** Moves a sandbox to ERROR with a reason, unless it is being deleted. */
  fail(id: string, reason: string, message: string): void {
    this.update(id, (sandbox) => {
      const phase = phaseOf(sandbox);
      if (unmovedByReports(phase)) return false;
      setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_ERROR);
      setReadyCondition(sandbox, "False", reason, message);
      return true;
    });
    this.o.log("ERROR", `${reason}: ${message}`, id);
  }

  /** The supervisor's word on its agent's liveness (see the table above). */
  agentLiveness(id: string, responsive: boolean, message: string): void {
    if (!responsive) {
      this.unresponsive.add(id);
      this.update(id, (sandbox) => {
        if (phaseOf(sandbox) !== SandboxPhase.SANDBOX_PHASE_READY) return false;
        setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_PROVISIONING);
        setReadyCondition(sandbox, "False", "AgentUnresponsive", message);
        return true;
      });
      this.o.log("WARN", `AgentUnresponsive: ${message}`, id);
      return;
    }
    if (!this.unresponsive.delete(id)) return;
    this.update(id, (sandbox) => {
      if (phaseOf(sandbox) !== SandboxPhase.SANDBOX_PHASE_PROVISIONING) return false;
      const ready = sandbox.status!.conditions.find((c) => c.type === "Ready");
      if (ready?.reason !== "AgentUnresponsive" || !this.o.relay.hasSession(id)) return false;
      setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_READY);
      setReadyCondition(sandbox, "True", "DependenciesReady", message);
      return true;
    });
    this.o.log("INFO", message, id);
  }

  supervisorReport(id: string, report: SupervisorReport): void {
    if (report.kind === "liveness") this.agentLiveness(id, report.responsive, report.message);
    else if (report.kind === "failure") this.fail(id, report.reason, report.message);
    else if (report.kind === "progress") {
      this.event(id, report.step, report.message, { "openshell.progress.active_detail": report.message });
    } else this.event(id, "Warning", report.message, {}, "Warning");
  }

  beginShutdown(): void {
    this.shuttingDown = true;
  }

  supervisorExited(id: string, instanceId: string, code: number | null, signal: string | null): void {
    if (this.shuttingDown) return;
    const sandbox = this.o.store.getSandbox(id);
    if (!sandbox || sandbox.status?.mainProcessInstanceId !== instanceId) return;
    const phase = phaseOf(sandbox);
    if (unmovedByReports(phase)) return;
    // An adopted supervisor is no child of this gateway's: how it ended is not known.
    const how = signal
      ? `exited on signal ${signal}`
      : code !== null
        ? `exited with status ${code}`
        : "is gone";
    this.fail(id, "SupervisorExited", `sandbox supervisor ${how}`);
  }

  // ---- delete -----------------------------------------------------------

  /** Deletes a sandbox: stops its pod, removes its private directories and its record. */
  async delete(workspace: string, name: string): Promise<boolean> {
    const sandbox = this.get(workspace, name);
    const id = sandbox.metadata!.id;
    const inFlight = this.deleting.get(id);
    if (inFlight) {
      await inFlight;
      return true;
    }
    this.update(id, (s) => {
      setPhase(s, SandboxPhase.SANDBOX_PHASE_DELETING);
      s.metadata!.deletionTimestampMs = Date.now();
      return true;
    });
    const done = this.finishDelete(sandbox);
    this.deleting.set(id, done);
    try {
      await done;
    } finally {
      this.deleting.delete(id);
    }
    return true;
  }

  private async finishDelete(sandbox: Sandbox): Promise<void> {
    const id = sandbox.metadata!.id;
    clearTimeout(this.expiryTimers.get(id));
    this.expiryTimers.delete(id);
    await this.freeRuntime(id);
    // Before the directory goes, so a lease is never stale while its holder lives.
    this.releaseHostIds(id);
    // Storage first: on a full filesystem it is what gives the store room to delete the row.
    await this.o.runtime.removeSandboxDir(id);
    this.o.store.deleteSandbox(id);
    this.o.bus.close(id);
    this.unresponsive.delete(id);
    this.cgroups.delete(id);
  }

  private cgroupsOf(id: string): SandboxCgroups | undefined {
    let groups = this.cgroups.get(id);
    if (!groups) {
      groups = findSandboxCgroups(id);
      if (groups && this.o.store.getSandbox(id)) this.cgroups.set(id, groups);
    }
    return groups;
  }

  /** The sandbox with what it uses now (status.usage), for GetSandbox. */
  withUsage(sandbox: Sandbox): Sandbox {
    const id = sandbox.metadata?.id;
    if (!id || !sandbox.status) return sandbox;
    const groups = this.cgroupsOf(id);
    const usage: SandboxUsage = groups ? cgroupUsage(groups) : {};
    try {
      const fs = statfsSync(guestDiskMountPoint(id));
      // The sandbox's own filesystem, when mounted (a root gateway's running sandbox).
      if (fs.type === EXT4_SUPER_MAGIC) usage.diskBytes = (fs.blocks - fs.bfree) * fs.bsize;
    } catch {
      // Not mounted.
    }
    return { ...sandbox, status: { ...sandbox.status, usage } };
  }

  /** The kills by the OOM killer in the sandbox's memory group so far; undefined without one. */
  oomKills(id: string): number | undefined {
    const groups = this.cgroupsOf(id);
    return groups ? cgroupUsage(groups).oomKills : undefined;
  }

  /** The sandbox's memory limit as `sandbox get` shows it. */
  memoryLimit(id: string): string {
    const limits = resourcesToLimits(this.o.store.getSandbox(id)?.spec?.template?.resources);
    return typeof limits === "object" && limits.memoryBytes !== undefined
      ? formatQuantity(limits.memoryBytes)
      : "none set";
  }

  /** Ends every process of a sandbox and frees its runtime (supervisor, pod), keeping its storage. */
  private async freeRuntime(id: string): Promise<void> {
    this.o.store.revokeSandboxSessions(id);
    this.o.released?.(id);
    this.o.relay.detach(id);
    await this.o.runtime.stop(id);
    this.unresponsive.delete(id);
  }

  // ---- stop, start ------------------------------------------------------

  /** Runs one stop or start of a sandbox after any other still under way. */
  private async serialized<T>(id: string, work: () => Promise<T>): Promise<T> {
    const before = this.transitions.get(id) ?? Promise.resolve();
    const run = before.catch(() => {}).then(work);
    this.transitions.set(id, run);
    try {
      return await run;
    } finally {
      if (this.transitions.get(id) === run) this.transitions.delete(id);
    }
  }

  /** Ends every process of the sandbox, keeping its workspace, files, policy and limits. */
  async stop(workspace: string, name: string): Promise<Sandbox> {
    const id = this.get(workspace, name).metadata!.id;
    return this.serialized(id, async () => {
      const phase = phaseOf(this.byId(id));
      if (phase === SandboxPhase.SANDBOX_PHASE_DELETING)
        throw failedPrecondition(`sandbox '${name}' is being deleted`);
      if (phase !== SandboxPhase.SANDBOX_PHASE_STOPPED) {
        this.update(id, (sandbox) => {
          setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_STOPPING);
          setReadyCondition(sandbox, "False", "Stopping", "Sandbox is stopping");
          return true;
        });
        this.event(id, "Stopping", "Stopping the sandbox's processes");
        await this.freeRuntime(id);
        this.markStopped(id);
        this.o.log("INFO", "sandbox stopped", id);
      }
      return this.byId(id);
    });
  }

  private markStopped(id: string): void {
    const name = this.o.store.getSandbox(id)?.metadata?.name ?? "";
    this.update(id, (sandbox) => {
      if (phaseOf(sandbox) !== SandboxPhase.SANDBOX_PHASE_STOPPING) return false;
      setPhase(sandbox, SandboxPhase.SANDBOX_PHASE_STOPPED);
      setReadyCondition(
        sandbox,
        "False",
        "Stopped",
        notReadyMessage(name, SandboxPhase.SANDBOX_PHASE_STOPPED),
      );
      return true;
    });
    this.event(id, "Stopped", "Sandbox stopped");
  }

  /**
   * Boots a stopped sandbox, or one in Error, again: a new pod over the same
   * workspace and files, the main command run anew. Returns once it is
   * starting; it turns Ready as a created one does.
   */
  async start(workspace: string, name: string): Promise<Sandbox> {
    const id = this.get(workspace, name).metadata!.id;
    return this.serialized(id, async () => {
      const phase = phaseOf(this.byId(id));
      if (phase === SandboxPhase.SANDBOX_PHASE_DELETING)
        throw failedPrecondition(`sandbox '${name}' is being deleted`);
      if (phase !== SandboxPhase.SANDBOX_PHASE_STOPPED && phase !== SandboxPhase.SANDBOX_PHASE_ERROR)
        return this.byId(id);
      // A sandbox in Error may still have its supervisor; a stopped one has none.
      await this.freeRuntime(id);
      let startable = false;
      const sandbox = this.update(id, (s) => {
        // A delete may have begun while the old supervisor went.
        startable = [SandboxPhase.SANDBOX_PHASE_STOPPED, SandboxPhase.SANDBOX_PHASE_ERROR].includes(
          phaseOf(s),
        );
        if (!startable) return false;
        setPhase(s, SandboxPhase.SANDBOX_PHASE_STARTING);
        setReadyCondition(s, "False", "Starting", "Sandbox is starting");
        clearMainCommand(s);
        return true;
      });
      if (!sandbox || !startable) throw failedPrecondition(`sandbox '${name}' is being deleted`);
      this.event(id, "Starting", "Starting the sandbox again", {
        "openshell.progress.active_step": "starting_sandbox",
      });
      try {
        this.launch(sandbox, this.retakeHostIds(id));
      } catch (error) {
        this.fail(id, "StartFailed", (error as Error).message);
      }
      return this.byId(id);
    });
  }

  // ---- lifetimes --------------------------------------------------------

  /** Gives the sandbox `ttlSeconds` more to live, from now. */
  renew(workspace: string, name: string, ttlSeconds: number): Sandbox {
    if (ttlSeconds === 0) throw invalidArgument("ttl_seconds is required");
    const sandbox = this.get(workspace, name);
    const id = sandbox.metadata!.id;
    if (phaseOf(sandbox) === SandboxPhase.SANDBOX_PHASE_DELETING || this.expired(sandbox)) {
      throw failedPrecondition(`sandbox '${name}' has expired and is being deleted`);
    }
    const seconds = this.lifetime(ttlSeconds, "ttl_seconds");
    const renewed = this.update(id, (s) => {
      s.status!.expiresAtMs = Date.now() + seconds * 1000;
      if (s.metadata) s.metadata.resourceVersion += 1;
      return true;
    })!;
    this.scheduleExpiry(renewed);
    this.o.log("INFO", `lifetime renewed: expires in ${formatTtl(seconds)}`, id);
    return renewed;
  }

  private expired(sandbox: Sandbox): boolean {
    const at = sandbox.status?.expiresAtMs ?? 0;
    return at > 0 && at <= Date.now();
  }

  /** Arms the sandbox's expiry timer (again), or clears it when it has none. */
  private scheduleExpiry(sandbox: Sandbox): void {
    const id = sandbox.metadata!.id;
    clearTimeout(this.expiryTimers.get(id));
    this.expiryTimers.delete(id);
    const at = sandbox.status?.expiresAtMs ?? 0;
    if (at <= 0) return;
    const timer = setTimeout(
      () => {
        this.expiryTimers.delete(id);
        const current = this.o.store.getSandbox(id);
        if (!current) return;
        if (!this.expired(current)) this.scheduleExpiry(current);
        else
          this.expire(current).catch((error: unknown) =>
            this.o.log("ERROR", `could not delete the expired sandbox: ${(error as Error).message}`, id),
          );
      },
      Math.min(Math.max(0, at - Date.now()), TIMER_MAX_MS),
    );
    timer.unref();
    this.expiryTimers.set(id, timer);
  }

  /** Deletes a sandbox whose lifetime is over, as `sandbox delete` would. */
  private async expire(sandbox: Sandbox): Promise<void> {
    const meta = sandbox.metadata!;
    this.o.log(
      "INFO",
      `lifetime over (expired at ${new Date(sandbox.status?.expiresAtMs ?? 0).toISOString()}): deleting`,
      meta.id,
    );
    this.event(meta.id, "Expired", "Sandbox lifetime is over; deleting it");
    await this.delete(meta.workspace, meta.name);
  }

  requireReady(sandbox: Sandbox): void {
    const phase = phaseOf(sandbox);
    if (phase !== SandboxPhase.SANDBOX_PHASE_READY)
      throw failedPrecondition(notReadyMessage(sandbox.metadata?.name ?? "", phase));
  }

  /** Stops the expiry timers (the gateway is closing). */
  close(): void {
    for (const timer of [...this.expiryTimers.values(), ...this.adopting.values()]) clearTimeout(timer);
    this.expiryTimers.clear();
    this.adopting.clear();
  }
}

/** An image config's `Env` (`KEY=value` entries) as a map; an entry without `=` names nothing. */
function imageEnvironment(image: StoredImage): Record<string, string> {
  const entries = image.config.env.filter((entry) => entry.indexOf("=") > 0);
  return Object.fromEntries(
    entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]),
  );
}

/** The longest text a template field may hold (upstream's bound). */
const TEMPLATE_TEXT_MAX = 1024;

/**
 * Refuses what a create asks that this gateway's runtime cannot do, naming
 * the field: a sandbox that is not what was asked for is never started.
 */
function refuseUnhonoured(spec: SandboxSpec, images: boolean): void {
  const template = spec.template;
  for (const field of ["image", "runtimeClassName", "agentSocket"] as const) {
    const value = template?.[field] ?? "";
    if (Buffer.byteLength(value) > TEMPLATE_TEXT_MAX) {
      throw invalidArgument(`spec.template.${snakeCase(field)} exceeds ${TEMPLATE_TEXT_MAX} bytes`);
    }
  }
  const gpu = spec.resourceRequirements?.gpu;
  if (gpu?.count === 0)
    throw invalidArgument("spec.resource_requirements.gpu: gpu count must be greater than 0");
  const unhonoured: [string, boolean, string][] = [
    [
      "spec.template.image",
      !images && (template?.image ?? "") !== "",
      "this gateway runs sandboxes on its host's root filesystem; it cannot run them from images",
    ],
    ["spec.resource_requirements.gpu", gpu !== undefined, "this gateway's runtime gives sandboxes no GPUs"],
    [
      "spec.template.agent_socket",
      (template?.agentSocket ?? "") !== "",
      "this gateway's runtime places the agent's socket itself",
    ],
  ];
  for (const [field, asked, why] of unhonoured) {
    if (asked) throw new StatusError(status.UNIMPLEMENTED, `${field}: ${why}`);
  }
}

function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}

function stoppedOrStopping(phase: SandboxPhase): boolean {
  return phase === SandboxPhase.SANDBOX_PHASE_STOPPING || phase === SandboxPhase.SANDBOX_PHASE_STOPPED;
}

/** Phases a supervisor's reports (connected, failed, exited) do not change: only the gateway's own calls leave them. */
function unmovedByReports(phase: SandboxPhase): boolean {
  return (
    phase === SandboxPhase.SANDBOX_PHASE_ERROR ||
    phase === SandboxPhase.SANDBOX_PHASE_DELETING ||
    stoppedOrStopping(phase)
  );
}

/** What makes a policy unusable here (size, safety rules, a filesystem with no shell), as one message. */
function policyProblem(policy: SandboxPolicy): string | undefined {
  const size = policySizeViolation(policy);
  if (size) return size;
  const violations = validatePolicy(policy);
  if (violations.length > 0) return formatPolicyViolations(violations);
  const shellless = shelllessFilesystemViolation(policy.filesystem);
  return shellless ? `policy refused: ${shellless}` : undefined;
}
