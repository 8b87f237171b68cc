// Starting and stopping one gateway: the store, the watch bus, the relay, the
// local runtime and the gRPC server on two listeners — the user-facing
// address (TCP, optionally TLS) and a Unix socket in the gateway's private
// state directory for its own supervisors.

import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { parseTtl, ttlError } from "../core/lifetime.js";
import { DEFAULT_PIDS, type Limits, parseLimitList } from "../core/limits.js";
import { phaseOf } from "../core/phases.js";
import { SandboxPhase } from "../gen/openshell.js";
import { isWildcardBind } from "../host/config.js";
import { DEFAULT_GUEST_DISK_BYTES, MIN_GUEST_DISK_BYTES, parseDiskSize } from "../runtime/guest-disk.js";
import { FastOpenShellService } from "../transport/frames.js";
import { MAX_MESSAGE_BYTES } from "../transport/grpc.js";
import { DEFAULT_LOG_LIMITS, type LogFileLimits, SandboxBus } from "./bus.js";
import type { ComputeDriver, DriverEvents } from "./driver.js";
import { ImageStore } from "./images.js";
import type { KubernetesSettings } from "./kubernetes.js";
import { parseWorkspaceSetting } from "./kubernetes-pod.js";
import { RelayHub } from "./relay.js";
import { LocalRuntime, SUPERVISOR_ENDPOINT_ENV, SUPERVISOR_MODE_ENV, supervisorMode } from "./runtime.js";
import { Sandboxes } from "./sandboxes.js";
import { createService, withDecodeChecks } from "./service.js";
import { SshAccess } from "./ssh.js";
import { Store } from "./store.js";
import { UidLeases } from "./uid-lease.js";

export interface GatewayTls {
  cert: Buffer;
  key: Buffer;
  /** When set, clients must present a certificate signed by this CA (mTLS). */
  clientCa?: Buffer | undefined;
}

export interface GatewayOptions {
  name: string;
  stateDir: string;
  bind: string;
  port: number;
  version: string;
  /** Directory holding dist/ and node_modules/ (bound read-only into pods). */
  appRoot: string;
  token?: string | undefined;
  tls?: GatewayTls | undefined;
  sshSessionTtlSecs?: number;
  /** Rotation of each sandbox's log file; 10 MiB x 2 by default. */
  logLimits?: LogFileLimits | undefined;
  /**
   * Reach sandboxes' SSH servers only through their supervisors' relay, as
   * for a remote runtime, instead of their sockets on this host. Tests use it
   * (OPENSHELL_SSH_VIA_RELAY=1) to keep the relay path exercised.
   */
  sshViaRelay?: boolean;
  /** The size of each sandbox's own filesystem; OPENSHELL_SANDBOX_DISK, else 4 GiB. */
  sandboxDiskBytes?: number;
  /**
   * Limits of a sandbox that asks none (OPENSHELL_SANDBOX_LIMITS, e.g.
   * `pids=512,memory=2Gi`; a process limit of 1024 when it names none), and
   * the most one may ask (OPENSHELL_SANDBOX_MAX_LIMITS; none by default).
   */
  limits?: { defaults: Limits; maxima: Limits };
  /** Free space below which creates are refused; OPENSHELL_GATEWAY_MIN_FREE, else 1 GiB. */
  minFreeBytes?: number;
  /** Sandbox lifetimes in seconds; OPENSHELL_GATEWAY_DEFAULT_TTL and OPENSHELL_GATEWAY_MAX_TTL, else none. */
  ttl?: { defaultSeconds: number; maxSeconds: number };
  /**
   * How long a sandbox's supervisor left running by an earlier gateway has
   * to reconnect before it is stopped; OPENSHELL_GATEWAY_ADOPT_TIMEOUT
   * (`30s`, `2m`), else 30 s.
   */
  adoptTimeoutMs?: number;
  /** What runs sandboxes: the local runtime unless `kubernetes` is chosen (`gateway start --driver`). */
  driver?: DriverChoice | undefined;
  log?: (line: string) => void;
}

/** `gateway start --driver`, with the Kubernetes driver's flags. */
export type DriverChoice =
  | { kind: "local" }
  | {
      kind: "kubernetes";
      kubeconfig?: string | undefined;
      context?: string | undefined;
      namespace?: string | undefined;
      /** The CA certificate (PEM file) that pods trust for the gateway's TLS. */
      caFile?: string | undefined;
      /** Stand-in settings for tests: a shorter bound on calls and scheduling. */
      callTimeoutMs?: number | undefined;
      scheduleTimeoutMs?: number | undefined;
      rewatchDelayMs?: number | undefined;
    };

/**
 * The Kubernetes driver's settings: the cluster as kubectl resolves it, the
 * rest from the environment (OPENSHELL_K8S_*, see README "Running on
 * Kubernetes"); a bad one stops the start.
 */
async function kubernetesSettings(
  choice: Extract<DriverChoice, { kind: "kubernetes" }>,
  port: number,
): Promise<KubernetesSettings> {
  const { loadKubeConfig } = await import("./kubernetes.js");
  const { config, namespace } = loadKubeConfig(choice);
  const env = process.env;
  const ns = choice.namespace ?? namespace;
  const caFile = env.OPENSHELL_K8S_GATEWAY_CA || choice.caFile;
  const pullPolicy = env.OPENSHELL_K8S_IMAGE_PULL_POLICY;
  if (pullPolicy !== undefined && !["Always", "IfNotPresent", "Never"].includes(pullPolicy)) {
    throw new Error(`OPENSHELL_K8S_IMAGE_PULL_POLICY=${pullPolicy}: expected Always, IfNotPresent or Never`);
  }
  return {
    kubeConfig: config,
    namespace: ns,
    supervisorImage: env.OPENSHELL_K8S_SUPERVISOR_IMAGE || DEFAULT_SUPERVISOR_IMAGE,
    defaultImage: env.OPENSHELL_K8S_DEFAULT_IMAGE || DEFAULT_SANDBOX_IMAGE,
    endpoint: env.OPENSHELL_K8S_GATEWAY_ENDPOINT || `openshell-gateway.${ns}.svc:${port}`,
    caCert: caFile ? readFileSync(caFile, "utf8") : undefined,
    workspace: parseWorkspaceSetting(env.OPENSHELL_K8S_WORKSPACE),
    imagePullPolicy: pullPolicy as KubernetesSettings["imagePullPolicy"],
    userNamespaces: env.OPENSHELL_K8S_USER_NAMESPACES !== "0",
    callTimeoutMs: choice.callTimeoutMs,
    scheduleTimeoutMs: choice.scheduleTimeoutMs,
    rewatchDelayMs: choice.rewatchDelayMs,
  };
}

/** The supervisor image the init container runs unless OPENSHELL_K8S_SUPERVISOR_IMAGE names another. */
export const DEFAULT_SUPERVISOR_IMAGE = "openshell-supervisor:latest";
/** A sandbox's image when its create names none and OPENSHELL_K8S_DEFAULT_IMAGE names none. */
export const DEFAULT_SANDBOX_IMAGE = "docker.io/library/busybox:stable";

/** A size setting from the environment (`4GiB`, `64M`, bytes), or the default; a bad one stops the start. */
function sizeSetting(name: string, fallback: number, minimum: number): number {
  const text = process.env[name];
  if (text === undefined || text.trim() === "") return fallback;
  const bytes = parseDiskSize(text);
  if (bytes === undefined || bytes < minimum) {
    throw new Error(
      `${name}=${text}: expected a size such as 4GiB, 512MiB or a number of bytes, at least ${minimum}`,
    );
  }
  return bytes;
}

/** A lifetime setting from the environment (`30m`, `24h`), or 0; a bad one stops the start. */
function ttlSetting(name: string): number {
  const text = process.env[name];
  if (text === undefined || text.trim() === "") return 0;
  const seconds = parseTtl(text);
  if (seconds === undefined) throw new Error(ttlError(name, text).replace(`${name} `, `${name}=`));
  return seconds;
}

/** The gateway's default and maximum lifetimes; a default above the maximum stops the start. */
function ttlSettings(): { defaultSeconds: number; maxSeconds: number } {
  const defaultSeconds = ttlSetting("OPENSHELL_GATEWAY_DEFAULT_TTL");
  const maxSeconds = ttlSetting("OPENSHELL_GATEWAY_MAX_TTL");
  if (maxSeconds > 0 && defaultSeconds > maxSeconds) {
    throw new Error(
      "OPENSHELL_GATEWAY_DEFAULT_TTL exceeds OPENSHELL_GATEWAY_MAX_TTL; lower it or raise the maximum",
    );
  }
  return { defaultSeconds, maxSeconds };
}

/** A limits setting from the environment; a bad one stops the start. */
function limitsSetting(name: string): Limits {
  const parsed = parseLimitList(process.env[name] ?? "", name);
  if (typeof parsed === "string") throw new Error(parsed);
  return parsed;
}

export interface RunningGateway {
  port: number;
  endpoint: string;
  /**
   * Stops the gateway; its sandboxes stop with it, unless `keepSandboxes`:
   * then their supervisors run on for the next gateway to adopt.
   */
  close(options?: { keepSandboxes?: boolean }): Promise<void>;
}

const SESSION_REAP_MS = 3600_000;

/** Longest Unix socket path the kernel accepts, less a margin. */
const SOCKET_PATH_MAX = 100;

/**
 * Where supervisors dial their gateway: in the gateway's private state
 * directory, or, when that path is too long for a Unix socket, in a private
 * per-user directory under the system temp dir named after the state dir.
 */
export function supervisorSocketPath(stateDir: string): string {
  const preferred = join(stateDir, "run", "supervisor.sock");
  if (Buffer.byteLength(preferred) <= SOCKET_PATH_MAX) return preferred;
  const dir = join(tmpdir(), `openshell-${process.getuid?.() ?? 0}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const digest = createHash("sha256").update(stateDir).digest("hex").slice(0, 16);
  return join(dir, `${digest}.sock`);
}

export async function startGateway(options: GatewayOptions): Promise<RunningGateway> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const choice = options.driver ?? { kind: "local" };
  // Before anything is opened: a cluster that cannot be configured stops the start.
  const kubernetes =
    choice.kind === "kubernetes" ? await kubernetesSettings(choice, options.port) : undefined;
  const local = kubernetes === undefined;
  mkdirSync(options.stateDir, { recursive: true, mode: 0o700 });
  mkdirSync(join(options.stateDir, "run"), { recursive: true, mode: 0o700 });
  const sandboxesDir = join(options.stateDir, "sandboxes");
  mkdirSync(sandboxesDir, { recursive: true, mode: 0o700 });

  const sandboxDiskBytes =
    options.sandboxDiskBytes ??
    sizeSetting("OPENSHELL_SANDBOX_DISK", DEFAULT_GUEST_DISK_BYTES, MIN_GUEST_DISK_BYTES);
  const minFreeBytes = options.minFreeBytes ?? sizeSetting("OPENSHELL_GATEWAY_MIN_FREE", 1024 ** 3, 0);
  const store = new Store(join(options.stateDir, "openshell.db"));
  // Only root runs pods as uids of their own, so only root needs them host-unique.
  const uidLeases = process.getuid?.() === 0 ? new UidLeases() : undefined;
  const bus = new SandboxBus(options.logLimits ?? DEFAULT_LOG_LIMITS);
  const gatewayLog = (level: "INFO" | "WARN" | "ERROR", message: string, sandboxId?: string): void => {
    log(`${new Date().toISOString()} ${level} ${sandboxId ? `[${sandboxId}] ` : ""}${message}`);
    if (sandboxId) {
      bus.publishLogs(sandboxId, [
        {
          sandboxId,
          timestampMs: Date.now(),
          level,
          target: "openshell_gateway",
          message,
          source: "gateway",
          fields: {},
        },
      ]);
    }
  };

  // Forward references: the runtime and relay report into the lifecycle.
  let sandboxes!: Sandboxes;
  let ssh!: SshAccess;
  const viaRelay = options.sshViaRelay ?? process.env.OPENSHELL_SSH_VIA_RELAY === "1";
  const relay = new RelayHub(
    {
      connected: (id, instanceId) => sandboxes.supervisorConnected(id, instanceId),
      disconnected: (id) => {
        ssh.dropClient(id);
        sandboxes.supervisorDisconnected(id);
      },
    },
    // A local sandbox's sockets are on this host; any other's are reached through its supervisor.
    (id) =>
      viaRelay || runtime.kind !== "local" || !runtime.isRunning(id) ? undefined : runtime.sandboxDir(id),
  );
  const socketPath = supervisorSocketPath(options.stateDir);
  let port = options.port;
  const host = options.bind.includes(":") ? `[${options.bind}]` : options.bind;
  const driverEvents: DriverEvents = {
    report: (id, report) => sandboxes.supervisorReport(id, report),
    exited: (id, instanceId, code, signal) => sandboxes.supervisorExited(id, instanceId, code, signal),
    stderr: (id, line) => log(`${new Date().toISOString()} SUP [${id}] ${line}`),
  };
  let runtime: ComputeDriver;
  if (kubernetes) {
    const { KubernetesDriver } = await import("./kubernetes.js");
    runtime = new KubernetesDriver(sandboxesDir, kubernetes, driverEvents);
  } else {
    runtime = new LocalRuntime(
      sandboxesDir,
      join(options.appRoot, "dist", "supervisor.mjs"),
      `unix://${socketPath}`,
      driverEvents,
      supervisorMode(process.env[SUPERVISOR_MODE_ENV]),
      // The TCP listener, as plaintext only when it is so (see the contract's endpoint).
      () => process.env[SUPERVISOR_ENDPOINT_ENV] || `${options.tls ? "" : "http://"}${host}:${port}`,
    );
  }

  rmSync(socketPath, { force: true });
  sandboxes = new Sandboxes({
    store,
    bus,
    relay,
    runtime,
    appRoot: options.appRoot,
    diskBytes: sandboxDiskBytes,
    limits: options.limits ?? {
      defaults: {
        // A pod's process limit is the kubelet's (podPidsLimit), not a sandbox's.
        ...(local ? { pids: DEFAULT_PIDS } : {}),
        // Only a root gateway gives sandboxes filesystems of their own.
        ...(local && process.getuid?.() === 0 ? { diskBytes: sandboxDiskBytes } : {}),
        ...limitsSetting("OPENSHELL_SANDBOX_LIMITS"),
      },
      maxima: limitsSetting("OPENSHELL_SANDBOX_MAX_LIMITS"),
    },
    minFreeBytes,
    uidLeases,
    ttl: options.ttl ?? ttlSettings(),
    adoptTimeoutMs: options.adoptTimeoutMs ?? (ttlSetting("OPENSHELL_GATEWAY_ADOPT_TIMEOUT") || 30) * 1000,
    // A cluster's nodes pull their images themselves.
    images: !local
      ? undefined
      : new ImageStore(join(options.stateDir, "images"), {
          // Registries reached over plain HTTP or unverified TLS: only those the operator names.
          insecureRegistries: (process.env.OPENSHELL_INSECURE_REGISTRIES ?? "").split(",").filter(Boolean),
          communityRegistry: process.env.OPENSHELL_COMMUNITY_REGISTRY || undefined,
        }),
    released: (id) => ssh?.dropClient(id),
    log: gatewayLog,
  });

  try {
    // A driver that cannot reach what runs the sandboxes stops the start.
    await runtime.open();
  } catch (error) {
    store.close();
    throw error;
  }

  const server = new Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 20_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 5_000,
  });

  const scheme = options.tls ? "https" : "http";
  ssh = new SshAccess({
    store,
    sandboxes,
    relay,
    ttlSecs: options.sshSessionTtlSecs ?? 86_400,
    // A wildcard bind is reached on loopback, of its own family.
    advertised: () => ({
      host: isWildcardBind(options.bind) ? (options.bind.includes(":") ? "::1" : "127.0.0.1") : options.bind,
      port,
      scheme,
    }),
    note: (id, message) => gatewayLog("WARN", message, id),
  });
  server.addService(
    withDecodeChecks(FastOpenShellService),
    createService({ version: options.version, token: options.token, store, bus, relay, sandboxes, ssh }),
  );

  const credentials = options.tls
    ? ServerCredentials.createSsl(
        options.tls.clientCa ?? null,
        [{ private_key: options.tls.key, cert_chain: options.tls.cert }],
        options.tls.clientCa !== undefined,
      )
    : ServerCredentials.createInsecure();
  port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${options.port}`, credentials, (error, bound) =>
      error ? reject(error) : resolve(bound),
    );
  });
  await new Promise<number>((resolve, reject) => {
    server.bindAsync(`unix://${socketPath}`, ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    );
  });

  sandboxes.adoptSupervisors();
  // What sandboxes this gateway no longer has left behind (deleted by a crashed gateway).
  // A sandbox in Error or Stopped is not started again until asked, so its runtime is not
  // needed until it is deleted, unless its supervisor still runs.
  const stored = store.allSandboxes();
  await runtime.sweep({
    stored: new Set(stored.map((sandbox) => sandbox.metadata!.id)),
    live: new Set(
      stored
        .filter(
          (sandbox) =>
            runtime.isRunning(sandbox.metadata!.id) ||
            (phaseOf(sandbox) !== SandboxPhase.SANDBOX_PHASE_ERROR &&
              phaseOf(sandbox) !== SandboxPhase.SANDBOX_PHASE_STOPPED),
        )
        .map((sandbox) => sandbox.metadata!.id),
    ),
  });
  runtime.prepareSpare();
  await sandboxes.resumeAll();
  const reaper = setInterval(() => store.reapSshSessions(Date.now()), SESSION_REAP_MS);
  reaper.unref();

  let closing: Promise<void> | undefined;
  return {
    port,
    endpoint: `${scheme}://${host}:${port}`,
    close: (closeOptions = {}) => {
      closing ??= (async () => {
        clearInterval(reaper);
        sandboxes.close();
        sandboxes.beginShutdown();
        if (closeOptions.keepSandboxes) {
          runtime.detachAll();
          // Supervisors hold their sessions and log streams open: they are cut, and reconnect to the next gateway.
          server.forceShutdown();
        } else {
          await runtime.stopAll();
          await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
        }
        store.close();
        uidLeases?.close();
        rmSync(socketPath, { force: true });
      })();
      return closing;
    },
  };
}
