// Supervisor sessions and the byte relay. A supervisor dials the gateway and
// keeps one ConnectSupervisor stream open; to reach inside its sandbox the
// gateway sends RelayOpen{channel_id}, and the supervisor answers with a new
// RelayStream call whose first frame claims that channel. The gateway never
// dials a sandbox over the network.
//
// A sandbox of the local runtime has its SSH and forward sockets on this
// host: once its supervisor's session is up (the sandbox is Ready), the
// gateway connects to those sockets itself. The bytes of an upload or an exec then cross one
// process fewer; the relay stays the way to every other supervisor.

import { randomUUID } from "node:crypto";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import type { ServerDuplexStream } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import type { GatewayMessage, RelayFrame, SupervisorMessage } from "../gen/openshell.js";
import { frameDuplex } from "../transport/duplex.js";
import { dataFrameCodec } from "../transport/frames.js";
import { openPodForward } from "../transport/pod-forward.js";
import { connectUnixSocket, POD_FORWARD_SOCKET, POD_SSH_SOCKET } from "../transport/unix.js";
import { invalidArgument, notFound, StatusError } from "./status.js";

export const SESSION_WAIT_MS = 15_000;
export const RELAY_CLAIM_MS = 10_000;
export const HEARTBEAT_SECS = 15;

interface Session {
  id: string;
  sandboxId: string;
  instanceId: string;
  call: ServerDuplexStream<SupervisorMessage, GatewayMessage>;
}

interface PendingRelay {
  sandboxId: string;
  resolve(stream: Duplex): void;
  reject(error: StatusError): void;
  timer: NodeJS.Timeout;
}

export interface SessionEvents {
  connected(sandboxId: string, instanceId: string): void;
  disconnected(sandboxId: string, instanceId: string): void;
}

export class RelayHub {
  private readonly sessions = new Map<string, Session>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly pending = new Map<string, PendingRelay>();

  constructor(
    private readonly events: SessionEvents,
    /** The sandbox's directory on this host, when its runtime is local; undefined to relay. */
    private readonly localSandboxDir: (sandboxId: string) => string | undefined = () => undefined,
  ) {}

  hasSession(sandboxId: string): boolean {
    return this.sessions.has(sandboxId);
  }

  /**
   * Serves one ConnectSupervisor stream whose hello has been authorized for
   * `sandboxId`. A newer session for the same sandbox replaces the old one.
   */
  attach(
    call: ServerDuplexStream<SupervisorMessage, GatewayMessage>,
    sandboxId: string,
    instanceId: string,
  ): void {
    const session: Session = { id: randomUUID(), sandboxId, instanceId, call };
    const previous = this.sessions.get(sandboxId);
    this.sessions.set(sandboxId, session);
    if (previous) previous.call.end();
    call.write({
      payload: {
        $case: "sessionAccepted",
        value: { sessionId: session.id, heartbeatIntervalSecs: HEARTBEAT_SECS },
      },
    });
    const heartbeat = setInterval(() => {
      call.write({ payload: { $case: "heartbeat", value: {} } });
    }, HEARTBEAT_SECS * 1000);
    heartbeat.unref();
    call.on("data", (message: SupervisorMessage) => {
      if (message.payload?.$case === "relayOpenResult") {
        const result = message.payload.value;
        if (!result.success) {
          const pending = this.take(result.channelId);
          pending?.reject(
            new StatusError(status.UNAVAILABLE, result.error || "supervisor could not open relay"),
          );
        }
      }
    });
    const finish = (): void => {
      clearInterval(heartbeat);
      if (this.sessions.get(sandboxId) === session) {
        this.sessions.delete(sandboxId);
        this.events.disconnected(sandboxId, instanceId);
      }
    };
    call.on("end", () => {
      finish();
      call.end();
    });
    call.on("error", finish);
    call.on("cancelled", finish);
    this.events.connected(sandboxId, instanceId);
    for (const wake of this.waiters.get(sandboxId) ?? []) wake();
    this.waiters.delete(sandboxId);
  }

  /** Closes a sandbox's session (on delete), which makes its supervisor stop relaying. */
  detach(sandboxId: string): void {
    const session = this.sessions.get(sandboxId);
    if (!session) return;
    this.sessions.delete(sandboxId);
    session.call.end();
    for (const [channelId, pending] of this.pending) {
      if (pending.sandboxId === sandboxId) {
        this.take(channelId);
        pending.reject(new StatusError(status.UNAVAILABLE, "sandbox session closed"));
      }
    }
  }

  /** Removes a pending channel, its timeout stopped, for the caller to settle. */
  private take(channelId: string): PendingRelay | undefined {
    const pending = this.pending.get(channelId);
    this.pending.delete(channelId);
    if (pending) clearTimeout(pending.timer);
    return pending;
  }

  private waitForSession(sandboxId: string, timeoutMs: number): Promise<Session> {
    const existing = this.sessions.get(sandboxId);
    if (existing) return Promise.resolve(existing);
    return new Promise((resolve, reject) => {
      const wake = (): void => {
        clearTimeout(timer);
        const session = this.sessions.get(sandboxId);
        if (session) resolve(session);
        else reject(new StatusError(status.UNAVAILABLE, "supervisor relay failed: no supervisor session"));
      };
      const timer = setTimeout(() => {
        this.waiters.get(sandboxId)?.delete(wake);
        reject(
          new StatusError(status.UNAVAILABLE, "supervisor relay failed: no supervisor session within 15s"),
        );
      }, timeoutMs);
      let set = this.waiters.get(sandboxId);
      if (!set) {
        set = new Set();
        this.waiters.set(sandboxId, set);
      }
      set.add(wake);
    });
  }

  /** Opens a byte stream to the sandbox's SSH server (or a port on its loopback). */
  async open(
    sandboxId: string,
    target: { kind: "ssh" } | { kind: "tcp"; host: string; port: number },
    serviceId: string,
  ): Promise<Duplex> {
    const session = await this.waitForSession(sandboxId, SESSION_WAIT_MS);
    const dir = this.localSandboxDir(sandboxId);
    if (dir !== undefined && target.kind === "tcp") {
      return openPodForward(join(dir, POD_FORWARD_SOCKET), target).catch((error: Error) => {
        throw new StatusError(status.UNAVAILABLE, error.message);
      });
    }
    if (dir !== undefined) {
      const local = join(dir, POD_SSH_SOCKET);
      try {
        const socket = connectUnixSocket(local);
        // Whoever takes the socket listens for its errors and acts on them;
        // this one only keeps an error that comes first (the pod's end
        // refused or reset) from being an unhandled 'error' that ends the gateway.
        socket.on("error", () => {});
        return socket;
      } catch (error) {
        throw new StatusError(
          status.UNAVAILABLE,
          `cannot reach the sandbox SSH server: ${(error as Error).message}`,
        );
      }
    }
    const channelId = randomUUID();
    const opened = new Promise<Duplex>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(channelId);
        reject(new StatusError(status.DEADLINE_EXCEEDED, "relay open timed out"));
      }, RELAY_CLAIM_MS);
      this.pending.set(channelId, { sandboxId, resolve, reject, timer });
    });
    session.call.write({
      payload: {
        $case: "relayOpen",
        value: {
          channelId,
          target:
            target.kind === "ssh"
              ? { $case: "ssh", value: {} }
              : { $case: "tcp", value: { host: target.host, port: target.port } },
          serviceId,
        },
      },
    });
    return opened;
  }

  /**
   * Serves one RelayStream call: the first frame claims a pending channel of
   * the supervisor's own sandbox; from then on the call carries raw bytes.
   */
  claim(call: ServerDuplexStream<RelayFrame, RelayFrame>, callerSandboxId: string): void {
    // A relay call that never claims its channel would hold a stream for good.
    const unclaimed = setTimeout(() => {
      call.emit(
        "error",
        new StatusError(status.DEADLINE_EXCEEDED, "relay stream sent no init frame in time"),
      );
    }, RELAY_CLAIM_MS);
    unclaimed.unref();
    const stop = (): void => clearTimeout(unclaimed);
    call.once("error", stop);
    call.once("close", stop);
    let claimed = false;
    call.once("end", () => {
      stop();
      if (!claimed) call.emit("error", invalidArgument("empty relay stream: expected an init frame"));
    });
    call.once("data", (frame: RelayFrame) => {
      claimed = true;
      stop();
      if (frame.payload?.$case !== "init" || frame.payload.value.channelId === "") {
        call.emit("error", invalidArgument("first RelayFrame must be init"));
        return;
      }
      const channelId = frame.payload.value.channelId;
      const pending = this.pending.get(channelId);
      if (!pending || pending.sandboxId !== callerSandboxId) {
        call.emit("error", notFound("unknown or expired relay channel"));
        return;
      }
      this.take(channelId);
      pending.resolve(frameDuplex(call, dataFrameCodec<RelayFrame>(), { sendEofFrame: true }));
    });
  }
}
