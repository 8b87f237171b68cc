// The gateway process. `openshell gateway start` runs it in the background;
// it prints one JSON line `{"ready":true,...}` on stdout once it listens (or
// `{"ready":false,"error":...}` when it cannot start), and stops cleanly on
// SIGTERM. Hosting itself (the record, the containment of stray errors) is
// host.ts, shared with `gateway start --foreground`.

import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { LOG_FILES_MAX } from "./bus.js";
import { driverChoice, hostGateway } from "./host.js";

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
      driver: { type: "string", default: "local" },
      kubeconfig: { type: "string" },
      "kube-context": { type: "string" },
      "kube-namespace": { type: "string" },
      // The CA certificate (PEM) that pods of the Kubernetes driver trust for this gateway.
      "gateway-ca": { type: "string" },
    },
  });
  const stateDir = values["state-dir"];
  if (!stateDir) throw new Error("--state-dir is required");
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
  const name = values.name ?? "local";
  const hosted = await hostGateway({
    name,
    stateDir,
    bind: values.bind ?? "127.0.0.1",
    port: Number(values.port),
    appRoot: resolve(dirname(fileURLToPath(import.meta.url)), ".."),
    tokenFile: values["token-file"],
    tlsCertFile: values["tls-cert"],
    tlsKeyFile: values["tls-key"],
    clientCaFiles: values["client-ca"],
    sshSessionTtlSecs: ttlText === undefined ? undefined : Number(ttlText),
    logMaxSizeMib: logNumber("log-max-size", 1024),
    logMaxFiles: logNumber("log-max-files", LOG_FILES_MAX),
    driver: driverChoice({
      driver: values.driver,
      kubeconfig: values.kubeconfig,
      context: values["kube-context"],
      namespace: values["kube-namespace"],
      caFile: values["gateway-ca"] ?? values["tls-cert"],
    }),
    logError: (entry) => process.stderr.write(`${new Date().toISOString()} ERROR ${entry}\n`),
  });
  process.stderr.write(
    `${new Date().toISOString()} INFO gateway '${name}' listening on ${hosted.info.endpoint} (${hosted.security})\n`,
  );
  process.stdout.write(`${JSON.stringify({ ready: true, ...hosted.info })}\n`);

  const stop = (): void => {
    hosted
      .stop()
      .catch((error) => process.stderr.write(`error while stopping: ${(error as Error).message}\n`))
      .finally(() => process.exit(0));
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
