// The gateway process. `openshell gateway start` runs it in the background
// (or in the foreground with --foreground, for service managers); it prints
// one JSON line `{"ready":true,...}` on stdout once it listens, writes its
// pid and endpoint into its state directory, and stops cleanly on SIGTERM.

import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { containUncaughtErrors } from "../host/last-resort.js";
import { processAlive } from "../host/process.js";
import { VERSION } from "../host/version.js";
import { parseDenyList, SECCOMP_DENY_ENV } from "../runtime/contract.js";
import { LOG_FILES_MAX, logFileLimits } from "./bus.js";
import { startGateway } from "./server.js";

export interface GatewayRuntimeInfo {
  pid: number;
  port: number;
  endpoint: string;
  version: string;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      name: { type: "string", default: "local" },
      "state-dir": { type: "string" },
      bind: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "17670" },
      "token-file": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      // Repeatable: client certificates signed by any of these CAs are accepted.
      "client-ca": { type: "string", multiple: true },
      "ssh-session-ttl": { type: "string" },
      "log-max-size": { type: "string" },
      "log-max-files": { type: "string" },
    },
  });
  const stateDir = values["state-dir"];
  if (!stateDir) throw new Error("--state-dir is required");
  const pidFile = join(stateDir, "gateway.pid");
  try {
    const pid = Number(readFileSync(pidFile, "utf8").trim());
    if (pid > 0 && pid !== process.pid && processAlive(pid)) {
      throw new Error(`gateway '${values.name}' is already running (pid ${pid})`);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }

  // Checked here so a mistyped list stops the start, not each sandbox later.
  parseDenyList(process.env[SECCOMP_DENY_ENV]);
  const appRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");
  // The token is read from its file (never passed on the command line, where `ps` would show it).
  const token = values["token-file"] ? readFileSync(values["token-file"], "utf8").trim() : undefined;
  if (values["token-file"] && !token) throw new Error(`--token-file ${values["token-file"]} is empty`);
  if ((values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)) {
    throw new Error("--tls-cert and --tls-key go together");
  }
  if (values["client-ca"] !== undefined && values["tls-cert"] === undefined) {
    throw new Error("--client-ca needs --tls-cert and --tls-key");
  }
  const ttlText = values["ssh-session-ttl"];
  if (ttlText !== undefined && !/^[1-9]\d*$/.test(ttlText)) {
    throw new Error(`--ssh-session-ttl ${ttlText}: expected a whole number of seconds, at least 1`);
  }
  const logNumber = (flag: "log-max-size" | "log-max-files", max: number): number | undefined => {
    const text = values[flag];
    if (text === undefined) return undefined;
    if (!/^[1-9]\d*$/.test(text) || Number(text) > max) {
      throw new Error(`--${flag} ${text}: expected a whole number from 1 to ${max}`);
    }
    return Number(text);
  };
  const logLimits = logFileLimits(logNumber("log-max-size", 1024), logNumber("log-max-files", LOG_FILES_MAX));
  const tls =
    values["tls-cert"] && values["tls-key"]
      ? {
          cert: readFileSync(values["tls-cert"]),
          key: readFileSync(values["tls-key"]),
          clientCa: values["client-ca"]
            ? Buffer.concat(
                values["client-ca"].map((file) => Buffer.concat([readFileSync(file), Buffer.from("\n")])),
              )
            : undefined,
        }
      : undefined;
  const gateway = await startGateway({
    name: values.name!,
    stateDir,
    bind: values.bind!,
    port: Number(values.port),
    version: VERSION,
    appRoot,
    token,
    tls,
    ...(ttlText !== undefined ? { sshSessionTtlSecs: Number(ttlText) } : {}),
    logLimits,
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
    `SSH sessions expire after ${values["ssh-session-ttl"] ?? 86_400}s`,
  ].join(", ");
  process.stderr.write(
    `${new Date().toISOString()} INFO gateway '${values.name}' listening on ${gateway.endpoint} (${security})\n`,
  );
  writeFileSync(pidFile, `${process.pid}\n`, { mode: 0o600 });
  writeFileSync(join(stateDir, "gateway.json"), `${JSON.stringify(info)}\n`, { mode: 0o600 });
  process.stdout.write(`${JSON.stringify({ ready: true, ...info })}\n`);
  // From here on an error in one session must not end every sandbox (see host/last-resort.ts).
  containUncaughtErrors("the gateway", (entry) =>
    process.stderr.write(`${new Date().toISOString()} ERROR ${entry}\n`),
  );

  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    gateway
      .close()
      .catch((error) => process.stderr.write(`error while stopping: ${(error as Error).message}\n`))
      .finally(() => {
        rmSync(pidFile, { force: true });
        rmSync(join(stateDir, "gateway.json"), { force: true });
        process.exit(0);
      });
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.on("SIGHUP", () => {});
}

main().catch((error: unknown) => {
  process.stderr.write(`openshell gateway: ${error instanceof Error ? error.message : String(error)}\n`);
  process.stdout.write(
    `${JSON.stringify({ ready: false, error: error instanceof Error ? error.message : String(error) })}\n`,
  );
  process.exit(1);
});
