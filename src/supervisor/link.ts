// The supervisor's connection to its gateway: a gRPC client that presents the
// sandbox's own credentials on every call, the ConnectSupervisor session that
// keeps the sandbox Ready, relays opened on request (to the pod's SSH server,
// or to a port on the pod's loopback through the agent), and the log stream.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import {
  type CallOptions,
  type ChannelCredentials,
  type ClientDuplexStream,
  type ClientWritableStream,
  credentials,
  type InterceptingCall,
  InterceptingCall as InterceptingCallImpl,
  type Interceptor,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { messageOf } from "../core/errors.js";
import { checkTargetPort, FORWARD_CONNECTIONS_PER_SANDBOX, loopbackAddress } from "../core/forward.js";
import { SUPERVISOR_METADATA_KEY } from "../core/protocol.js";
import type {
  GatewayMessage,
  OpenShellClient,
  PushSandboxLogsRequest,
  PushSandboxLogsResponse,
  RelayFrame,
  RelayOpen,
  SandboxLogLine,
  SupervisorMessage,
} from "../gen/openshell.js";
import { parseSupervisorEndpoint, SUPERVISOR_ENV, type SupervisorTls } from "../runtime/contract.js";
import { frameDuplex } from "../transport/duplex.js";
import { dataFrameCodec, FastOpenShellClient } from "../transport/frames.js";
import { MAX_MESSAGE_BYTES } from "../transport/grpc.js";
import { openPodForward } from "../transport/pod-forward.js";
import { connectUnixSocket } from "../transport/unix.js";

/**
 * What a session refused for a sandbox the gateway no longer has ends with:
 * its credential unknown (the sandbox's record is gone) or the sandbox being
 * deleted.
 */
const SANDBOX_GONE: readonly status[] = [status.UNAUTHENTICATED, status.NOT_FOUND];

const LOG_FLUSH_MS = 200;
const LOG_BATCH = 100;
/** The longest wait between two attempts to reach a gateway that is away. */
const RECONNECT_MAX_MS = 2000;
/** TCP relays a supervisor serves at once (the gateway allows FORWARD_CONNECTIONS_PER_SANDBOX). */
const TCP_RELAYS_MAX = 2 * FORWARD_CONNECTIONS_PER_SANDBOX;

/**
 * The channel credentials for `endpoint` (see SUPERVISOR_ENV.endpoint): none
 * on a Unix socket or a TCP endpoint named `http://`, else TLS verified with
 * the CA file `tls.ca` (the system's roots without one), presenting the
 * client certificate `tls.cert` when given. A file that cannot be read is an
 * error naming its variable.
 */
export function supervisorChannel(
  endpoint: string,
  tls: SupervisorTls | undefined,
): { target: string; credentials: ChannelCredentials } {
  const parsed = parseSupervisorEndpoint(endpoint);
  if (parsed.kind === "unix" || !parsed.tls) {
    return { target: parsed.target, credentials: credentials.createInsecure() };
  }
  const read = (variable: string, path: string | undefined): Buffer | null => {
    if (path === undefined) return null;
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(
        `${variable}=${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? messageOf(error)})`,
      );
    }
  };
  return {
    target: parsed.target,
    credentials: credentials.createSsl(
      read(SUPERVISOR_ENV.tlsCa, tls?.ca),
      read(SUPERVISOR_ENV.tlsKey, tls?.key),
      read(SUPERVISOR_ENV.tlsCert, tls?.cert),
    ),
  };
}

/**
 * A client of the gateway whose calls carry the sandbox's credentials once
 * `identify` has been called. The channel can connect before that: a spare
 * supervisor connects while it waits for a sandbox to serve.
 */
export function supervisorClient(
  endpoint: string,
  tls?: SupervisorTls,
): {
  client: OpenShellClient;
  identify(sandboxId: string, secret: string): void;
} {
  let credential = "";
  const interceptor: Interceptor = (options, nextCall): InterceptingCall =>
    new InterceptingCallImpl(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(SUPERVISOR_METADATA_KEY, credential);
        next(metadata, listener);
      },
    });
  // HTTP/2's default 64 KiB windows toward the supervisor, not BULK_CHANNEL_OPTIONS: a relay
  // carries both directions of a connection over this one HTTP/2 connection, and with 8 MiB
  // windows both ways an echo of 1 MB stalled for good (each side with more in flight than
  // the socket holds, neither reading; the session then timed out). With the gateway's
  // writes bounded below what the socket buffers, the gateway keeps reading and both flow.
  const channel = supervisorChannel(endpoint, tls);
  const client = new FastOpenShellClient(channel.target, channel.credentials, {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 15_000,
    // A gateway that went away is looked for again every few seconds, not every two minutes.
    "grpc.initial_reconnect_backoff_ms": 500,
    "grpc.max_reconnect_backoff_ms": RECONNECT_MAX_MS,
    interceptors: [interceptor],
  });
  return {
    client,
    identify: (sandboxId, secret) => {
      credential = `${sandboxId}:${secret}`;
    },
  };
}

/** Promise form of a unary call on the supervisor client. */
export function call<Req, Res>(
  method: (
    request: Req,
    metadata: Metadata,
    options: Partial<CallOptions>,
    callback: (error: Error | null, response: Res) => void,
  ) => unknown,
  request: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, new Metadata(), {}, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

export interface SessionOptions {
  client: OpenShellClient;
  sandboxId: string;
  instanceId: string;
  /** Unix socket of the pod's SSH server, as seen from the host. */
  sshSocket: string;
  /** Unix socket of the pod's forwards to its loopback (transport/pod-forward.ts), as seen from the host. */
  forwardSocket: string;
  log(line: string): void;
  /** Called each time a gateway accepts the session (again, after a reconnect). */
  accepted?(): void;
  /**
   * Called, and no reconnect made, when the gateway refuses the session
   * because it no longer has the sandbox (deleted, or being deleted).
   */
  gone?(reason: string): void;
}

/**
 * Holds the supervisor session open, reconnecting with backoff (0.5 s → 2 s,
 * so a gateway that comes back adopts its sandboxes within seconds) if it
 * drops, for as long as the supervisor runs, and serves each RelayOpen by dialing the pod's SSH socket and
 * bridging it to a new RelayStream call.
 */
export class SupervisorSession {
  private stream: ClientDuplexStream<SupervisorMessage, GatewayMessage> | undefined;
  private stopped = false;
  /** Open relays, each settled once the gateway has ended its call (all bytes through). */
  private readonly relays = new Set<Promise<void>>();
  private backoffMs = 500;
  /** TCP relays open, each a connection to a port inside the pod. */
  private tcpRelays = 0;
  constructor(private readonly o: SessionOptions) {}

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.stream?.end();
    this.stream?.cancel();
  }

  /**
   * Refuses new relays and waits, at most `timeoutMs`, for the open ones to
   * finish. Once the pod is gone its sockets have ended, but what the agent
   * wrote last (an attached client's final output and exit status) may still
   * be queued on the relay calls; exiting first would drop it.
   */
  async drain(timeoutMs: number): Promise<void> {
    this.stopped = true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(this.relays),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  private connect(): void {
    if (this.stopped) return;
    const stream = this.o.client.connectSupervisor();
    this.stream = stream;
    stream.write({
      payload: { $case: "hello", value: { sandboxId: this.o.sandboxId, instanceId: this.o.instanceId } },
    });
    stream.on("data", (message: GatewayMessage) => {
      const payload = message.payload;
      if (payload?.$case === "sessionAccepted") {
        this.backoffMs = 500;
        this.o.accepted?.();
      } else if (payload?.$case === "relayOpen") this.openRelay(stream, payload.value);
      else if (payload?.$case === "sessionRejected") this.o.log(`session rejected: ${payload.value.reason}`);
    });
    const retry = (): void => {
      if (this.stream !== stream || this.stopped) return;
      this.stream = undefined;
      const delay = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_MAX_MS);
      setTimeout(() => this.connect(), delay).unref();
    };
    stream.on("error", (error: ServiceError) => {
      if (SANDBOX_GONE.includes(error.code) && this.o.gone && !this.stopped) {
        this.stopped = true;
        this.o.gone(error.details);
        return;
      }
      retry();
    });
    stream.on("end", retry);
  }

  private openRelay(session: ClientDuplexStream<SupervisorMessage, GatewayMessage>, open: RelayOpen): void {
    const fail = (error: string): void => {
      session.write({
        payload: { $case: "relayOpenResult", value: { channelId: open.channelId, success: false, error } },
      });
    };
    if (this.stopped) {
      fail("the sandbox is stopping");
      return;
    }
    let target: Promise<Socket>;
    if (open.target?.$case === "tcp") {
      const { host, port } = open.target.value;
      const loopback = loopbackAddress(host);
      if (loopback === undefined || checkTargetPort("port", port) !== undefined) {
        fail(
          `tcp relay target ${host}:${port} refused: only a port on the sandbox's loopback can be reached`,
        );
        return;
      }
      if (this.tcpRelays >= TCP_RELAYS_MAX) {
        fail(`the sandbox has ${TCP_RELAYS_MAX} forwarded connections open already`);
        return;
      }
      this.tcpRelays += 1;
      target = openPodForward(this.o.forwardSocket, { host: loopback, port });
      target.then(
        (socket) => socket.once("close", () => (this.tcpRelays -= 1)),
        () => (this.tcpRelays -= 1),
      );
    } else {
      this.o.log(`relaying ${open.serviceId || "a connection"} to the sandbox SSH server`);
      target = connectedUnixSocket(this.o.sshSocket).catch((error: Error) => {
        throw new Error(`cannot reach the sandbox SSH server: ${error.message}`);
      });
    }
    target.then(
      (socket) => this.relay(open.channelId, socket),
      (error: Error) => fail(error.message),
    );
  }

  /** Joins the pod's end of a relay to a new RelayStream call that claims `channelId`. */
  private relay(channelId: string, socket: Socket): void {
    // Persistent: the pod owns the other end and may reset it at any time,
    // and a second 'error' with no listener would end the supervisor.
    socket.on("error", () => {});
    const relay = this.o.client.relayStream();
    relay.write({ payload: { $case: "init", value: { channelId } } });
    const remote = frameDuplex(relay, dataFrameCodec<RelayFrame>(), { readEofFrame: true });
    remote.pipe(socket);
    socket.pipe(remote);
    // A pod that goes away resets its sockets (ECONNRESET when it dies with
    // input unread), yet what it wrote before, an attached client's exit
    // status perhaps, is still queued on the relay: end the relay then,
    // never cancel it.
    socket.on("error", () => {
      if (!remote.writableEnded) remote.end();
    });
    remote.on("error", () => socket.destroy());
    remote.on("close", () => socket.destroy());
    const finished = new Promise<void>((resolve) => {
      relay.on("status", () => resolve());
      relay.on("error", () => resolve());
    });
    this.relays.add(finished);
    void finished.then(() => this.relays.delete(finished));
  }
}

/** A connection to the pod's socket at `path`, once connected. */
function connectedUnixSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let socket: Socket;
    try {
      socket = connectUnixSocket(path);
    } catch (error) {
      reject(error as Error);
      return;
    }
    const onError = (error: Error): void => {
      socket.destroy();
      reject(error);
    };
    socket.once("error", onError);
    socket.once("connect", () => {
      socket.off("error", onError);
      resolve(socket);
    });
  });
}

/** Lines the pusher holds for the gateway before it asks its producers to wait. */
const LOG_QUEUE_LINES = 4 * LOG_BATCH;
/**
 * Lines it holds at most: producers that cannot wait (the egress proxy's
 * decisions) are dropped past it, and the drop is logged once there is room.
 */
const LOG_QUEUE_MAX_LINES = 16 * LOG_BATCH;

/**
 * Batches sandbox log lines onto one PushSandboxLogs stream, at the pace the
 * gateway reads them: a stream that does not take more stops the writing,
 * and `backpressure` tells producers to wait, so nothing here grows with a
 * flood. What the gateway did not take when a stream failed is lost with it.
 */
export class LogPusher {
  private pending: SandboxLogLine[] = [];
  private timer: NodeJS.Timeout | undefined;
  private stream: ClientWritableStream<PushSandboxLogsRequest> | undefined;
  /** Set while the stream does not take more: cleared on its "drain" or its end. */
  private blocked: Promise<void> | undefined;
  private waiting: { promise: Promise<void>; resolve: () => void } | undefined;
  private dropped = 0;

  constructor(
    private readonly client: OpenShellClient,
    private readonly sandboxId: string,
  ) {}

  /** Queues a line; past LOG_QUEUE_MAX_LINES it is dropped and counted. */
  push(level: string, target: string, message: string): void {
    if (this.pending.length >= LOG_QUEUE_MAX_LINES) {
      this.dropped += 1;
      return;
    }
    if (this.dropped > 0 && this.pending.length < LOG_QUEUE_LINES) {
      const count = this.dropped;
      this.dropped = 0;
      this.pending.push(this.line("WARN", "openshell_supervisor", `${count} log line(s) dropped`));
    }
    this.pending.push(this.line(level, target, message));
    if (this.pending.length >= LOG_BATCH) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), LOG_FLUSH_MS);
  }

  /** A promise while the queue is full (producers wait for it), else undefined. */
  backpressure(): Promise<void> | undefined {
    if (this.pending.length < LOG_QUEUE_LINES) return undefined;
    if (!this.waiting) {
      let resolve!: () => void;
      const promise = new Promise<void>((done) => {
        resolve = done;
      });
      this.waiting = { promise, resolve };
    }
    return this.waiting.promise;
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.pending.length > 0 && !this.blocked) {
      if (!this.stream || this.stream.destroyed || this.stream.writableEnded) this.stream = this.openStream();
      const stream = this.stream;
      const taken = stream.write({ sandboxId: this.sandboxId, logs: this.pending.splice(0, LOG_BATCH) });
      if (!taken) this.block(stream);
    }
    if (this.waiting && this.pending.length < LOG_QUEUE_LINES) {
      const { resolve } = this.waiting;
      this.waiting = undefined;
      resolve();
    }
  }

  private block(stream: ClientWritableStream<PushSandboxLogsRequest>): void {
    this.blocked = new Promise<void>((resolve) => {
      if (stream.destroyed) return resolve();
      const unblock = (): void => {
        stream.off("drain", unblock);
        stream.off("close", unblock);
        stream.off("error", unblock);
        resolve();
      };
      stream.on("drain", unblock);
      stream.on("close", unblock);
      stream.on("error", unblock);
    });
    void this.blocked.then(() => {
      this.blocked = undefined;
      this.flush();
    });
  }

  private line(level: string, target: string, message: string): SandboxLogLine {
    return {
      sandboxId: this.sandboxId,
      timestampMs: Date.now(),
      level,
      target,
      message,
      source: "sandbox",
      fields: {},
    };
  }

  private openStream(): ClientWritableStream<PushSandboxLogsRequest> {
    const stream = this.client.pushSandboxLogs(
      (_error: Error | null, _response?: PushSandboxLogsResponse) => {
        if (this.stream === stream) this.stream = undefined;
      },
    );
    // A failed call ends with its callback; the stream's own error is that one.
    stream.on("error", () => {});
    return stream;
  }

  /** Sends what is pending and closes the stream; resolves when the gateway has it (2 s at most). */
  async close(): Promise<void> {
    const deadline = performance.now() + 2000;
    this.flush();
    while (this.blocked && performance.now() < deadline) {
      await Promise.race([this.blocked, new Promise((resolve) => setTimeout(resolve, 50))]);
      this.flush();
    }
    const stream = this.stream;
    this.stream = undefined;
    if (!stream) return;
    await new Promise<void>((resolve) => {
      stream.on("status", () => resolve());
      stream.on("error", () => resolve());
      stream.end();
      setTimeout(resolve, Math.max(0, deadline - performance.now())).unref();
    });
  }
}

export function newInstanceId(): string {
  return randomUUID();
}
