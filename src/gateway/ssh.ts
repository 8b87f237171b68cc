// Everything that reaches inside a sandbox through its SSH server: session
// tokens (CreateSshSession / RevokeSshSession), raw byte forwarding
// (ForwardTcp, what `ssh-proxy` and OpenSSH use), and command execution
// (ExecSandbox / ExecSandboxInteractive), which the gateway runs as an SSH
// client over the supervisor relay. Exec reuses one SSH connection per
// sandbox, so a command costs a channel open, not a handshake.
//
// The SSH server at the other end is the sandbox's to replace: a process in
// it can bind its own listener over the pod's socket, stop or kill the agent
// that serves it, and answer with silence, garbage, or a handshake cut short.
// So nothing here trusts it to answer, or to fail only once: every emitter
// fed by its bytes (the ssh2 client, its socket, the relay stream, each
// channel) keeps an error listener for its whole life, since one 'error'
// without a listener would end the gateway and, with it, every sandbox.
// Every wait is bounded (the handshake, each channel open, the kill after a
// timeout), and an exec's --timeout is one deadline over all of it, from
// the request's arrival, so the caller hears back in time whatever the
// sandbox does. A failure ends that exec, or that pooled connection, with a
// status that says which step the sandbox did not take.

import { randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { type ServerDuplexStream, type ServerWritableStream, status } from "@grpc/grpc-js";
import { Client, type ClientChannel, type PseudoTtyOptions } from "ssh2";
import { Deadline } from "../core/deadline.js";
import {
  checkTargetPort,
  FORWARD_CONNECTIONS_PER_SANDBOX,
  FORWARD_HALF_CLOSE_METADATA_KEY,
  loopbackAddress,
} from "../core/forward.js";
import { validateExecRequest } from "../core/names.js";
import { shellEscape } from "../core/shell.js";
import { EXEC_TIMEOUT_EXIT, exitCodeOf } from "../core/signals.js";
import type {
  CreateSshSessionResponse,
  ExecSandboxEvent,
  ExecSandboxInput,
  ExecSandboxRequest,
  TcpForwardFrame,
} from "../gen/openshell.js";
import { bridge } from "../transport/bridge.js";
import { frameDuplex } from "../transport/duplex.js";
import { dataFrameCodec } from "../transport/frames.js";
import { sandboxSshOptions } from "../transport/ssh.js";
import type { RelayHub } from "./relay.js";
import type { Sandboxes } from "./sandboxes.js";
import { invalidArgument, StatusError, toStatus, unauthenticated, unavailable } from "./status.js";
import { hashToken, type Store } from "./store.js";

export const CONNECTIONS_PER_TOKEN = 3;
export const CONNECTIONS_PER_SANDBOX = 20;
/** How long the sandbox's SSH server has to complete a handshake. */
export const HANDSHAKE_MS = 10_000;
/** How long it has to open a session channel for a command. */
export const CHANNEL_OPEN_MS = 10_000;
/** How long a killed command's channel may take to close before its connection counts as unresponsive. */
const CHANNEL_CLOSE_GRACE_MS = 2_000;
const COMMAND_MAX_BYTES = 256 * 1024;

export interface SshAccessOptions {
  store: Store;
  sandboxes: Sandboxes;
  relay: RelayHub;
  /** Session TTL in seconds; 0 means tokens never expire. */
  ttlSecs: number;
  /** Where clients dial back for ForwardTcp (the gateway's own address). */
  advertised(): { host: string; port: number; scheme: "http" | "https" };
  /** A line for the sandbox's log (`openshell logs`), for failures its user should see. */
  note?(sandboxId: string, message: string): void;
}

/** Builds the remote shell command for an exec request, as OpenShell does. */
export function buildExecCommand(
  request: Pick<ExecSandboxRequest, "command" | "environment" | "workdir">,
): string {
  const env = Object.keys(request.environment)
    .sort()
    .map((key) => `${key}=${shellEscape(request.environment[key]!)}`);
  let command = [...env, ...request.command.map(shellEscape)].join(" ");
  if (request.workdir !== "") command = `cd ${shellEscape(request.workdir)} && ${command}`;
  if (Buffer.byteLength(command) > COMMAND_MAX_BYTES) {
    throw invalidArgument(`command construction failed: command exceeds ${COMMAND_MAX_BYTES} bytes`);
  }
  return command;
}

export class SshAccess {
  private readonly perToken = new Map<string, number>();
  private readonly perSandbox = new Map<string, number>();
  private readonly forwardsPerSandbox = new Map<string, number>();
  private readonly clients = new Map<string, Promise<Client>>();

  constructor(private readonly o: SshAccessOptions) {}

  // ---- sessions ----------------------------------------------------------

  createSession(sandboxId: string): CreateSshSessionResponse {
    const sandbox = this.o.sandboxes.byId(sandboxId);
    this.o.sandboxes.requireReady(sandbox);
    // URL-safe base64 of 32 random bytes: inside the charset clients check.
    const token = randomBytes(32).toString("base64url");
    const now = Date.now();
    const expiresAtMs = this.o.ttlSecs > 0 ? now + this.o.ttlSecs * 1000 : 0;
    this.o.store.createSshSession({
      tokenHash: hashToken(token),
      sandboxId,
      expiresAtMs,
      revoked: false,
      createdAtMs: now,
    });
    const advertised = this.o.advertised();
    return {
      sandboxId,
      token,
      gatewayHost: advertised.host,
      gatewayPort: advertised.port,
      gatewayScheme: advertised.scheme,
      hostKeyFingerprint: "",
      expiresAtMs,
    };
  }

  revokeSession(token: string): boolean {
    if (token === "") throw invalidArgument("token is required");
    return this.o.store.revokeSshSession(hashToken(token));
  }

  private checkToken(sandboxId: string, token: string): string {
    if (token === "") throw unauthenticated("authorization_token is required for ForwardTcp");
    const tokenHash = hashToken(token);
    const session = this.o.store.getSshSession(tokenHash);
    if (!session) throw unauthenticated("SSH session token not found");
    if (session.revoked) throw unauthenticated("SSH session token is not valid: it was revoked");
    if (session.sandboxId !== sandboxId) {
      throw unauthenticated("SSH session token is not valid: it was issued for another sandbox");
    }
    if (session.expiresAtMs > 0 && session.expiresAtMs < Date.now()) {
      throw unauthenticated("SSH session token expired");
    }
    return tokenHash;
  }

  /**
   * Takes a connection slot of the token and of the sandbox: SSH connections
   * (20 per sandbox, as upstream) and TCP forwards (many short connections
   * through one forward, FORWARD_CONNECTIONS_PER_SANDBOX) are counted apart.
   */
  private acquire(sandboxId: string, tokenHash: string, kind: "ssh" | "tcp"): () => void {
    const tokenCount = this.perToken.get(tokenHash) ?? 0;
    if (tokenCount >= CONNECTIONS_PER_TOKEN) {
      throw new StatusError(status.RESOURCE_EXHAUSTED, "SSH session connection limit reached");
    }
    const perSandbox = kind === "ssh" ? this.perSandbox : this.forwardsPerSandbox;
    const sandboxCount = perSandbox.get(sandboxId) ?? 0;
    if (kind === "ssh" && sandboxCount >= CONNECTIONS_PER_SANDBOX) {
      throw new StatusError(status.RESOURCE_EXHAUSTED, "sandbox SSH connection limit reached");
    }
    if (kind === "tcp" && sandboxCount >= FORWARD_CONNECTIONS_PER_SANDBOX) {
      throw new StatusError(
        status.RESOURCE_EXHAUSTED,
        `sandbox forward connection limit reached (${FORWARD_CONNECTIONS_PER_SANDBOX} at once)`,
      );
    }
    this.perToken.set(tokenHash, tokenCount + 1);
    perSandbox.set(sandboxId, sandboxCount + 1);
    let released = false;
    const decrement = (counts: Map<string, number>, key: string): void => {
      const left = (counts.get(key) ?? 1) - 1;
      if (left <= 0) counts.delete(key);
      else counts.set(key, left);
    };
    return () => {
      if (released) return;
      released = true;
      decrement(this.perToken, tokenHash);
      decrement(perSandbox, sandboxId);
    };
  }

  // ---- ForwardTcp --------------------------------------------------------

  forwardTcp(call: ServerDuplexStream<TcpForwardFrame, TcpForwardFrame>): void {
    let started = false;
    call.once("data", (frame: TcpForwardFrame) => {
      started = true;
      call.pause();
      this.startForward(call, frame).catch((error) => call.emit("error", toStatus(error)));
    });
    call.once("end", () => {
      if (!started) call.emit("error", invalidArgument("empty ForwardTcp stream"));
    });
  }

  private async startForward(
    call: ServerDuplexStream<TcpForwardFrame, TcpForwardFrame>,
    frame: TcpForwardFrame,
  ): Promise<void> {
    if (frame.payload?.$case !== "init") throw invalidArgument("first TcpForwardFrame must be init");
    const init = frame.payload.value;
    if (init.sandboxId === "") throw invalidArgument("sandbox_id is required");
    if (!init.target) throw invalidArgument("tcp forward target is required");
    let target: { kind: "ssh" } | { kind: "tcp"; host: string; port: number } = { kind: "ssh" };
    if (init.target.$case === "tcp") {
      const { host, port } = init.target.value;
      if (checkTargetPort("tcp target port", port)) {
        throw invalidArgument("tcp target port must be between 1 and 65535");
      }
      if (host === "") throw invalidArgument("tcp target host is required");
      // The rule the supervisor and the agent apply again: the sandbox's own loopback only.
      const loopback = loopbackAddress(host);
      if (loopback === undefined) throw invalidArgument("tcp target host must be loopback");
      target = { kind: "tcp", host: loopback, port };
    }
    const sandbox = this.o.sandboxes.byId(init.sandboxId);
    this.o.sandboxes.requireReady(sandbox);
    const tokenHash = this.checkToken(init.sandboxId, init.authorizationToken);
    const release = this.acquire(init.sandboxId, tokenHash, target.kind);
    let remote: Duplex;
    try {
      remote = await this.o.relay.open(init.sandboxId, target, init.serviceId || `forward:${init.sandboxId}`);
    } catch (error) {
      release();
      throw error;
    }
    if (call.cancelled) {
      // The client went away while the sandbox's end was being opened.
      remote.destroy();
      release();
      return;
    }
    // A client that reads an empty frame as the end of the sandbox side's
    // output gets one, and the call goes on until its own side ends too;
    // others get the call ended there, as from OpenShell's gateway.
    const halfClose = target.kind === "tcp" && call.metadata.get(FORWARD_HALF_CLOSE_METADATA_KEY)[0] === "1";
    const local = frameDuplex(
      call,
      dataFrameCodec<TcpForwardFrame>(),
      halfClose ? { sendEofFrame: true } : {},
    );
    bridge(local, remote, release);
    // A client that goes away (ssh exited and its proxy was killed) only
    // cancels the call; the byte stream then tears the relay down, which ends
    // the sandbox's SSH connection and its sessions. The slot is free at once.
    call.once("cancelled", release);
    // Once the response has ended the forward is over, whatever the client
    // does next: free the slot and end the relay too, which nothing else
    // would (the client can send nothing more, so its half-close never comes).
    call.once("finish", () => {
      release();
      if (!remote.writableEnded) remote.end();
    });
  }

  // ---- exec --------------------------------------------------------------

  private client(sandboxId: string): Promise<Client> {
    let pending = this.clients.get(sandboxId);
    if (!pending) {
      const connecting: Promise<Client> = this.connect(sandboxId, () => {
        if (this.clients.get(sandboxId) === connecting) this.clients.delete(sandboxId);
      });
      pending = connecting;
      this.clients.set(sandboxId, connecting);
      connecting.catch((error: unknown) => {
        if (this.clients.get(sandboxId) === connecting) this.clients.delete(sandboxId);
        this.o.note?.(sandboxId, (error as Error).message);
      });
    }
    return pending;
  }

  /**
   * One SSH connection to a sandbox, bounded by the relay's own timeouts and
   * HANDSHAKE_MS. The sandbox owns the other end: it may stall, send garbage,
   * or hang up mid-handshake, and ssh2 can report more than one 'error' for
   * one connection (a handshake timeout, then the connection lost). Every
   * listener here is persistent, since an 'error' with no listener ends the
   * gateway, and every one of them ends only this connection.
   */
  private async connect(sandboxId: string, forget: () => void): Promise<Client> {
    const sock = await this.o.relay.open(sandboxId, { kind: "ssh" }, `exec:${sandboxId}`);
    const client = new Client();
    let ready = false;
    const handshake = new Promise<Client>((resolve, reject) => {
      client.on("ready", () => {
        ready = true;
        resolve(client);
      });
      client.on("error", (error: Error) => {
        forget();
        if (!ready) reject(unavailable(`SSH to the sandbox failed: ${error.message}`));
        client.destroy();
      });
      client.on("close", () => {
        forget();
        if (!ready)
          reject(unavailable("SSH to the sandbox failed: the connection closed during the handshake"));
      });
      client.on("end", () => {
        forget();
        // The sandbox closed the connection (it is stopping): close ours too, so
        // the relay ends now instead of holding the stopping supervisor.
        sock.end();
      });
    });
    try {
      client.connect(sandboxSshOptions(sock, { readyTimeout: HANDSHAKE_MS, keepaliveCountMax: 4 }));
    } catch (error) {
      sock.destroy();
      throw unavailable(`SSH to the sandbox failed: ${(error as Error).message}`);
    }
    return handshake;
  }

  /**
   * Drops a sandbox's pooled SSH connection (on delete, session loss, or when
   * it stopped answering); with `only`, just when that connection is still the
   * pooled one, so a newer connection is kept.
   */
  dropClient(sandboxId: string, only?: Client): void {
    const pending = this.clients.get(sandboxId);
    if (!pending) return;
    void pending.then(
      (client) => {
        if (only !== undefined && client !== only) return;
        if (this.clients.get(sandboxId) === pending) this.clients.delete(sandboxId);
        // destroy, not end: a frozen peer never answers a polite close.
        client.destroy();
      },
      () => {},
    );
    if (only === undefined) this.clients.delete(sandboxId);
  }

  /**
   * Opens the session channel for one command. Everything before the command
   * runs is bounded: by the request's deadline when it has a timeout, and by
   * the relay's, HANDSHAKE_MS and CHANNEL_OPEN_MS in any case.
   */
  private async openChannel(request: ExecSandboxRequest, deadline: Deadline): Promise<ExecChannel> {
    const violation = validateExecRequest(request);
    if (violation) throw invalidArgument(violation);
    if (request.command.length === 0) throw invalidArgument("command is required");
    const sandbox = this.o.sandboxes.byId(request.sandboxId);
    this.o.sandboxes.requireReady(sandbox);
    const command = buildExecCommand(request);
    const pty = request.tty
      ? { term: "xterm-256color", cols: request.cols || 80, rows: request.rows || 24 }
      : undefined;
    const notStarted = (why: string): StatusError =>
      new StatusError(
        status.DEADLINE_EXCEEDED,
        `the command did not start within the ${request.timeoutSeconds} s timeout: ${why}`,
      );
    for (let attempt = 0; ; attempt++) {
      const client = await deadline.race(this.client(request.sandboxId), () =>
        notStarted("the sandbox's SSH server did not complete the handshake"),
      );
      const opening = execChannel(client, command, pty);
      try {
        const channel = await deadline.race(
          opening.channel,
          (expired) =>
            expired === "deadline"
              ? notStarted("the sandbox's SSH server did not open a session for it")
              : unavailable(
                  `the sandbox's SSH server did not open a session for the command within ${CHANNEL_OPEN_MS / 1000} s`,
                ),
          CHANNEL_OPEN_MS,
        );
        return { channel, client };
      } catch (error) {
        opening.abandon();
        // A pooled connection can die between uses, or stop answering: drop it.
        this.dropClient(request.sandboxId, client);
        if (error instanceof StatusError) throw error;
        // Retry once on a new connection after a plain failure.
        if (attempt >= 1) throw unavailable(`exec channel failed: ${(error as Error).message}`);
      }
    }
  }

  /** Streams one command's output as exec events; exactly one exit at the end. */
  private runChannel(
    { channel, client }: ExecChannel,
    request: ExecSandboxRequest,
    deadline: Deadline,
    sink: ExecSink,
  ): { cancel(): void } {
    let exitCode: number | undefined;
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    let closed = false;
    const oomBefore = this.o.sandboxes.oomKills(request.sandboxId);
    const finish = (code: number | undefined, error?: StatusError): void => {
      if (finished) return;
      finished = true;
      if (timer) clearTimeout(timer);
      const oom = code === 137 ? this.o.sandboxes.oomKills(request.sandboxId) : undefined;
      if (oom !== undefined && oomBefore !== undefined && oom > oomBefore) {
        const message = `openshell: killed by the out-of-memory killer: the sandbox's processes reached its memory limit (${this.o.sandboxes.memoryLimit(request.sandboxId)})\n`;
        sink.write({ payload: { $case: "stderr", value: { data: Buffer.from(message) } } });
      }
      if (code === undefined) {
        sink.fail(error ?? unavailable("exec relay closed before the command reported an exit status"));
      } else {
        sink.write({ payload: { $case: "exit", value: { exitCode: code } } });
        sink.end();
      }
    };
    // Killing a command needs the sandbox to answer; one that does not close
    // the channel soon after has a connection that stopped answering.
    const kill = (): void => {
      channel.signal("KILL");
      channel.close();
      setTimeout(() => {
        if (!closed) this.dropClient(request.sandboxId, client);
      }, CHANNEL_CLOSE_GRACE_MS).unref();
    };
    const forward = (stream: NodeJS.ReadableStream, kind: "stdout" | "stderr"): void => {
      stream.on("data", (data: Buffer) => {
        if (finished) return;
        const ok = sink.write({
          payload:
            kind === "stdout" ? { $case: "stdout", value: { data } } : { $case: "stderr", value: { data } },
        });
        if (!ok) {
          stream.pause();
          sink.once("drain", () => stream.resume());
        }
      });
    };
    forward(channel, "stdout");
    forward(channel.stderr, "stderr");
    const onChannelError = (error: Error): void => {
      finish(undefined, unavailable(`exec channel failed: ${error.message}`));
    };
    channel.on("error", onChannelError);
    channel.stderr.on("error", onChannelError);
    channel.on("exit", (code: number | null, signal?: string) => {
      exitCode = exitCodeOf(code, signal);
    });
    // ssh2 repeats the status on close: a command that ends at once can have
    // its status arrive in the same read as the exec's confirmation, before
    // the 'exit' listener above existed.
    channel.on("close", (code?: number | null, signal?: string) => {
      closed = true;
      if (exitCode === undefined && (typeof code === "number" || signal)) exitCode = exitCodeOf(code, signal);
      finish(exitCode);
    });
    const left = deadline.remaining();
    if (left !== undefined) {
      timer = setTimeout(() => {
        // Unlike OpenShell, the command is killed, not left running. The exit
        // is reported now, whether or not the sandbox answers the kill.
        kill();
        finish(EXEC_TIMEOUT_EXIT);
      }, left);
    }
    return {
      cancel: () => {
        if (finished) return;
        finished = true;
        if (timer) clearTimeout(timer);
        kill();
      },
    };
  }

  /**
   * One exec, from request to exit, for both exec calls. The client may go
   * away at any point; a channel that opens after it did is closed at once,
   * so no command runs that nobody waits for. The request's stdin is sent
   * first; `started` then feeds (or ends) the command's input.
   */
  private startExec(
    request: ExecSandboxRequest,
    call: ExecCall,
    started: (channel: ClientChannel) => void,
  ): void {
    const deadline = new Deadline(request.timeoutSeconds * 1000);
    const sink = callSink(call);
    let cancelled = false;
    let run: { cancel(): void } | undefined;
    call.once("cancelled", () => {
      cancelled = true;
      run?.cancel();
    });
    this.openChannel(request, deadline)
      .then((opened) => {
        run = this.runChannel(opened, request, deadline, sink);
        if (cancelled) return run.cancel();
        if (request.stdin.length > 0) opened.channel.write(request.stdin);
        started(opened.channel);
      })
      .catch((error: unknown) => sink.fail(error));
  }

  exec(call: ServerWritableStream<ExecSandboxRequest, ExecSandboxEvent>): void {
    this.startExec(call.request, call, (channel) => channel.end());
  }

  execInteractive(call: ServerDuplexStream<ExecSandboxInput, ExecSandboxEvent>): void {
    let started = false;
    call.once("data", (first: ExecSandboxInput) => {
      started = true;
      call.pause();
      if (first.payload?.$case !== "start") {
        call.emit("error", toStatus(invalidArgument("first message must be a start payload")));
        return;
      }
      const request = first.payload.value;
      this.startExec(request, call, (channel) => {
        call.on("data", (input: ExecSandboxInput) => {
          const payload = input.payload;
          if (payload?.$case === "stdin") {
            if (channel.writableEnded || channel.destroyed) return;
            if (!channel.write(payload.value)) {
              call.pause();
              channel.once("drain", () => call.resume());
            }
          } else if (payload?.$case === "resize" && request.tty) {
            channel.setWindow(payload.value.rows, payload.value.cols, 0, 0);
          }
        });
        // The client's half-close is the command's EOF on stdin.
        call.on("end", () => channel.end());
        call.resume();
      });
    });
    call.once("end", () => {
      if (!started) call.emit("error", toStatus(invalidArgument("empty stream: expected start message")));
    });
  }
}

interface ExecChannel {
  channel: ClientChannel;
  /** The connection it runs on, dropped if the channel stops answering. */
  client: Client;
}

/** Where one exec's events go: a gRPC call, whose status ends it. */
interface ExecSink {
  write(event: ExecSandboxEvent): boolean;
  once(event: "drain", fn: () => void): unknown;
  end(): void;
  fail(error: unknown): void;
}

type ExecCall =
  | ServerWritableStream<ExecSandboxRequest, ExecSandboxEvent>
  | ServerDuplexStream<ExecSandboxInput, ExecSandboxEvent>;

function callSink(call: ExecCall): ExecSink {
  return {
    write: (event) => call.write(event),
    once: (event, fn) => call.once(event, fn),
    end: () => call.end(),
    fail: (error) => call.emit("error", toStatus(error)),
  };
}

/**
 * Asks for an exec channel. A confirmation that arrives after the caller
 * gave up (`abandon`) would still start the command, so a late channel is
 * closed, and its command killed, as soon as it opens.
 */
function execChannel(
  client: Client,
  command: string,
  pty: PseudoTtyOptions | undefined,
): { channel: Promise<ClientChannel>; abandon(): void } {
  let abandoned = false;
  const channel = new Promise<ClientChannel>((resolve, reject) => {
    client.exec(command, pty ? { pty } : {}, (error, opened) => {
      if (error) reject(error);
      else if (abandoned) {
        opened.on("error", () => {});
        opened.signal("KILL");
        opened.close();
      } else resolve(opened);
    });
  });
  return {
    channel,
    abandon: () => {
      abandoned = true;
    },
  };
}
