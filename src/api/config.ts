// Which gateway a client talks to, resolved exactly as the CLI resolves it:
// an endpoint (option or OPENSHELL_GATEWAY_ENDPOINT), else a registered
// gateway by name (option, OPENSHELL_GATEWAY, or the active one), with its
// token and TLS files from the config directory. The CLI adds one thing on
// top (src/cli/gateways.ts): starting the local gateway when none runs.

import { readFileSync } from "node:fs";
import { OpenShellError } from "../core/errors.js";
import {
  DEFAULT_GATEWAY_NAME,
  type GatewayMetadata,
  gatewayTokenPath,
  listGatewayNames,
  readActiveGateway,
  readMetadata,
  readToken,
} from "../host/config.js";
import { type GatewayTarget, parseEndpoint } from "../transport/grpc.js";

/** `http(s)://HOST:PORT` taken apart (the CLI reads its local gateway's bind address with it). */
export { parseEndpoint };

/** How a caller picks a gateway: the CLI's --gateway, --gateway-endpoint and --gateway-insecure. */
export interface GatewaySelection {
  gateway?: string | undefined;
  gatewayEndpoint?: string | undefined;
  gatewayInsecure?: boolean | undefined;
}

export interface ResolvedGateway {
  name: string;
  metadata: GatewayMetadata | undefined;
  target: GatewayTarget;
}

export function envValue(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === "" ? undefined : value;
}

function readOptional(name: string, what: string, path: string | undefined): Buffer | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new OpenShellError(
      "invalid_input",
      `gateway '${name}': cannot read its ${what} ${path}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message}`,
      {
        hint: `Register it again with the right file: openshell gateway remove ${name} && openshell gateway add ...`,
      },
    );
  }
}

function isGatewayName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

function insecureRequested(selection: GatewaySelection, env: NodeJS.ProcessEnv): boolean {
  const insecure = envValue(env, "OPENSHELL_GATEWAY_INSECURE");
  return selection.gatewayInsecure === true || insecure === "1" || insecure === "true";
}

/** The stderr warning for --gateway-insecure on an https gateway, or undefined. */
export function insecureWarning(target: GatewayTarget): string | undefined {
  if (!target.insecure || !target.endpoint.startsWith("https:")) return undefined;
  return `--gateway-insecure: not verifying the TLS certificate of gateway '${target.name}' (${target.endpoint}); whoever answers there gets your requests${target.token ? " and your token" : ""}.`;
}

function unauthorizedHint(
  name: string,
  metadata: GatewayMetadata,
  tokenFile: string | undefined,
  token: string | undefined,
): string {
  if (metadata.local) {
    return `Only the owner of gateway '${name}' can use it: its token (${tokenFile}) is readable by its owner only.`;
  }
  if (token === undefined) {
    return `Gateway '${name}' needs its owner's token: \`openshell gateway remove ${name}\`, then \`openshell gateway add ${metadata.gateway_endpoint} --name ${name} --token-file FILE\`.`;
  }
  return `The token in ${tokenFile} was refused; ask the gateway's owner for its current token file.`;
}

export function targetFor(
  name: string,
  metadata: GatewayMetadata,
  selection: GatewaySelection,
  env: NodeJS.ProcessEnv = process.env,
): GatewayTarget {
  // A bare --gateway-endpoint with no stored gateway has no token file of its own.
  const tokenFile = metadata.token_file ?? (isGatewayName(name) ? gatewayTokenPath(name) : undefined);
  const token = tokenFile ? readToken(tokenFile) : undefined;
  return {
    name,
    endpoint: selection.gatewayEndpoint ?? metadata.gateway_endpoint,
    token,
    ca: readOptional(name, "CA certificate", metadata.ca_file),
    clientCert: readOptional(name, "client certificate", metadata.client_cert_file),
    clientKey: readOptional(name, "client key", metadata.client_key_file),
    insecure: insecureRequested(selection, env),
    unreachableHint: metadata.local
      ? `Start it with \`openshell gateway start${name === DEFAULT_GATEWAY_NAME ? "" : ` --name ${name}`}\`.`
      : "Check that it is running, or register another with `openshell gateway add <endpoint>`.",
    unauthorizedHint: unauthorizedHint(name, metadata, tokenFile, token),
  };
}

/** The gateway an explicit endpoint names (a registered one with that endpoint lends its name, token and TLS files). */
export function resolveEndpointGateway(
  selection: GatewaySelection,
  env: NodeJS.ProcessEnv,
): ResolvedGateway | undefined {
  const explicitName = selection.gateway ?? envValue(env, "OPENSHELL_GATEWAY");
  const endpoint = selection.gatewayEndpoint ?? envValue(env, "OPENSHELL_GATEWAY_ENDPOINT");
  if (!endpoint) return undefined;
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
  const target = targetFor(
    name,
    { ...base, gateway_endpoint: endpoint },
    { ...selection, gatewayEndpoint: endpoint },
    env,
  );
  return { name, metadata, target };
}

/** The gateway name a selection picks without an endpoint: the option, OPENSHELL_GATEWAY, or the active one. */
export function selectedGatewayName(
  selection: GatewaySelection,
  env: NodeJS.ProcessEnv,
): { name: string | undefined; explicit: boolean } {
  const explicitName = selection.gateway ?? envValue(env, "OPENSHELL_GATEWAY");
  return { name: explicitName ?? readActiveGateway(), explicit: explicitName !== undefined };
}

export function noActiveGateway(): OpenShellError {
  return new OpenShellError("no_gateway", "No active gateway.", {
    hint: "Start the local one with `openshell gateway start`, or register one with `openshell gateway add <endpoint>`.",
  });
}

export function unknownGateway(name: string): OpenShellError {
  return new OpenShellError("no_gateway", `Unknown gateway '${name}'.`, {
    hint: `Register it first: openshell gateway add <endpoint> --name ${name}`,
  });
}

/** What a client may set beside the selection; each replaces what the configuration says. */
export interface GatewayOverrides {
  token?: string | undefined;
  ca?: Buffer | undefined;
  clientCert?: Buffer | undefined;
  clientKey?: Buffer | undefined;
}

/**
 * The gateway for an API client: the CLI's resolution without starting
 * anything (a local gateway that is not running is reported Unavailable
 * when called), then the explicit overrides.
 */
export function resolveClientGateway(
  selection: GatewaySelection,
  overrides: GatewayOverrides,
  env: NodeJS.ProcessEnv,
): ResolvedGateway {
  let resolved = resolveEndpointGateway(selection, env);
  if (!resolved) {
    const { name, explicit } = selectedGatewayName(selection, env);
    const chosen = name ?? DEFAULT_GATEWAY_NAME;
    const metadata = readMetadata(chosen);
    if (!metadata) throw explicit ? unknownGateway(chosen) : noActiveGateway();
    resolved = { name: chosen, metadata, target: targetFor(chosen, metadata, selection, env) };
  }
  const target = { ...resolved.target };
  if (overrides.token !== undefined) target.token = overrides.token;
  if (overrides.ca !== undefined) target.ca = overrides.ca;
  if (overrides.clientCert !== undefined) target.clientCert = overrides.clientCert;
  if (overrides.clientKey !== undefined) target.clientKey = overrides.clientKey;
  return { ...resolved, target };
}
