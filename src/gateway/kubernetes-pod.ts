// The objects the Kubernetes driver sends for a sandbox, rendered by pure
// functions (tested against the Kubernetes schema in
// test/unit/kubernetes-pod.test.ts): its Pod, the Secret holding only the
// supervisor's credential and the gateway's CA certificate, and, when the
// workspace is a claim, its PersistentVolumeClaim.
//
// The pod runs the user's image with our supervisor side-loaded, so any
// image works, with or without node or glibc: an init container from the
// supervisor image copies the supervisor bundle into an emptyDir, which the
// sandbox container mounts read-only and runs the supervisor from. The
// supervisor is told its identity and the gateway's endpoint in its
// environment (the runtime contract) and fetches everything else (policy,
// files, command, environment) over gRPC: none of it is in the pod spec,
// where anyone who may read pods would see it.
//
// Security context: the supervisor isolates the sandbox with bubblewrap,
// which needs to make user, mount, pid and network namespaces and to mount
// inside them; as root it first re-exposes its directories in a mount
// namespace of its own and drops to the sandbox's uid (setpriv). The fields
// below give it that and no more; deploy/kubernetes/README.md explains each.

import { type Limits, resourcesToLimits } from "../core/limits.js";
import type { Sandbox } from "../gen/openshell.js";
import { EXTERNAL_SANDBOX_DIR, SUPERVISOR_ENV, type SupervisorLaunch } from "../runtime/contract.js";

/** Where the init container installs the supervisor bundle, and the sandbox container runs it from. */
export const BUNDLE_DIR = "/opt/openshell";
/** The supervisor image holds the bundle here. */
const IMAGE_BUNDLE_DIR = "/openshell-bundle";
/** The sandbox's directory in its container: the workspace volume (the contract's default for a supervisor elsewhere). */
export const POD_SANDBOX_DIR = EXTERNAL_SANDBOX_DIR;
/** Where the gateway's CA certificate is mounted from the sandbox's Secret. */
export const POD_TLS_DIR = "/etc/openshell/tls";

/** How long a deleted pod's supervisor has to stop its sandbox before it is killed. */
export const TERMINATION_GRACE_SECONDS = 10;

export const SANDBOX_ID_ANNOTATION = "openshell.io/sandbox-id";
export const INSTANCE_ANNOTATION = "openshell.io/instance-id";
export const SANDBOX_NAME_ANNOTATION = "openshell.io/sandbox-name";
export const WORKSPACE_ANNOTATION = "openshell.io/workspace";
/** The label every object of the driver carries; the driver lists and watches by it. */
export const MANAGED_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "openshell";
export const SANDBOX_ID_LABEL = "openshell.io/sandbox-id";
/** Selects the pods, secrets and claims of this driver. */
export const MANAGED_SELECTOR = `${MANAGED_LABEL}=${MANAGED_BY}`;

/** The secret's keys. */
const SECRET_KEY = "supervisor-secret";
const CA_KEY = "ca.crt";

export type WorkspaceVolume =
  | { kind: "emptyDir"; sizeLimit?: string | undefined }
  | { kind: "claim"; size: string; storageClassName?: string | undefined };

/** The driver's settings that shape a sandbox's pod. */
export interface PodSettings {
  namespace: string;
  /** The image whose /openshell-bundle the init container installs. */
  supervisorImage: string;
  /** The image of a sandbox whose create names none. */
  defaultImage: string;
  /** The gateway as pods reach it: `host:port` (a Service's name). */
  endpoint: string;
  /** The gateway's CA certificate (PEM), trusted by the supervisor; undefined when the gateway serves plaintext. */
  caCert?: string | undefined;
  workspace: WorkspaceVolume;
  imagePullPolicy?: "Always" | "IfNotPresent" | "Never" | undefined;
  /**
   * Pods in a user namespace of their own (`hostUsers: false`): root in the
   * container is no one on the node. On by default; clusters without user
   * namespace support (Kubernetes before 1.33, or a runtime without it) turn
   * it off.
   */
  userNamespaces: boolean;
}

/** A Kubernetes object as sent: plain JSON. */
export type KubeObject = { apiVersion: string; kind: string; metadata: KubeMeta } & Record<string, unknown>;
interface KubeMeta {
  name: string;
  namespace: string;
  labels: Record<string, string>;
  annotations?: Record<string, string>;
}

export function podName(sandboxId: string): string {
  return `openshell-${sandboxId}`;
}

export function secretName(sandboxId: string): string {
  return `openshell-${sandboxId}`;
}

export function claimName(sandboxId: string): string {
  return `openshell-${sandboxId}-workspace`;
}

function meta(settings: PodSettings, name: string, sandboxId: string): KubeMeta {
  return {
    name,
    namespace: settings.namespace,
    labels: { [MANAGED_LABEL]: MANAGED_BY, [SANDBOX_ID_LABEL]: sandboxId },
  };
}

/** The Secret of a sandbox: the supervisor's credential and the CA it trusts, nothing else. */
export function renderSecret(settings: PodSettings, sandboxId: string, secret: string): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: meta(settings, secretName(sandboxId), sandboxId),
    type: "Opaque",
    immutable: true,
    stringData: {
      [SECRET_KEY]: secret,
      ...(settings.caCert !== undefined ? { [CA_KEY]: settings.caCert } : {}),
    },
  };
}

/** The workspace's claim, when the driver keeps workspaces on claims. */
export function renderClaim(settings: PodSettings, sandboxId: string): KubeObject | undefined {
  const workspace = settings.workspace;
  if (workspace.kind !== "claim") return undefined;
  return {
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: meta(settings, claimName(sandboxId), sandboxId),
    spec: {
      accessModes: ["ReadWriteOnce"],
      resources: { requests: { storage: workspace.size } },
      ...(workspace.storageClassName !== undefined ? { storageClassName: workspace.storageClassName } : {}),
    },
  };
}

/** A limit as a Kubernetes quantity: millicores, bytes. */
function quantities(limits: Limits): Record<string, string> {
  return {
    ...(limits.cpuMillis !== undefined ? { cpu: `${limits.cpuMillis}m` } : {}),
    ...(limits.memoryBytes !== undefined ? { memory: String(limits.memoryBytes) } : {}),
    ...(limits.diskBytes !== undefined ? { "ephemeral-storage": String(limits.diskBytes) } : {}),
  };
}

/** The run of a sandbox a pod is rendered for. */
export interface PodRun {
  sandbox: Pick<Sandbox, "metadata" | "spec">;
  instanceId: string;
}

/** The sandbox's Pod (see the header). */
export function renderPod(settings: PodSettings, run: PodRun): KubeObject {
  const meta0 = run.sandbox.metadata!;
  const template = run.sandbox.spec?.template;
  const id = meta0.id;
  const image = template?.image || settings.defaultImage;
  const asked = resourcesToLimits(template?.resources);
  const limits = quantities(typeof asked === "string" ? {} : asked);
  const tls = settings.caCert !== undefined;
  const pullPolicy = settings.imagePullPolicy ? { imagePullPolicy: settings.imagePullPolicy } : {};
  const workspaceVolume =
    settings.workspace.kind === "claim"
      ? { persistentVolumeClaim: { claimName: claimName(id) } }
      : {
          emptyDir:
            settings.workspace.sizeLimit !== undefined ? { sizeLimit: settings.workspace.sizeLimit } : {},
        };
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      ...meta(settings, podName(id), id),
      annotations: {
        [SANDBOX_ID_ANNOTATION]: id,
        [INSTANCE_ANNOTATION]: run.instanceId,
        [SANDBOX_NAME_ANNOTATION]: meta0.name,
        [WORKSPACE_ANNOTATION]: meta0.workspace,
      },
    },
    spec: {
      // A supervisor that exits ends the run; the gateway decides what follows.
      restartPolicy: "Never",
      // Nothing in a sandbox talks to the Kubernetes API.
      automountServiceAccountToken: false,
      // Nor sees the namespace's services in its environment.
      enableServiceLinks: false,
      ...(settings.userNamespaces ? { hostUsers: false } : {}),
      ...(template?.runtimeClassName ? { runtimeClassName: template.runtimeClassName } : {}),
      terminationGracePeriodSeconds: TERMINATION_GRACE_SECONDS,
      securityContext: { seccompProfile: { type: "RuntimeDefault" } },
      initContainers: [
        {
          name: "openshell-supervisor-install",
          image: settings.supervisorImage,
          ...pullPolicy,
          command: [`${IMAGE_BUNDLE_DIR}/bin/openshell-install`, BUNDLE_DIR],
          volumeMounts: [{ name: "openshell-supervisor", mountPath: BUNDLE_DIR }],
          // Copying files needs no privilege at all.
          securityContext: {
            allowPrivilegeEscalation: false,
            readOnlyRootFilesystem: true,
            capabilities: { drop: ["ALL"] },
          },
          resources: {
            limits: { cpu: "500m", memory: "128Mi" },
            requests: { cpu: "500m", memory: "128Mi" },
          },
        },
      ],
      containers: [
        {
          name: "sandbox",
          image,
          ...pullPolicy,
          command: [`${BUNDLE_DIR}/bin/openshell-supervisor`],
          env: [
            { name: SUPERVISOR_ENV.sandboxId, value: id },
            { name: SUPERVISOR_ENV.endpoint, value: settings.endpoint },
            {
              name: SUPERVISOR_ENV.secret,
              valueFrom: { secretKeyRef: { name: secretName(id), key: SECRET_KEY } },
            },
            ...(tls ? [{ name: SUPERVISOR_ENV.tlsCa, value: `${POD_TLS_DIR}/${CA_KEY}` }] : []),
            { name: SUPERVISOR_ENV.sandboxDir, value: POD_SANDBOX_DIR },
          ],
          // Requests equal to limits: the sandbox gets what it was promised (Guaranteed with both set).
          resources: { limits, requests: limits },
          volumeMounts: [
            { name: "openshell-supervisor", mountPath: BUNDLE_DIR, readOnly: true },
            { name: "workspace", mountPath: POD_SANDBOX_DIR },
            ...(tls ? [{ name: "openshell-tls", mountPath: POD_TLS_DIR, readOnly: true }] : []),
          ],
          securityContext: sandboxSecurityContext(settings.userNamespaces),
        },
      ],
      volumes: [
        { name: "openshell-supervisor", emptyDir: { sizeLimit: "512Mi" } },
        { name: "workspace", ...workspaceVolume },
        ...(tls
          ? [
              {
                name: "openshell-tls",
                // Only the certificate: the credential reaches the supervisor's environment alone.
                secret: {
                  secretName: secretName(id),
                  items: [{ key: CA_KEY, path: CA_KEY }],
                  defaultMode: 0o444,
                },
              },
            ]
          : []),
      ],
    },
  };
}

/**
 * The sandbox container's security context (each field's why is in
 * deploy/kubernetes/README.md, "The sandbox pod's security context").
 */
function sandboxSecurityContext(userNamespaces: boolean): Record<string, unknown> {
  return {
    // The supervisor's pod setup runs as root and drops to the sandbox's uid itself.
    runAsUser: 0,
    runAsGroup: 0,
    runAsNonRoot: false,
    capabilities: {
      drop: ["ALL"],
      // SYS_ADMIN: namespaces and mounts (and the runtime's default seccomp
      // profile admits those calls only to a container holding it); SETUID,
      // SETGID: the drop to the sandbox's uid; CHOWN, FOWNER, DAC_OVERRIDE:
      // the workspace given to that uid; KILL: the sandbox's processes ended.
      add: ["SYS_ADMIN", "SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"],
    },
    // bubblewrap mounts a fresh /proc for the sandbox's pid namespace, which
    // the kernel refuses over a masked one; unmasked is allowed only in a user namespace.
    ...(userNamespaces ? { procMount: "Unmasked" } : {}),
    // The runtimes' default AppArmor profiles deny mount(2) outright.
    appArmorProfile: { type: "Unconfined" },
  };
}

/**
 * The uid the sandbox's processes run as in the container (the supervisor
 * maps the sandbox's user onto it): not root, and inside the 65,536 ids a
 * pod's user namespace maps, which a host-unique uid of the local runtime's
 * is not.
 */
export const POD_SANDBOX_UID = 65_000;

/**
 * What a pod's supervisor runs (GetSupervisorLaunch): the gateway's launch
 * without anything of the gateway's host. No sandbox directory, app root or
 * image root: the supervisor takes its own (OPENSHELL_SANDBOX_DIR, the
 * bundle it runs from, the container's root, which is the image); no host
 * control groups (the pod's limits bind it), no disk image, no file of the
 * gateway's host; the sandbox's uid POD_SANDBOX_UID.
 */
export function podLaunch(launch: SupervisorLaunch): SupervisorLaunch {
  return {
    ...launch,
    sandboxDir: "",
    appRoot: "",
    imageRoot: "",
    hostUid: POD_SANDBOX_UID,
    hostGid: POD_SANDBOX_UID,
    diskBytes: 0,
    cgroupProcs: [],
    execCgroup: undefined,
    reownFrom: undefined,
    filesPath: "",
    filePaths: [],
  };
}

/** A Kubernetes quantity as a volume's size takes it (`10Gi`, `500M`). */
const SIZE = /^\d{1,15}([KMGTPE]i?|k)?$/;

/**
 * OPENSHELL_K8S_WORKSPACE: `emptyDir` (the default), `emptyDir:SIZE` (a
 * size limit), or `claim:SIZE[:STORAGECLASS]` (a PersistentVolumeClaim per
 * sandbox, kept across stop and start); a message naming the setting otherwise.
 */
export function parseWorkspaceSetting(text: string | undefined): WorkspaceVolume {
  const value = (text ?? "").trim();
  if (value === "" || value === "emptyDir") return { kind: "emptyDir" };
  const [kind, size, storageClass, ...rest] = value.split(":");
  const sizeOk = size !== undefined && SIZE.test(size);
  if (kind === "emptyDir" && sizeOk && storageClass === undefined)
    return { kind: "emptyDir", sizeLimit: size };
  if (kind === "claim" && sizeOk && rest.length === 0 && storageClass !== "") {
    return { kind: "claim", size, ...(storageClass !== undefined ? { storageClassName: storageClass } : {}) };
  }
  throw new Error(
    `OPENSHELL_K8S_WORKSPACE=${value}: expected emptyDir, emptyDir:SIZE or claim:SIZE[:STORAGECLASS], e.g. claim:10Gi:standard`,
  );
}
