// Port forwarding: a local TCP listener whose every connection becomes a
// ForwardTcp call with a TCP target, which the gateway serves on the
// sandbox's own loopback (through its supervisor and agent). No SSH, and no
// system `ssh`: the bytes travel as data frames, as OpenShell's SDK and its
// `forward service` send them, one call and one short-lived session token
// per connection (the gateway allows three connections per token).
//
// Each connection is its own: one the sandbox refuses (nothing listens on
// the port yet) ends at once, cleanly, with the reason passed to
// `onConnectionError`, and the listener stays for the next. Each side's end
// of output is passed on without ending the other direction (half-close),
// and bytes move at the pace of the slower side (the local socket and the
// call each hold back the other). The listener closes with `close()`, the
// caller's signal, or the sandbox's end (deleted or stopped), which it
// follows on WatchSandbox.

import { createServer, type Server, type Socket } from "node:net";
import { Metadata } from "@grpc/grpc-js";
import { OpenShellError } from "../core/errors.js";
import {
  checkTargetPort,
  DEFAULT_FORWARD_BIND,
  FORWARD_HALF_CLOSE_METADATA_KEY,
  forwardUrl,
  hostPort,
  loopbackAddress,
} from "../core/forward.js";
import { SandboxPhase, type TcpForwardFrame, WatchSandboxRequest } from "../gen/openshell.js";
import { frameDuplex } from "../transport/duplex.js";
import { dataFrameCodec } from "../transport/frames.js";
import { mapGrpcError, unary } from "../transport/grpc.js";
import { checkSshSession } from "../transport/ssh.js";
import { InvalidArgumentError, NotFoundError, toApiError } from "./errors.js";
import type { Link } from "./link.js";

export interface ForwardOptions {
  /** The local port to listen on; 0 (the default) takes any free one (see `port`). */
  localPort?: number | undefined;
  /** The local address to listen on (default 127.0.0.1; 0.0.0.0 for every interface). */
  localHost?: string | undefined;
  /** The host inside the sandbox: a loopback address (default 127.0.0.1). */
  targetHost?: string | undefined;
  /** Aborting closes the forward, as `close()` does. */
  signal?: AbortSignal | undefined;
  /** Told of each connection that failed (the sandbox refused it, the gateway did); the forward stays. */
  onConnectionError?: ((error: OpenShellError) => void) | undefined;
}

/** A forward from a local port to a port inside a sandbox, open until closed. */
export interface PortForward extends AsyncDisposable {
  /** The local address it listens on. */
  readonly host: string;
  /** The local port it listens on (the one chosen, for `localPort: 0`). */
  readonly port: number;
  /** `http://host:port/` (a wildcard address shown as localhost). */
  readonly url: string;
  readonly targetHost: string;
  readonly targetPort: number;
  /** Connections open through it now. */
  readonly connections: number;
  /** Stops listening and ends its connections; resolves once all is closed. */
  close(): Promise<void>;
  /**
   * Resolves once the forward has closed: with undefined after `close()` or
   * the signal, with the reason when the sandbox ended it (deleted, stopped).
   */
  readonly closed: Promise<string | undefined>;
}

/** Phases in which a sandbox serves no forward again without a start. */
const ENDED_PHASES = new Map([
  [SandboxPhase.SANDBOX_PHASE_STOPPING, "stopping"],
  [SandboxPhase.SANDBOX_PHASE_STOPPED, "stopped"],
  [SandboxPhase.SANDBOX_PHASE_DELETING, "being deleted"],
]);
/** The longest wait before following the sandbox again after the watch broke (the gateway restarting). */
const WATCH_RETRY_MAX_MS = 2000;

function checkForwardOptions(
  targetPort: number,
  options: ForwardOptions,
): { localHost: string; localPort: number; targetHost: string } {
  const problem = checkTargetPort("port", targetPort);
  if (problem) throw new InvalidArgumentError(problem, { field: "port" });
  const targetHost = loopbackAddress(options.targetHost ?? "127.0.0.1");
  if (targetHost === undefined) {
    throw new InvalidArgumentError(
      `targetHost ${options.targetHost}: only the sandbox's loopback can be reached (127.0.0.1, ::1, localhost)`,
      { field: "targetHost" },
    );
  }
  const localPort = options.localPort ?? 0;
  if (!Number.isInteger(localPort) || localPort < 0 || localPort > 65535) {
    throw new InvalidArgumentError(`localPort ${localPort}: expected a port from 0 to 65535`, {
      field: "localPort",
    });
  }
  return { localHost: options.localHost ?? DEFAULT_FORWARD_BIND, localPort, targetHost };
}

/** Listens on `host:port`; a port in use or refused is an error naming it. */
function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      const where = hostPort(host, port);
      const reason =
        error.code === "EADDRINUSE"
          ? `${where} is already in use by another process`
          : error.code === "EACCES"
            ? `cannot listen on ${where}: permission denied (ports below 1024 need privileges)`
            : error.code === "EADDRNOTAVAIL" || error.code === "ENOTFOUND"
              ? `cannot listen on ${where}: no such local address`
              : `cannot listen on ${where}: ${error.message}`;
      reject(new OpenShellError("failed_precondition", reason, { cause: error }));
    };
    server.once("error", onError);
    server.listen({ host, port, exclusive: true }, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** @internal Starts a forward to `targetPort` of the sandbox `sandbox` (Ready). */
export async function startForward(
  link: Link,
  sandbox: { id: string; name: string },
  targetPort: number,
  options: ForwardOptions = {},
): Promise<PortForward> {
  const { localHost, localPort, targetHost } = checkForwardOptions(targetPort, options);
  const { client, target } = await link.grpc();
  const sockets = new Set<Socket>();
  const serviceId = `service-forward:${sandbox.name}:${targetHost}:${targetPort}`;
  const report = (error: unknown): void => {
    const mapped = toApiError(mapGrpcError(error, target)) as OpenShellError;
    try {
      options.onConnectionError?.(mapped);
    } catch {
      // A callback that throws must not end the forward.
    }
  };

  /** One local connection, carried by its own ForwardTcp call. */
  const carry = async (socket: Socket): Promise<void> => {
    const session = await unary(target, client.createSshSession.bind(client), { sandboxId: sandbox.id });
    checkSshSession(session);
    const revoke = (): void => {
      unary(target, client.revokeSshSession.bind(client), { token: session.token }).catch(() => {});
    };
    if (socket.destroyed) return revoke();
    const metadata = new Metadata();
    metadata.set(FORWARD_HALF_CLOSE_METADATA_KEY, "1");
    const call = client.forwardTcp(metadata);
    call.write({
      payload: {
        $case: "init",
        value: {
          sandboxId: sandbox.id,
          serviceId,
          target: { $case: "tcp", value: { host: targetHost, port: targetPort } },
          authorizationToken: session.token,
        },
      },
    });
    const stream = frameDuplex(call, dataFrameCodec<TcpForwardFrame>(), { readEofFrame: true });
    let received = 0;
    stream.on("data", (chunk: Buffer) => {
      received += chunk.length;
    });
    stream.on("error", (error) => {
      report(error);
      // Refused before a byte came back: a clean end, as `ssh -L` gives. Cut
      // short after: a reset, so the client cannot take it for the whole.
      if (received === 0) socket.end();
      else socket.resetAndDestroy();
    });
    stream.once("close", revoke);
    // The local client reset or went away: the call goes with it.
    socket.on("error", () => stream.destroy());
    socket.once("close", () => stream.destroy());
    stream.pipe(socket);
    socket.pipe(stream);
  };

  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    // Persistent: the local peer may reset at any point, more than once.
    socket.on("error", () => {});
    socket.setNoDelay(true);
    carry(socket).catch((error: unknown) => {
      report(error);
      socket.end();
    });
  });
  await listen(server, localHost, localPort);
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : localPort;

  let resolveClosed!: (reason: string | undefined) => void;
  const closed = new Promise<string | undefined>((resolve) => {
    resolveClosed = resolve;
  });
  const stopWatching = new AbortController();
  let closing: Promise<void> | undefined;
  const shutdown = (reason: string | undefined): Promise<void> => {
    closing ??= (async () => {
      stopWatching.abort();
      options.signal?.removeEventListener("abort", onAbort);
      const stopped = new Promise<void>((done) => server.close(() => done()));
      for (const socket of sockets) socket.destroy();
      await stopped;
      resolveClosed(reason);
    })();
    return closing;
  };
  const onAbort = (): void => void shutdown(undefined);
  if (options.signal?.aborted) onAbort();
  else options.signal?.addEventListener("abort", onAbort, { once: true });
  void followSandbox(link, sandbox, stopWatching.signal).then((reason) => {
    if (reason !== undefined) void shutdown(reason);
  });

  return {
    host: localHost,
    port,
    url: forwardUrl(localHost, port),
    targetHost,
    targetPort,
    get connections() {
      return sockets.size;
    },
    close: () => shutdown(undefined),
    closed,
    [Symbol.asyncDispose]: () => shutdown(undefined),
  };
}

/**
 * Follows the sandbox until it ends (resolving with why) or `signal` stops
 * it (undefined). A watch that breaks (the gateway restarting) is taken up
 * again, after asking whether the sandbox still exists.
 */
async function followSandbox(
  link: Link,
  sandbox: { id: string; name: string },
  signal: AbortSignal,
): Promise<string | undefined> {
  const deleted = `sandbox '${sandbox.name}' was deleted`;
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      const request = WatchSandboxRequest.fromPartial({ id: sandbox.id, followStatus: true });
      for await (const event of link.watch(request, signal)) {
        if (event.payload?.$case !== "sandbox") continue;
        attempt = 0;
        const ended = ENDED_PHASES.get(event.payload.value.status?.phase ?? SandboxPhase.UNRECOGNIZED);
        if (ended) return `sandbox '${sandbox.name}' is ${ended}`;
      }
      if (signal.aborted) return undefined;
      await link.sandbox(sandbox.name, { signal });
    } catch (error) {
      if (signal.aborted) return undefined;
      if (error instanceof NotFoundError || (error as OpenShellError).code === "not_found") return deleted;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.min(WATCH_RETRY_MAX_MS, 250 * 2 ** attempt));
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }
  return undefined;
}
