// The Kubernetes driver's API traffic, with the real gateway and the real
// @kubernetes/client-node, against a stand-in API server
// (test/helpers/kube-standin.ts). No Kubernetes cluster can run on the
// machines these tests run on (no container runtime, no kubelet), so the
// cluster's side is played by the stand-in: what a scheduler and kubelet
// would do to a pod is done by the test. What the stand-in cannot show (a
// real pod starting the side-loaded supervisor) is the pod-path test's, and
// the kind walkthrough's in deploy/kubernetes/README.md.

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SUPERVISOR_METADATA_KEY } from "../../src/core/protocol.js";
import { DRIVER_CALLS } from "../../src/gateway/kubernetes.js";
import { podName } from "../../src/gateway/kubernetes-pod.js";
import { type GatewayOptions, type RunningGateway, startGateway } from "../../src/gateway/server.js";
import {
  CreateSandboxRequest,
  type OpenShellClient,
  type PlatformEvent,
  type Sandbox,
  SandboxPhase,
  type SupervisorLaunchSpec,
  WatchSandboxRequest,
} from "../../src/gen/openshell.js";
import { connectGateway } from "../../src/transport/grpc.js";
import { TestEnv } from "../helpers/cli.js";
import { KubeStandin } from "../helpers/kube-standin.js";

const NAMESPACE = "sandboxes";
/** Short bounds, so the tests that wait for them are quick; the defaults are 30 s and 5 min. */
const CALL_TIMEOUT_MS = 2000;
const SCHEDULE_TIMEOUT_MS = 3000;

let standin: KubeStandin;
let gateway: RunningGateway;
let gatewayOptions: GatewayOptions;
let client: OpenShellClient;
let dir: string;

beforeAll(async () => {
  standin = new KubeStandin();
  await standin.listen();
  dir = mkdtempSync(join(tmpdir(), "openshell-kube-"));
  const kubeconfig = join(dir, "kubeconfig");
  writeFileSync(kubeconfig, standin.kubeconfig(NAMESPACE));
  gatewayOptions = {
    name: "kube",
    stateDir: join(dir, "state"),
    bind: "127.0.0.1",
    port: 0,
    version: "test",
    appRoot: dir,
    driver: {
      kind: "kubernetes",
      kubeconfig,
      callTimeoutMs: CALL_TIMEOUT_MS,
      scheduleTimeoutMs: SCHEDULE_TIMEOUT_MS,
      rewatchDelayMs: 100,
    },
    log: () => {},
  };
  gateway = await startGateway(gatewayOptions);
  client = connectGateway({ name: "kube", endpoint: gateway.endpoint });
}, 30_000);

afterAll(async () => {
  client?.close();
  await gateway?.close({ keepSandboxes: true });
  await standin?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** What a WatchSandbox stream has told of a sandbox so far. */
interface Seen {
  sandbox?: Sandbox;
  events: PlatformEvent[];
}

/** Creates a sandbox and follows its status and events until `until` holds. */
async function create(
  name: string,
  image = "registry.example/app:1",
  awaitPod = true,
): Promise<{
  id: string;
  /** Its pod's name. */
  pod: string;
  seen: Seen;
  until: (step: string, probe: (seen: Seen) => boolean) => Promise<void>;
  end: () => void;
  /** Stops following it and deletes it. */
  finish: () => Promise<void>;
}> {
  const response = await new Promise<Sandbox>((resolve, reject) =>
    client.createSandbox(
      CreateSandboxRequest.fromPartial({
        name,
        spec: { command: ["sleep", "infinity"], template: { image } },
      }),
      (error, value) => (error ? reject(error) : resolve(value.sandbox!)),
    ),
  );
  const id = response.metadata!.id;
  const seen: Seen = { events: [] };
  const waiters = new Set<() => void>();
  const stream = client.watchSandbox(
    WatchSandboxRequest.fromPartial({ id, followStatus: true, followEvents: true, eventTail: 100 }),
  );
  stream.on("data", (event) => {
    if (event.payload?.$case === "sandbox") seen.sandbox = event.payload.value;
    if (event.payload?.$case === "event") seen.events.push(event.payload.value);
    for (const waiter of [...waiters]) waiter();
  });
  stream.on("error", () => {});
  const until = (step: string, probe: (s: Seen) => boolean): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        if (!probe(seen)) return;
        waiters.delete(check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(
            `sandbox ${name}: ${step} not seen within 20 s; last status ${JSON.stringify(seen.sandbox?.status?.conditions)}`,
          ),
        );
      }, 20_000);
      waiters.add(check);
      check();
    });
  const pod = podName(id);
  if (awaitPod) await standin.until(`${name}'s pod create`, 10_000, () => standin.pod(pod));
  const finish = async (): Promise<void> => {
    stream.cancel();
    await remove(name);
  };
  return { id, pod, seen, until, end: () => stream.cancel(), finish };
}

/** A pod's status with its sandbox container in `state`, as a kubelet reports it. */
function sandboxContainer(phase: string, state: Record<string, unknown>): Record<string, unknown> {
  return {
    phase,
    containerStatuses: [{ name: "sandbox", ready: false, restartCount: 0, image: "x", imageID: "", state }],
  };
}

function remove(name: string): Promise<void> {
  return new Promise((resolve, reject) =>
    client.deleteSandbox({ name, workspace: "" }, (error) => (error ? reject(error) : resolve())),
  );
}

const ready = (seen: Seen) => seen.sandbox?.status?.conditions.find((c) => c.type === "Ready");
const inError = (reason: string) => (seen: Seen) =>
  seen.sandbox?.status?.phase === SandboxPhase.SANDBOX_PHASE_ERROR && ready(seen)?.reason === reason;

describe("the Kubernetes driver against a stand-in API server", () => {
  it("creates the sandbox's Secret and Pod, and turns Scheduled, Pulling and Pulled into progress steps", async () => {
    const sandbox = await create("k-progress");
    const pod = sandbox.pod;
    expect(standin.names("secrets")).toContain(`openshell-${sandbox.id}`);
    expect((standin.pod(pod)!.spec as { containers: { image: string }[] }).containers[0]!.image).toBe(
      "registry.example/app:1",
    );
    standin.podEvent(pod, "Scheduled", "Successfully assigned sandboxes/x to node-1");
    standin.podEvent(pod, "Pulling", 'Pulling image "registry.example/app:1"');
    standin.podEvent(pod, "Pulled", 'Successfully pulled image "registry.example/app:1" in 1.2s');
    await sandbox.until("Scheduled, Pulling and Pulled", (seen) =>
      ["Scheduled", "Pulling", "Pulled"].every((step) =>
        seen.events.some(
          (event) =>
            event.reason === step && event.message.includes(step === "Scheduled" ? "node-1" : "app:1"),
        ),
      ),
    );
    await sandbox.finish();
    expect(standin.pod(pod)).toBeUndefined();
    expect(standin.names("secrets")).not.toContain(`openshell-${sandbox.id}`);
  });

  it("surfaces an image pull failure as the sandbox's Error, with the kubelet's reason and message", async () => {
    const sandbox = await create("k-pull", "registry.example/missing:9");
    const pod = sandbox.pod;
    standin.updatePod(pod, (p) => {
      p.status = sandboxContainer("Pending", {
        waiting: {
          reason: "ErrImagePull",
          message: 'failed to pull image "registry.example/missing:9": not found',
        },
      });
    });
    await sandbox.until("Error ErrImagePull", inError("ErrImagePull"));
    expect(ready(sandbox.seen)?.message).toContain('registry.example/missing:9": not found');
    await sandbox.finish();
  });

  it("loses no phase change while its watch is down: it resumes from the last resourceVersion it saw", async () => {
    const sandbox = await create("k-resume");
    const pod = sandbox.pod;
    const before = standin.calls.filter((call) => call.verb === "watch" && call.resource === "pods").length;
    standin.watchesDownNow();
    // The container is killed at its memory limit while no watch is open.
    standin.updatePod(pod, (p) => {
      p.status = sandboxContainer("Failed", { terminated: { exitCode: 137, reason: "OOMKilled" } });
    });
    const changedAt = Number(standin.pod(pod)!.metadata!.resourceVersion);
    // At least one reconnect was refused while down.
    await standin.until(
      "a refused watch",
      10_000,
      () =>
        standin.calls.some(
          (call, index) => index >= before && call.verb === "watch" && call.status === 503,
        ) || undefined,
    );
    standin.watchesUp();
    await sandbox.until("Error OOMKilled", inError("OOMKilled"));
    const resumed = standin.calls.find(
      (call) =>
        call.verb === "watch" &&
        call.resource === "pods" &&
        call.status === 200 &&
        call.resourceVersion !== undefined &&
        Number(call.resourceVersion) < changedAt &&
        standin.calls.indexOf(call) > before,
    );
    expect(resumed, "a watch resumed from a version before the change").toBeDefined();
    await sandbox.finish();
  });

  it("gives up a watch whose server never answers, and opens it again", async () => {
    const sandbox = await create("k-watch-hang");
    standin.hang("watch", "pods");
    standin.watchesDownNow();
    standin.watchesUp();
    const before = standin.calls.length;
    await standin.until(
      "an unanswered watch",
      10_000,
      () =>
        standin.calls.some(
          (call, index) => index >= before && call.verb === "watch" && call.resource === "pods",
        ) || undefined,
    );
    standin.answer("watch", "pods");
    standin.updatePod(sandbox.pod, (p) => {
      p.status = {
        phase: "Failed",
        reason: "Evicted",
        message: "The node was low on resource: ephemeral-storage.",
      };
    });
    await sandbox.until("Error Evicted", inError("Evicted"));
    await sandbox.finish();
  });

  it("deletes with preconditions: a pod recreated meanwhile (another uid) is left alone, a changed one is deleted", async () => {
    // A recreate raced the delete: the delete names the old pod's uid, the API server refuses it (409).
    const raced = await create("k-race");
    const pod = raced.pod;
    const oldUid = standin.pod(pod)!.metadata!.uid as string;
    standin.watchesDownNow();
    const newer = standin.recreatePod(pod, {
      "openshell.io/sandbox-id": raced.id,
      "openshell.io/instance-id": "another-run",
    });
    await remove("k-race");
    standin.watchesUp();
    const refused = standin.calls.find(
      (call) => call.verb === "delete" && call.resource === "pods" && call.status === 409,
    );
    expect(refused?.body?.preconditions).toMatchObject({ uid: oldUid });
    expect(standin.pod(pod)?.metadata?.uid).toBe(newer.metadata!.uid);
    raced.end();

    // The pod changed since the driver saw it (a new resourceVersion, same uid): looked at again and deleted.
    const changed = await create("k-changed");
    const changedPod = changed.pod;
    standin.watchesDownNow();
    standin.updatePod(changedPod, (p) => {
      p.status = { phase: "Pending", conditions: [{ type: "PodScheduled", status: "False" }] };
    });
    await remove("k-changed");
    standin.watchesUp();
    expect(standin.pod(changedPod)).toBeUndefined();
    changed.end();
  });

  it("bounds a call that never answers: the sandbox goes to Error with the reason, and the gateway carries on", async () => {
    standin.hang("create", "pods");
    const sandbox = await create("k-hang", undefined, false);
    await sandbox.until("Error KubernetesApiTimeout", inError("KubernetesApiTimeout"));
    standin.answer("create", "pods");
    expect(ready(sandbox.seen)?.message).toMatch(/did not answer create pods within 2 s/);
    await sandbox.finish();
  });

  it("fails a pod that never schedules after the bound, with the scheduler's message", async () => {
    const sandbox = await create("k-unsched");
    const pod = sandbox.pod;
    standin.podEvent(pod, "FailedScheduling", "0/3 nodes are available: 3 Insufficient memory.", "Warning");
    await sandbox.until("Error Unschedulable", inError("Unschedulable"));
    expect(ready(sandbox.seen)?.message).toContain("3 Insufficient memory");
    await sandbox.finish();
  });

  it("turns an evicted pod, and a pod deleted behind its back, into the sandbox's Error with the reason", async () => {
    const evicted = await create("k-evicted");
    const deleted = await create("k-deleted");
    standin.updatePod(podName(evicted.id), (p) => {
      // As long as any status message may be: what reaches the sandbox's condition is bounded.
      p.status = {
        phase: "Failed",
        reason: "Evicted",
        message: `The node was low on resource: memory. ${"x".repeat(100_000)}`,
      };
    });
    standin.deletePod(podName(deleted.id));
    await evicted.until("Error Evicted", inError("Evicted"));
    expect(ready(evicted.seen)?.message).toMatch(/^The node was low on resource: memory\. x+$/);
    expect(ready(evicted.seen)?.message.length).toBe(4096);
    await deleted.until("Error PodDeleted", inError("PodDeleted"));
    for (const [sandbox, name] of [
      [evicted, "k-evicted"],
      [deleted, "k-deleted"],
    ] as const) {
      sandbox.end();
      await remove(name);
    }
    // The evicted pod stayed until the sandbox's delete removed it.
    expect(standin.pod(podName(evicted.id))).toBeUndefined();
  });

  it("after a gateway restart finds its pods: serves a starting pod's launch, deletes one whose supervisor never reconnects and one of a deleted sandbox", async () => {
    const sandbox = await create("k-restart");
    const pod = sandbox.pod;
    sandbox.end();
    const restart = async (adoptTimeoutMs: number): Promise<void> => {
      client.close();
      await gateway.close({ keepSandboxes: true });
      gateway = await startGateway({ ...gatewayOptions, adoptTimeoutMs });
      client = connectGateway({ name: "kube", endpoint: gateway.endpoint });
    };
    await restart(60_000);
    expect(standin.pod(pod)).toBeDefined();
    // Its supervisor, still starting, asks for its launch only now, from the new gateway.
    const secret = (
      standin.object("secrets", `openshell-${sandbox.id}`)!.stringData as Record<string, string>
    )["supervisor-secret"];
    const metadata = new Metadata();
    metadata.set(SUPERVISOR_METADATA_KEY, `${sandbox.id}:${secret}`);
    const launch = await new Promise<SupervisorLaunchSpec>((resolve, reject) =>
      client.getSupervisorLaunch({ sandboxId: sandbox.id }, metadata, (error, value) =>
        error ? reject(error) : resolve(value),
      ),
    );
    expect(launch).toMatchObject({
      instanceId: (standin.pod(pod)!.metadata!.annotations as Record<string, string>)[
        "openshell.io/instance-id"
      ],
      command: ["sleep", "infinity"],
      sandboxDir: "",
      hostUid: 65_000,
    });

    // A pod of a sandbox deleted while no gateway ran.
    const orphan = standin.addPod({
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: "openshell-00000000-0000-4000-8000-000000000000",
        labels: { "app.kubernetes.io/managed-by": "openshell" },
        annotations: {
          "openshell.io/sandbox-id": "00000000-0000-4000-8000-000000000000",
          "openshell.io/instance-id": "gone",
        },
      },
      status: { phase: "Running" },
    });
    await restart(1000);
    await standin.until("the orphan pod's delete", 15_000, () => (standin.pod(orphan) ? undefined : true));
    await standin.until("the adopted pod's delete", 15_000, () => (standin.pod(pod) ? undefined : true));
    const after = await new Promise<Sandbox>((resolve, reject) =>
      client.getSandbox({ name: "k-restart", workspace: "" }, (error, value) =>
        error ? reject(error) : resolve(value.sandbox!),
      ),
    );
    expect(after.status?.conditions.find((c) => c.type === "Ready")?.reason).toBe("SupervisorLost");
    await remove("k-restart");
  });

  it("refuses --pids, which only the kubelet bounds, and an image on the gateway's host, naming why; no pod is made", async () => {
    const pods = standin.names("pods").length;
    const refused = await new Promise<{ code?: number; details?: string }>((resolve) =>
      client.createSandbox(
        CreateSandboxRequest.fromPartial({
          name: "k-pids",
          spec: { command: ["true"], template: { resources: { limits: { pids: "100" } } } },
        }),
        (error) => resolve(error ?? {}),
      ),
    );
    expect(refused.code).toBe(9);
    expect(refused.details).toMatch(/cannot enforce --pids on Kubernetes: .*podPidsLimit/);
    expect(standin.names("pods").length).toBe(pods);
    const archive = await new Promise<{ code?: number; details?: string }>((resolve) =>
      client.createSandbox(
        CreateSandboxRequest.fromPartial({
          name: "k-archive",
          spec: { command: ["true"], template: { image: "/home/me/image.tar" } },
        }),
        (error) => resolve(error ?? {}),
      ),
    );
    expect(archive.code).toBe(12);
    expect(archive.details).toMatch(/runs images from a registry; push the image and name its reference/);
    expect(standin.names("pods").length).toBe(pods);
  });

  it("calls only what DRIVER_CALLS declares (which the Role grants)", () => {
    const declared = new Set(
      Object.entries(DRIVER_CALLS).flatMap(([resource, verbs]) => verbs.map((verb) => `${verb} ${resource}`)),
    );
    const made = new Set(standin.calls.map((call) => `${call.verb} ${call.resource}`));
    expect([...made].filter((call) => !declared.has(call))).toEqual([]);
    expect(made.size).toBeGreaterThan(5);
  });
});

describe("gateway start --driver kubernetes, through the CLI", () => {
  let env: TestEnv;
  let cluster: KubeStandin;

  beforeAll(async () => {
    cluster = new KubeStandin();
    await cluster.listen();
    env = new TestEnv();
    mkdirSync(env.home, { recursive: true });
    writeFileSync(join(env.home, "kubeconfig"), cluster.kubeconfig("team-a"));
  });

  afterAll(async () => {
    await env?.dispose();
    await cluster?.close();
  });

  it("runs a sandbox as a pod in the kubeconfig's namespace, trusting the generated CA; a pull failure ends the create with its reason", async () => {
    const start = await env.run(
      [
        "gateway",
        "start",
        "--port",
        "0",
        "--tls",
        "--driver",
        "kubernetes",
        "--kubeconfig",
        join(env.home, "kubeconfig"),
      ],
      { timeoutMs: 30_000, env: { OPENSHELL_K8S_GATEWAY_ENDPOINT: "gw.team-a.svc:17670" } },
    );
    expect(start.code, start.stderr).toBe(0);
    // The create waits for Ready, which only a supervisor in a real pod brings: here the image fails to pull.
    const creating = env.run(
      [
        "sandbox",
        "create",
        "--name",
        "k-cli",
        "--from",
        "registry.example/tool:2",
        "--detach",
        "--",
        "sleep",
        "infinity",
      ],
      { timeoutMs: 30_000 },
    );
    const pod = await cluster.until("the pod's create", 10_000, () =>
      cluster.names("pods").length > 0 ? cluster.pod(cluster.names("pods")[0]!) : undefined,
    );
    cluster.updatePod(pod.metadata!.name as string, (p) => {
      p.status = sandboxContainer("Pending", {
        waiting: {
          reason: "ImagePullBackOff",
          message: 'Back-off pulling image "registry.example/tool:2"',
        },
      });
    });
    const created = await creating;
    expect(created.code).toBe(1);
    expect(created.stderr).toMatch(/ImagePullBackOff/);
    expect(created.stderr).toContain('Back-off pulling image "registry.example/tool:2"');
    expect(pod.metadata?.namespace).toBe("team-a");
    const container = (
      pod.spec as { containers: { image: string; env: { name: string; value?: string }[] }[] }
    ).containers[0]!;
    expect(container.image).toBe("registry.example/tool:2");
    expect(container.env.find((entry) => entry.name === "OPENSHELL_ENDPOINT")?.value).toBe(
      "gw.team-a.svc:17670",
    );
    const secret = cluster.calls.find((call) => call.verb === "create" && call.resource === "secrets")!;
    const ca = readFileSync(join(env.stateHome, "openshell", "gateways", "local", "tls", "ca.crt"), "utf8");
    expect(secret.body?.stringData).toMatchObject({ "ca.crt": ca });
    const metadata = JSON.parse(
      readFileSync(join(env.configHome, "openshell", "gateways", "local", "metadata.json"), "utf8"),
    ) as { local_settings: Record<string, unknown> };
    expect(metadata.local_settings).toMatchObject({
      driver: "kubernetes",
      kubeconfig: join(env.home, "kubeconfig"),
    });
  });
});
