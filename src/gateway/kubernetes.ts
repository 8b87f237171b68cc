// The Kubernetes compute driver: each sandbox a pod in one namespace of a
// cluster the team already runs (`gateway start --driver kubernetes`). The
// pod (kubernetes-pod.ts) runs the user's image with the supervisor
// side-loaded; the supervisor dials the gateway as a local one does and is
// configured over gRPC. What only the cluster sees becomes the sandbox's
// status:
//
//   pod event Scheduled, Pulling, Pulled       → progress steps of the create
//   pod unschedulable past scheduleTimeoutMs   → Error (Unschedulable, the scheduler's message)
//   image pull failed (ErrImagePull, …)        → Error (that reason, the kubelet's message)
//   container OOMKilled                        → Error (OOMKilled)
//   pod evicted                                → Error (Evicted, the kubelet's message)
//   container exited otherwise                 → the supervisor exited (SupervisorExited)
//   pod deleted by someone else                → Error (PodDeleted)
//   an API call unanswered within callTimeoutMs → Error (KubernetesApiTimeout), on create
//
// Status comes from two watches, of the driver's pods and of the namespace's
// events, each resumed from the last resourceVersion it saw when its
// connection drops (a list again when the server has forgotten that
// version, 410 Gone), so no phase change is lost. Every call is bounded
// (callTimeoutMs, 30 s); a delete names the pod's uid and resourceVersion as
// preconditions, so a stale delete never removes a newer pod of the sandbox.
// The only calls the driver makes are those of DRIVER_CALLS, which the Role
// in deploy/kubernetes/ grants and nothing more (test/unit/kubernetes-rbac.test.ts).

import { readFileSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import {
  ApiException,
  type ConfigurationOptions,
  CoreV1Api,
  type CoreV1Event,
  type CoreV1EventList,
  KubeConfig,
  Observable,
  type RequestContext,
  type ResponseContext,
  type V1Pod,
  type V1PodList,
  Watch,
} from "@kubernetes/client-node";
import type { Limits } from "../core/limits.js";
import { type Sandbox, SupervisorLaunchSpec } from "../gen/openshell.js";
import { orElse } from "../host/fs.js";
import {
  reportFromWire,
  reportToWire,
  type SupervisorLaunch,
  type SupervisorReport,
} from "../runtime/contract.js";
import type { ComputeDriver, DriverEvents } from "./driver.js";
import {
  claimName,
  INSTANCE_ANNOTATION,
  type KubeObject,
  MANAGED_SELECTOR,
  type PodSettings,
  podLaunch,
  podName,
  renderClaim,
  renderPod,
  renderSecret,
  SANDBOX_ID_ANNOTATION,
  secretName,
  TERMINATION_GRACE_SECONDS,
} from "./kubernetes-pod.js";

/** Every call the driver makes, by resource and verb: the Role grants exactly these. */
export const DRIVER_CALLS = {
  pods: ["create", "get", "list", "watch", "delete"],
  secrets: ["create", "delete"],
  persistentvolumeclaims: ["create", "delete"],
  events: ["list", "watch"],
} as const satisfies Record<string, readonly string[]>;
type Resource = keyof typeof DRIVER_CALLS;
type Verb<R extends Resource> = (typeof DRIVER_CALLS)[R][number];

export interface KubernetesSettings extends PodSettings {
  /** The KubeConfig to use (as kubectl resolves it: loadKubeConfig). */
  kubeConfig: KubeConfig;
  /** The longest any API call may take; 30 s. */
  callTimeoutMs?: number | undefined;
  /** The longest a pod may stay unscheduled before its sandbox goes to Error; 5 min. */
  scheduleTimeoutMs?: number | undefined;
  /** Before a dropped watch is opened again; 1 s. */
  rewatchDelayMs?: number | undefined;
}

/** A call that did not answer within its bound. */
export class KubernetesTimeout extends Error {}

/** Waiting-state reasons of a container that mean its image cannot be had. */
const PULL_FAILURES = new Set(["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"]);
/** Waiting-state reasons of a container that will not start as configured. */
const CONFIG_FAILURES = new Set(["CreateContainerConfigError", "CreateContainerError", "RunContainerError"]);
/** Pod events that are steps of a create. */
const PROGRESS_EVENTS = new Set(["Scheduled", "Pulling", "Pulled", "Created", "Started"]);
/** The file in a sandbox's directory recording its pod's launch (see start). */
const LAUNCH_RECORD = "launch.pb";
/** Selects the events about pods. */
const POD_EVENTS = "involvedObject.kind=Pod";
/** The most pod events remembered as seen (so a relisted event is not reported twice). */
const SEEN_EVENTS_MAX = 4096;

/**
 * The KubeConfig as kubectl resolves it: `kubeconfig` (else $KUBECONFIG,
 * else ~/.kube/config), in a pod without either the pod's service account;
 * `context` else the file's current context. The namespace: the one given,
 * else the context's, else the pod's own (in a cluster), else `default`.
 */
export function loadKubeConfig(options: { kubeconfig?: string | undefined; context?: string | undefined }): {
  config: KubeConfig;
  namespace: string;
} {
  const config = new KubeConfig();
  const inCluster =
    options.kubeconfig === undefined &&
    process.env.KUBECONFIG === undefined &&
    process.env.KUBERNETES_SERVICE_HOST !== undefined;
  if (options.kubeconfig !== undefined) config.loadFromFile(options.kubeconfig);
  else config.loadFromDefault();
  if (options.context !== undefined) {
    if (!config.getContextObject(options.context)) {
      throw new Error(
        `--kube-context ${options.context}: no such context in the kubeconfig (kubectl config get-contexts lists them)`,
      );
    }
    config.setCurrentContext(options.context);
  }
  if (!config.getCurrentCluster()) {
    throw new Error(
      "no Kubernetes cluster configured: set --kubeconfig or KUBECONFIG, or run the gateway in a pod",
    );
  }
  const contextNamespace = config.getContextObject(config.getCurrentContext())?.namespace;
  let namespace = contextNamespace ?? "default";
  if (inCluster && contextNamespace === undefined) {
    try {
      namespace = readFileSync("/var/run/secrets/kubernetes.io/serviceaccount/namespace", "utf8").trim();
    } catch {
      // Not in a pod after all.
    }
  }
  return { config, namespace };
}

interface Run {
  launch: SupervisorLaunch | undefined;
  instanceId: string;
  /** The pod as last seen. */
  uid?: string | undefined;
  resourceVersion?: string | undefined;
  /** Its create, while under way. */
  creating?: Promise<void> | undefined;
  stopping: boolean;
  /** Its supervisor is gone (the pod ended, failed or was deleted); the pod may remain until stop. */
  ended: boolean;
  /** Reasons already reported for this run: each once. */
  reported: Set<string>;
  scheduleTimer?: NodeJS.Timeout | undefined;
  lastSchedulingMessage?: string | undefined;
  gone: Promise<void>;
  markGone: () => void;
}

function newRun(instanceId: string, launch: SupervisorLaunch | undefined): Run {
  let markGone!: () => void;
  const gone = new Promise<void>((resolve) => {
    markGone = resolve;
  });
  return { launch, instanceId, stopping: false, ended: false, reported: new Set(), gone, markGone };
}

/** A pod as a delete's preconditions name it. */
interface PodVersion {
  uid?: string | undefined;
  resourceVersion?: string | undefined;
}

function versionOf(pod: V1Pod): PodVersion {
  return { uid: pod.metadata?.uid, resourceVersion: pod.metadata?.resourceVersion };
}

/** The status code of a failed call, when the API server answered. */
function statusOf(error: unknown): number | undefined {
  return error instanceof ApiException ? error.code : undefined;
}

/** A failed call in one line: the server's message when it gave one. */
function describe(error: unknown): string {
  if (error instanceof ApiException) {
    const body = typeof error.body === "string" ? error.body : JSON.stringify(error.body ?? "");
    try {
      const parsed = JSON.parse(body) as { message?: string };
      if (parsed.message) return `${error.code}: ${parsed.message}`.slice(0, 1024);
    } catch {
      // Not JSON.
    }
    return `${error.code}: ${body}`.slice(0, 1024);
  }
  return (error as Error).message;
}

export class KubernetesDriver implements ComputeDriver {
  readonly kind = "kubernetes";
  readonly remote = true;
  readonly hostCgroups = false;
  readonly pullsImages = true;
  private readonly api: CoreV1Api;
  private readonly watcher: Watch;
  private readonly runs = new Map<string, Run>();
  /** Pods found at open, by sandbox id, for adopt. */
  private readonly found = new Map<string, V1Pod>();
  private readonly seenEvents = new Set<string>();
  private readonly watches = new Set<AbortController>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;
  private readonly callTimeoutMs: number;

  constructor(
    readonly sandboxesRoot: string,
    private readonly settings: KubernetesSettings,
    private readonly events: DriverEvents,
  ) {
    this.api = settings.kubeConfig.makeApiClient(CoreV1Api);
    this.watcher = new Watch(settings.kubeConfig);
    this.callTimeoutMs = settings.callTimeoutMs ?? 30_000;
  }

  // ---- bounded calls ------------------------------------------------------

  /**
   * One API call, declared in DRIVER_CALLS, aborted and refused as a
   * KubernetesTimeout when it has not answered within the bound.
   */
  private async call<R extends Resource, T>(
    resource: R,
    verb: Verb<R>,
    send: (options: ConfigurationOptions) => Promise<T>,
  ): Promise<T> {
    const abort = new AbortController();
    const options: ConfigurationOptions = {
      middleware: [
        {
          pre: (context: RequestContext) => {
            context.setSignal(abort.signal);
            return new Observable(Promise.resolve(context));
          },
          post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
        },
      ],
      middlewareMergeStrategy: "append",
    };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        abort.abort();
        reject(
          new KubernetesTimeout(
            `the Kubernetes API did not answer ${verb} ${resource} within ${Math.round(this.callTimeoutMs / 100) / 10} s`,
          ),
        );
      }, this.callTimeoutMs);
    });
    try {
      return await Promise.race([send(options), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private get namespace(): string {
    return this.settings.namespace;
  }

  // ---- ComputeDriver -----------------------------------------------------

  /** Lists the driver's pods (for adopt) and starts watching pods and events. */
  async open(): Promise<void> {
    const pods = await this.listPods();
    for (const pod of pods.items) {
      const id = pod.metadata?.annotations?.[SANDBOX_ID_ANNOTATION];
      if (id !== undefined && pod.metadata?.deletionTimestamp === undefined) this.found.set(id, pod);
    }
    this.watchPods(pods.metadata?.resourceVersion);
    const events = await this.listEvents();
    // Events before now were reported by an earlier gateway, or are of pods long gone.
    for (const event of events.items) this.remember(event);
    this.watchEvents(events.metadata?.resourceVersion);
  }

  sandboxDir(sandboxId: string): string {
    return join(this.sandboxesRoot, sandboxId);
  }

  refuseLimits(limits: Limits): string | undefined {
    if (limits.pids !== undefined) {
      return "cannot enforce --pids on Kubernetes: a pod's process limit is the kubelet's podPidsLimit, which the cluster's operator sets";
    }
    return undefined;
  }

  refuseTemplate(sandbox: Pick<Sandbox, "spec">): string | undefined {
    // A path names an archive, a root or a Dockerfile on the gateway's host, which no node can pull.
    if (isAbsolute(sandbox.spec?.template?.image ?? "")) {
      return "spec.template.image: the kubernetes driver runs images from a registry; push the image and name its reference";
    }
    if (Object.keys(sandbox.spec?.template?.driverConfig ?? {}).length > 0) {
      return "spec.template.driver_config: the kubernetes driver takes its settings from `gateway start`, not from a create";
    }
    return undefined;
  }

  isRunning(sandboxId: string): boolean {
    const run = this.runs.get(sandboxId);
    return run !== undefined && !run.ended;
  }

  launchOf(sandboxId: string): SupervisorLaunch | undefined {
    return this.runs.get(sandboxId)?.launch;
  }

  start(launch: SupervisorLaunch, secret: string, sandbox: Sandbox): void {
    const id = launch.sandboxId;
    const run = newRun(launch.instanceId, podLaunch(launch));
    this.runs.set(id, run);
    // For the next gateway, should this one go while the pod starts: its supervisor asks for it then.
    try {
      writeFileSync(
        join(this.sandboxDir(id), LAUNCH_RECORD),
        SupervisorLaunchSpec.encode(run.launch!).finish(),
        {
          mode: 0o600,
        },
      );
    } catch (error) {
      this.events.stderr(id, `could not record its launch: ${(error as Error).message}`);
    }
    run.creating = this.create(sandbox, run, secret)
      .catch((error: unknown) => {
        if (run.stopping) return;
        const reason = error instanceof KubernetesTimeout ? "KubernetesApiTimeout" : "PodCreateFailed";
        this.reportFailure(id, run, reason, `could not create the sandbox's pod: ${describe(error)}`);
        this.finish(id, run);
      })
      .finally(() => {
        run.creating = undefined;
      });
    const bound = this.settings.scheduleTimeoutMs ?? 300_000;
    run.scheduleTimer = this.timer(bound, () => {
      if (this.runs.get(id) !== run || run.stopping) return;
      this.reportFailure(
        id,
        run,
        "Unschedulable",
        `its pod was not scheduled within ${Math.round(bound / 1000)} s${run.lastSchedulingMessage ? `: ${run.lastSchedulingMessage}` : ""}`,
      );
    });
  }

  private async create(sandbox: Sandbox, run: Run, secret: string): Promise<void> {
    const id = sandbox.metadata!.id;
    await this.ensure("secrets", renderSecret(this.settings, id, secret), (body, options) =>
      this.api.createNamespacedSecret({ namespace: this.namespace, body }, options),
    );
    const claim = renderClaim(this.settings, id);
    if (claim) {
      await this.ensure("persistentvolumeclaims", claim, (body, options) =>
        this.api.createNamespacedPersistentVolumeClaim({ namespace: this.namespace, body }, options),
      );
    }
    const body = renderPod(this.settings, { sandbox, instanceId: run.instanceId }) as V1Pod;
    for (let attempt = 0; ; attempt++) {
      try {
        const pod = await this.call("pods", "create", (options) =>
          this.api.createNamespacedPod({ namespace: this.namespace, body }, options),
        );
        this.seen(run, pod);
        return;
      } catch (error) {
        // A pod of an earlier run of this sandbox is still there: it goes first.
        if (statusOf(error) !== 409 || attempt > 0 || run.stopping) throw error;
        const old = await this.getPod(id);
        if (old) await this.deletePod(id, versionOf(old));
      }
    }
  }

  /** Creates an object of the sandbox's that may exist already (the sandbox ran before). */
  private async ensure<R extends "secrets" | "persistentvolumeclaims">(
    resource: R,
    body: KubeObject,
    create: (body: never, options: ConfigurationOptions) => Promise<unknown>,
  ): Promise<void> {
    try {
      await this.call(resource, "create", (options) => create(body as never, options));
    } catch (error) {
      if (statusOf(error) !== 409) throw error;
    }
  }

  adopt(sandboxId: string, _instanceId: string): boolean {
    if (this.runs.has(sandboxId)) return true;
    const pod = this.found.get(sandboxId);
    if (!pod || ["Succeeded", "Failed"].includes(pod.status?.phase ?? "")) return false;
    this.found.delete(sandboxId);
    const instanceId = pod.metadata?.annotations?.[INSTANCE_ANNOTATION] ?? "";
    const recorded = orElse(undefined, () =>
      SupervisorLaunchSpec.decode(readFileSync(join(this.sandboxDir(sandboxId), LAUNCH_RECORD))),
    );
    const run = newRun(instanceId, recorded?.instanceId === instanceId ? recorded : undefined);
    this.seen(run, pod);
    this.runs.set(sandboxId, run);
    return true;
  }

  async stop(sandboxId: string, _graceMs?: number): Promise<void> {
    const run = this.runs.get(sandboxId);
    if (!run) {
      // A pod an earlier gateway left that was not adopted (its run had ended).
      const found = this.found.get(sandboxId);
      this.found.delete(sandboxId);
      if (found)
        await this.deletePod(sandboxId, versionOf(found)).catch((error: unknown) =>
          this.events.stderr(sandboxId, `could not delete the sandbox's pod: ${describe(error)}`),
        );
      return;
    }
    run.stopping = true;
    clearTimeout(run.scheduleTimer);
    await run.creating;
    try {
      const pod = run.uid ? undefined : await this.getPod(sandboxId);
      if (pod) await this.deletePod(sandboxId, versionOf(pod));
      else if (run.uid)
        await this.deletePod(sandboxId, { uid: run.uid, resourceVersion: run.resourceVersion });
    } catch (error) {
      this.events.stderr(sandboxId, `could not delete the sandbox's pod: ${describe(error)}`);
    }
    run.markGone();
    if (this.runs.get(sandboxId) === run) this.runs.delete(sandboxId);
  }

  /**
   * Deletes the sandbox's pod as last seen, with its uid and
   * resourceVersion as preconditions, and waits until it is gone. A pod
   * changed since is looked at again: another run's pod (a recreate won the
   * race) is left alone.
   */
  private async deletePod(sandboxId: string, seen: PodVersion): Promise<void> {
    let target = seen;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.call("pods", "delete", (options) =>
          this.api.deleteNamespacedPod(
            {
              name: podName(sandboxId),
              namespace: this.namespace,
              body: { preconditions: { uid: target.uid, resourceVersion: target.resourceVersion } },
            },
            options,
          ),
        );
        break;
      } catch (error) {
        const code = statusOf(error);
        if (code === 404) return;
        if (code !== 409) throw error;
        const now = await this.getPod(sandboxId);
        if (!now) return;
        // Not the pod this delete meant: a newer run's.
        if (now.metadata?.uid !== target.uid) return;
        target = versionOf(now);
      }
    }
    await this.podGone(sandboxId, target.uid);
  }

  /** Resolves once the pod of `uid` is gone: seen deleted by the watch, or not found. */
  private async podGone(sandboxId: string, uid: string | undefined): Promise<void> {
    const run = this.runs.get(sandboxId);
    // As upstream: the pod's grace period and 30 s more.
    const deadline = Date.now() + (TERMINATION_GRACE_SECONDS + 30) * 1000;
    while (Date.now() < deadline && !this.closed) {
      const pod = await this.getPod(sandboxId);
      if (!pod || pod.metadata?.uid !== uid) return;
      // The watch tells first, most often; else look again shortly.
      await Promise.race([run?.gone, new Promise((resolve) => this.timer(1000, () => resolve(undefined)))]);
      if (run && this.runs.get(sandboxId) !== run) return;
    }
  }

  private async getPod(sandboxId: string): Promise<V1Pod | undefined> {
    try {
      return await this.call("pods", "get", (options) =>
        this.api.readNamespacedPod({ name: podName(sandboxId), namespace: this.namespace }, options),
      );
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw error;
    }
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.runs.keys()].map((id) => this.stop(id)));
    this.close();
  }

  detachAll(): void {
    this.close();
    for (const run of this.runs.values()) clearTimeout(run.scheduleTimer);
    this.runs.clear();
  }

  /** Pods, Secrets and claims of sandboxes deleted while no gateway ran. */
  async sweep(sandboxes: { stored: ReadonlySet<string> }): Promise<void> {
    for (const [id, pod] of this.found) {
      if (sandboxes.stored.has(id)) continue;
      this.found.delete(id);
      try {
        await this.deletePod(id, versionOf(pod));
        await this.removeObjects(id);
      } catch (error) {
        this.events.stderr(id, `could not remove what a deleted sandbox left: ${describe(error)}`);
      }
    }
  }

  prepareSpare(): void {}

  configured(): void {}

  async removeSandboxDir(sandboxId: string): Promise<void> {
    await this.removeObjects(sandboxId);
    await rm(this.sandboxDir(sandboxId), { recursive: true, force: true, maxRetries: 3 });
  }

  /** The sandbox's Secret and claim, should they exist. */
  private async removeObjects(sandboxId: string): Promise<void> {
    const remove = async (
      resource: "secrets" | "persistentvolumeclaims",
      send: (options: ConfigurationOptions) => Promise<unknown>,
    ) => {
      try {
        await this.call(resource, "delete", send);
      } catch (error) {
        if (statusOf(error) !== 404)
          this.events.stderr(sandboxId, `could not delete its ${resource}: ${describe(error)}`);
      }
    };
    await remove("secrets", (options) =>
      this.api.deleteNamespacedSecret({ name: secretName(sandboxId), namespace: this.namespace }, options),
    );
    if (this.settings.workspace.kind === "claim") {
      await remove("persistentvolumeclaims", (options) =>
        this.api.deleteNamespacedPersistentVolumeClaim(
          { name: claimName(sandboxId), namespace: this.namespace },
          options,
        ),
      );
    }
  }

  // ---- status from the watches --------------------------------------------

  private close(): void {
    this.closed = true;
    for (const watch of this.watches) watch.abort();
    this.watches.clear();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private timer(ms: number, run: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      run();
    }, ms);
    timer.unref();
    this.timers.add(timer);
    return timer;
  }

  private watchPods(resourceVersion: string | undefined): void {
    this.watch(
      "pods",
      `/api/v1/namespaces/${this.namespace}/pods`,
      { labelSelector: MANAGED_SELECTOR },
      resourceVersion,
      (type, pod: V1Pod) => this.onPod(type, pod),
      () => this.relistPods(),
    );
  }

  private watchEvents(resourceVersion: string | undefined): void {
    this.watch(
      "events",
      `/api/v1/namespaces/${this.namespace}/events`,
      { fieldSelector: POD_EVENTS },
      resourceVersion,
      (_type, event: CoreV1Event) => this.onEvent(event),
      () => this.relistEvents(),
    );
  }

  /**
   * A watch that resumes from the last resourceVersion it saw when it
   * drops, and lists again (`relist`) when the server no longer has that
   * version (410 Gone).
   */
  private watch<T extends { metadata?: { resourceVersion?: string } }>(
    resource: "pods" | "events",
    path: string,
    query: Record<string, string>,
    from: string | undefined,
    handle: (type: string, object: T) => void,
    relist: () => Promise<void>,
  ): void {
    if (this.closed) return;
    let resourceVersion = from;
    let expired = false;
    let connected = false;
    let controller: AbortController | undefined;
    // Once per watch: a drop, a failure or the bound opens the next one, whichever comes first.
    let retried = false;
    const again = (): void => {
      if (controller) this.watches.delete(controller);
      if (retried || this.closed) return;
      retried = true;
      this.timer(this.settings.rewatchDelayMs ?? 1000, () => {
        if (expired) relist().catch((error: unknown) => this.watchFailed(resource, error, again));
        else this.watch(resource, path, query, resourceVersion, handle, relist);
      });
    };
    const opening = this.watcher.watch(
      path,
      { ...query, allowWatchBookmarks: true, ...(resourceVersion !== undefined ? { resourceVersion } : {}) },
      (type: string, object: T & { code?: number }) => {
        if (type === "ERROR") {
          // 410 Gone: the version is too old to resume from.
          if (object.code === 410) expired = true;
          return;
        }
        if (retried) return;
        if (object.metadata?.resourceVersion) resourceVersion = object.metadata.resourceVersion;
        if (type !== "BOOKMARK") handle(type, object);
      },
      (error: unknown) => {
        if (error && statusOf(error) === 410) expired = true;
        again();
      },
    );
    // A watch whose server never answers is given up and opened again.
    const bound = this.timer(this.callTimeoutMs, () => {
      if (!connected) again();
    });
    opening.then(
      (opened) => {
        connected = true;
        clearTimeout(bound);
        this.timers.delete(bound);
        // Closed meanwhile, given up on, or already ended.
        if (this.closed || retried) opened.abort();
        else {
          controller = opened;
          this.watches.add(opened);
        }
      },
      (error: unknown) => this.watchFailed(resource, error, again),
    );
  }

  private watchFailed(resource: string, error: unknown, again: () => void): void {
    this.events.stderr("", `watch of ${resource} failed: ${describe(error)}; watching again`);
    again();
  }

  /** After 410 Gone: the pods as they are now; a run whose pod is missing from the list lost it. */
  private async relistPods(): Promise<void> {
    const pods = await this.listPods();
    const present = new Set<string>();
    for (const pod of pods.items) {
      present.add(pod.metadata?.annotations?.[SANDBOX_ID_ANNOTATION] ?? "");
      this.onPod("MODIFIED", pod);
    }
    for (const [id, run] of this.runs) {
      if (!present.has(id) && run.uid !== undefined) this.onPod("DELETED", this.placeholder(id, run));
    }
    this.watchPods(pods.metadata?.resourceVersion);
  }

  private placeholder(id: string, run: Run): V1Pod {
    return {
      metadata: {
        uid: run.uid,
        annotations: { [SANDBOX_ID_ANNOTATION]: id, [INSTANCE_ANNOTATION]: run.instanceId },
      },
    };
  }

  private listPods(): Promise<V1PodList> {
    return this.call("pods", "list", (options) =>
      this.api.listNamespacedPod({ namespace: this.namespace, labelSelector: MANAGED_SELECTOR }, options),
    );
  }

  /** The namespace's events about pods (the driver's are told apart by name and uid). */
  private listEvents(): Promise<CoreV1EventList> {
    return this.call("events", "list", (options) =>
      this.api.listNamespacedEvent({ namespace: this.namespace, fieldSelector: POD_EVENTS }, options),
    );
  }

  private async relistEvents(): Promise<void> {
    const events = await this.listEvents();
    for (const event of events.items) this.onEvent(event);
    this.watchEvents(events.metadata?.resourceVersion);
  }

  /** Records the pod of a run as last seen. */
  private seen(run: Run, pod: V1Pod): void {
    run.uid = pod.metadata?.uid;
    run.resourceVersion = pod.metadata?.resourceVersion;
  }

  private onPod(type: string, pod: V1Pod): void {
    const id = pod.metadata?.annotations?.[SANDBOX_ID_ANNOTATION];
    if (id === undefined) return;
    const run = this.runs.get(id);
    if (!run || pod.metadata?.annotations?.[INSTANCE_ANNOTATION] !== run.instanceId) return;
    if (type === "DELETED") {
      if (run.uid !== undefined && pod.metadata?.uid !== run.uid) return;
      if (!run.stopping) {
        if (!run.ended)
          this.reportFailure(id, run, "PodDeleted", `its pod ${podName(id)} was deleted outside openshell`);
        this.finish(id, run);
        this.runs.delete(id);
      }
      run.markGone();
      return;
    }
    this.seen(run, pod);
    if (run.stopping || run.ended) return;
    const status = pod.status;
    if (status?.conditions?.some((c) => c.type === "PodScheduled" && c.status === "True")) {
      clearTimeout(run.scheduleTimer);
    }
    if (status?.reason === "Evicted") {
      this.reportFailure(id, run, "Evicted", status.message ?? "the node evicted the sandbox's pod");
      this.finish(id, run);
      return;
    }
    for (const container of [
      ...(status?.initContainerStatuses ?? []),
      ...(status?.containerStatuses ?? []),
    ]) {
      const waiting = container.state?.waiting;
      if (waiting?.reason && (PULL_FAILURES.has(waiting.reason) || CONFIG_FAILURES.has(waiting.reason))) {
        this.reportFailure(
          id,
          run,
          waiting.reason,
          `container ${container.name}: ${waiting.message ?? waiting.reason}`,
        );
      }
      const terminated = container.state?.terminated;
      if (!terminated) continue;
      if (terminated.reason === "OOMKilled") {
        this.reportFailure(
          id,
          run,
          "OOMKilled",
          `container ${container.name} was killed by the out-of-memory killer at the sandbox's memory limit`,
        );
      }
      if (container.name === "sandbox" || terminated.exitCode !== 0) {
        if (container.name !== "sandbox") {
          this.reportFailure(
            id,
            run,
            "SupervisorInstallFailed",
            `container ${container.name} exited with status ${terminated.exitCode}: ${terminated.message ?? terminated.reason ?? ""}`,
          );
        }
        this.finish(id, run, container.name === "sandbox" ? terminated.exitCode : null);
        return;
      }
    }
  }

  private onEvent(event: CoreV1Event): void {
    if (!this.remember(event)) return;
    const name = event.involvedObject?.name ?? "";
    const id = name.startsWith("openshell-") ? name.slice("openshell-".length) : undefined;
    const run = id === undefined ? undefined : this.runs.get(id);
    if (!run || !id || run.stopping) return;
    if (
      run.uid !== undefined &&
      event.involvedObject.uid !== undefined &&
      event.involvedObject.uid !== run.uid
    )
      return;
    const reason = event.reason ?? "";
    const message = event.message ?? "";
    if (reason === "FailedScheduling") {
      run.lastSchedulingMessage = message;
      this.report(id, { kind: "warning", message: `pod not scheduled: ${message}` });
    } else if (PROGRESS_EVENTS.has(reason)) {
      this.report(id, { kind: "progress", step: reason, message });
    }
  }

  /** Notes an event as seen; false when it was already. */
  private remember(event: CoreV1Event): boolean {
    const key = `${event.metadata?.uid ?? ""}/${event.count ?? 1}/${event.metadata?.resourceVersion ?? ""}`;
    if (this.seenEvents.has(key)) return false;
    if (this.seenEvents.size >= SEEN_EVENTS_MAX) this.seenEvents.clear();
    this.seenEvents.add(key);
    return true;
  }

  /**
   * What the cluster says of a sandbox, bounded as a supervisor's report is
   * (a container's termination message is the sandbox's own text).
   */
  private report(id: string, report: SupervisorReport): void {
    const bounded = reportFromWire(reportToWire(id, report));
    if (bounded) this.events.report(id, bounded);
  }

  private reportFailure(id: string, run: Run, reason: string, message: string): void {
    if (run.reported.has(reason)) return;
    run.reported.add(reason);
    this.report(id, { kind: "failure", reason, message });
  }

  /** The run is over: its supervisor's exit is reported, once; its pod stays until stop. */
  private finish(id: string, run: Run, code: number | null = null): void {
    clearTimeout(run.scheduleTimer);
    if (run.ended) return;
    run.ended = true;
    if (!run.stopping) this.events.exited(id, run.instanceId, code, null);
  }
}
