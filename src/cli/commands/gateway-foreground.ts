// `gateway start --foreground`: the gateway runs in this process, for service
// managers (systemd, supervisord) that want to own it. It records itself like
// a background gateway so the CLI finds it, and stops on SIGTERM or Ctrl-C.

import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { logFileLimits } from "../../gateway/bus.js";
import { startGateway } from "../../gateway/server.js";
import { gatewayTlsFiles } from "../../gateway/tls.js";
import {
  ensurePrivateDir,
  gatewayStateDir,
  type LocalGatewaySettings,
  readMetadata,
  writeActiveGateway,
  writeMetadata,
} from "../../host/config.js";
import { containUncaughtErrors } from "../../host/last-resort.js";
import { VERSION } from "../../host/version.js";
import type { CommandContext } from "./context.js";
import { appRoot, ensureGatewayToken, localGatewayInfo, localMetadata, prepareStart } from "./gateways.js";

export async function runForeground(
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
  const token = ensureGatewayToken(options.name);
  const { settings } = await prepareStart(options.name, options.settings);
  const gateway = await startGateway({
    name: options.name,
    stateDir,
    bind: settings.bind,
    port: options.port,
    version: VERSION,
    appRoot: appRoot(),
    token,
    tls:
      settings.tls_cert_file && settings.tls_key_file
        ? {
            cert: readFileSync(settings.tls_cert_file),
            key: readFileSync(settings.tls_key_file),
            // The gateway's own CA too: it signed its owner's client certificate.
            clientCa: settings.client_ca_file
              ? Buffer.concat([
                  readFileSync(settings.client_ca_file),
                  Buffer.from("\n"),
                  readFileSync(gatewayTlsFiles(options.name).caFile),
                ])
              : undefined,
          }
        : undefined,
    ...(settings.ssh_session_ttl_secs !== undefined
      ? { sshSessionTtlSecs: settings.ssh_session_ttl_secs }
      : {}),
    logLimits: logFileLimits(settings.log_max_size_mib, settings.log_max_files),
  });
  const info = { pid: process.pid, port: gateway.port, endpoint: gateway.endpoint, version: VERSION };
  writeFileSync(join(stateDir, "gateway.pid"), `${process.pid}\n`, { mode: 0o600 });
  writeFileSync(join(stateDir, "gateway.json"), `${JSON.stringify(info)}\n`, { mode: 0o600 });
  const metadata = localMetadata(options.name, settings, gateway.port, readMetadata(options.name));
  writeMetadata(metadata);
  writeActiveGateway(options.name);
  ctx.ui.success(
    `Gateway '${options.name}' listening at ${metadata.gateway_endpoint} (foreground; Ctrl-C stops it)`,
  );
  // An error in one session must not end every sandbox (see host/last-resort.ts).
  const release = containUncaughtErrors("the gateway", (entry) =>
    process.stderr.write(`${new Date().toISOString()} ERROR ${entry}\n`),
  );
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await gateway.close();
  release();
  rmSync(join(stateDir, "gateway.pid"), { force: true });
  rmSync(join(stateDir, "gateway.json"), { force: true });
  ctx.ui.success(`Gateway '${options.name}' stopped`);
  return 0;
}
