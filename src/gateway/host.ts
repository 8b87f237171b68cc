// Hosting a gateway in this process, the one way both of its hosts do it: the
// background gateway process (`gateway/main.ts`, started by `gateway start`)
// and `gateway start --foreground` under a service manager. A second gateway
// on the same state directory would share its store and its sandboxes'
// directories, so the host refuses to start while the recorded pid lives. It
// records itself (pid and endpoint, 0600) only once it listens, so a CLI never
// dials a gateway that is not there, and removes the record when it stops.
// From the moment it serves, an error that escapes one session is logged and
// contained (host/last-resort.ts): a sandbox cannot end its gateway.

import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { containUncaughtErrors } from "../host/last-resort.js";
import { installPatches } from "../host/patches.js";
import { processAlive } from "../host/process.js";
import { VERSION } from "../host/version.js";
import { parseDenyList, SECCOMP_DENY_ENV } from "../runtime/contract.js";
import { logFileLimits } from "./bus.js";
import { type DriverChoice, startGateway } from "./server.js";

/**
 * `--driver` with the Kubernetes driver's flags as a hosted gateway takes
 * them; the CA pods trust defaults to the gateway's certificate file, which
 * then must hold the chain up to its CA (OPENSHELL_K8S_GATEWAY_CA names another).
 */
export function driverChoice(flags: {
  driver?: string | undefined;
  kubeconfig?: string | undefined;
  context?: string | undefined;
  namespace?: string | undefined;
  caFile?: string | undefined;
}): DriverChoice {
  if (flags.driver === undefined || flags.driver === "local") return { kind: "local" };
  if (flags.driver !== "kubernetes")
    throw new Error(`--driver ${flags.driver}: expected local or kubernetes`);
  return {
    kind: "kubernetes",
    kubeconfig: flags.kubeconfig,
    context: flags.context,
    namespace: flags.namespace,
    caFile: flags.caFile,
  };
}

/** What a hosted gateway records in `gateway.json` (and the background one prints once ready). */
export interface GatewayRuntimeInfo {
  pid: number;
  port: number;
  endpoint: string;
  version: string;
}

export interface HostOptions {
  name: string;
  stateDir: string;
  bind: string;
  /** 0 picks a free port. */
  port: number;
  /** The install's root (dist/ and node_modules/ below it), where supervisors are started from. */
  appRoot: string;
  /** File holding the bearer token; read here, never passed on a command line where `ps` shows it. */
  tokenFile?: string | undefined;
  tlsCertFile?: string | undefined;
  tlsKeyFile?: string | undefined;
  /** Client certificates signed by any of these CAs are accepted (mTLS). */
  clientCaFiles?: string[] | undefined;
  sshSessionTtlSecs?: number | undefined;
  logMaxSizeMib?: number | undefined;
  logMaxFiles?: number | undefined;
  /** What runs sandboxes (driverChoice); the local runtime when absent. */
  driver?: DriverChoice | undefined;
  /** Where an error that escapes a session is written, with its stack. */
  logError: (entry: string) => void;
}

export interface HostedGateway {
  info: GatewayRuntimeInfo;
  /** How it serves, for its first log line: TLS, client certificates, token, session lifetime. */
  security: string;
  /** Closes the gateway and removes its record; safe to call more than once. */
  stop(): Promise<void>;
}

function readOptionalTls(options: HostOptions) {
  if ((options.tlsCertFile === undefined) !== (options.tlsKeyFile === undefined)) {
    throw new Error("--tls-cert and --tls-key go together");
  }
  if (options.clientCaFiles !== undefined && options.tlsCertFile === undefined) {
    throw new Error("--client-ca needs --tls-cert and --tls-key");
  }
  if (options.tlsCertFile === undefined || options.tlsKeyFile === undefined) return undefined;
  return {
    cert: readFileSync(options.tlsCertFile),
    key: readFileSync(options.tlsKeyFile),
    clientCa: options.clientCaFiles
      ? Buffer.concat(
          options.clientCaFiles.map((file) => Buffer.concat([readFileSync(file), Buffer.from("\n")])),
        )
      : undefined,
  };
}

export async function hostGateway(options: HostOptions): Promise<HostedGateway> {
  const pidFile = join(options.stateDir, "gateway.pid");
  const infoFile = join(options.stateDir, "gateway.json");
  try {
    const pid = Number(readFileSync(pidFile, "utf8").trim());
    if (pid > 0 && pid !== process.pid && processAlive(pid)) {
      throw new Error(`gateway '${options.name}' is already running (pid ${pid})`);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  // Checked here so a mistyped list stops the start, not each sandbox later.
  parseDenyList(process.env[SECCOMP_DENY_ENV]);
  const token = options.tokenFile ? readFileSync(options.tokenFile, "utf8").trim() : undefined;
  if (options.tokenFile && !token) throw new Error(`--token-file ${options.tokenFile} is empty`);
  const tls = readOptionalTls(options);
  for (const failure of installPatches(["grpc-server-windows"])) options.logError(failure.message);

  const gateway = await startGateway({
    name: options.name,
    stateDir: options.stateDir,
    bind: options.bind,
    port: options.port,
    version: VERSION,
    appRoot: options.appRoot,
    token,
    tls,
    ...(options.sshSessionTtlSecs !== undefined ? { sshSessionTtlSecs: options.sshSessionTtlSecs } : {}),
    logLimits: logFileLimits(options.logMaxSizeMib, options.logMaxFiles),
    driver: options.driver,
  });
  const info: GatewayRuntimeInfo = {
    pid: process.pid,
    port: gateway.port,
    endpoint: gateway.endpoint,
    version: VERSION,
  };
  const security = [
    tls ? (tls.clientCa ? "TLS with client certificates" : "TLS") : "plaintext",
    token ? "bearer token required" : "no token",
    `SSH sessions expire after ${options.sshSessionTtlSecs ?? 86_400}s`,
  ].join(", ");
  writeFileSync(pidFile, `${process.pid}\n`, { mode: 0o600 });
  writeFileSync(infoFile, `${JSON.stringify(info)}\n`, { mode: 0o600 });
  const release = containUncaughtErrors("the gateway", options.logError);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    // A hosted gateway's sandboxes outlive it (see runtime.ts): the next start adopts them.
    stopped ??= gateway.close({ keepSandboxes: true }).finally(() => {
      release();
      rmSync(pidFile, { force: true });
      rmSync(infoFile, { force: true });
    });
    return stopped;
  };
  return { info, security, stop };
}
