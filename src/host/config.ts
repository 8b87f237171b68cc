// Where the CLI and the gateway keep things. Every path honours
// XDG_CONFIG_HOME / XDG_STATE_HOME so tests and scripts run isolated.
//
//   $XDG_CONFIG_HOME/openshell/active_gateway
//   $XDG_CONFIG_HOME/openshell/gateways/<name>/metadata.json
//   $XDG_CONFIG_HOME/openshell/gateways/<name>/last_sandbox   "<workspace>\n<sandbox>"
//   $XDG_CONFIG_HOME/openshell/gateways/<name>/token          bearer token, 0600 (directory 0700)
//   $XDG_STATE_HOME/openshell/gateways/<name>/                store, sandboxes, logs, pid
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/            generated CA and server certificate

import { chmodSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { isIPv4, isIPv6 } from "node:net";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { invalidInput, OpenShellError } from "../core/errors.js";
import { readTextIfExists } from "./fs.js";

export const DEFAULT_GATEWAY_NAME = "local";
export const DEFAULT_GATEWAY_PORT = 17670;
export const DEFAULT_WORKSPACE = "default";

export type AuthMode = "plaintext" | "mtls" | "bearer" | "tls";

/**
 * How a local gateway was last started (`gateway start` flags), kept so a
 * later `gateway start` or auto-start brings it back the same way: a TLS
 * gateway never comes back as plaintext, nor on another address.
 */
export interface LocalGatewaySettings {
  /** Address it listens on. */
  bind: string;
  /** TLS certificate and key files (PEM); absent for a plaintext loopback gateway. */
  tls_cert_file?: string;
  tls_key_file?: string;
  /** True when the TLS files are the generated ones (`--tls`), reissued as needed. */
  tls_generated?: boolean;
  /** CA (PEM) that client certificates must chain to (mTLS). */
  client_ca_file?: string;
  /** SSH session token lifetime in seconds. */
  ssh_session_ttl_secs?: number;
  /** Size in MiB at which a sandbox's log file is rotated. */
  log_max_size_mib?: number;
  /** Log files kept per sandbox, the current one included. */
  log_max_files?: number;
  /** `--driver kubernetes`: sandboxes as pods in a cluster, with where the cluster is (as kubectl resolves it). */
  driver?: "kubernetes";
  kubeconfig?: string;
  kube_context?: string;
  kube_namespace?: string;
}

/** metadata.json: upstream's fields plus our optional ones. */
export interface GatewayMetadata {
  name: string;
  gateway_endpoint: string;
  is_remote: boolean;
  gateway_port: number;
  auth_mode?: AuthMode | string;
  /** True for a gateway this CLI started on this machine (`gateway start`). */
  local?: boolean;
  /** PEM CA file used to verify an https gateway. */
  ca_file?: string;
  /** File holding the bearer token; defaults to the gateway's `token` file. */
  token_file?: string;
  /** Client certificate and key for mTLS. */
  client_cert_file?: string;
  client_key_file?: string;
  /** For a local gateway: its start settings. */
  local_settings?: LocalGatewaySettings;
}

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value.trim() === "" ? undefined : value;
}

export function configRoot(): string {
  return join(env("XDG_CONFIG_HOME") ?? join(homedir(), ".config"), "openshell");
}

export function stateRoot(): string {
  return join(env("XDG_STATE_HOME") ?? join(homedir(), ".local", "state"), "openshell");
}

export function validateGatewayName(name: string): void {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw invalidInput(`invalid gateway name '${name}': expected a single path component`);
  }
}

export function gatewayConfigDir(name: string): string {
  validateGatewayName(name);
  return join(configRoot(), "gateways", name);
}

export function gatewayStateDir(name: string): string {
  validateGatewayName(name);
  return join(stateRoot(), "gateways", name);
}

export function gatewayTokenPath(name: string): string {
  return join(gatewayConfigDir(name), "token");
}

/** Creates a directory (and parents) private to the current user. */
export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
}

/** Writes a file atomically (temp + rename) with the given mode. */
export function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): void {
  ensurePrivateDir(dirname(path));
  const temp = `${path}.${process.pid}.tmp`;
  writeFileSync(temp, data, { mode });
  chmodSync(temp, mode);
  renameSync(temp, path);
}

export function readMetadata(name: string): GatewayMetadata | undefined {
  const text = readTextIfExists(join(gatewayConfigDir(name), "metadata.json"));
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as GatewayMetadata;
  } catch (error) {
    throw new OpenShellError(
      "invalid_input",
      `gateway '${name}' has a corrupt metadata.json: ${(error as Error).message}`,
      { hint: `Remove ${join(gatewayConfigDir(name), "metadata.json")} and add the gateway again.` },
    );
  }
}

export function writeMetadata(metadata: GatewayMetadata): void {
  writeFileAtomic(
    join(gatewayConfigDir(metadata.name), "metadata.json"),
    `${JSON.stringify(metadata, null, 2)}\n`,
  );
}

export function removeGatewayConfig(name: string): void {
  rmSync(gatewayConfigDir(name), { recursive: true, force: true });
}

export function listGatewayNames(): string[] {
  try {
    return readdirSync(join(configRoot(), "gateways"), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name)
      .filter((name) => readMetadata(name) !== undefined)
      .sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}

export function readActiveGateway(): string | undefined {
  const text = readTextIfExists(join(configRoot(), "active_gateway"))?.trim();
  return text === undefined || text === "" ? undefined : text;
}

export function writeActiveGateway(name: string): void {
  validateGatewayName(name);
  writeFileAtomic(join(configRoot(), "active_gateway"), `${name}\n`);
}

export interface LastSandbox {
  workspace: string;
  name: string;
}

export function readLastSandbox(gateway: string): LastSandbox | undefined {
  const text = readTextIfExists(join(gatewayConfigDir(gateway), "last_sandbox"));
  if (text === undefined) return undefined;
  const [workspace, name] = text.split("\n");
  if (!workspace || !name) return undefined;
  return { workspace: workspace.trim(), name: name.trim() };
}

export function writeLastSandbox(gateway: string, last: LastSandbox): void {
  writeFileAtomic(join(gatewayConfigDir(gateway), "last_sandbox"), `${last.workspace}\n${last.name}\n`);
}

export function clearLastSandbox(gateway: string, name: string): void {
  const last = readLastSandbox(gateway);
  if (last?.name === name) rmSync(join(gatewayConfigDir(gateway), "last_sandbox"), { force: true });
}

/** The bearer token in `path`, or undefined when there is no such file. */
export function readToken(path: string): string | undefined {
  try {
    return readTextIfExists(path)?.trim() || undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM") {
      throw new OpenShellError("not_authorized", `cannot read the token file ${path}: permission denied`, {
        hint: "A gateway's token is readable by its owner only; ask the owner for a copy you can read.",
      });
    }
    throw new OpenShellError(
      "invalid_input",
      `cannot read the token file ${path}: ${(error as Error).message}`,
    );
  }
}

/**
 * Whether a gateway bound to `bind` listens on every interface: the
 * unspecified address, IPv4 or IPv6, however spelled (`0.0.0.0`, `::`,
 * `0:0::0`). An empty bind is not one: grpc-js cannot bind it.
 */
export function isWildcardBind(bind: string): boolean {
  return (isIPv4(bind) && /^[0.]+$/.test(bind)) || (isIPv6(bind) && /^[0:]+$/.test(bind));
}

/** Whether `host` is a loopback address or name (reachable from this machine only). */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "");
  return bare === "localhost" || bare === "::1" || /^127\.\d+\.\d+\.\d+$/.test(bare);
}
