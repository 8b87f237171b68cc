// The compute driver: what the sandbox lifecycle (sandboxes.ts) needs from
// whatever runs sandboxes' supervisors. Two drivers implement it: the local
// runtime (runtime.ts: bubblewrap pods on this host, the default) and
// Kubernetes (kubernetes.ts: one pod per sandbox in a cluster). Either way a
// supervisor is told only its identity and where its gateway is (the runtime
// contract, src/runtime/contract.ts), fetches the rest over gRPC, and
// connects back; the driver starts it, stops it, takes it on after a gateway
// restart, and reports what it alone sees (a process that exited, a pod that
// was evicted) through DriverEvents.
//
// The gateway's own storage of a sandbox (its log file, its injected files'
// content for GetSandboxFiles) lives in a directory per sandbox on the
// gateway's state volume, whichever driver runs it.

import type { Limits } from "../core/limits.js";
import type { Sandbox } from "../gen/openshell.js";
import type { SupervisorLaunch, SupervisorReport } from "../runtime/contract.js";

/** The drivers `gateway start --driver` names. */
export const DRIVER_KINDS = ["local", "kubernetes"] as const;
export type DriverKind = (typeof DRIVER_KINDS)[number];

/** What a driver reports about the supervisors it runs. */
export interface DriverEvents {
  report(sandboxId: string, report: SupervisorReport): void;
  /** The supervisor of run `instanceId` is gone; code and signal when known. */
  exited(sandboxId: string, instanceId: string, code: number | null, signal: string | null): void;
  /** A diagnostic line of the sandbox's supervisor or driver, for the gateway's log. */
  stderr(sandboxId: string, line: string): void;
}

export interface ComputeDriver {
  readonly kind: DriverKind;
  /** The directory holding one directory per sandbox on the gateway's state volume. */
  readonly sandboxesRoot: string;
  /** Supervisors fetch injected files over gRPC: no file of this host is named in a launch. */
  readonly remote: boolean;
  /**
   * Sandboxes run on this host: their limits are its control groups and their
   * disks its filesystems, made by the gateway (false: the driver's own, e.g.
   * a pod's limits, or a supervisor started elsewhere).
   */
  readonly hostCgroups: boolean;
  /** Images are pulled by the driver's nodes, not by the gateway's image store. */
  readonly pullsImages: boolean;
  /** Connects to what runs the sandboxes and learns what already runs, before anything is adopted. */
  open(): Promise<void>;
  sandboxDir(sandboxId: string): string;
  /** A limit this driver cannot enforce, as a message naming it; undefined when all are enforceable. */
  refuseLimits(limits: Limits): string | undefined;
  /** A template field this driver cannot honour, as `field: why`; undefined when it honours them all. */
  refuseTemplate(sandbox: Pick<Sandbox, "spec">): string | undefined;
  isRunning(sandboxId: string): boolean;
  /** What the running supervisor of a sandbox was launched to run (GetSupervisorLaunch). */
  launchOf(sandboxId: string): SupervisorLaunch | undefined;
  /** Starts the sandbox's supervisor; a failure to start is reported, not thrown. */
  start(launch: SupervisorLaunch, secret: string, sandbox: Sandbox): void;
  /** Takes on the supervisor an earlier gateway started for the sandbox; false when there is none. */
  adopt(sandboxId: string, instanceId: string): boolean;
  /** Stops a sandbox's supervisor; resolves when it is gone. */
  stop(sandboxId: string, graceMs?: number): Promise<void>;
  stopAll(): Promise<void>;
  /** Leaves every supervisor running for the next gateway to adopt. */
  detachAll(): void;
  /**
   * On start, after adopting: removes what sandboxes no longer in the store
   * left behind (`stored`: every sandbox in the store; `live`: those whose
   * runtime must stay, running or to run).
   */
  sweep(sandboxes: { stored: ReadonlySet<string>; live: ReadonlySet<string> }): Promise<void>;
  /** A supervisor may be started ahead of need. */
  prepareSpare(): void;
  /** A supervisor has fetched its configuration. */
  configured(): void;
  /** Removes a deleted sandbox's storage, and whatever the driver kept for it (a Secret, a volume). */
  removeSandboxDir(sandboxId: string): Promise<void>;
}
