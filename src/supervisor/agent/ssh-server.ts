// The sandbox's SSH server. It listens on a Unix socket that only the
// supervisor (outside the pod) can open, and the supervisor relays each
// gateway SSH connection to it. The socket's permissions are the only gate:
// any user name, `none` and any public key are accepted (authorization is the
// gateway's session token). Every session's process is started by this agent,
// inside the pod, as the sandbox user.
//
// Exec output is streamed with backpressure both ways, stderr kept apart from
// stdout, and the exit status is sent only after the last byte of output.

import { existsSync, unlinkSync } from "node:fs";
import net from "node:net";
import type { Writable } from "node:stream";
import type {
  AuthContext,
  Connection,
  ServerChannel,
  Session,
  Server as Ssh2Server,
  TcpipRequestInfo,
} from "ssh2";
import { loopbackAddress } from "../../core/forward.js";
import { SUBSYSTEM_MAIN, SUBSYSTEM_START } from "../../core/protocol.js";
import { orElse } from "../../host/fs.js";
import { listenUnixPrivately } from "../../transport/unix.js";
import {
  type ChildCommand,
  type ChildExit,
  ChildStartError,
  outputSettled,
  type PtySpec,
  type SessionChild,
  signalFromName,
  startChild,
} from "./child.js";
import type { ExecGroup, ExecGroups } from "./exec-groups.js";
import type { MainAttachment, MainProcess } from "./main-process.js";

/** What the server reports; `console` fits. Debug lines (one per request) are optional. */
export interface AgentLogger {
  debug?(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface SshServerOptions {
  /** Unix socket to listen on; created 0600, a stale socket at the path is replaced. */
  socketPath: string;
  /** The environment every session's process starts with (HOME, USER, SHELL, PATH, LANG, sandbox env...). */
  env: Readonly<Record<string, string>>;
  /** Working directory of every session's process, e.g. /sandbox. */
  workdir: string;
  /** Shell for exec and shell requests; /bin/bash if it exists, else /bin/sh. */
  shell?: string;
  /** The canonical process, for the `openshell-main` subsystem; without it that subsystem is refused. */
  mainProcess?: MainProcess;
  /** OpenSSH's sftp-server, for the `sftp` subsystem (and so for scp). */
  sftpServerPath?: string;
  /** A control group per session's process (see exec-groups.ts). */
  execGroups?: ExecGroups | undefined;
  logger: AgentLogger;
}

export interface SshServer {
  readonly socketPath: string;
  /** Stops listening, ends every connection and kills every session's process group. */
  close(): Promise<void>;
  /**
   * Resolves once every main-process attachment that has been told of the
   * exit has sent its last output and the exit status (or its client left),
   * at most `timeoutMs` later. The agent reports the exit only then, so
   * attached clients hear the end of the story before anyone acting on it.
   */
  attachmentsSettled(timeoutMs: number): Promise<void>;
  /**
   * Loads the SSH library now. The server listens before it is loaded (a
   * connection waits for it), so a sandbox is ready without paying for it;
   * the agent calls this once it has said so.
   */
  load(): Promise<void>;
}

export const DEFAULT_SFTP_SERVER = "/usr/lib/openssh/sftp-server";
/** An `env` request with this set to 1 makes an `openshell-main` attach read-only. */
export const MAIN_READ_ONLY_ENV = "OPENSHELL_MAIN_READ_ONLY";

// Background grandchildren can hold a session's pipes open after its process
// exits; the exit status goes out at most this long after the process ended.
const OUTPUT_GRACE_MS = 2000;
// A session closed by its client gets SIGHUP, then SIGKILL after this long.
const KILL_GRACE_MS = 2000;
// An attacher this far behind the main process's output is disconnected: the
// main process never waits for its readers.
const MAX_ATTACH_BACKLOG_BYTES = 8 * 1024 * 1024;
// Signals an SSH exit-signal can name (RFC 4254 §6.10); for any other the
// exit status carries 128+N instead, so clients still see the number.
const SSH_EXIT_SIGNALS = new Set([
  "ABRT",
  "ALRM",
  "FPE",
  "HUP",
  "ILL",
  "INT",
  "KILL",
  "PIPE",
  "QUIT",
  "SEGV",
  "TERM",
  "USR1",
  "USR2",
]);
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RESERVED_ENV_PREFIX = "OPENSHELL_";
const DETACH_KEYS = [0x10, 0x11] as const; // Ctrl-P Ctrl-Q

/** /bin/bash if the sandbox has it, else /bin/sh. */
export function defaultShell(): string {
  return existsSync("/bin/bash") ? "/bin/bash" : "/bin/sh";
}

type Ssh2 = typeof import("ssh2");

/** ssh2, loaded once, on first need (about 60 ms of a pod's start otherwise). */
let ssh2Module: Promise<Ssh2> | undefined;
function loadSsh2(): Promise<Ssh2> {
  ssh2Module ??= import("ssh2").then((module) => (module as { default?: Ssh2 }).default ?? module);
  return ssh2Module;
}

/**
 * A fresh ed25519 host key in OpenSSH format. ssh2 1.17 occasionally writes
 * a key (about 1 in 200) that its own parser rejects — a public key with a
 * leading zero byte loses it — so a key is regenerated until it parses.
 */
export async function generateHostKey(): Promise<string> {
  const ssh2 = await loadSsh2();
  for (let attempt = 0; attempt < 32; attempt++) {
    const { private: key } = ssh2.utils.generateKeyPairSync("ed25519");
    if (!(ssh2.utils.parseKey(key) instanceof Error)) return key;
  }
  throw new Error("could not generate an SSH host key that ssh2 accepts");
}

/** Starts the server; resolves once it listens on `socketPath` (see `load`). */

export async function startSshServer(options: SshServerOptions): Promise<SshServer> {
  const log = options.logger;
  const context: ServerContext = {
    env: options.env,
    workdir: options.workdir,
    shell: options.shell ?? defaultShell(),
    mainProcess: options.mainProcess,
    sftpServerPath: options.sftpServerPath ?? DEFAULT_SFTP_SERVER,
    log,
    runs: new Set(),
    attachEnds: new Set(),
    execGroups: options.execGroups,
  };
  // A fresh key each start, never stored: nothing pins it (clients run with
  // StrictHostKeyChecking=no), and node's own PKCS#8 ed25519 keys do not parse in ssh2.
  let server: Promise<Ssh2Server> | undefined;
  const sshServer = (): Promise<Ssh2Server> => {
    server ??= (async () => {
      const hostKey = await generateHostKey();
      const ssh2 = await loadSsh2();
      return new ssh2.Server({ hostKeys: [hostKey], ident: "OpenShell_agent" }, (client) =>
        serveConnection(client, context),
      );
    })();
    return server;
  };
  const sockets = new Set<net.Socket>();
  // Our own listener hands sockets to ssh2, so close() can destroy them all.
  // A socket reads into its stream until ssh2 takes it: nothing is lost meanwhile.
  const listener = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", (error) => log.debug?.(`ssh: connection error: ${error.message}`));
    sshServer().then(
      (ssh) => {
        if (!socket.destroyed) ssh.injectSocket(socket);
      },
      (error: Error) => {
        log.error(`ssh: the SSH library did not load: ${error.message}`);
        socket.destroy();
      },
    );
  });
  await listenUnixPrivately(listener, options.socketPath);
  log.debug?.(`ssh: listening on ${options.socketPath}`);

  let closing: Promise<void> | undefined;
  return {
    socketPath: options.socketPath,
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((done) => listener.close(() => done()));
        for (const run of context.runs) run.abort();
        for (const socket of sockets) socket.destroy();
        await stopped;
        // The socket may be removed already.
        orElse(undefined, () => unlinkSync(options.socketPath));
      })();
      return closing;
    },
    async load() {
      await sshServer();
    },
    async attachmentsSettled(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(context.attachEnds),
        new Promise<void>((done) => {
          timer = setTimeout(done, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
    },
  };
}

interface ServerContext {
  env: Readonly<Record<string, string>>;
  workdir: string;
  shell: string;
  mainProcess: MainProcess | undefined;
  sftpServerPath: string;
  log: AgentLogger;
  /** Every live session run, so close() can end them. */
  runs: Set<Run>;
  /** Main attachments still sending their last output and exit status. */
  attachEnds: Set<Promise<unknown>>;
  /** A group per exec, killed whole when it ends (absent without cgroups). */
  execGroups: ExecGroups | undefined;
}

/** What a running session reacts to after its start request. */
interface Run {
  resize(cols: number, rows: number): void;
  signal(signal: NodeJS.Signals): void;
  /** The client went away (channel, session or connection closed) before the run completed. */
  abort(): void;
}

interface SessionState {
  pty: PtySpec | undefined;
  env: Record<string, string>;
  readOnlyAttach: boolean;
  run: Run | undefined;
}

function serveConnection(client: Connection, context: ServerContext): void {
  const { log } = context;
  const runs = new Set<Run>();
  client.on("authentication", (auth: AuthContext) => {
    if (auth.method === "none" || auth.method === "publickey") auth.accept();
    else auth.reject(["none", "publickey"]);
  });
  client.on("session", (accept) => serveSession(accept(), context, runs));
  client.on("tcpip", (accept, reject, info) => forwardToLoopback(accept, reject, info, log));
  client.on("error", (error: Error) => log.debug?.(`ssh: ${error.message}`));
  client.on("close", () => {
    for (const run of runs) run.abort();
  });
}

function serveSession(session: Session, context: ServerContext, connectionRuns: Set<Run>): void {
  const { log } = context;
  const state: SessionState = { pty: undefined, env: {}, readOnlyAttach: false, run: undefined };

  // With want-reply false ssh2 passes no accept/reject, whatever its types say.
  session.on("pty", (accept, _reject, info) => {
    state.pty = { term: info.term || "xterm", cols: info.cols, rows: info.rows };
    accept?.();
  });
  session.on("window-change", (accept, _reject, info) => {
    if (state.pty) state.pty = { ...state.pty, cols: info.cols, rows: info.rows };
    state.run?.resize(info.cols, info.rows);
    accept?.();
  });
  session.on("env", (accept, reject, info) => {
    if (!ENV_KEY.test(info.key)) return reject?.();
    if (info.key === MAIN_READ_ONLY_ENV) state.readOnlyAttach = info.val === "1";
    // OPENSHELL_* belongs to the platform; a client cannot set it for the process.
    else if (!info.key.startsWith(RESERVED_ENV_PREFIX)) state.env[info.key] = info.val;
    accept?.();
  });
  session.on("signal", (accept, reject, info) => {
    const signal = signalFromName(info.name);
    if (!signal || !state.run) return reject?.();
    state.run.signal(signal);
    accept?.();
  });

  const forget = (run: Run) => {
    connectionRuns.delete(run);
    context.runs.delete(run);
  };
  // A session carries one start request (ssh2 refuses a second). Its accept()
  // returns nothing if the client already ended the session.
  const begin = (accept: () => ServerChannel, start: (channel: ServerChannel) => Run | undefined) => {
    const channel = accept() as ServerChannel | undefined;
    if (!channel) return;
    const run = start(channel);
    if (!run) return;
    state.run = run;
    connectionRuns.add(run);
    context.runs.add(run);
  };

  session.on("exec", (accept, _reject, info) => {
    log.debug?.(`ssh: exec ${JSON.stringify(info.command)}${state.pty ? " (pty)" : ""}`);
    const command = sessionCommand(context, state, ["-c", info.command]);
    begin(accept, (channel) => runCommand(channel, command, state.pty, context, forget));
  });
  session.on("shell", (accept) => {
    log.debug?.(`ssh: shell${state.pty ? " (pty)" : ""}`);
    // A login shell on a terminal; without one, a plain shell reading
    // commands from stdin (editors' remote helpers drive it that way).
    const command = sessionCommand(context, state, state.pty ? ["-l"] : []);
    begin(accept, (channel) => runCommand(channel, command, state.pty, context, forget));
  });
  session.on("subsystem", (accept, reject, info) => {
    if (info.name === "sftp") {
      if (!existsSync(context.sftpServerPath)) {
        log.warn(`ssh: sftp refused: ${context.sftpServerPath} does not exist`);
        return reject();
      }
      const command: ChildCommand = {
        file: context.sftpServerPath,
        args: [],
        cwd: context.workdir,
        env: childEnv(context, state),
      };
      return begin(accept, (channel) => runCommand(channel, command, undefined, context, forget));
    }
    if (info.name === SUBSYSTEM_MAIN && context.mainProcess) {
      const main = context.mainProcess;
      return begin(accept, (channel) => attachMain(channel, main, state, log, forget, context.attachEnds));
    }
    if (info.name === SUBSYSTEM_START && context.mainProcess) {
      // Releases a main process held for uploads, without attaching to it.
      const main = context.mainProcess;
      const channel = accept();
      if (main.state === "pending") main.start();
      channel.exit(0);
      channel.end();
      return;
    }
    log.debug?.(`ssh: subsystem ${JSON.stringify(info.name)} refused`);
    reject();
  });
  // The client closed the session: CHANNEL_CLOSE reaches the session before
  // the channel, which only reports it once its input is consumed.
  session.on("close", () => state.run?.abort());
}

function sessionCommand(context: ServerContext, state: SessionState, shellArgs: string[]): ChildCommand {
  return { file: context.shell, args: shellArgs, cwd: context.workdir, env: childEnv(context, state) };
}

function childEnv(context: ServerContext, state: SessionState): Record<string, string> {
  const env: Record<string, string> = { ...context.env, ...state.env };
  env.TERM = state.pty ? state.pty.term : (state.env.TERM ?? context.env.TERM ?? "dumb");
  return env;
}

/**
 * Runs one process for a channel: output to the channel with backpressure,
 * channel data to its stdin (the client's EOF closes it), then the exit status
 * after the last byte. A client that closes first gets its process group killed.
 */
function runCommand(
  channel: ServerChannel,
  command: ChildCommand,
  pty: PtySpec | undefined,
  { log, execGroups: groups }: ServerContext,
  forget: (run: Run) => void,
): Run | undefined {
  let child: SessionChild;
  let group: ExecGroup | undefined;
  try {
    if (groups) ({ value: child, group } = groups.spawnIn(() => startChild(command, pty && { ...pty })));
    else child = startChild(command, pty && { ...pty });
  } catch (error) {
    const code = error instanceof ChildStartError ? error.code : 127;
    const reason = error instanceof Error ? error.message : String(error);
    log.warn(`ssh: cannot start ${command.file}: ${reason}`);
    channel.stderr.write(`openshell: ${reason}\n`);
    channel.resume();
    void completeChannel(channel, { code, signal: null }, channelGone(channel));
    return undefined;
  }

  let aborted = false;
  let completed = false;
  let markGone: () => void = () => {};
  const gone = new Promise<void>((done) => {
    markGone = done;
  });
  ignoreLateWriteErrors(channel, log);
  channel.once("close", () => run.abort());

  const stopStreaming = () => {
    child.stdout.unpipe(channel);
    child.stderr?.unpipe(channel.stderr);
    child.stdout.destroy();
    child.stderr?.destroy();
    channel.unpipe(child.stdin);
    child.stdin.destroy();
    // Input after the exit is discarded, so the client's window keeps opening
    // and its close reaches us.
    channel.resume();
  };

  const run: Run = {
    resize: (cols, rows) => child.resize(cols, rows),
    signal: (signal) => child.signal(signal),
    abort() {
      if (completed || aborted) return;
      aborted = true;
      markGone();
      forget(run);
      stopStreaming();
      child.signal("SIGHUP");
      // Kept referenced: an agent shutting down still finishes the kill.
      setTimeout(() => {
        child.signal("SIGKILL");
        void group?.end();
      }, KILL_GRACE_MS);
    },
  };

  child.stdout.pipe(channel, { end: false });
  if (child.stderr) child.stderr.pipe(channel.stderr, { end: false });
  channel.pipe(child.stdin);

  void (async () => {
    const exit = await child.exited;
    // The exec is over: whatever it started goes with it.
    void group?.end();
    if (exit.error) channel.stderr.write(`openshell: ${exit.error}\n`);
    await Promise.race([
      outputSettled(child, { graceMs: OUTPUT_GRACE_MS, blocked: () => drained(channel, gone) }),
      gone,
    ]);
    if (aborted) return;
    stopStreaming();
    completed = await completeChannel(channel, exit, gone);
    forget(run);
  })();
  return run;
}

/**
 * Attaches a channel to the main process: the replay, then live output, then
 * its exit status. Ctrl-P Ctrl-Q detaches with status 0. Closing the channel
 * only detaches; the main process keeps running.
 */
function attachMain(
  channel: ServerChannel,
  main: MainProcess,
  state: SessionState,
  log: AgentLogger,
  forget: (run: Run) => void,
  attachEnds: Set<Promise<unknown>>,
): Run {
  let over = false;
  let attachment: MainAttachment | undefined;
  let markGone: () => void = () => {};
  const gone = new Promise<void>((done) => {
    markGone = done;
  });
  const run: Run = {
    resize: (cols, rows) => attachment?.resize(cols, rows),
    signal: (signal) => {
      attachment?.signal(signal);
    },
    abort() {
      markGone();
      if (over) return;
      over = true;
      attachment?.detach();
      forget(run);
    },
  };
  ignoreLateWriteErrors(channel, log);
  // Ends the attach: with an exit status, after the output written so far;
  // without one (a lagging reader), at once.
  const end = (status: number | undefined) => {
    if (over) return;
    over = true;
    attachment?.detach();
    forget(run);
    channel.resume();
    if (status === undefined) channel.close();
    else {
      const completed = completeChannel(channel, { code: status, signal: null }, gone);
      attachEnds.add(completed);
      void completed.then(() => attachEnds.delete(completed));
    }
  };

  attachment = main.attach(
    {
      output(chunk) {
        if (over) return;
        (chunk.stream === "stderr" ? channel.stderr : channel).write(chunk.data);
        const backlog = channel.writableLength + channel.stderr.writableLength;
        if (backlog > MAX_ATTACH_BACKLOG_BYTES) {
          log.warn(`ssh: ${SUBSYSTEM_MAIN} attacher fell behind by ${backlog} bytes; disconnecting it`);
          channel.stderr.write(
            `\r\nopenshell: fell behind the main process by ${backlog} bytes; detached\r\n`,
          );
          end(undefined);
        }
      },
      // The main process's status as a number (128+N for a signal), as
      // upstream reports it, so OpenSSH clients exit with it too.
      exit: (status) => end(status.code),
    },
    { readOnly: state.readOnlyAttach },
  );
  const attached = attachment;
  // The replay alone overflowed the reader (a replay larger than the backlog limit).
  if (over) attached.detach();

  if (!attached.holdsStdin && !over) {
    channel.stderr.write(
      "openshell: another session holds the main process's input; attached read-only (Ctrl-P Ctrl-Q detaches)\r\n",
    );
  }
  if (attached.holdsStdin && state.pty) attached.resize(state.pty.cols, state.pty.rows);

  const detachKeys = new DetachKeys();
  let waitingForDrain = false;
  channel.on("data", (data: Buffer) => {
    if (over) return;
    const { input, detach } = detachKeys.feed(data);
    if (input.length > 0 && !attached.write(input) && !waitingForDrain) {
      waitingForDrain = true;
      channel.pause();
      main.once("drain", () => {
        waitingForDrain = false;
        channel.resume();
      });
    }
    if (detach) end(0);
  });
  channel.on("end", () => {
    if (!over) attached.endStdin();
  });
  channel.once("close", () => run.abort());
  return run;
}

/**
 * A connection that drops ends its channels under a pipe that may still be
 * writing; the session is being torn down anyway, so such errors are only logged.
 */
function ignoreLateWriteErrors(channel: ServerChannel, log: AgentLogger): void {
  const report = (error: Error) => log.debug?.(`ssh: channel: ${error.message}`);
  channel.on("error", report);
  channel.stderr.on("error", report);
}

/** Finds Ctrl-P Ctrl-Q in an input stream, even when split between two chunks. */
class DetachKeys {
  private heldFirstKey = false;

  feed(chunk: Buffer): { input: Buffer; detach: boolean } {
    const data = this.heldFirstKey ? Buffer.concat([Buffer.from([DETACH_KEYS[0]]), chunk]) : chunk;
    this.heldFirstKey = false;
    for (let i = 0; i + 1 < data.length; i++) {
      if (data[i] === DETACH_KEYS[0] && data[i + 1] === DETACH_KEYS[1]) {
        return { input: data.subarray(0, i), detach: true };
      }
    }
    if (data.length > 0 && data[data.length - 1] === DETACH_KEYS[0]) {
      this.heldFirstKey = true;
      return { input: data.subarray(0, -1), detach: false };
    }
    return { input: data, detach: false };
  }
}

/**
 * Waits until everything written to the channel is sent, then sends the exit
 * status (or exit signal) and closes. Resolves false if the client left first.
 */
async function completeChannel(
  channel: ServerChannel,
  exit: ChildExit,
  gone: Promise<void>,
): Promise<boolean> {
  let left = false;
  await Promise.race([
    Promise.all([flushed(channel), flushed(channel.stderr)]),
    gone.then(() => {
      left = true;
    }),
  ]);
  if (left) return false;
  const signalName = exit.signal?.slice(3);
  if (signalName && SSH_EXIT_SIGNALS.has(signalName)) channel.exit(signalName, false, "");
  else channel.exit(exit.code);
  channel.end();
  return true;
}

/** Resolves when all data written so far has been handed to the connection. */
function flushed(stream: Writable): Promise<void> {
  return new Promise((done) => {
    if (!stream.writable) return done();
    // Writes complete in order, so an empty one completes after every earlier one.
    stream.write(Buffer.alloc(0), () => done());
  });
}

/** If the channel is applying backpressure, a promise of its drain (or of the client leaving). */
function drained(channel: ServerChannel, gone: Promise<void>): Promise<void> | undefined {
  const waits: Promise<void>[] = [];
  for (const stream of [channel, channel.stderr] as Writable[]) {
    if (stream.writableNeedDrain) waits.push(new Promise((done) => stream.once("drain", () => done())));
  }
  if (waits.length === 0) return undefined;
  return Promise.race([Promise.all(waits).then(() => {}), gone]);
}

function channelGone(channel: ServerChannel): Promise<void> {
  return new Promise((done) => channel.once("close", () => done()));
}

/** `direct-tcpip` (ssh -L): only to the sandbox's own loopback, as upstream allows. */
function forwardToLoopback(
  accept: () => ServerChannel,
  reject: () => void,
  info: TcpipRequestInfo,
  log: AgentLogger,
): void {
  const host = loopbackAddress(info.destIP);
  if (!host || !Number.isInteger(info.destPort) || info.destPort < 1 || info.destPort > 65535) {
    log.info(`ssh: forward to ${info.destIP}:${info.destPort} refused: only loopback is allowed`);
    reject();
    return;
  }
  const socket = net.connect({ host, port: info.destPort });
  let channel: ServerChannel | undefined;
  socket.once("connect", () => {
    channel = accept();
    channel.on("error", () => socket.destroy());
    channel.once("close", () => socket.destroy());
    socket.once("close", () => channel?.close());
    socket.pipe(channel).pipe(socket);
  });
  socket.on("error", (error) => {
    log.debug?.(`ssh: forward to ${host}:${info.destPort}: ${error.message}`);
    if (!channel) reject();
  });
}
