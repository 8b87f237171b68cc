// Port forwarding's rules, shared by the CLI (its flags), the API, the
// gateway, the supervisor and the sandbox's agent: what a forward spec is,
// which hosts inside a sandbox a forward may reach, and the bounds.

import { isIPv4, isIPv6 } from "node:net";

/** Where a forward listens when its spec names no address. */
export const DEFAULT_FORWARD_BIND = "127.0.0.1";

/** TCP forward connections open at once to one sandbox (the gateway's bound; SSH has its own 20). */
export const FORWARD_CONNECTIONS_PER_SANDBOX = 256;

/** How long the sandbox's end has to connect to its port and say so. */
export const FORWARD_OPEN_MS = 10_000;

/**
 * The gRPC metadata a forward client sends when it reads an empty data frame
 * as the sandbox side's end of output (a half-close), so the gateway can pass
 * one on without ending the call. Clients that do not send it (OpenShell's)
 * get the call ended instead, as OpenShell's gateway does.
 */
export const FORWARD_HALF_CLOSE_METADATA_KEY = "x-openshell-forward-half-close";

export interface ForwardSpec {
  /** The local address to listen on. */
  bind: string;
  /** The local port, which is also the sandbox's port for `forward start` and `--forward`. */
  port: number;
}

/**
 * Parses `[BIND:]PORT` as `ssh -L` takes it and upstream's CLI does: split on
 * the last `:`, so `::1:8080` is `::1` and 8080; no address means 127.0.0.1.
 *
 *   8080           → 127.0.0.1:8080
 *   0.0.0.0:8080   → 0.0.0.0:8080
 *   ::1:8080       → [::1]:8080
 *
 * `allowZero` (for `forward service --local`) accepts port 0: any free port.
 * Returns a message naming `flag` when the spec is not one.
 */
export function parseForwardSpec(
  flag: string,
  value: string,
  options: { allowZero?: boolean } = {},
): ForwardSpec | string {
  const trimmed = value.trim();
  const colon = trimmed.lastIndexOf(":");
  const bindPart = colon < 0 ? "" : trimmed.slice(0, colon);
  const portPart = colon < 0 ? trimmed : trimmed.slice(colon + 1);
  if (!/^\d{1,5}$/.test(portPart)) {
    return `${flag} ${value}: invalid forward spec: expected [bind_address:]port, e.g. 8080 or 0.0.0.0:8080`;
  }
  const port = Number(portPart);
  const low = options.allowZero ? 0 : 1;
  if (port < low || port > 65535) {
    return `${flag} ${value}: port must be between ${low} and 65535`;
  }
  if (colon >= 0 && bindPart === "") {
    return `${flag} ${value}: the bind address before ':' is empty; give one (e.g. 127.0.0.1:${port}) or the port alone`;
  }
  const bind = bindPart.startsWith("[") && bindPart.endsWith("]") ? bindPart.slice(1, -1) : bindPart;
  if (bind !== "" && !/^[A-Za-z0-9.:-]{1,253}$/.test(bind)) {
    return `${flag} ${value}: bind address ${JSON.stringify(bind)} is not a host name or IP address`;
  }
  return { bind: bind || DEFAULT_FORWARD_BIND, port };
}

/** A port inside a sandbox: a whole number from 1 to 65535, or a message naming `what`. */
export function checkTargetPort(what: string, port: number): string | undefined {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return `${what} ${port}: port must be a whole number between 1 and 65535`;
  }
  return undefined;
}

/** `host:port` with an IPv6 address in brackets. */
export function hostPort(host: string, port: number): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The address to show a user for a listener on `bind`: a wildcard bind is reached at localhost. */
export function forwardUrl(bind: string, port: number): string {
  const host = bind === "0.0.0.0" || bind === "::" || bind === "0" ? "localhost" : bind;
  return `http://${hostPort(host, port)}/`;
}

/**
 * The loopback address `host` names, or undefined when it is not one:
 * `localhost`, 127.0.0.0/8, `::1` (bracketed or not), and IPv4-mapped
 * 127.x. Only these are reachable through a forward: a sandbox's own
 * loopback, never a host beyond it.
 */
export function loopbackAddress(host: string): string | undefined {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  if (bare === "localhost") return "127.0.0.1";
  if (bare === "::1") return "::1";
  const v4 = bare.startsWith("::ffff:") ? bare.slice("::ffff:".length) : bare;
  if (isIPv4(v4) && v4.startsWith("127.")) return v4;
  return undefined;
}
