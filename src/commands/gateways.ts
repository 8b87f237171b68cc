// Finding the gateway a command talks to, and starting the local one.
//
// Resolution, as upstream: --gateway-endpoint, else the name from --gateway,
// OPENSHELL_GATEWAY, or the active gateway. With nothing configured, sandbox
// commands start the local gateway themselves and say so in one line.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
  DEFAULT_GATEWAY_NAME,
  DEFAULT_GATEWAY_PORT,
  ensurePrivateDir,
  type GatewayMetadata,
  gatewayStateDir,
  gatewayTokenPath,
  listGatewayNames,
  readActiveGateway,
  readMetadata,
  readToken,
  writeActiveGateway,
  writeFileAtomic,
  writeMetadata,
} from "../core/config.js";
import { OpenShellError } from "../core/errors.js";
import type { GatewayTarget } from "../transport/grpc.js";

export interface GlobalOptions {
  gateway?: string | undefined;
  gatewayEndpoint?: string | undefined;
  gatewayInsecure?: boolean | undefined;
  workspace?: string | undefined;
  verbose?: number | undefined;
}

export interface LocalGatewayInfo {
  pid: number;
  port: number;
  endpoint: string;
  version: string;
}

function envValue(name: string): string | undefined {
  const value = process.env[name]?.trim();
  return value === "" ? undefined : value;
}

export function appRoot(): string {
  // dist/cli.mjs and dist/chunks/*.mjs both live under <root>/dist.
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json")) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
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

export interface StartOptions {
  name: string;
  bind: string;
  port: number;
  /** Extra arguments for the gateway process (TLS files, session TTL). */
  extraArgs?: string[];
  /** Endpoint scheme clients use (https with TLS). */
  scheme?: "http" | "https";
  /** What to record in metadata.json besides the endpoint. */
  metadata?: Partial<GatewayMetadata>;
}

export interface StartResult {
  info: LocalGatewayInfo;
  alreadyRunning: boolean;
  metadata: GatewayMetadata;
}

function spawnGateway(options: StartOptions, port: number): Promise<LocalGatewayInfo> {
  const stateDir = gatewayStateDir(options.name);
  ensurePrivateDir(stateDir);
  const logFd = openSync(join(stateDir, "gateway.log"), "a", 0o600);
  const child = spawn(
    process.execPath,
    [
      join(appRoot(), "dist", "gateway.mjs"),
      "--name",
      options.name,
      "--state-dir",
      stateDir,
      "--bind",
      options.bind,
      "--port",
      String(port),
      "--token-file",
      gatewayTokenPath(options.name),
      ...(options.extraArgs ?? []),
    ],
    { detached: true, stdio: ["ignore", "pipe", logFd] },
  );
  closeSync(logFd);
  return new Promise((resolveInfo, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const onExit = (code: number | null): void =>
      reject(
        new OpenShellError("internal", `gateway '${options.name}' exited during start (status ${code})`, {
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
        reject(new OpenShellError("internal", `gateway '${options.name}' said: ${line}`));
        return;
      }
      if (!message.ready) {
        reject(
          new OpenShellError(
            "internal",
            `gateway '${options.name}' failed to start: ${message.error ?? "unknown error"}`,
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
 * records it in its metadata, and makes it active. Idempotent.
 */
export async function startLocalGateway(options: StartOptions): Promise<StartResult> {
  const token = ensureGatewayToken(options.name);
  void token;
  const running = localGatewayInfo(options.name);
  let info: LocalGatewayInfo;
  let alreadyRunning = false;
  if (running) {
    info = running;
    alreadyRunning = true;
  } else {
    try {
      info = await spawnGateway(options, options.port);
    } catch (error) {
      // The default port taken by something else: any free port will do.
      if (
        options.port === DEFAULT_GATEWAY_PORT &&
        /EADDRINUSE|address already in use|No address added/i.test(String((error as Error).message))
      ) {
        info = await spawnGateway(options, 0);
      } else throw error;
    }
  }
  const scheme = options.scheme ?? "http";
  const host = options.bind === "0.0.0.0" || options.bind === "::" ? "127.0.0.1" : options.bind;
  const previous = readMetadata(options.name);
  const metadata: GatewayMetadata = {
    ...(previous ?? {}),
    ...options.metadata,
    name: options.name,
    gateway_endpoint: `${scheme}://${host.includes(":") ? `[${host}]` : host}:${info.port}`,
    is_remote: false,
    gateway_port: info.port,
    auth_mode: options.metadata?.auth_mode ?? previous?.auth_mode ?? "bearer",
    local: true,
  };
  writeMetadata(metadata);
  writeActiveGateway(options.name);
  return { info, alreadyRunning, metadata };
}

export interface ResolvedGateway {
  name: string;
  metadata: GatewayMetadata | undefined;
  target: GatewayTarget;
}

function readOptional(path: string | undefined): Buffer | undefined {
  return path ? readFileSync(path) : undefined;
}

function isGatewayName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

export function targetFor(name: string, metadata: GatewayMetadata, globals: GlobalOptions): GatewayTarget {
  // A bare --gateway-endpoint with no stored gateway has no token file of its own.
  const tokenFile = metadata.token_file ?? (isGatewayName(name) ? gatewayTokenPath(name) : undefined);
  const insecure =
    globals.gatewayInsecure ||
    envValue("OPENSHELL_GATEWAY_INSECURE") === "1" ||
    envValue("OPENSHELL_GATEWAY_INSECURE") === "true";
  return {
    name,
    endpoint: globals.gatewayEndpoint ?? metadata.gateway_endpoint,
    token: tokenFile ? readToken(tokenFile) : undefined,
    ca: readOptional(metadata.ca_file),
    clientCert: readOptional(metadata.client_cert_file),
    clientKey: readOptional(metadata.client_key_file),
    insecure,
    unreachableHint: metadata.local
      ? `Start it with \`openshell gateway start${name === DEFAULT_GATEWAY_NAME ? "" : ` --name ${name}`}\`.`
      : "Check that it is running, or register another with `openshell gateway add <endpoint>`.",
    unauthorizedHint: metadata.local
      ? `Only the owner of gateway '${name}' can use it (its token is ${tokenFile}, readable by its owner only).`
      : `Check the token file (${tokenFile}); re-register with \`openshell gateway add ${metadata.gateway_endpoint} --token-file FILE\`.`,
  };
}

/**
 * The gateway a command talks to. `autoStart` (sandbox commands) starts the
 * local gateway when none is configured, or when the configured one is a
 * local gateway that is not running, with a one-line notice on stderr.
 */
export async function resolveGateway(
  globals: GlobalOptions,
  options: { autoStart: boolean; notice: (line: string) => void },
): Promise<ResolvedGateway> {
  const explicitName = globals.gateway ?? envValue("OPENSHELL_GATEWAY");
  const endpoint = globals.gatewayEndpoint ?? envValue("OPENSHELL_GATEWAY_ENDPOINT");
  if (endpoint) {
    let name = explicitName;
    if (!name) {
      const trimmed = endpoint.replace(/\/$/, "");
      const active = readActiveGateway();
      const candidates = [...(active ? [active] : []), ...listGatewayNames()];
      name =
        candidates.find((n) => readMetadata(n)?.gateway_endpoint.replace(/\/$/, "") === trimmed) ?? endpoint;
    }
    const metadata = name === endpoint ? undefined : readMetadata(name);
    const base: GatewayMetadata = metadata ?? {
      name,
      gateway_endpoint: endpoint,
      is_remote: true,
      gateway_port: 0,
    };
    return {
      name,
      metadata,
      target: targetFor(
        name,
        { ...base, gateway_endpoint: endpoint },
        { ...globals, gatewayEndpoint: endpoint },
      ),
    };
  }
  let name = explicitName ?? readActiveGateway();
  if (!name) {
    if (!options.autoStart) {
      throw new OpenShellError("no_gateway", "No active gateway.", {
        hint: "Start the local one with `openshell gateway start`, or register one with `openshell gateway add <endpoint>`.",
      });
    }
    name = DEFAULT_GATEWAY_NAME;
  }
  let metadata = readMetadata(name);
  if (!metadata && !(options.autoStart && name === DEFAULT_GATEWAY_NAME && !explicitName)) {
    throw new OpenShellError("no_gateway", `Unknown gateway '${name}'.`, {
      hint: `Register it first: openshell gateway add <endpoint> --name ${name}`,
    });
  }
  if (options.autoStart && (metadata === undefined || metadata.local) && !localGatewayInfo(name)) {
    const result = await startLocalGateway({
      name,
      bind: metadata?.gateway_endpoint
        ? new URL(metadata.gateway_endpoint).hostname.replace(/^\[|\]$/g, "")
        : "127.0.0.1",
      port: metadata?.gateway_port || DEFAULT_GATEWAY_PORT,
    });
    metadata = result.metadata;
    options.notice(
      `Started gateway '${name}' at ${metadata.gateway_endpoint} (stop it with \`openshell gateway stop\`).`,
    );
  }
  return { name, metadata, target: targetFor(name, metadata!, globals) };
}

export function defaultLogPath(name: string): string {
  return resolve(gatewayStateDir(name), "gateway.log");
}
