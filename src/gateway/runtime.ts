// The local compute runtime: one supervisor process per sandbox, started by
// the gateway on this machine and told what to run through the runtime
// contract (src/runtime/contract.ts): its identity in its environment, the
// rest over gRPC. A supervisor started ahead of need (the spare) gets that
// environment as one line on stdin; a spare whose stdin ends before it was
// given a sandbox exits. In remote mode (OPENSHELL_SUPERVISOR_MODE=remote)
// each supervisor starts as one in another machine's pod would: environment
// only, no stdin, files fetched over gRPC, no spare. In external mode
// (OPENSHELL_SUPERVISOR_MODE=external) the gateway starts no process at all:
// start records the launch and writes the supervisor's environment to
// SUPERVISOR_ENV_FILE in the sandbox's directory, and whoever runs the
// supervisor (a pod's container, a test) starts it with that environment; it
// dials the gateway's TCP listener (OPENSHELL_SUPERVISOR_ENDPOINT, else the
// listener's own address), names its own sandbox directory and app root, and
// stops by itself once the gateway no longer has its sandbox.
//
// Work outlives the gateway: supervisors run in sessions of their own (a
// signal to the gateway's process group does not reach them), and a gateway
// that stops, crashes or is upgraded leaves them running; they reconnect when
// a gateway listens again. The sandbox's directory records its supervisor's
// pid and start time (SUPERVISOR_RECORD), and the next gateway adopts the
// process it names (adopt): it watches it by pid and stops it by signal, as it
// would one of its own children.

import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { setPriority } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import type { Limits } from "../core/limits.js";
import type { Sandbox } from "../gen/openshell.js";
import { orElse } from "../host/fs.js";
import { identityAlive, mallocTunables, type ProcessIdentity, processIdentity } from "../host/process.js";
import { destroySandboxCgroups, findSandboxCgroups, sweepIdleCgroups } from "../runtime/cgroups.js";
import {
  POD_SUPPORT_DIR_ENV,
  SECCOMP_DENY_ENV,
  SUPERVISOR_ENV,
  type SupervisorLaunch,
  supervisorEnv,
} from "../runtime/contract.js";
import { sweepGuestDisks, unmountGuestDisk } from "../runtime/guest-disk.js";
import { removeSharedMemoryStaging } from "../runtime/staging.js";
import type { ComputeDriver, DriverEvents } from "./driver.js";

/** The longest a used spare supervisor goes unreplaced while its sandbox starts. */
const SPARE_DELAY_MS = 2000;

/** Only root may lower a niceness again, so only a root gateway starts spares at the lowest priority. */
const CAN_RAISE_PRIORITY = process.getuid?.() === 0;
const SPARE_NICENESS = 19;

/** Sets every thread of process `pid` to `niceness` (Linux applies a priority per thread). */
function renice(pid: number | undefined, niceness: number): void {
  if (pid === undefined) return;
  let threads: number[];
  try {
    threads = readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    threads = [pid];
  }
  for (const thread of threads) {
    try {
      setPriority(thread, niceness);
    } catch {
      // Gone, or not permitted: the priority is an optimisation only.
    }
  }
}

interface Running {
  /** The process, when this gateway started it; an adopted one is known by its identity only. */
  child?: ChildProcess;
  identity?: ProcessIdentity;
  /** What it was launched to run: known only to the gateway that started it. */
  launch?: SupervisorLaunch;
  exited: Promise<void>;
  /** Looks for an adopted supervisor's exit now, rather than at its next tick; ends the watch. */
  poll?: () => void;
  unwatch?: () => void;
}

/** The file in a sandbox's directory naming its supervisor process (see the header). */
const SUPERVISOR_RECORD = "supervisor.pid";
/** How often a gateway looks whether an adopted supervisor still runs. */
const ADOPTED_POLL_MS = 500;

/** The supervisor a sandbox's directory records; undefined when it records none that parses. */
export function readSupervisorRecord(sandboxDir: string): ProcessIdentity | undefined {
  const text = orElse("", () => readFileSync(join(sandboxDir, SUPERVISOR_RECORD), "utf8"));
  const match = /^(\d{1,10}) (\d{1,20})\n$/.exec(text);
  return match ? { pid: Number(match[1]), start: match[2]! } : undefined;
}

/** The environment variable that starts supervisors as remote ones, or starts none (see the header). */
export const SUPERVISOR_MODE_ENV = "OPENSHELL_SUPERVISOR_MODE";
/** What external supervisors dial, e.g. `gateway.example:17670`; the gateway's TCP listener when unset. */
export const SUPERVISOR_ENDPOINT_ENV = "OPENSHELL_SUPERVISOR_ENDPOINT";
/** The file in an external sandbox's directory holding its supervisor's environment (0600, `NAME=value` lines). */
export const SUPERVISOR_ENV_FILE = "supervisor.env";

export type SupervisorMode = "local" | "remote" | "external";

/** The mode OPENSHELL_SUPERVISOR_MODE names; anything else stops the gateway's start. */
export function supervisorMode(text: string | undefined): SupervisorMode {
  if (text === undefined || text === "" || text === "local") return "local";
  if (text === "remote" || text === "external") return text;
  throw new Error(`${SUPERVISOR_MODE_ENV}=${text}: expected local, remote or external`);
}

export class LocalRuntime implements ComputeDriver {
  readonly kind = "local";
  readonly pullsImages = false;
  private readonly running = new Map<string, Running>();
  /**
   * One supervisor started ahead of need, already connected to the gateway:
   * a new sandbox then waits for its pod, not for node and gRPC to load.
   */
  private spare: ChildProcess | undefined;
  private stopping = false;

  constructor(
    /** The directory holding one directory per sandbox. */
    readonly sandboxesRoot: string,
    private readonly supervisorScript: string,
    private readonly gatewayTarget: string,
    private readonly events: DriverEvents,
    /** See the header; remote and external supervisors read no files from this host and have no spare. */
    readonly mode: SupervisorMode = supervisorMode(process.env[SUPERVISOR_MODE_ENV]),
    /** What an external supervisor dials (external mode), known once the gateway listens. */
    private readonly externalTarget: () => string = () => gatewayTarget,
  ) {}

  async open(): Promise<void> {}

  /** Disks left mounted, and idle control groups, of sandboxes that need them no longer. */
  async sweep(sandboxes: { live: ReadonlySet<string> }): Promise<void> {
    await sweepGuestDisks(this.sandboxesRoot, (id) => sandboxes.live.has(id));
    sweepIdleCgroups();
  }

  refuseLimits(limits: Limits): string | undefined {
    if (limits.diskBytes !== undefined && process.getuid?.() !== 0) {
      return "cannot enforce the disk limit on this host: only a gateway running as root gives each sandbox a filesystem of its own";
    }
    return undefined;
  }

  refuseTemplate(sandbox: Pick<Sandbox, "spec">): string | undefined {
    const template = sandbox.spec?.template;
    if ((template?.runtimeClassName ?? "") !== "") {
      return "spec.template.runtime_class_name: this gateway's runtime (bubblewrap) has no runtime classes";
    }
    if (Object.keys(template?.driverConfig ?? {}).length > 0) {
      return "spec.template.driver_config: this gateway's runtime (bubblewrap) takes no driver configuration";
    }
    return undefined;
  }

  /** Whether supervisors fetch everything over gRPC (remote and external modes). */
  get remote(): boolean {
    return this.mode !== "local";
  }

  /** An external supervisor's pod is bounded where it runs, not by this host's control groups and disks. */
  get hostCgroups(): boolean {
    return this.mode !== "external";
  }

  /** Launches waiting for, or served by, a supervisor this gateway did not start (external mode). */
  private readonly external = new Map<string, SupervisorLaunch>();

  /**
   * A supervisor process, told its identity in its environment, or (a
   * spare) on stdin later; a spare starts at the lowest priority from its
   * first instruction (see renice).
   */
  private spawnSupervisor(spare = false, identity: Record<string, string> = {}): ChildProcess {
    const [command, args] =
      spare && CAN_RAISE_PRIORITY
        ? ["nice", ["-n", String(SPARE_NICENESS), process.execPath, this.supervisorScript]]
        : [process.execPath, [this.supervisorScript]];
    return spawn(command, args, {
      stdio: [this.remote ? "ignore" : "pipe", "pipe", "pipe"],
      // A session of its own: see the header.
      detached: true,
      env: {
        PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
        LANG: "C.UTF-8",
        [SUPERVISOR_ENV.endpoint]: this.gatewayTarget,
        ...identity,
        // Beside the sandboxes' directories: the pods' execute-only loader and seccomp filter.
        [POD_SUPPORT_DIR_ENV]: join(dirname(this.sandboxesRoot), "pod-support"),
        ...(process.env[SECCOMP_DENY_ENV] !== undefined
          ? { [SECCOMP_DENY_ENV]: process.env[SECCOMP_DENY_ENV] }
          : {}),
        ...mallocTunables(),
      },
    });
  }

  /**
   * Starts the spare supervisor: when the gateway starts, and after each use,
   * at once at the lowest priority when the gateway can raise it again (as
   * root), else once the sandbox that used the last one is up.
   */
  prepareSpare(): void {
    if (this.stopping || this.spare || this.remote) return;
    const spare = this.spawnSupervisor(true);
    spare.on("exit", () => {
      if (this.spare === spare) this.spare = undefined;
    });
    spare.on("error", () => {
      if (this.spare === spare) this.spare = undefined;
    });
    this.spare = spare;
  }

  private takeSpare(): ChildProcess {
    const spare = this.spare;
    this.spare = undefined;
    if (spare && spare.exitCode === null && spare.signalCode === null) {
      spare.removeAllListeners("exit");
      spare.removeAllListeners("error");
      // Its pod inherits its priority: back to normal before it starts one.
      if (CAN_RAISE_PRIORITY) renice(spare.pid, 0);
      return spare;
    }
    return this.spawnSupervisor();
  }

  /** What the running supervisor of a sandbox was launched to run (GetSupervisorLaunch). */
  launchOf(sandboxId: string): SupervisorLaunch | undefined {
    return this.running.get(sandboxId)?.launch ?? this.external.get(sandboxId);
  }

  /** A supervisor has fetched its configuration: the gateway is not needed for a while. */
  configured(): void {
    if (CAN_RAISE_PRIORITY) setImmediate(() => this.prepareSpare());
  }

  sandboxDir(sandboxId: string): string {
    return join(this.sandboxesRoot, sandboxId);
  }

  isRunning(sandboxId: string): boolean {
    return this.running.has(sandboxId);
  }

  start(launch: SupervisorLaunch, secret: string, _sandbox?: Sandbox): void {
    if (this.mode === "external") {
      this.startExternal(launch, secret);
      return;
    }
    // Staging a killed supervisor left behind; its pod is gone.
    removeSharedMemoryStaging(launch.sandboxId);
    const env = supervisorEnv({ sandboxId: launch.sandboxId, endpoint: this.gatewayTarget, secret });
    const child = this.remote ? this.spawnSupervisor(false, env) : this.takeSpare();
    child.stdin?.write(`${JSON.stringify(env)}\n`);
    // The next spare: as root, once this supervisor has its configuration
    // (see configured), loading only while the CPU is otherwise idle;
    // otherwise once this sandbox is up (the gateway calls prepareSpare when
    // it is Ready). On a small machine node loading a spare would compete
    // with this pod's start for the CPU, and forking the gateway takes its
    // thread for 10-30 ms, which the new supervisor's first call waits on.
    setTimeout(() => this.prepareSpare(), SPARE_DELAY_MS).unref();
    child.stdin?.on("error", () => {});
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on("line", (line) => this.events.stderr(launch.sandboxId, line));
    }
    // For the next gateway, should this one go first (see the header).
    const identity = child.pid === undefined ? undefined : processIdentity(child.pid);
    if (identity) {
      writeFileSync(join(launch.sandboxDir, SUPERVISOR_RECORD), `${identity.pid} ${identity.start}\n`, {
        mode: 0o600,
      });
    }
    const exited = new Promise<void>((resolve) => {
      child.on("exit", (code, signal) => {
        if (this.running.get(launch.sandboxId)?.child === child) this.running.delete(launch.sandboxId);
        this.events.exited(launch.sandboxId, launch.instanceId, code, signal);
        resolve();
      });
      child.on("error", (error) => {
        this.events.report(launch.sandboxId, {
          kind: "failure",
          reason: "SupervisorStartFailed",
          message: error.message,
        });
      });
    });
    this.running.set(launch.sandboxId, { child, launch, exited });
  }

  /**
   * External mode: the launch, with no path of this host's in it (the
   * supervisor names its own directory and app root, and a pod's own root is
   * its image), is kept for GetSupervisorLaunch, and the supervisor's
   * environment written for whoever starts it.
   */
  private startExternal(launch: SupervisorLaunch, secret: string): void {
    this.external.set(launch.sandboxId, { ...launch, sandboxDir: "", appRoot: "", imageRoot: "" });
    const env = supervisorEnv({ sandboxId: launch.sandboxId, endpoint: this.externalTarget(), secret });
    writeFileSync(
      join(launch.sandboxDir, SUPERVISOR_ENV_FILE),
      Object.entries(env)
        .map(([name, value]) => `${name}=${value}\n`)
        .join(""),
      { mode: 0o600 },
    );
  }

  /**
   * Takes on the supervisor an earlier gateway started for a sandbox, when
   * the record in its directory names one that still runs this gateway's
   * supervisor program; false when there is none to adopt. Its exit is
   * reported as a child's would be, with neither code nor signal known.
   */
  adopt(sandboxId: string, instanceId: string): boolean {
    if (this.running.has(sandboxId)) return true;
    const identity = readSupervisorRecord(this.sandboxDir(sandboxId));
    if (!identity || !identityAlive(identity) || !this.runsSupervisor(identity.pid)) return false;
    let timer: NodeJS.Timeout | undefined;
    let poll!: () => void;
    const exited = new Promise<void>((resolve) => {
      let gone = false;
      poll = () => {
        if (gone || identityAlive(identity)) return;
        gone = true;
        clearInterval(timer);
        if (this.running.get(sandboxId)?.identity === identity) this.running.delete(sandboxId);
        this.events.exited(sandboxId, instanceId, null, null);
        resolve();
      };
    });
    timer = setInterval(poll, ADOPTED_POLL_MS);
    timer.unref();
    this.running.set(sandboxId, { identity, exited, poll, unwatch: () => clearInterval(timer) });
    return true;
  }

  /** Whether process `pid` runs this gateway's supervisor program. */
  private runsSupervisor(pid: number): boolean {
    const commandLine = orElse("", () => readFileSync(`/proc/${pid}/cmdline`, "utf8"));
    return commandLine.split("\0").includes(this.supervisorScript);
  }

  /** Stops a sandbox's supervisor (and with it the pod); resolves when it is gone. */
  async stop(sandboxId: string, graceMs = 5000): Promise<void> {
    // An external supervisor is not this gateway's to signal: it stops once its session is refused.
    this.external.delete(sandboxId);
    const running = this.running.get(sandboxId);
    if (!running) return;
    const signal = (name: NodeJS.Signals): void => {
      if (running.child) running.child.kill(name);
      else if (identityAlive(running.identity!)) {
        try {
          process.kill(running.identity!.pid, name);
        } catch {
          // Gone in between.
        }
      }
    };
    signal("SIGTERM");
    const timer = setTimeout(() => signal("SIGKILL"), graceMs);
    // An adopted supervisor is no child: its exit is looked for, often while it stops.
    const polling = running.poll ? setInterval(running.poll, 50) : undefined;
    await running.exited;
    clearTimeout(timer);
    clearInterval(polling);
    rmSync(join(this.sandboxDir(sandboxId), SUPERVISOR_RECORD), { force: true });
    await this.unmountDisk(sandboxId);
  }

  /** The sandbox's filesystem, should its supervisor have exited without unmounting it (killed, or stopped mid-start). */
  private async unmountDisk(sandboxId: string): Promise<void> {
    try {
      await unmountGuestDisk(sandboxId);
    } catch (error) {
      this.events.stderr(
        sandboxId,
        `could not unmount the sandbox's filesystem: ${(error as Error).message}`,
      );
    }
  }

  async stopAll(): Promise<void> {
    this.stopping = true;
    this.spare?.kill("SIGTERM");
    this.spare = undefined;
    await Promise.all([...this.running.keys()].map((id) => this.stop(id)));
  }

  /**
   * Leaves every sandbox's supervisor running for the next gateway to adopt
   * (see the header); the spare, which serves no sandbox yet, stops.
   */
  detachAll(): void {
    this.stopping = true;
    this.spare?.kill("SIGTERM");
    this.spare = undefined;
    for (const running of this.running.values()) {
      running.unwatch?.();
      const child = running.child;
      if (!child) continue;
      child.removeAllListeners("exit");
      // Its diagnostics go to its sandbox's directory once these pipes are gone.
      for (const stream of [child.stdin, child.stdout, child.stderr]) stream?.destroy();
      child.unref();
    }
    this.running.clear();
  }

  /**
   * Removes a stopped sandbox's storage: its filesystem's mount, should its
   * supervisor have died without unmounting it, then its directory, the
   * image with it.
   */
  async removeSandboxDir(sandboxId: string): Promise<void> {
    removeSharedMemoryStaging(sandboxId);
    const groups = findSandboxCgroups(sandboxId);
    if (groups) await destroySandboxCgroups(groups);
    // On failure the image is unlinked all the same; its loop device frees the space once unmounted.
    await this.unmountDisk(sandboxId);
    rmSync(this.sandboxDir(sandboxId), { recursive: true, force: true, maxRetries: 3 });
  }
}
