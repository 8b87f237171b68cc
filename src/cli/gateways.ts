// Finding the gateway a command talks to, and starting the local one.
//
// Resolution, as upstream: --gateway-endpoint, else the name from --gateway,
// OPENSHELL_GATEWAY, or the active gateway. With nothing configured, sandbox
// commands start the local gateway themselves and say so in one line.

import { spawn } from "node:child_process";
import { createPrivateKey, randomBytes, X509Certificate } from "node:crypto";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
  type GatewaySelection,
  insecureWarning,
  noActiveGateway,
  parseEndpoint,
  type ResolvedGateway,
  resolveEndpointGateway,
  selectedGatewayName,
  targetFor,
  unknownGateway,
} from "../api/config.js";
import { OpenShellError, usageError } from "../core/errors.js";
import {
  type EnsuredTls,
  ensureGatewayTls,
  ensureOwnerClientCertificate,
  gatewayTlsFiles,
} from "../gateway/tls.js";
import {
  DEFAULT_GATEWAY_NAME,
  DEFAULT_GATEWAY_PORT,
  ensurePrivateDir,
  type GatewayMetadata,
  gatewayStateDir,
  gatewayTokenPath,
  isLoopbackHost,
  isWildcardBind,
  type LocalGatewaySettings,
  readMetadata,
  readToken,
  writeActiveGateway,
  writeFileAtomic,
  writeMetadata,
} from "../host/config.js";
import { mallocTunables, processAlive } from "../host/process.js";

export interface GlobalOptions extends GatewaySelection {
  workspace?: string | undefined;
}

export { insecureWarning, type ResolvedGateway, targetFor };

export interface LocalGatewayInfo {
  pid: number;
  port: number;
  endpoint: string;
  version: string;
}

export function appRoot(): string {
  // dist/cli.mjs and dist/chunks/*.mjs both live under <root>/dist.
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json")) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

/** The running local gateway of this name, if there is one. */
export function localGatewayInfo(name: string): LocalGatewayInfo | undefined {
  try {
    const info = JSON.parse(
      readFileSync(join(gatewayStateDir(name), "gateway.json"), "utf8"),
    ) as LocalGatewayInfo;
    return processAlive(info.pid) ? info : undefined;
  } catch {
    return undefined;
  }
}

/** Creates the gateway's bearer token (0600 in a 0700 directory) once. */
export function ensureGatewayToken(name: string): string {
  const path = gatewayTokenPath(name);
  const existing = readToken(path);
  if (existing) return existing;
  const token = randomBytes(32).toString("base64url");
  ensurePrivateDir(dirname(path));
  writeFileAtomic(path, `${token}\n`, 0o600);
  return token;
}

/** How long SSH session tokens live unless `--ssh-session-ttl` says otherwise. */
export const DEFAULT_SSH_SESSION_TTL_SECS = 86_400;
const MAX_SSH_SESSION_TTL_SECS = 366 * 86_400;

/** `gateway start` flags; absent ones fall back to the gateway's last settings. */
export interface StartFlags {
  bind?: string | undefined;
  /** --tls (true) or --no-tls (false). */
  tls?: boolean | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  clientCa?: string | undefined;
  sshSessionTtl?: number | undefined;
  logMaxSize?: number | undefined;
  logMaxFiles?: number | undefined;
  /** `local` or `kubernetes`. */
  driver?: string | undefined;
  kubeconfig?: string | undefined;
  kubeContext?: string | undefined;
  kubeNamespace?: string | undefined;
}

/** Bounds of what a sandbox's log may hold on disk: size per file (MiB) and number of files. */
const MAX_LOG_SIZE_MIB = 1024;
const MAX_LOG_FILES = 100;

/**
 * The settings a gateway starts with: the flags given, else what it was last
 * started with, else plaintext on 127.0.0.1. Any TLS flag (--tls, --no-tls,
 * --tls-cert) replaces the whole TLS setup; --client-ca alone adds mTLS to
 * the previous one. Refuses a network address without TLS.
 */
export function resolveStartSettings(
  flags: StartFlags,
  previous: LocalGatewaySettings | undefined,
): LocalGatewaySettings {
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
    throw usageError("--tls-cert and --tls-key go together: give both (PEM certificate and its key)");
  }
  if (flags.tls === true && flags.tlsCert !== undefined) {
    throw usageError(
      "--tls generates a certificate and --tls-cert/--tls-key use yours: give one or the other",
    );
  }
  if (flags.tls === false && (flags.tlsCert !== undefined || flags.clientCa !== undefined)) {
    throw usageError("--no-tls cannot be combined with --tls-cert, --tls-key or --client-ca");
  }
  const ttl = flags.sshSessionTtl;
  if (ttl !== undefined && (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_SSH_SESSION_TTL_SECS)) {
    throw usageError(
      `--ssh-session-ttl ${ttl}: expected a number of seconds from 1 to ${MAX_SSH_SESSION_TTL_SECS} (366 days)`,
    );
  }
  const { logMaxSize, logMaxFiles } = flags;
  if (
    logMaxSize !== undefined &&
    (!Number.isInteger(logMaxSize) || logMaxSize < 1 || logMaxSize > MAX_LOG_SIZE_MIB)
  ) {
    throw usageError(`--log-max-size ${logMaxSize}: expected a number of MiB from 1 to ${MAX_LOG_SIZE_MIB}`);
  }
  if (
    logMaxFiles !== undefined &&
    (!Number.isInteger(logMaxFiles) || logMaxFiles < 1 || logMaxFiles > MAX_LOG_FILES)
  ) {
    throw usageError(`--log-max-files ${logMaxFiles}: expected a number of files from 1 to ${MAX_LOG_FILES}`);
  }
  const bind = flags.bind ?? previous?.bind ?? "127.0.0.1";
  if (bind === "")
    throw usageError("--bind '': expected an address, e.g. 127.0.0.1 or 0.0.0.0 for every interface");
  const settings: LocalGatewaySettings = { bind };
  const explicitTls = flags.tls !== undefined || flags.tlsCert !== undefined;
  if (flags.tls === true) settings.tls_generated = true;
  else if (flags.tlsCert !== undefined) {
    settings.tls_cert_file = resolve(flags.tlsCert);
    settings.tls_key_file = resolve(flags.tlsKey!);
  } else if (!explicitTls && previous?.tls_cert_file && previous.tls_key_file) {
    settings.tls_cert_file = previous.tls_cert_file;
    settings.tls_key_file = previous.tls_key_file;
    if (previous.tls_generated) settings.tls_generated = true;
  } else if (!explicitTls && previous?.tls_generated) settings.tls_generated = true;
  const clientCa = flags.clientCa ?? (explicitTls ? undefined : previous?.client_ca_file);
  if (clientCa !== undefined) settings.client_ca_file = resolve(clientCa);
  const sessionTtl = ttl ?? previous?.ssh_session_ttl_secs;
  if (sessionTtl !== undefined) settings.ssh_session_ttl_secs = sessionTtl;
  const logSize = logMaxSize ?? previous?.log_max_size_mib;
  if (logSize !== undefined) settings.log_max_size_mib = logSize;
  const logFiles = logMaxFiles ?? previous?.log_max_files;
  if (logFiles !== undefined) settings.log_max_files = logFiles;

  const tls = settings.tls_generated === true || settings.tls_cert_file !== undefined;
  resolveDriver(flags, previous, settings, tls);
  if (!tls && settings.client_ca_file !== undefined) {
    throw usageError("--client-ca needs TLS: add --tls (generates a certificate) or --tls-cert/--tls-key");
  }
  if (!tls && !isLoopbackHost(bind)) {
    throw new OpenShellError(
      "invalid_input",
      `--bind ${bind}: a gateway reachable from the network needs TLS`,
      {
        hint: "Add --tls (generates a CA and certificate), or --tls-cert/--tls-key, or bind to 127.0.0.1.",
      },
    );
  }
  return settings;
}

function readPem(flag: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new OpenShellError(
      "invalid_input",
      `${flag} ${path}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message}`,
    );
  }
}

/** Every certificate in a PEM file, leaf first. */
export function pemCertificates(flag: string, path: string): X509Certificate[] {
  const text = readPem(flag, path);
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    throw new OpenShellError("invalid_input", `${flag} ${path}: no PEM certificate in it`, {
      hint: "Expected a file starting with -----BEGIN CERTIFICATE-----.",
    });
  }
  return blocks.map((block) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw new OpenShellError(
        "invalid_input",
        `${flag} ${path}: not a valid certificate (${(error as Error).message})`,
      );
    }
  });
}

/** Checks user-given TLS files before starting: readable, parseable, key matching the certificate. */
export function checkTlsFiles(settings: LocalGatewaySettings): void {
  if (settings.tls_cert_file && settings.tls_key_file && !settings.tls_generated) {
    const [leaf] = pemCertificates("--tls-cert", settings.tls_cert_file);
    let matches = false;
    try {
      matches = leaf!.checkPrivateKey(createPrivateKey(readPem("--tls-key", settings.tls_key_file)));
    } catch (error) {
      if (error instanceof OpenShellError) throw error;
      throw new OpenShellError(
        "invalid_input",
        `--tls-key ${settings.tls_key_file}: not a valid private key (${(error as Error).message})`,
      );
    }
    if (!matches) {
      throw new OpenShellError(
        "invalid_input",
        `--tls-key ${settings.tls_key_file} is not the key of --tls-cert ${settings.tls_cert_file}`,
      );
    }
  }
  if (settings.client_ca_file) pemCertificates("--client-ca", settings.client_ca_file);
}

/**
 * `--driver` and the cluster's flags: given, else as last started. The
 * Kubernetes driver needs TLS: its pods reach the gateway over the cluster's
 * network with their credential.
 */
function resolveDriver(
  flags: StartFlags,
  previous: LocalGatewaySettings | undefined,
  settings: LocalGatewaySettings,
  tls: boolean,
): void {
  if (flags.driver !== undefined && flags.driver !== "local" && flags.driver !== "kubernetes") {
    throw usageError(`--driver ${flags.driver}: expected local (the default) or kubernetes`);
  }
  const kubernetes =
    flags.driver === "kubernetes" || (flags.driver === undefined && previous?.driver === "kubernetes");
  const kubeFlags = [
    ["--kubeconfig", flags.kubeconfig],
    ["--kube-context", flags.kubeContext],
    ["--kube-namespace", flags.kubeNamespace],
  ].filter(([, value]) => value !== undefined);
  if (!kubernetes) {
    if (kubeFlags.length > 0) throw usageError(`${kubeFlags[0]![0]} needs --driver kubernetes`);
    return;
  }
  if (!tls) {
    throw usageError(
      "--driver kubernetes needs TLS: add --tls (generates a CA and certificate) or --tls-cert/--tls-key",
    );
  }
  settings.driver = "kubernetes";
  const same = flags.driver === undefined || previous?.driver === "kubernetes";
  const kubeconfig = flags.kubeconfig ?? (same ? previous?.kubeconfig : undefined);
  if (kubeconfig !== undefined) settings.kubeconfig = resolve(kubeconfig);
  const context = flags.kubeContext ?? (same ? previous?.kube_context : undefined);
  if (context !== undefined) settings.kube_context = context;
  const namespace = flags.kubeNamespace ?? (same ? previous?.kube_namespace : undefined);
  if (namespace !== undefined) settings.kube_namespace = namespace;
}

/** Arguments that carry the settings to the gateway process (never the token itself). */
export function gatewayProcessArgs(name: string, settings: LocalGatewaySettings): string[] {
  return [
    "--bind",
    settings.bind,
    ...(settings.tls_cert_file && settings.tls_key_file
      ? ["--tls-cert", settings.tls_cert_file, "--tls-key", settings.tls_key_file]
      : []),
    // The gateway's own CA too, which signed its owner's client certificate.
    ...(settings.client_ca_file
      ? ["--client-ca", settings.client_ca_file, "--client-ca", gatewayTlsFiles(name).caFile]
      : []),
    ...(settings.ssh_session_ttl_secs !== undefined
      ? ["--ssh-session-ttl", String(settings.ssh_session_ttl_secs)]
      : []),
    ...(settings.log_max_size_mib !== undefined ? ["--log-max-size", String(settings.log_max_size_mib)] : []),
    ...(settings.log_max_files !== undefined ? ["--log-max-files", String(settings.log_max_files)] : []),
    ...(settings.driver === "kubernetes"
      ? [
          "--driver",
          "kubernetes",
          ...(settings.kubeconfig !== undefined ? ["--kubeconfig", settings.kubeconfig] : []),
          ...(settings.kube_context !== undefined ? ["--kube-context", settings.kube_context] : []),
          ...(settings.kube_namespace !== undefined ? ["--kube-namespace", settings.kube_namespace] : []),
          ...(settings.tls_generated ? ["--gateway-ca", gatewayTlsFiles(name).caFile] : []),
        ]
      : []),
  ];
}

export interface PreparedStart {
  settings: LocalGatewaySettings;
  /** The generated TLS files, with --tls. */
  generated?: EnsuredTls;
}

/** Makes or refreshes generated TLS files and checks given ones. */
export async function prepareStart(name: string, settings: LocalGatewaySettings): Promise<PreparedStart> {
  let prepared: PreparedStart = { settings };
  if (settings.tls_generated) {
    const generated = await ensureGatewayTls(name, settings.bind);
    prepared = {
      settings: { ...settings, tls_cert_file: generated.certFile, tls_key_file: generated.keyFile },
      generated,
    };
  }
  checkTlsFiles(prepared.settings);
  if (settings.client_ca_file) await ensureOwnerClientCertificate(name);
  return prepared;
}

/**
 * The CA file this machine's CLI verifies its own TLS gateway with: the
 * generated CA, or a given certificate file that holds its own root (a
 * self-signed certificate, or a chain ending at its CA). Otherwise the
 * system's roots.
 */
function ownCaFile(name: string, settings: LocalGatewaySettings): string | undefined {
  if (settings.tls_generated) return gatewayTlsFiles(name).caFile;
  if (!settings.tls_cert_file) return undefined;
  try {
    const certs = pemCertificates("--tls-cert", settings.tls_cert_file);
    return certs.some((cert) => cert.checkIssued(cert)) ? settings.tls_cert_file : undefined;
  } catch {
    return undefined;
  }
}

/** The host this machine's CLI dials for a gateway bound to `bind`. */
function localHostFor(settings: LocalGatewaySettings): string {
  if (!isWildcardBind(settings.bind)) return settings.bind;
  if (settings.tls_cert_file && !settings.tls_generated) {
    // A given certificate may name only some of the loopback names.
    try {
      const [leaf] = pemCertificates("--tls-cert", settings.tls_cert_file);
      const named = ["127.0.0.1", "localhost", "::1"].find((host) =>
        /^[\d.:]+$/.test(host) ? leaf!.checkIP(host) !== undefined : leaf!.checkHost(host) !== undefined,
      );
      if (named) return named;
    } catch {
      // checked before start; fall through
    }
  }
  return "127.0.0.1";
}

function endpointFor(settings: LocalGatewaySettings, port: number): string {
  const scheme = settings.tls_cert_file ? "https" : "http";
  const host = localHostFor(settings);
  return `${scheme}://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** metadata.json for a local gateway listening on `port` with `settings`. */
export function localMetadata(
  name: string,
  settings: LocalGatewaySettings,
  port: number,
  previous: GatewayMetadata | undefined,
): GatewayMetadata {
  const metadata: GatewayMetadata = {
    ...(previous ?? {}),
    name,
    gateway_endpoint: endpointFor(settings, port),
    is_remote: false,
    gateway_port: port,
    auth_mode: "bearer",
    local: true,
    local_settings: settings,
  };
  // The owner's CLI reads the token from its default place and trusts its own CA.
  delete metadata.token_file;
  delete metadata.client_cert_file;
  delete metadata.client_key_file;
  const ca = ownCaFile(name, settings);
  if (ca) metadata.ca_file = ca;
  else delete metadata.ca_file;
  if (settings.client_ca_file) {
    const files = gatewayTlsFiles(name);
    metadata.client_cert_file = files.clientCertFile;
    metadata.client_key_file = files.clientKeyFile;
  }
  return metadata;
}

export interface StartOptions {
  name: string;
  port: number;
  settings: LocalGatewaySettings;
}

export interface StartResult {
  info: LocalGatewayInfo;
  alreadyRunning: boolean;
  metadata: GatewayMetadata;
  /** The generated TLS files, when this start made or checked them. */
  generated?: EnsuredTls;
}

function spawnGateway(name: string, settings: LocalGatewaySettings, port: number): Promise<LocalGatewayInfo> {
  const stateDir = gatewayStateDir(name);
  ensurePrivateDir(stateDir);
  const logFd = openSync(join(stateDir, "gateway.log"), "a", 0o600);
  const child = spawn(
    process.execPath,
    [
      join(appRoot(), "dist", "gateway.mjs"),
      "--name",
      name,
      "--state-dir",
      stateDir,
      "--port",
      String(port),
      "--token-file",
      gatewayTokenPath(name),
      ...gatewayProcessArgs(name, settings),
    ],
    { detached: true, stdio: ["ignore", "pipe", logFd], env: { ...process.env, ...mallocTunables() } },
  );
  closeSync(logFd);
  return new Promise((resolveInfo, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const onExit = (code: number | null): void =>
      reject(
        new OpenShellError("internal", `gateway '${name}' exited during start (status ${code})`, {
          hint: `See ${join(stateDir, "gateway.log")}`,
        }),
      );
    child.once("exit", onExit);
    lines.once("line", (line) => {
      child.off("exit", onExit);
      lines.close();
      child.stdout!.destroy();
      child.unref();
      let message: { ready: boolean; error?: string } & Partial<LocalGatewayInfo>;
      try {
        message = JSON.parse(line);
      } catch {
        reject(new OpenShellError("internal", `gateway '${name}' said: ${line}`));
        return;
      }
      if (!message.ready) {
        reject(
          new OpenShellError(
            "internal",
            `gateway '${name}' failed to start: ${message.error ?? "unknown error"}`,
            {
              hint: `See ${join(stateDir, "gateway.log")}`,
            },
          ),
        );
        return;
      }
      resolveInfo(message as LocalGatewayInfo);
    });
  });
}

/**
 * Starts the local gateway in the background unless it is already running,
 * records it and its settings in its metadata, and makes it active. Idempotent:
 * a running gateway is left as it is.
 */
export async function startLocalGateway(options: StartOptions): Promise<StartResult> {
  ensureGatewayToken(options.name);
  const previous = readMetadata(options.name);
  const running = localGatewayInfo(options.name);
  if (running) {
    const metadata = previous ?? localMetadata(options.name, options.settings, running.port, undefined);
    if (!previous) writeMetadata(metadata);
    writeActiveGateway(options.name);
    return { info: running, alreadyRunning: true, metadata };
  }
  const { settings, generated } = await prepareStart(options.name, options.settings);
  let info: LocalGatewayInfo;
  try {
    info = await spawnGateway(options.name, settings, options.port);
  } catch (error) {
    // The default port taken by something else: any free port will do.
    if (
      options.port === DEFAULT_GATEWAY_PORT &&
      /EADDRINUSE|address already in use|No address added/i.test(String((error as Error).message))
    ) {
      info = await spawnGateway(options.name, settings, 0);
    } else throw error;
  }
  const metadata = localMetadata(options.name, settings, info.port, previous);
  writeMetadata(metadata);
  writeActiveGateway(options.name);
  return { info, alreadyRunning: false, metadata, ...(generated ? { generated } : {}) };
}

/** Start settings of a local gateway recorded before settings were kept: its endpoint's host. */
function recordedSettings(metadata: GatewayMetadata | undefined): LocalGatewaySettings {
  if (metadata?.local_settings) return metadata.local_settings;
  const bind = metadata?.gateway_endpoint ? parseEndpoint(metadata.gateway_endpoint).host : "127.0.0.1";
  return { bind };
}

/**
 * The gateway a command talks to. `autoStart` (sandbox commands) starts the
 * local gateway when none is configured, or when the configured one is a
 * local gateway that is not running, with a one-line notice on stderr.
 */
export async function resolveGateway(
  globals: GlobalOptions,
  options: { autoStart: boolean; notice: (line: string) => void; env: NodeJS.ProcessEnv },
): Promise<ResolvedGateway> {
  const { env } = options;
  const byEndpoint = resolveEndpointGateway(globals, env);
  if (byEndpoint) {
    const warning = insecureWarning(byEndpoint.target);
    if (warning) options.notice(`warning: ${warning}`);
    return byEndpoint;
  }
  const selected = selectedGatewayName(globals, env);
  let name = selected.name;
  if (!name) {
    if (!options.autoStart) throw noActiveGateway();
    name = DEFAULT_GATEWAY_NAME;
  }
  let metadata = readMetadata(name);
  if (!metadata && !(options.autoStart && name === DEFAULT_GATEWAY_NAME && !selected.explicit)) {
    throw unknownGateway(name);
  }
  if (options.autoStart && (metadata === undefined || metadata.local) && !localGatewayInfo(name)) {
    // Back the way it was last started: same address, TLS and client CA.
    const result = await startLocalGateway({
      name,
      port: metadata?.gateway_port || DEFAULT_GATEWAY_PORT,
      settings: recordedSettings(metadata),
    });
    metadata = result.metadata;
    options.notice(
      `Started gateway '${name}' at ${metadata.gateway_endpoint} (stop it with \`openshell gateway stop\`).`,
    );
  }
  const target = targetFor(name, metadata!, globals, env);
  const warning = insecureWarning(target);
  if (warning) options.notice(`warning: ${warning}`);
  return { name, metadata, target };
}

export function defaultLogPath(name: string): string {
  return resolve(gatewayStateDir(name), "gateway.log");
}
