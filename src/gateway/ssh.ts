// Everything that reaches inside a sandbox through its SSH server: session
// tokens (CreateSshSession / RevokeSshSession), raw byte forwarding
// (ForwardTcp, what `ssh-proxy` and OpenSSH use), and command execution
// (ExecSandbox / ExecSandboxInteractive), which the gateway runs as an SSH
// client over the supervisor relay. Exec reuses one SSH connection per
// sandbox, so a command costs a channel open, not a handshake.

import { randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { type ServerDuplexStream, type ServerWritableStream, status } from "@grpc/grpc-js";
import { Client, type ClientChannel } from "ssh2";
import { validateExecRequest } from "../core/names.js";
import { shellEscape } from "../core/shell.js";
import { exitCodeOf } from "../core/signals.js";
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
export const EXEC_TIMEOUT_EXIT = 124;
const COMMAND_MAX_BYTES = 256 * 1024;

export interface SshAccessOptions {
  store: Store;
  sandboxes: Sandboxes;
  relay: RelayHub;
  /** Session TTL in seconds; 0 means tokens never expire. */
  ttlSecs: number;
  /** Where clients dial back for ForwardTcp (the gateway's own address). */
  advertised(): { host: string; port: number; scheme: "http" | "https" };
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

  private acquire(sandboxId: string, tokenHash: string): () => void {
    const tokenCount = this.perToken.get(tokenHash) ?? 0;
    if (tokenCount >= CONNECTIONS_PER_TOKEN) {
      throw new StatusError(status.RESOURCE_EXHAUSTED, "SSH session connection limit reached");
    }
    const sandboxCount = this.perSandbox.get(sandboxId) ?? 0;
    if (sandboxCount >= CONNECTIONS_PER_SANDBOX) {
      throw new StatusError(status.RESOURCE_EXHAUSTED, "sandbox SSH connection limit reached");
    }
    this.perToken.set(tokenHash, tokenCount + 1);
    this.perSandbox.set(sandboxId, sandboxCount + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const t = (this.perToken.get(tokenHash) ?? 1) - 1;
      if (t <= 0) this.perToken.delete(tokenHash);
      else this.perToken.set(tokenHash, t);
      const s = (this.perSandbox.get(sandboxId) ?? 1) - 1;
      if (s <= 0) this.perSandbox.delete(sandboxId);
      else this.perSandbox.set(sandboxId, s);
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
      if (port < 1 || port > 65535) throw invalidArgument("tcp target port must be between 1 and 65535");
      if (host === "") throw invalidArgument("tcp target host is required");
      const normalized = host === "localhost" ? "127.0.0.1" : host;
      if (!/^127\.\d+\.\d+\.\d+$/.test(normalized) && normalized !== "::1") {
        throw invalidArgument("tcp target host must be loopback");
      }
      target = { kind: "tcp", host: normalized, port };
    }
    const sandbox = this.o.sandboxes.byId(init.sandboxId);
    this.o.sandboxes.requireReady(sandbox);
    const tokenHash = this.checkToken(init.sandboxId, init.authorizationToken);
    const release = this.acquire(init.sandboxId, tokenHash);
    let remote: Duplex;
    try {
      remote = await this.o.relay.open(init.sandboxId, target, init.serviceId || `forward:${init.sandboxId}`);
    } catch (error) {
      release();
      throw error;
    }
    const local = frameDuplex(call, dataFrameCodec<TcpForwardFrame>());
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
      pending = this.connect(sandboxId);
      this.clients.set(sandboxId, pending);
      pending.catch(() => this.clients.delete(sandboxId));
    }
    return pending;
  }

  private async connect(sandboxId: string): Promise<Client> {
    const sock = await this.o.relay.open(sandboxId, { kind: "ssh" }, `exec:${sandboxId}`);
    const client = new Client();
    await new Promise<void>((resolve, reject) => {
      client.once("ready", resolve);
      client.once("error", reject);
      client.connect(sandboxSshOptions(sock, { readyTimeout: 10_000, keepaliveCountMax: 4 }));
    });
    const forget = (): void => {
      this.clients.delete(sandboxId);
    };
    client.on("close", forget);
    client.on("error", forget);
    client.on("end", () => {
      forget();
      // The sandbox closed the connection (it is stopping): close ours too, so
      // the relay ends now instead of holding the stopping supervisor.
      sock.end();
    });
    return client;
  }

  /** Drops a sandbox's pooled SSH connection (on delete or session loss). */
  dropClient(sandboxId: string): void {
    const pending = this.clients.get(sandboxId);
    this.clients.delete(sandboxId);
    pending?.then((client) => client.end()).catch(() => {});
  }

  private async openChannel(request: ExecSandboxRequest): Promise<ClientChannel> {
    const violation = validateExecRequest(request);
    if (violation) throw invalidArgument(violation);
    if (request.command.length === 0) throw invalidArgument("command is required");
    const sandbox = this.o.sandboxes.byId(request.sandboxId);
    this.o.sandboxes.requireReady(sandbox);
    const command = buildExecCommand(request);
    const pty = request.tty
      ? { term: "xterm-256color", cols: request.cols || 80, rows: request.rows || 24 }
      : undefined;
    for (let attempt = 0; ; attempt++) {
      const client = await this.client(request.sandboxId);
      try {
        return await new Promise<ClientChannel>((resolve, reject) => {
          client.exec(command, pty ? { pty } : {}, (error, channel) =>
            error ? reject(error) : resolve(channel),
          );
        });
      } catch (error) {
        // A pooled connection can die between uses; retry once on a new one.
        this.dropClient(request.sandboxId);
        if (attempt >= 1) throw unavailable(`exec channel failed: ${(error as Error).message}`);
      }
    }
  }

  /** Streams one command's output as exec events; exactly one exit at the end. */
  private runChannel(
    channel: ClientChannel,
    request: ExecSandboxRequest,
    sink: {
      write(event: ExecSandboxEvent): boolean;
      once(event: "drain", fn: () => void): unknown;
      end(): void;
      fail(error: StatusError): void;
    },
  ): { cancel(): void } {
    let exitCode: number | undefined;
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (code: number | undefined, error?: StatusError): void => {
      if (finished) return;
      finished = true;
      if (timer) clearTimeout(timer);
      if (code === undefined) {
        sink.fail(error ?? unavailable("exec relay closed before the command reported an exit status"));
      } else {
        sink.write({ payload: { $case: "exit", value: { exitCode: code } } });
        sink.end();
      }
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
    channel.on("exit", (code: number | null, signal?: string) => {
      exitCode = exitCodeOf(code, signal);
    });
    // ssh2 repeats the status on close: a command that ends at once can have
    // its status arrive in the same read as the exec's confirmation, before
    // the 'exit' listener above existed.
    channel.on("close", (code?: number | null, signal?: string) => {
      if (exitCode === undefined && (typeof code === "number" || signal)) exitCode = exitCodeOf(code, signal);
      finish(exitCode);
    });
    if (request.timeoutSeconds > 0) {
      timer = setTimeout(() => {
        // Unlike OpenShell, the command is killed, not left running.
        channel.signal("KILL");
        channel.close();
        finish(EXEC_TIMEOUT_EXIT);
      }, request.timeoutSeconds * 1000);
    }
    return {
      cancel: () => {
        if (finished) return;
        finished = true;
        if (timer) clearTimeout(timer);
        channel.signal("KILL");
        channel.close();
      },
    };
  }

  exec(call: ServerWritableStream<ExecSandboxRequest, ExecSandboxEvent>): void {
    const request = call.request;
    this.openChannel(request)
      .then((channel) => {
        if (request.stdin.length > 0) channel.write(request.stdin);
        channel.end();
        const run = this.runChannel(channel, request, {
          write: (event) => call.write(event),
          once: (event, fn) => call.once(event, fn),
          end: () => call.end(),
          fail: (error) => call.emit("error", toStatus(error)),
        });
        call.on("cancelled", () => run.cancel());
      })
      .catch((error) => call.emit("error", toStatus(error)));
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
      this.openChannel(request)
        .then((channel) => {
          if (request.stdin.length > 0) channel.write(request.stdin);
          const run = this.runChannel(channel, request, {
            write: (event) => call.write(event),
            once: (event, fn) => call.once(event, fn),
            end: () => call.end(),
            fail: (error) => call.emit("error", toStatus(error)),
          });
          call.on("data", (input: ExecSandboxInput) => {
            const payload = input.payload;
            if (payload?.$case === "stdin") {
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
          call.on("cancelled", () => run.cancel());
          call.resume();
        })
        .catch((error) => call.emit("error", toStatus(error)));
    });
    call.once("end", () => {
      if (!started) call.emit("error", toStatus(invalidArgument("empty stream: expected start message")));
    });
  }
}
