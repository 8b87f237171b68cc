// What `gateway start|stop|list|select|add|remove` and `status` do.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { OpenShell } from "../../api/client.js";
import { parseEndpoint } from "../../api/config.js";
import { NotAuthorizedError } from "../../api/errors.js";
import { OpenShellError, usageError } from "../../core/errors.js";
import { gatewayTlsFiles } from "../../gateway/tls.js";
import {
  DEFAULT_GATEWAY_NAME,
  DEFAULT_GATEWAY_PORT,
  DEFAULT_WORKSPACE,
  ensurePrivateDir,
  type GatewayMetadata,
  gatewayStateDir,
  gatewayTokenPath,
  isLoopbackHost,
  isWildcardBind,
  type LocalGatewaySettings,
  listGatewayNames,
  readActiveGateway,
  readMetadata,
  readToken,
  removeGatewayConfig,
  validateGatewayName,
  writeActiveGateway,
  writeMetadata,
} from "../../host/config.js";
import type { CommandContext } from "../context.js";
import {
  appRoot,
  checkTlsFiles,
  ensureGatewayToken,
  insecureWarning,
  localGatewayInfo,
  localMetadata,
  pemCertificates,
  prepareStart,
  resolveStartSettings,
  type StartFlags,
  startLocalGateway,
  targetFor,
} from "../gateways.js";
import { type OutputFormat, printDocument } from "../output/present.js";
import { table } from "../output/ui.js";

export interface GatewayStartOptions extends StartFlags {
  name: string;
  port?: number | undefined;
  foreground: boolean;
}

function sameTls(a: LocalGatewaySettings, b: LocalGatewaySettings): boolean {
  const mode = (s: LocalGatewaySettings): string =>
    s.tls_generated ? "generated" : s.tls_cert_file ? `given:${s.tls_cert_file}:${s.tls_key_file}` : "none";
  return mode(a) === mode(b) && a.client_ca_file === b.client_ca_file;
}

/** Where a CLI on another machine dials this gateway. */
function remoteHost(settings: LocalGatewaySettings, metadata: GatewayMetadata, names: string[]): string {
  const bind = settings.bind;
  if (!isWildcardBind(bind)) return bind;
  const external = names.filter((n) => !isLoopbackHost(n) && n !== "localhost");
  return (
    external.find((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n)) ??
    external.find((n) => n.includes(":")) ??
    external[0] ??
    parseEndpoint(metadata.gateway_endpoint).host
  );
}

/** The names a certificate file is valid for (its SubjectAltName entries). */
function certificateNamesOf(path: string): string[] {
  try {
    const [leaf] = pemCertificates("--tls-cert", path);
    return (
      (leaf!.subjectAltName ?? "")
        .split(", ")
        .map((entry) => entry.replace(/^(DNS|IP Address):/, ""))
        .filter((entry) => entry !== "")
        // node spells IPv6 SANs in full (0:0:0:0:0:0:0:1); a URL host is the usual short form.
        .map((entry) => (entry.includes(":") ? new URL(`http://[${entry}]`).hostname.slice(1, -1) : entry))
    );
  } catch {
    return [];
  }
}

/** What a TLS gateway's owner needs to let another CLI in (never the token itself). */
function printAccess(ctx: CommandContext, name: string, metadata: GatewayMetadata, newCa: boolean): void {
  const settings = metadata.local_settings;
  if (!settings?.tls_cert_file) return;
  const label = (t: string): string => ctx.ui.err.dim(t);
  const names = certificateNamesOf(settings.tls_cert_file);
  const ca = settings.tls_generated ? gatewayTlsFiles(name).caFile : metadata.ca_file;
  ctx.ui.note(
    `  ${label("TLS:")} certificate ${settings.tls_cert_file} for ${names.join(", ") || "(no names)"}${ca ? `, CA ${ca}${newCa ? " (new)" : ""}` : ""}`,
  );
  if (settings.client_ca_file) {
    ctx.ui.note(`  ${label("Client certificates:")} required, signed by ${settings.client_ca_file}`);
  }
  const local = parseEndpoint(metadata.gateway_endpoint);
  if (!settings.tls_generated && !names.includes(local.host)) {
    ctx.ui.warn(
      `The certificate does not name ${local.host}: this machine's CLI cannot verify it at ${metadata.gateway_endpoint}.`,
    );
  }
  const port = local.port;
  const host = remoteHost(settings, metadata, names);
  const endpoint = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
  const command = [
    "openshell gateway add",
    endpoint,
    `--ca ${ca ?? "<CA that signed the certificate>"}`,
    `--token-file ${gatewayTokenPath(name)}`,
    ...(settings.client_ca_file ? ["--client-cert <client.crt> --client-key <client.key>"] : []),
  ].join(" ");
  ctx.ui.note(
    `  ${label("Another CLI:")} copy the CA certificate and the token file to it (the token privately: it is the key to this gateway), then run there:`,
  );
  ctx.ui.note(`    ${command}`);
}

/**
 * `gateway start --foreground`: the gateway runs in this process, for service
 * managers (systemd, supervisord) that want to own it. It is hosted as the
 * background one is (gateway/host.ts), recorded in the metadata so the CLI
 * finds it, and stops on SIGTERM or Ctrl-C (the command's abort signal).
 */
async function runForeground(
  ctx: CommandContext,
  options: { name: string; port: number; settings: LocalGatewaySettings },
): Promise<number> {
  const running = localGatewayInfo(options.name);
  if (running) {
    ctx.ui.warn(`Gateway '${options.name}' is already running (pid ${running.pid}).`);
    return 1;
  }
  const stateDir = gatewayStateDir(options.name);
  ensurePrivateDir(stateDir);
  ensureGatewayToken(options.name);
  const { settings } = await prepareStart(options.name, options.settings);
  const { driverChoice, hostGateway } = await import("../../gateway/host.js");
  const hosted = await hostGateway({
    name: options.name,
    stateDir,
    bind: settings.bind,
    port: options.port,
    appRoot: appRoot(),
    tokenFile: gatewayTokenPath(options.name),
    tlsCertFile: settings.tls_cert_file,
    tlsKeyFile: settings.tls_key_file,
    // The gateway's own CA too: it signed its owner's client certificate.
    clientCaFiles: settings.client_ca_file
      ? [settings.client_ca_file, gatewayTlsFiles(options.name).caFile]
      : undefined,
    sshSessionTtlSecs: settings.ssh_session_ttl_secs,
    logMaxSizeMib: settings.log_max_size_mib,
    logMaxFiles: settings.log_max_files,
    driver: driverChoice({
      driver: settings.driver,
      kubeconfig: settings.kubeconfig,
      context: settings.kube_context,
      namespace: settings.kube_namespace,
      caFile: settings.tls_generated ? gatewayTlsFiles(options.name).caFile : settings.tls_cert_file,
    }),
    logError: (entry) => ctx.io.stderr.write(`${new Date().toISOString()} ERROR ${entry}\n`),
  });
  const metadata = localMetadata(options.name, settings, hosted.info.port, readMetadata(options.name));
  writeMetadata(metadata);
  writeActiveGateway(options.name);
  ctx.ui.success(
    `Gateway '${options.name}' listening at ${metadata.gateway_endpoint} (foreground; Ctrl-C stops it)`,
  );
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off("SIGTERM", stop);
      ctx.signal.removeEventListener("abort", stop);
      resolve();
    };
    process.once("SIGTERM", stop);
    if (ctx.signal.aborted) stop();
    else ctx.signal.addEventListener("abort", stop);
  });
  await hosted.stop();
  ctx.ui.success(`Gateway '${options.name}' stopped`);
  return 0;
}

export async function gatewayStart(ctx: CommandContext, options: GatewayStartOptions): Promise<number> {
  validateGatewayName(options.name);
  if (
    options.port !== undefined &&
    (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535)
  ) {
    throw usageError(`--port ${options.port}: expected a port from 0 to 65535 (0 picks a free one)`);
  }
  const previous = readMetadata(options.name);
  const recorded = previous?.local ? previous.local_settings : undefined;
  const settings = resolveStartSettings(options, recorded);
  const port =
    options.port ?? (previous?.local && previous.gateway_port ? previous.gateway_port : DEFAULT_GATEWAY_PORT);
  if (options.foreground) return runForeground(ctx, { name: options.name, port, settings });
  const running = localGatewayInfo(options.name);
  if (!running) checkTlsFiles(settings);
  const result = await startLocalGateway({ name: options.name, port, settings });
  const metadata = result.metadata;
  if (result.alreadyRunning) {
    ctx.ui.success(
      `Gateway '${options.name}' is already running at ${metadata.gateway_endpoint} (pid ${result.info.pid})`,
    );
    const current = metadata.local_settings ?? { bind: settings.bind };
    if (
      current.bind !== settings.bind ||
      !sameTls(current, settings) ||
      current.ssh_session_ttl_secs !== settings.ssh_session_ttl_secs ||
      current.log_max_size_mib !== settings.log_max_size_mib ||
      current.log_max_files !== settings.log_max_files ||
      current.driver !== settings.driver ||
      (options.port !== undefined && options.port !== 0 && options.port !== result.info.port)
    ) {
      ctx.ui.warn(
        `It runs with other settings than these; stop it first to apply them: openshell gateway stop${options.name === DEFAULT_GATEWAY_NAME ? "" : ` --name ${options.name}`}`,
      );
    }
  } else {
    ctx.ui.success(
      `Gateway '${options.name}' started at ${metadata.gateway_endpoint} (pid ${result.info.pid})`,
    );
  }
  ctx.ui.note(`  ${ctx.ui.err.dim("Logs:")} ${resolve(gatewayStateDir(options.name), "gateway.log")}`);
  printAccess(ctx, options.name, metadata, result.generated?.newCa === true);
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
  // Its sandboxes keep running (the next start adopts them); wait for the process to be gone.
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
  const settings = metadata.local ? metadata.local_settings : undefined;
  if (settings?.tls_cert_file) return `bearer+${settings.client_ca_file ? "mtls" : "tls"}`;
  if (metadata.auth_mode) return metadata.auth_mode;
  return metadata.gateway_endpoint.startsWith("http://") ? "plaintext" : "mtls";
}

export async function gatewayList(ctx: CommandContext, options: { output: OutputFormat }): Promise<number> {
  const active = ctx.globals.gateway ?? ctx.env.OPENSHELL_GATEWAY ?? readActiveGateway();
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
  const env = ctx.env.OPENSHELL_GATEWAY?.trim();
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

/** No token, a wrong one (a permission denied means we are known but not an admin). */
function refusedCredentials(error: unknown): error is NotAuthorizedError {
  return error instanceof NotAuthorizedError && !error.permissionDenied;
}

/** Checks a file given to `gateway add` can be read by this user, naming the flag. */
function checkReadable(flag: string, path: string): void {
  try {
    readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message;
    throw new OpenShellError("invalid_input", `${flag} ${path}: ${reason}`, {
      ...(code === "EACCES" && flag === "--token-file"
        ? { hint: "A gateway's token is readable by its owner only; ask the owner for a copy you can read." }
        : {}),
    });
  }
}

export async function gatewayAdd(ctx: CommandContext, options: GatewayAddOptions): Promise<number> {
  let endpoint = options.endpoint.trim();
  if (!/^[a-z]+:\/\//i.test(endpoint)) endpoint = `https://${endpoint}`;
  const { host, port, tls } = parseEndpoint(endpoint);
  endpoint = endpoint.replace(/\/+$/, "");
  const name = options.name ?? (isLoopbackHost(host) ? "openshell" : host);
  validateGatewayName(name);
  if (readMetadata(name)) {
    throw new OpenShellError("already_exists", `Gateway '${name}' already exists.`, {
      hint: `Remove it first with: openshell gateway remove ${name}\nOr choose a different name with: --name <name>`,
    });
  }
  if ((options.clientCert === undefined) !== (options.clientKey === undefined)) {
    throw usageError("--client-cert and --client-key go together: give both (PEM certificate and its key)");
  }
  if (!tls && (options.ca || options.clientCert)) {
    throw usageError(`${endpoint}: --ca and --client-cert need an https:// endpoint`);
  }
  for (const [flag, path] of [
    ["--ca", options.ca],
    ["--token-file", options.tokenFile],
    ["--client-cert", options.clientCert],
    ["--client-key", options.clientKey],
  ] as const) {
    if (path) checkReadable(flag, path);
  }
  if (options.ca) pemCertificates("--ca", options.ca);
  if (options.clientCert) pemCertificates("--client-cert", options.clientCert);
  if (options.tokenFile && readToken(resolve(options.tokenFile)) === undefined) {
    throw new OpenShellError("invalid_input", `--token-file ${options.tokenFile}: the file is empty`);
  }
  const metadata: GatewayMetadata = {
    name,
    gateway_endpoint: endpoint,
    is_remote: !isLoopbackHost(host),
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
  if (!tls && options.tokenFile && !isLoopbackHost(host)) {
    ctx.ui.warn(`${endpoint} is plaintext: the token crosses the network readable by anyone on the way.`);
  }
  const target = targetFor(name, metadata, ctx.globals, ctx.env);
  const warning = insecureWarning(target);
  if (warning) ctx.ui.warn(warning);
  // The gateway is probed before anything uses it: a warning, never a failure of `add`.
  const api = OpenShell.forResolved({ name, metadata, target }, DEFAULT_WORKSPACE, ctx.env);
  try {
    await api.health({ timeoutMs: 5000, signal: ctx.signal });
    try {
      await api.info({ timeoutMs: 5000, signal: ctx.signal });
    } catch (error) {
      if (refusedCredentials(error)) {
        ctx.ui.warn(`Gateway is reachable but does not accept these credentials: ${error.message}`);
        if (error.hint) ctx.ui.hint(error.hint);
      }
    }
  } catch (error) {
    const mapped = error instanceof OpenShellError ? error : undefined;
    ctx.ui.warn(`Gateway is not reachable at ${endpoint}: ${mapped?.message ?? (error as Error).message}`);
    if (mapped?.hint) ctx.ui.hint(mapped.hint);
  } finally {
    api.close();
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
    const { configRoot } = await import("../../host/config.js");
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
  let hint: string | undefined;
  const api = await ctx.api({ autoStart: false });
  try {
    const health = await api.health({ timeoutMs: 5000, signal: ctx.signal });
    document.status = health.healthy ? "connected" : "degraded";
    document.version = health.version;
    try {
      await api.info({ timeoutMs: 5000, signal: ctx.signal });
      document.authentication = { status: resolved.target.token ? "authenticated" : "not_required" };
    } catch (error) {
      const failure = error as OpenShellError;
      if (refusedCredentials(error)) {
        document.authentication = { status: "failed", error: error.message };
        hint = error.hint;
      } else if (error instanceof NotAuthorizedError) {
        // As upstream: let in, but GetGatewayInfo is for admins.
        document.authentication = { status: "authenticated" };
      } else {
        document.authentication = { status: "unverified", error: failure.message };
        hint = failure.hint;
      }
    }
  } catch (error) {
    // Health needs no credential: failing it means the gateway is down or unreachable, not refusing us.
    document.status = "disconnected";
    document.error = (error as Error).message;
    hint = error instanceof OpenShellError ? error.hint : undefined;
  }
  const authFailed = (document.authentication as { status?: string } | undefined)?.status === "failed";
  if (options.output !== "table") {
    printDocument(ctx.ui, options.output, document);
    return document.status === "connected" && !authFailed ? 0 : 1;
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
  if (hint) ctx.ui.hint(hint);
  return state === "connected" && !authFailed ? 0 : 1;
}
