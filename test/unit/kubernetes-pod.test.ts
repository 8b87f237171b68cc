// The objects the Kubernetes driver sends, rendered by its pure functions and
// validated against the Kubernetes 1.36 OpenAPI schema that kubernetes-models
// 5.1.0 ships (pinned exactly in package.json), with golden checks of the
// fields that matter: image, init container, volumes, limits, security
// context, annotations and labels.

import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Pod } from "kubernetes-models/v1/Pod";
import { Secret } from "kubernetes-models/v1/Secret";
import { describe, expect, it } from "vitest";
import { limitsToResources } from "../../src/core/limits.js";
import {
  type PodSettings,
  parseWorkspaceSetting,
  podLaunch,
  renderClaim,
  renderPod,
  renderSecret,
} from "../../src/gateway/kubernetes-pod.js";
import type { Sandbox } from "../../src/gen/openshell.js";

const ID = "0b9c2f5e-8f1a-4c3e-9d1b-2a7e5f6c8d90";
const SETTINGS: PodSettings = {
  namespace: "sandboxes",
  supervisorImage: "registry.example/openshell-supervisor:0.1.0",
  defaultImage: "docker.io/library/busybox:stable",
  endpoint: "openshell-gateway.sandboxes.svc:17670",
  caCert: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
  workspace: { kind: "emptyDir" },
  userNamespaces: true,
};

function sandbox(template: Record<string, unknown> = {}): Pick<Sandbox, "metadata" | "spec"> {
  return {
    metadata: {
      id: ID,
      name: "alpha",
      workspace: "default",
      createdAtMs: 0,
      labels: {},
      annotations: {},
      resourceVersion: 1,
      deletionTimestampMs: 0,
    },
    spec: { template } as unknown as Sandbox["spec"],
  };
}

// biome-ignore lint/suspicious/noExplicitAny: rendered JSON, read field by field against golden values
type Json = Record<string, any>;
const pod = (settings: PodSettings, template: Record<string, unknown> = {}): Json =>
  renderPod(settings, { sandbox: sandbox(template), instanceId: "run-1" }) as Json;

/** Throws with the schema's words when `object` is not a valid object of its kind. */
function validate(object: Json): void {
  const models: Record<string, new (data: never) => { validate(): void }> = {
    Pod,
    Secret,
    PersistentVolumeClaim,
  };
  const Model = models[object.kind as string];
  if (!Model) throw new Error(`no model for ${object.kind}`);
  new Model(object as never).validate();
}

describe("the Kubernetes driver's objects", () => {
  it("validate against the pinned Kubernetes schema, and the schema refuses a broken pod (the check can fail)", () => {
    const limits = limitsToResources({
      cpuMillis: 500,
      memoryBytes: 512 * 1024 ** 2,
      diskBytes: 4 * 1024 ** 3,
    });
    for (const settings of [
      SETTINGS,
      { ...SETTINGS, userNamespaces: false, caCert: undefined },
      {
        ...SETTINGS,
        workspace: parseWorkspaceSetting("claim:10Gi:standard"),
        imagePullPolicy: "IfNotPresent" as const,
      },
      { ...SETTINGS, workspace: parseWorkspaceSetting("emptyDir:2Gi") },
    ]) {
      validate(pod(settings, { image: "python:3.13-slim", resources: limits, runtimeClassName: "gvisor" }));
      validate(pod(settings));
      validate(renderSecret(settings, ID, "f".repeat(64)) as Json);
      const claim = renderClaim(settings, ID);
      if (claim) validate(claim as Json);
    }
    const broken = pod(SETTINGS);
    broken.spec.restartPolicy = "Sometimes";
    expect(() => validate(broken)).toThrow(/restartPolicy/);
  });

  it("runs the user's image, else the default one, with the supervisor from the read-only bundle", () => {
    const container = pod(SETTINGS, { image: "python:3.13-slim" }).spec.containers[0];
    expect(container.name).toBe("sandbox");
    expect(container.image).toBe("python:3.13-slim");
    expect(container.command).toEqual(["/opt/openshell/bin/openshell-supervisor"]);
    expect(container.volumeMounts).toContainEqual({
      name: "openshell-supervisor",
      mountPath: "/opt/openshell",
      readOnly: true,
    });
    expect(pod(SETTINGS).spec.containers[0].image).toBe("docker.io/library/busybox:stable");
  });

  it("installs the bundle with an init container from the supervisor image, itself without any privilege", () => {
    const [init, ...more] = pod(SETTINGS).spec.initContainers;
    expect(more).toEqual([]);
    expect(init).toMatchObject({
      name: "openshell-supervisor-install",
      image: "registry.example/openshell-supervisor:0.1.0",
      command: ["/openshell-bundle/bin/openshell-install", "/opt/openshell"],
      volumeMounts: [{ name: "openshell-supervisor", mountPath: "/opt/openshell" }],
      securityContext: {
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ["ALL"] },
      },
    });
  });

  it("tells the supervisor only its identity, the endpoint and the CA; the credential by secretKeyRef, never inline", () => {
    const rendered = pod(SETTINGS, { image: "x" });
    const env = rendered.spec.containers[0].env as Json[];
    expect(env).toEqual([
      { name: "OPENSHELL_SANDBOX_ID", value: ID },
      { name: "OPENSHELL_ENDPOINT", value: "openshell-gateway.sandboxes.svc:17670" },
      {
        name: "OPENSHELL_SANDBOX_SECRET",
        valueFrom: { secretKeyRef: { name: `openshell-${ID}`, key: "supervisor-secret" } },
      },
      { name: "OPENSHELL_TLS_CA", value: "/etc/openshell/tls/ca.crt" },
      { name: "OPENSHELL_SANDBOX_DIR", value: "/var/lib/openshell/sandbox" },
    ]);
    expect(JSON.stringify(rendered)).not.toContain("f".repeat(64));
    const secret = renderSecret(SETTINGS, ID, "f".repeat(64)) as Json;
    expect(Object.keys(secret.stringData).sort()).toEqual(["ca.crt", "supervisor-secret"]);
    expect(secret.immutable).toBe(true);
  });

  it("gives the workspace an emptyDir or a claim, the bundle an emptyDir, the TLS volume the CA alone", () => {
    const volumes = (settings: PodSettings) => pod(settings).spec.volumes as Json[];
    expect(volumes(SETTINGS)).toEqual([
      { name: "openshell-supervisor", emptyDir: { sizeLimit: "512Mi" } },
      { name: "workspace", emptyDir: {} },
      {
        name: "openshell-tls",
        secret: {
          secretName: `openshell-${ID}`,
          items: [{ key: "ca.crt", path: "ca.crt" }],
          defaultMode: 0o444,
        },
      },
    ]);
    const claimed = { ...SETTINGS, workspace: parseWorkspaceSetting("claim:10Gi:standard") };
    expect(volumes(claimed)[1]).toEqual({
      name: "workspace",
      persistentVolumeClaim: { claimName: `openshell-${ID}-workspace` },
    });
    expect(renderClaim(claimed, ID)).toMatchObject({
      spec: {
        accessModes: ["ReadWriteOnce"],
        resources: { requests: { storage: "10Gi" } },
        storageClassName: "standard",
      },
    });
    expect(renderClaim(SETTINGS, ID)).toBeUndefined();
    expect(volumes({ ...SETTINGS, caCert: undefined }).map((volume) => volume.name)).toEqual([
      "openshell-supervisor",
      "workspace",
    ]);
  });

  it("sets --cpu 500m, --memory 512Mi and --disk 4Gi as limits with equal requests", () => {
    const resources = limitsToResources({
      cpuMillis: 500,
      memoryBytes: 512 * 1024 ** 2,
      diskBytes: 4 * 1024 ** 3,
    });
    expect(pod(SETTINGS, { resources }).spec.containers[0].resources).toEqual({
      limits: { cpu: "500m", memory: "536870912", "ephemeral-storage": "4294967296" },
      requests: { cpu: "500m", memory: "536870912", "ephemeral-storage": "4294967296" },
    });
  });

  it("never restarts, mounts no token, and narrows the sandbox container to what bubblewrap needs", () => {
    const spec = pod(SETTINGS).spec;
    expect(spec.restartPolicy).toBe("Never");
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(spec.enableServiceLinks).toBe(false);
    expect(spec.hostUsers).toBe(false);
    expect(spec.securityContext).toEqual({ seccompProfile: { type: "RuntimeDefault" } });
    expect(spec.containers[0].securityContext).toEqual({
      runAsUser: 0,
      runAsGroup: 0,
      runAsNonRoot: false,
      capabilities: {
        drop: ["ALL"],
        add: ["SYS_ADMIN", "SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"],
      },
      procMount: "Unmasked",
      appArmorProfile: { type: "Unconfined" },
    });
    const hostUsers = pod({ ...SETTINGS, userNamespaces: false }).spec;
    expect(hostUsers.hostUsers).toBeUndefined();
    expect(hostUsers.containers[0].securityContext.procMount).toBeUndefined();
  });

  it("names the sandbox in annotations and selects the driver's objects by labels", () => {
    const metadata = pod(SETTINGS).metadata;
    expect(metadata).toEqual({
      name: `openshell-${ID}`,
      namespace: "sandboxes",
      labels: { "app.kubernetes.io/managed-by": "openshell", "openshell.io/sandbox-id": ID },
      annotations: {
        "openshell.io/sandbox-id": ID,
        "openshell.io/instance-id": "run-1",
        "openshell.io/sandbox-name": "alpha",
        "openshell.io/workspace": "default",
      },
    });
    expect((renderSecret(SETTINGS, ID, "s") as Json).metadata.labels).toEqual(metadata.labels);
  });

  it("launches the pod's supervisor on its own paths, as a uid the pod's user namespace maps, with no host control groups or files", () => {
    const launch = podLaunch({
      sandboxId: ID,
      sandboxName: "alpha",
      workspace: "default",
      instanceId: "run-1",
      command: ["sleep", "1"],
      tty: false,
      environment: {},
      startOnAttach: false,
      ttyCols: 0,
      ttyRows: 0,
      filesPath: "/var/lib/gateway/x",
      filePaths: ["/a"],
      sandboxDir: "/var/lib/gateway/sandboxes/x",
      hostUid: 100_000,
      hostGid: 100_000,
      diskBytes: 4096,
      appRoot: "/usr/lib/openshell",
      cgroupProcs: ["/sys/fs/cgroup/x/cgroup.procs"],
      shmBytes: 0,
      imageRoot: "",
      workingDir: "",
      imageUser: "",
    });
    expect(launch).toMatchObject({
      sandboxDir: "",
      appRoot: "",
      imageRoot: "",
      hostUid: 65_000,
      hostGid: 65_000,
      diskBytes: 0,
      cgroupProcs: [],
      filesPath: "",
      filePaths: [],
      command: ["sleep", "1"],
    });
  });

  it("refuses a workspace setting it cannot read, naming it", () => {
    for (const bad of ["claim", "claim:ten", "emptyDir:1Gi:fast", "pvc:1Gi", "claim:1Gi:"]) {
      expect(() => parseWorkspaceSetting(bad)).toThrow(/^OPENSHELL_K8S_WORKSPACE=.*expected emptyDir/);
    }
  });
});
