// `gateway start --foreground`: the gateway runs in this process, for service
// managers (systemd, supervisord) that want to own it. It records itself like
// a background gateway so the CLI finds it, and stops on SIGTERM or Ctrl-C.

import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ensurePrivateDir, gatewayStateDir, writeActiveGateway, writeMetadata } from "../core/config.js";
import { VERSION } from "../core/version.js";
import { startGateway } from "../gateway/server.js";
import type { CommandContext } from "./context.js";
import type { GatewayStartOptions } from "./gateway.js";
import { appRoot, ensureGatewayToken, localGatewayInfo } from "./gateways.js";

export async function runForeground(ctx: CommandContext, options: GatewayStartOptions): Promise<number> {
  const running = localGatewayInfo(options.name);
  if (running) {
    ctx.ui.warn(`Gateway '${options.name}' is already running (pid ${running.pid}).`);
    return 1;
  }
  const stateDir = gatewayStateDir(options.name);
  ensurePrivateDir(stateDir);
  const token = ensureGatewayToken(options.name);
  const gateway = await startGateway({
    name: options.name,
    stateDir,
    bind: options.bind,
    port: options.port,
    version: VERSION,
    appRoot: appRoot(),
    token,
  });
  const info = { pid: process.pid, port: gateway.port, endpoint: gateway.endpoint, version: VERSION };
  writeFileSync(join(stateDir, "gateway.pid"), `${process.pid}\n`, { mode: 0o600 });
  writeFileSync(join(stateDir, "gateway.json"), `${JSON.stringify(info)}\n`, { mode: 0o600 });
  writeMetadata({
    name: options.name,
    gateway_endpoint: gateway.endpoint,
    is_remote: false,
    gateway_port: gateway.port,
    auth_mode: "bearer",
    local: true,
  });
  writeActiveGateway(options.name);
  ctx.ui.success(`Gateway '${options.name}' listening at ${gateway.endpoint} (foreground; Ctrl-C stops it)`);
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await gateway.close();
  rmSync(join(stateDir, "gateway.pid"), { force: true });
  rmSync(join(stateDir, "gateway.json"), { force: true });
  ctx.ui.success(`Gateway '${options.name}' stopped`);
  return 0;
}
