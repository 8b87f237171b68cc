// SSH into a sandbox without a system `ssh`: an ssh2 client whose socket is
// a ForwardTcp stream through the gateway. Used by connect, attach, upload
// and download; the same stream is what `ssh-proxy` gives OpenSSH.

import type { Duplex } from "node:stream";
import type { Client, ClientChannel, PseudoTtyOptions } from "ssh2";
import { OpenShellError } from "../core/errors.js";
import { exitCodeOf } from "../core/signals.js";
import type { CreateSshSessionResponse, OpenShellClient, TcpForwardFrame } from "../gen/openshell.js";
import { frameDuplex } from "./duplex.js";
import { dataFrameCodec } from "./frames.js";
import { type GatewayTarget, mapGrpcError, unary } from "./grpc.js";

const SANDBOX_ID = /^[A-Za-z0-9._-]{1,128}$/;
const TOKEN = /^[A-Za-z0-9._~+/=-]{1,4096}$/;
const HOST = /^[A-Za-z0-9.:[\]-]{1,253}$/;
const FINGERPRINT = /^[A-Za-z0-9:+/=-]{0,256}$/;

/** Checks a CreateSshSession response against the charsets OpenShell clients enforce. */
export function checkSshSession(session: CreateSshSessionResponse): void {
  const bad = (field: string): OpenShellError =>
    new OpenShellError(
      "internal",
      `gateway returned invalid SSH session response: ${field} has unexpected characters`,
    );
  if (!SANDBOX_ID.test(session.sandboxId)) throw bad("sandbox_id");
  if (!TOKEN.test(session.token)) throw bad("token");
  if (!HOST.test(session.gatewayHost)) throw bad("gateway_host");
  if (session.gatewayScheme !== "http" && session.gatewayScheme !== "https") throw bad("gateway_scheme");
  if (session.gatewayPort < 1 || session.gatewayPort > 65535) throw bad("gateway_port");
  if (!FINGERPRINT.test(session.hostKeyFingerprint)) throw bad("host_key_fingerprint");
}

/**
 * How both the CLI and the gateway's exec pool log into a sandbox's SSH
 * server: user `sandbox`, auth `none`, any host key — the key is random per
 * start and the gateway already authenticated both ends, as with
 * OpenShell's StrictHostKeyChecking=no.
 */
export function sandboxSshOptions(
  sock: Duplex,
  timing: { readyTimeout: number; keepaliveCountMax: number },
): Parameters<Client["connect"]>[0] {
  return {
    sock,
    username: "sandbox",
    authHandler: [{ type: "none", username: "sandbox" }],
    hostVerifier: () => true,
    keepaliveInterval: 15_000,
    ...timing,
  } as Parameters<Client["connect"]>[0];
}

/** Opens a ForwardTcp byte stream to the sandbox's SSH server. */
export function forwardSsh(
  client: OpenShellClient,
  target: GatewayTarget,
  sandboxId: string,
  token: string,
): Duplex {
  const call = client.forwardTcp();
  call.write({
    payload: {
      $case: "init",
      value: {
        sandboxId,
        serviceId: `ssh-proxy:${sandboxId}`,
        target: { $case: "ssh", value: {} },
        authorizationToken: token,
      },
    },
  });
  const stream = frameDuplex(call, dataFrameCodec<TcpForwardFrame>());
  // Surface the gateway's reason (revoked token, not ready) instead of a bare reset.
  call.on("error", (error) => stream.emit("gateway-error", mapGrpcError(error, target)));
  // The gateway ends its side only when the connection is over (the sandbox
  // closed it, or its supervisor went away). Left half-open, ssh2 would keep
  // waiting for channels that can no longer close, and the CLI would hang, or
  // exit 0 with no status once nothing else is left to wait for.
  stream.once("end", () => stream.destroy());
  return stream;
}

export interface SandboxSsh {
  client: Client;
  sandboxId: string;
  close(): Promise<void>;
}

/** An SSH connection to a sandbox by name: session token, ForwardTcp, handshake. */
export async function connectSandboxSsh(
  grpc: OpenShellClient,
  target: GatewayTarget,
  sandboxId: string,
  options: { signal?: AbortSignal } = {},
): Promise<SandboxSsh> {
  const session = await unary(target, grpc.createSshSession.bind(grpc), { sandboxId }, { ...options });
  checkSshSession(session);
  const sock = forwardSsh(grpc, target, sandboxId, session.token);
  let gatewayError: OpenShellError | undefined;
  sock.on("gateway-error", (error: OpenShellError) => {
    gatewayError = error;
  });
  // ssh2 loads with the first connection: commands that open none never pay for it.
  const { Client } = await import("ssh2");
  const client = new Client();
  // Persistent from the start: ssh2 can report more than one 'error' for one
  // connection (a sandbox that stalls the handshake gives a timeout, then the
  // lost connection), and an 'error' with no listener ends the CLI with a
  // stack trace instead of this message. Later errors surface as the
  // channels' closes.
  await new Promise<void>((resolve, reject) => {
    client.once("ready", () => resolve());
    client.on("error", (error) =>
      reject(
        gatewayError ?? new OpenShellError("connection_lost", `SSH to the sandbox failed: ${error.message}`),
      ),
    );
    client.connect(sandboxSshOptions(sock, { readyTimeout: 20_000, keepaliveCountMax: 3 }));
  });
  return {
    client,
    sandboxId,
    close: async () => {
      client.end();
      await unary(target, grpc.revokeSshSession.bind(grpc), { token: session.token }).catch(() => {});
    },
  };
}

export function sshExec(
  client: Client,
  command: string,
  options: { pty?: PseudoTtyOptions } = {},
): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    client.exec(command, options.pty ? { pty: options.pty } : {}, (error, channel) =>
      error
        ? reject(
            new OpenShellError("connection_lost", `cannot start a command in the sandbox: ${error.message}`),
          )
        : resolve(channel),
    );
  });
}

export function sshSubsystem(client: Client, name: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    client.subsys(name, (error, channel) =>
      error
        ? reject(new OpenShellError("connection_lost", `sandbox refused '${name}': ${error.message}`))
        : resolve(channel),
    );
  });
}

/**
 * Resolves with the channel's exit status (128 + N for a signal) once it
 * closes. ssh2 repeats the status in the close event, which matters: a
 * command that ends at once can have its status arrive in the same read as
 * the channel's confirmation, before any 'exit' listener added after the open
 * callback exists.
 */
export function channelExit(channel: ClientChannel): Promise<number> {
  return new Promise((resolve, reject) => {
    let code: number | undefined;
    channel.on("exit", (exitCode: number | null, signal?: string) => {
      code = exitCodeOf(exitCode, signal);
    });
    channel.on("close", (exitCode?: number | null, signal?: string) => {
      if (code === undefined && (typeof exitCode === "number" || signal)) code = exitCodeOf(exitCode, signal);
      if (code === undefined) {
        reject(
          new OpenShellError(
            "connection_lost",
            "the sandbox connection closed before the command reported an exit status",
          ),
        );
      } else resolve(code);
    });
  });
}
