// The agent: the first process of a sandbox's pod, running as the sandbox
// user. It starts the main command, serves SSH on a Unix socket the
// supervisor relays to, and spawns every later process (exec, shell, sftp,
// upload) from inside the pod, so all of them share its namespaces.
//
// It talks to its supervisor over stdin (the configuration, one JSON line)
// and stdout (JSON lines: ready, beat, log, exit, fatal; see channel.ts).
//
// stdout is written as a non-blocking stream, never through process.stdout
// (which blocks the whole agent on a full pipe): when the supervisor reads
// slowly, the agent stops reading the main process's output, and the main
// process blocks on its own writes, as on a full pipe. Memory stays bounded
// at every hop, and SSH keeps being served meanwhile.

import { execFile } from "node:child_process";
import { Socket } from "node:net";
import {
  AGENT_BEAT_MS,
  AGENT_CONFIG_MAX_BYTES,
  type AgentConfig,
  type AgentMessage,
  BoundedLineReader,
  encodeAgentMessage,
} from "./channel.js";
import { programProblem } from "./child.js";
import { startEgressForwarder } from "./egress.js";
import { ExecGroups } from "./exec-groups.js";
import { startForwardServer } from "./forward.js";
import { MainProcess } from "./main-process.js";
import { type SshServer, startSshServer } from "./ssh-server.js";

/** How long the exit report waits for attached clients to be given the exit status. */
const ATTACH_SETTLE_MS = 2000;

const channel = new Socket({ fd: 1, readable: false, writable: true });
// The supervisor is gone: so is the pod, in a moment.
channel.on("error", () => process.exit(1));

/** Writes a message; false when the channel's buffer is full (wait for its "drain"). */
function send(message: AgentMessage): boolean {
  return channel.write(encodeAgentMessage(message));
}

/** The configuration: the first line on stdin, at most AGENT_CONFIG_MAX_BYTES, of the expected shape. */
function readConfig(): Promise<AgentConfig> {
  return new Promise((resolve, reject) => {
    const done = (error: Error | undefined, config?: AgentConfig): void => {
      process.stdin.off("data", onData);
      process.stdin.off("end", onEnd);
      process.stdin.pause();
      if (error) reject(error);
      else resolve(config!);
    };
    const lines = new BoundedLineReader(
      AGENT_CONFIG_MAX_BYTES,
      (line) => {
        try {
          done(undefined, checkConfig(JSON.parse(line.toString("utf8"))));
        } catch (error) {
          done(new Error(`invalid configuration on stdin: ${(error as Error).message}`));
        }
      },
      () => done(new Error(`configuration on stdin exceeds ${AGENT_CONFIG_MAX_BYTES} bytes`)),
    );
    const onData = (chunk: Buffer): void => lines.push(chunk);
    const onEnd = (): void => done(new Error("no configuration on stdin"));
    process.stdin.on("data", onData);
    process.stdin.on("end", onEnd);
  });
}

function checkConfig(value: unknown): AgentConfig {
  const config = value as AgentConfig;
  const strings = (list: unknown): boolean =>
    Array.isArray(list) && list.every((item) => typeof item === "string");
  if (typeof value !== "object" || value === null) throw new Error("not an object");
  if (!strings(config.command) || config.command.length === 0) throw new Error("command");
  if (typeof config.env !== "object" || config.env === null) throw new Error("env");
  if (!Object.values(config.env).every((v) => typeof v === "string")) throw new Error("env");
  for (const key of ["workdir", "socketPath", "shell", "sftpServer"] as const) {
    if (typeof config[key] !== "string") throw new Error(key);
  }
  if (config.mainWorkdir !== undefined && typeof config.mainWorkdir !== "string")
    throw new Error("mainWorkdir");
  if (config.forwardSocketPath !== undefined && typeof config.forwardSocketPath !== "string")
    throw new Error("forwardSocketPath");
  return config;
}

/** A failure the supervisor is told about under its own reason. */
class AgentFatal extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A pod whose filesystem policy hides its shell, or its main command, would report Ready and fail
 * at its first use (`/bin/bash: No such file or directory`): both are tried before Ready instead.
 * The shell is run, not just found, so a missing dynamic loader or library counts too. A command
 * held for the first attach may still be uploaded, so it is not looked for.
 */
async function checkRunnable(config: AgentConfig): Promise<void> {
  const visible =
    "list the directories it needs (e.g. /usr, /bin, /lib, /lib64) in filesystem_policy.read_only";
  // Without the startup files a shell may be told to source: what is tried is the shell itself.
  const { BASH_ENV: _bashEnv, ENV: _env, ...env } = config.env;
  const ran = await new Promise<string | undefined>((done) => {
    execFile(
      config.shell,
      ["-c", ":"],
      { cwd: config.workdir, env, timeout: 10_000, maxBuffer: 4096 },
      (error, _stdout, stderr) => {
        const code = (error as { code?: unknown } | null)?.code;
        // The kernel refused it (ENOENT: it or its loader is missing), or the loader did (127:
        // a library is missing). A timeout or another status is not the filesystem policy's doing.
        if (typeof code === "string" && !code.startsWith("ERR_")) done(code);
        else if (code === 126 || code === 127) done(String(stderr).trim().split("\n")[0]!.slice(0, 300));
        else done(undefined);
      },
    );
  });
  if (ran !== undefined) {
    throw new AgentFatal(
      "ShellUnavailable",
      `the sandbox cannot run its shell ${config.shell} (${ran}): ${visible}`,
    );
  }
  if (config.startOnAttach) return;
  const [file = "", ...args] = config.command;
  const problem = programProblem({ file, args, cwd: config.mainWorkdir ?? config.workdir, env: config.env });
  if (problem !== undefined) {
    throw new AgentFatal("MainCommandUnavailable", `the main command cannot start: ${problem.message}`);
  }
}

async function main(): Promise<void> {
  // From the start, so a supervisor can tell a frozen agent from a slow start.
  send({ t: "beat" });
  setInterval(() => send({ t: "beat" }), AGENT_BEAT_MS).unref();
  const config = await readConfig();
  process.chdir(config.workdir);
  // Runs while the forwarder and the SSH server start; awaited before anything is started or Ready.
  const runnable = checkRunnable(config);
  runnable.catch(() => {});
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
    cwd: config.mainWorkdir ?? config.workdir,
    env: { ...config.env, TERM: config.tty ? "xterm-256color" : "dumb" },
    tty: config.tty,
    startOnAttach: config.startOnAttach,
    ...(config.ttySize ? { ptySize: config.ttySize } : {}),
  });
  // A full channel holds the main process's output back until it drains.
  const onDrain = (): void => main.resumeOutput();
  main.on("line", (line) => {
    if (!send({ t: "log", s: line.stream, m: line.text }) && !main.outputPaused) {
      main.pauseOutput();
      channel.once("drain", onDrain);
    }
  });
  // Attached clients get the last output and the exit status before the
  // exit is reported, so no one acting on the report (`sandbox wait`) is
  // ahead of them. The agent stays: exec and file transfer go on serving.
  let server: SshServer | undefined;
  main.on("exit", (status) => {
    void (server?.attachmentsSettled(ATTACH_SETTLE_MS) ?? Promise.resolve()).then(() =>
      send({ t: "exit", code: status.code }),
    );
  });
  let execGroups: ExecGroups | undefined;
  if (config.execGroups) {
    try {
      execGroups = ExecGroups.adopt(config.execGroups.fd, config.execGroups.freezer);
    } catch (error) {
      process.stderr.write(`no control group per exec: ${(error as Error).message}\n`);
    }
  }
  server = await startSshServer({
    execGroups,
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
  if (config.forwardSocketPath !== undefined) {
    await startForwardServer({ socketPath: config.forwardSocketPath });
  }
  await runnable;
  if (!config.startOnAttach) main.start();
  send({ t: "ready" });
  process.stderr.write(`agent ready ${Math.round(performance.now())} ms after its start\n`);
  // SSH listens already; its library loads now rather than before ready (a
  // connection waits for it). A sandbox that cannot serve SSH is not left
  // Ready: the failure ends the agent as any startup failure does.
  await server.load();
}

main().catch((error: unknown) => {
  const message = (error instanceof Error ? error.message : String(error)).slice(0, 4096);
  // The report first: exiting at once could leave it unwritten.
  setTimeout(() => process.exit(1), 1000).unref();
  const reason = error instanceof AgentFatal ? error.reason : "AgentFailed";
  channel.end(encodeAgentMessage({ t: "fatal", reason, message }), () => process.exit(1));
});
