// `gateway start|stop|list|select|add|remove` and `status`.

import { existsSync } from "node:fs";
import { resolve } from "node:path";
import {
  DEFAULT_GATEWAY_NAME,
  type GatewayMetadata,
  gatewayStateDir,
  listGatewayNames,
  readActiveGateway,
  readMetadata,
  removeGatewayConfig,
  validateGatewayName,
  writeActiveGateway,
  writeMetadata,
} from "../core/config.js";
import { OpenShellError, usageError } from "../core/errors.js";
import { ServiceStatus } from "../gen/openshell.js";
import { connectGateway, mapGrpcError, parseEndpoint, unary } from "../transport/grpc.js";
import type { CommandContext } from "./context.js";
import { localGatewayInfo, startLocalGateway, targetFor } from "./gateways.js";
import { type OutputFormat, printDocument } from "./present.js";
import { table } from "./ui.js";

export interface GatewayStartOptions {
  name: string;
  bind: string;
  port: number;
  foreground: boolean;
}

function isLoopback(host: string): boolean {
  return host === "127.0.0.1" || host === "::1" || host === "localhost" || /^127\./.test(host);
}

export async function gatewayStart(ctx: CommandContext, options: GatewayStartOptions): Promise<number> {
  validateGatewayName(options.name);
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw usageError(`--port ${options.port}: expected a port from 0 to 65535 (0 picks a free one)`);
  }
  if (!isLoopback(options.bind)) {
    throw new OpenShellError(
      "invalid_input",
      `--bind ${options.bind}: a gateway reachable from the network needs TLS`,
      {
        hint: "Add --tls (generates a CA and certificate), or --tls-cert/--tls-key, or bind to 127.0.0.1.",
      },
    );
  }
  if (options.foreground) {
    const { runForeground } = await import("./gateway-foreground.js");
    return runForeground(ctx, options);
  }
  const result = await startLocalGateway({ name: options.name, bind: options.bind, port: options.port });
  if (result.alreadyRunning) {
    ctx.ui.success(
      `Gateway '${options.name}' is already running at ${result.metadata.gateway_endpoint} (pid ${result.info.pid})`,
    );
  } else {
    ctx.ui.success(
      `Gateway '${options.name}' started at ${result.metadata.gateway_endpoint} (pid ${result.info.pid})`,
    );
  }
  ctx.ui.note(`  ${ctx.ui.err.dim("Logs:")} ${resolve(gatewayStateDir(options.name), "gateway.log")}`);
  return 0;
}

export async function gatewayStop(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  const name = options.name ?? ctx.globals.gateway ?? readActiveGateway() ?? DEFAULT_GATEWAY_NAME;
  validateGatewayName(name);
  const info = localGatewayInfo(name);
  if (!info) {
    ctx.ui.note(`Gateway '${name}' is not running.`);
    return 0;
  }
  process.kill(info.pid, "SIGTERM");
  const deadline = Date.now() + 30_000;
  // The gateway stops its sandboxes first; wait for the process to be gone.
  while (localGatewayInfo(name) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (localGatewayInfo(name)) {
    throw new OpenShellError("timeout", `gateway '${name}' (pid ${info.pid}) did not stop within 30s`);
  }
  ctx.ui.success(`Gateway '${name}' stopped`);
  return 0;
}

function gatewayType(metadata: GatewayMetadata): string {
  return metadata.is_remote ? "remote" : "local";
}

function gatewayAuth(metadata: GatewayMetadata): string {
  if (metadata.auth_mode) return metadata.auth_mode;
  return metadata.gateway_endpoint.startsWith("http://") ? "plaintext" : "mtls";
}

export async function gatewayList(ctx: CommandContext, options: { output: OutputFormat }): Promise<number> {
  const active = ctx.globals.gateway ?? process.env.OPENSHELL_GATEWAY ?? readActiveGateway();
  const rows = listGatewayNames().map((name) => ({ name, metadata: readMetadata(name)! }));
  if (options.output !== "table") {
    printDocument(
      ctx.ui,
      options.output,
      rows.map(({ name, metadata }) => ({
        name,
        endpoint: metadata.gateway_endpoint,
        type: gatewayType(metadata),
        source: "user",
        auth: gatewayAuth(metadata),
        active: name === active,
        is_remote: metadata.is_remote,
        running: metadata.local ? localGatewayInfo(name) !== undefined : null,
      })),
    );
    return 0;
  }
  if (rows.length === 0) {
    ctx.ui.note("No gateways found.");
    ctx.ui.hint(
      "Start the local one with `openshell gateway start`, or register one with `openshell gateway add <endpoint>`.",
    );
    return 0;
  }
  const lines = table(
    ["", "NAME", "ENDPOINT", "TYPE", "AUTH", "STATE"],
    rows.map(({ name, metadata }) => [
      name === active ? "*" : "",
      name,
      metadata.gateway_endpoint,
      gatewayType(metadata),
      gatewayAuth(metadata),
      metadata.local ? (localGatewayInfo(name) ? "running" : "stopped") : "-",
    ]),
    (h) => ctx.ui.out.bold(h),
  );
  for (const line of lines) ctx.ui.data(line.startsWith("*") ? ctx.ui.out.green(line) : line);
  return 0;
}

export async function gatewaySelect(
  ctx: CommandContext,
  options: { name?: string | undefined },
): Promise<number> {
  if (!options.name) {
    await gatewayList(ctx, { output: "table" });
    if (listGatewayNames().length > 0) ctx.ui.hint("Select a gateway with: openshell gateway select <name>");
    return 0;
  }
  validateGatewayName(options.name);
  if (!readMetadata(options.name)) {
    throw new OpenShellError("not_found", `No gateway metadata found for '${options.name}'.`, {
      hint: "List gateways with `openshell gateway list`, or register one with `openshell gateway add <endpoint>`.",
    });
  }
  writeActiveGateway(options.name);
  ctx.ui.success(`Active gateway set to '${options.name}'`);
  const env = process.env.OPENSHELL_GATEWAY?.trim();
  if (env && env !== options.name) {
    ctx.ui.warn(`OPENSHELL_GATEWAY=${env} is set and will override this selection.`);
  }
  return 0;
}

export interface GatewayAddOptions {
  endpoint: string;
  name?: string | undefined;
  ca?: string | undefined;
  tokenFile?: string | undefined;
  clientCert?: string | undefined;
  clientKey?: string | undefined;
}

export async function gatewayAdd(ctx: CommandContext, options: GatewayAddOptions): Promise<number> {
  let endpoint = options.endpoint.trim();
  if (!/^[a-z]+:\/\//i.test(endpoint)) endpoint = `https://${endpoint}`;
  const { host, port, tls } = parseEndpoint(endpoint);
  endpoint = endpoint.replace(/\/+$/, "");
  const name = options.name ?? (isLoopback(host) ? "openshell" : host);
  validateGatewayName(name);
  if (readMetadata(name)) {
    throw new OpenShellError("already_exists", `Gateway '${name}' already exists.`, {
      hint: `Remove it first with: openshell gateway remove ${name}\nOr choose a different name with: --name <name>`,
    });
  }
  for (const [flag, path] of [
    ["--ca", options.ca],
    ["--token-file", options.tokenFile],
    ["--client-cert", options.clientCert],
    ["--client-key", options.clientKey],
  ] as const) {
    if (path && !existsSync(path)) throw new OpenShellError("invalid_input", `${flag} ${path}: no such file`);
  }
  if (!tls && (options.ca || options.clientCert)) {
    throw usageError(`${endpoint}: --ca and --client-cert need an https:// endpoint`);
  }
  const metadata: GatewayMetadata = {
    name,
    gateway_endpoint: endpoint,
    is_remote: !isLoopback(host),
    gateway_port: port,
    auth_mode: options.clientCert ? "mtls" : tls ? "tls" : "plaintext",
    ...(options.ca ? { ca_file: resolve(options.ca) } : {}),
    ...(options.tokenFile ? { token_file: resolve(options.tokenFile) } : {}),
    ...(options.clientCert ? { client_cert_file: resolve(options.clientCert) } : {}),
    ...(options.clientKey ? { client_key_file: resolve(options.clientKey) } : {}),
  };
  writeMetadata(metadata);
  writeActiveGateway(name);
  ctx.ui.success(`Gateway '${name}' added and set as active`);
  ctx.ui.note(`  ${ctx.ui.err.dim("Endpoint:")} ${endpoint}`);
  ctx.ui.note(`  ${ctx.ui.err.dim("Type:")} ${gatewayType(metadata)}`);
  ctx.ui.note(
    `  ${ctx.ui.err.dim("Auth:")} ${gatewayAuth(metadata)}${options.tokenFile ? " + bearer token" : ""}`,
  );
  const target = targetFor(name, metadata, ctx.globals);
  const client = connectGateway(target);
  try {
    await unary(target, client.health.bind(client), {}, { deadlineMs: 5000 });
  } catch (error) {
    ctx.ui.warn(`Gateway is not reachable at ${endpoint}: ${mapGrpcError(error, target).message}`);
  } finally {
    client.close();
  }
  return 0;
}

export async function gatewayRemove(ctx: CommandContext, options: { name: string }): Promise<number> {
  validateGatewayName(options.name);
  if (!readMetadata(options.name))
    throw new OpenShellError("not_found", `Unknown gateway '${options.name}'.`);
  if (localGatewayInfo(options.name)) {
    throw new OpenShellError("failed_precondition", `gateway '${options.name}' is running`, {
      hint: `Stop it first: openshell gateway stop --name ${options.name}`,
    });
  }
  removeGatewayConfig(options.name);
  if (readActiveGateway() === options.name) {
    const { rmSync } = await import("node:fs");
    const { configRoot } = await import("../core/config.js");
    rmSync(resolve(configRoot(), "active_gateway"), { force: true });
  }
  ctx.ui.success(`Removed gateway '${options.name}'`);
  return 0;
}

export async function status(ctx: CommandContext, options: { output: OutputFormat }): Promise<number> {
  let resolved: Awaited<ReturnType<CommandContext["gateway"]>>;
  try {
    resolved = await ctx.gateway({ autoStart: false });
  } catch (error) {
    if (error instanceof OpenShellError && error.code === "no_gateway") {
      if (options.output === "table") ctx.ui.data("Gateway Status\n  No gateway configured.");
      else printDocument(ctx.ui, options.output, { status: "not_configured" });
      return 0;
    }
    throw error;
  }
  const document: Record<string, unknown> = { gateway: resolved.name, server: resolved.target.endpoint };
  try {
    const health = await resolved.call(resolved.client.health, {}, { deadlineMs: 5000 });
    document.status = health.status === ServiceStatus.SERVICE_STATUS_HEALTHY ? "connected" : "degraded";
    document.version = health.version;
    try {
      await resolved.call(resolved.client.getGatewayInfo, {}, { deadlineMs: 5000 });
      document.authentication = { status: resolved.target.token ? "authenticated" : "not_required" };
    } catch (error) {
      const mapped = error instanceof OpenShellError ? error : mapGrpcError(error, resolved.target);
      document.authentication =
        mapped.code === "not_authorized"
          ? { status: "failed", error: mapped.message }
          : { status: "unverified", error: mapped.message };
    }
  } catch (error) {
    document.status = "disconnected";
    document.error = (error as Error).message;
  }
  if (options.output !== "table") {
    printDocument(ctx.ui, options.output, document);
    return document.status === "connected" ? 0 : 1;
  }
  const label = (t: string): string => ctx.ui.out.dim(t);
  ctx.ui.data(ctx.ui.out.cyan.bold("Gateway Status"));
  ctx.ui.data(`  ${label("Gateway:")} ${resolved.name}`);
  ctx.ui.data(`  ${label("Server:")} ${resolved.target.endpoint}`);
  const state = String(document.status);
  ctx.ui.data(
    `  ${label("Status:")} ${state === "connected" ? ctx.ui.out.green("Connected") : ctx.ui.out.red(state === "disconnected" ? "Disconnected" : state)}`,
  );
  if (document.version) ctx.ui.data(`  ${label("Version:")} ${String(document.version)}`);
  const auth = document.authentication as { status: string; error?: string } | undefined;
  if (auth) ctx.ui.data(`  ${label("Auth:")} ${auth.status}${auth.error ? ` (${auth.error})` : ""}`);
  if (document.error) ctx.ui.data(`  ${label("Error:")} ${String(document.error)}`);
  return state === "connected" && auth?.status !== "failed" ? 0 : 1;
}
