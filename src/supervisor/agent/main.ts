// The agent: the first process of a sandbox's pod, running as the sandbox
// user. It starts the main command, serves SSH on a Unix socket the
// supervisor relays to, and spawns every later process (exec, shell, sftp,
// upload) from inside the pod, so all of them share its namespaces.
//
// It talks to its supervisor over stdin (the configuration, one JSON line)
// and stdout (JSON lines: ready, log, exit, fatal).

import { createInterface } from "node:readline";
import type { AgentConfig, AgentMessage } from "../pod.js";
import { startEgressForwarder } from "./egress.js";
import { MainProcess } from "./main-process.js";
import { type SshServer, startSshServer } from "./ssh-server.js";

/** How long the exit report waits for attached clients to be given the exit status. */
const ATTACH_SETTLE_MS = 2000;

function send(message: AgentMessage): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function readConfig(): Promise<AgentConfig> {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) return JSON.parse(line) as AgentConfig;
  throw new Error("no configuration on stdin");
}

async function main(): Promise<void> {
  const config = await readConfig();
  process.chdir(config.workdir);
  // Before any sandboxed process exists, so the first one can already reach the network.
  if (config.egress) {
    await startEgressForwarder({
      proxySocket: config.egress.proxySocket,
      port: config.egress.port,
      log: (message) => process.stderr.write(`${message}\n`),
    });
  }
  const main = new MainProcess({
    command: config.command,
    cwd: config.workdir,
    env: { ...config.env, TERM: config.tty ? "xterm-256color" : "dumb" },
    tty: config.tty,
    startOnAttach: config.startOnAttach,
    ...(config.ttySize ? { ptySize: config.ttySize } : {}),
  });
  main.on("line", (line) => send({ t: "log", s: line.stream, m: line.text }));
  // The exit report stops the pod: attached clients get the last output and
  // the exit status first.
  let server: SshServer | undefined;
  main.on("exit", (status) => {
    void (server?.attachmentsSettled(ATTACH_SETTLE_MS) ?? Promise.resolve()).then(() =>
      send({ t: "exit", code: status.code }),
    );
  });
  server = await startSshServer({
    socketPath: config.socketPath,
    env: config.env,
    workdir: config.workdir,
    shell: config.shell,
    mainProcess: main,
    sftpServerPath: config.sftpServer,
    logger: {
      info: (message) => process.stderr.write(`${message}\n`),
      warn: (message) => process.stderr.write(`${message}\n`),
      error: (message) => process.stderr.write(`${message}\n`),
    },
  });
  if (!config.startOnAttach) main.start();
  send({ t: "ready" });
  process.stderr.write(`agent ready ${Math.round(performance.now())} ms after its start\n`);
}

main().catch((error: unknown) => {
  send({
    t: "fatal",
    reason: "AgentFailed",
    message: error instanceof Error ? error.message : String(error),
  });
  process.exit(1);
});
