// The gRPC service: each OpenShell method checks who is calling, then hands
// the work to the lifecycle (sandboxes.ts), the SSH side (ssh.ts), the relay
// (relay.ts) or the watch bus (bus.ts).
//
// Who may call what:
//   Health                              anyone (so `status` can tell "down" from "refused")
//   user methods                        the gateway's bearer token (when one is set)
//   supervisor methods                  a sandbox's own supervisor secret, for that sandbox only
//   GetSandboxConfig                    either (a supervisor when it presents its secret)

import { timingSafeEqual } from "node:crypto";
import type {
  Metadata,
  ServerDuplexStream,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
  sendUnaryData,
} from "@grpc/grpc-js";
import { validateWorkspaceName } from "../core/names.js";
import { phaseOf } from "../core/phases.js";
import {
  CAPABILITY_SANDBOX_FILES,
  CAPABILITY_SANDBOX_IMAGES,
  CAPABILITY_SANDBOX_TTL,
  CAPABILITY_START_ON_ATTACH,
  SUPERVISOR_METADATA_KEY,
} from "../core/protocol.js";
import {
  type ExecSandboxEvent,
  type ExecSandboxInput,
  type ExecSandboxRequest,
  type GatewayMessage,
  type GetSandboxFilesRequest,
  type GetSandboxPolicyStatusRequest,
  type GetSupervisorLaunchRequest,
  type OpenShellServer,
  type PullImageRequest,
  type PushSandboxLogsRequest,
  type RelayFrame,
  type RemoveImageRequest,
  type ReportPolicyStatusRequest,
  type Sandbox,
  SandboxPhase,
  type SandboxStreamEvent,
  ServiceStatus,
  type SupervisorMessage,
  type SupervisorStatusReport,
  type TcpForwardFrame,
  type UpdateConfigRequest,
  type WatchSandboxRequest,
} from "../gen/openshell.js";
import type { GetSandboxConfigRequest, GetSandboxConfigResponse } from "../gen/sandbox.js";
import { reportFromWire } from "../runtime/contract.js";
import { LOG_RING, LOG_RING_BYTES, levelPasses, type SandboxBus, sourcePasses } from "./bus.js";
import { Policies } from "./policies.js";
import type { RelayHub } from "./relay.js";
import type { Sandboxes } from "./sandboxes.js";
import type { SshAccess } from "./ssh.js";
import { invalidArgument, notFound, StatusError, toStatus, unauthenticated } from "./status.js";
import type { Store } from "./store.js";

const LOG_LINES_DEFAULT = 2000;
const EARLIER_LINES_DROPPED = `earlier log lines were dropped: the gateway keeps the latest ${LOG_RING} lines of a sandbox's log (at most ${LOG_RING_BYTES / 1024 / 1024} MiB)`;

/**
 * Whether a request for the last `lines` lines since `sinceMs` reaches back
 * past the oldest line held, when lines before it were dropped: only then
 * did it ask for lines that are gone.
 */
function reachesDroppedLines(bus: SandboxBus, id: string, lines: number, sinceMs: number): boolean {
  const held = bus.tailLogs(id);
  if (!bus.earlierLogsDropped(id) || lines < held.length) return false;
  const oldest = held[0];
  return oldest === undefined || sinceMs <= oldest.timestampMs;
}
const WATCH_LOG_TAIL_DEFAULT = 200;

export interface ServiceOptions {
  version: string;
  /** When set, every user call must carry `authorization: Bearer <token>`. */
  token: string | undefined;
  store: Store;
  bus: SandboxBus;
  relay: RelayHub;
  sandboxes: Sandboxes;
  ssh: SshAccess;
}

/** Compares secrets in constant time (length differences included). */
export function secretsEqual(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  // Compare against a same-length buffer either way so timing does not reveal the length.
  const same = a.length === b.length;
  return timingSafeEqual(same ? a : b, b) && same;
}

function metadataValue(metadata: Metadata, key: string): string {
  const value = metadata.get(key)[0];
  return typeof value === "string" ? value : (value?.toString() ?? "");
}

/** Strips what a client must never see back: injected file content. */
function publicSandbox(sandbox: Sandbox): Sandbox {
  if (!sandbox.spec) return sandbox;
  return {
    ...sandbox,
    spec: { ...sandbox.spec, files: sandbox.spec.files.map((f) => ({ ...f, content: Buffer.alloc(0) })) },
  };
}

/**
 * What every user call's request must satisfy before its handler runs: it
 * decoded (see withDecodeChecks), and its workspace, on the calls that name
 * one, is a valid workspace name.
 */
function checkRequest(request: unknown): void {
  if (typeof request !== "object" || request === null) return;
  const undecodable = (request as { [UNDECODABLE]?: string })[UNDECODABLE];
  if (undecodable !== undefined) throw invalidArgument(undecodable);
  const workspace = (request as { workspace?: unknown }).workspace;
  if (typeof workspace === "string") {
    const problem = validateWorkspaceName(workspace);
    if (problem) throw invalidArgument(problem);
  }
}

const UNDECODABLE = Symbol("undecodable");

/**
 * The 64-bit integer fields of each request the gateway decodes. The
 * generated decoders refuse a value past 2^53 - 1 (a JavaScript number could
 * not hold it) by throwing, which gRPC answers with INTERNAL as if the
 * gateway had failed; the caller sent a bad field, and is told which.
 */
const WIDE_FIELDS: Record<string, string> = {
  createSandbox: "spec.files[].size",
  getSandboxLogs: "since_ms",
  watchSandbox: "log_since_ms",
  pushSandboxLogs: "logs[].timestamp_ms",
};

/**
 * The service definition with each request decoder that can meet an
 * out-of-range 64-bit value answering it with a request the handler
 * refuses as INVALID_ARGUMENT naming the field.
 */
export function withDecodeChecks<D extends Record<string, object>>(definition: D): D {
  const checked: Record<string, object> = { ...definition };
  for (const [method, field] of Object.entries(WIDE_FIELDS)) {
    const entry = definition[method] as { requestDeserialize: (buffer: Buffer) => unknown } | undefined;
    if (entry === undefined) continue;
    checked[method] = {
      ...entry,
      requestDeserialize: (buffer: Buffer): unknown => {
        try {
          return entry.requestDeserialize(buffer);
        } catch (error) {
          if (!/SAFE_INTEGER/.test((error as Error).message)) throw error;
          return {
            [UNDECODABLE]: `${field} is out of range: at most ${Number.MAX_SAFE_INTEGER} (2^53 - 1) is supported`,
          };
        }
      },
    };
  }
  return checked as D;
}

/**
 * Who a user is, as far as this gateway knows: it has one credential (its
 * token, or none), so every caller it accepts is its owner.
 */
function currentUser(token: string | undefined) {
  return {
    subject: token === undefined ? "anonymous" : "token-holder",
    displayName: "",
    roles: ["owner"],
    scopes: ["openshell:all"],
    identityProvider: token === undefined ? "none" : "bearer_token",
  };
}

export function createService(o: ServiceOptions): OpenShellServer {
  const policies = new Policies(o.store, o.bus, o.sandboxes);
  const requireUser = (metadata: Metadata): void => {
    if (o.token === undefined) return;
    const header = metadataValue(metadata, "authorization");
    const match = /^Bearer\s+(.+)$/i.exec(header);
    if (!match) throw unauthenticated("missing bearer token");
    if (!secretsEqual(match[1]!.trim(), o.token)) throw unauthenticated("invalid bearer token");
  };

  /** Returns the sandbox id a supervisor call is authorized for. */
  const requireSupervisor = (metadata: Metadata, sandboxId?: string): string => {
    const value = metadataValue(metadata, SUPERVISOR_METADATA_KEY);
    const separator = value.indexOf(":");
    if (separator <= 0) throw unauthenticated("supervisor credentials required");
    const id = value.slice(0, separator);
    const runtime = o.store.getRuntime(id);
    if (!runtime || !secretsEqual(value.slice(separator + 1), runtime.supervisorSecret)) {
      throw unauthenticated("invalid supervisor credentials");
    }
    if (sandboxId !== undefined && sandboxId !== id) throw notFound();
    return id;
  };

  function unary<Req, Res>(
    auth: "user" | "none",
    handler: (request: Req, metadata: Metadata) => Res | Promise<Res>,
  ): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void {
    return (call, callback) => {
      Promise.resolve()
        .then(() => {
          if (auth === "user") requireUser(call.metadata);
          checkRequest(call.request);
          return handler(call.request, call.metadata);
        })
        .then(
          (response) => callback(null, response),
          (error) => callback(toStatus(error)),
        );
    };
  }

  function guarded<C extends { metadata: Metadata; emit(event: "error", error: unknown): boolean }>(
    check: (call: C) => void,
    handler: (call: C) => void,
  ): (call: C) => void {
    return (call) => {
      try {
        check(call);
        if ("request" in call) checkRequest(call.request);
        handler(call);
      } catch (error) {
        call.emit("error", toStatus(error));
      }
    };
  }

  const userStream = <C extends { metadata: Metadata; emit(event: "error", error: unknown): boolean }>(
    handler: (call: C) => void,
  ) => guarded<C>((call) => requireUser(call.metadata), handler);

  return {
    health: unary("none", () => ({ status: ServiceStatus.SERVICE_STATUS_HEALTHY, version: o.version })),

    getGatewayInfo: unary("user", () => ({
      status: ServiceStatus.SERVICE_STATUS_HEALTHY,
      gatewayVersion: o.version,
      computeDrivers: [
        {
          name: "bubblewrap",
          capabilities: { driverName: "openshell-bubblewrap", driverVersion: o.version },
        },
      ],
      capabilities: [
        CAPABILITY_SANDBOX_FILES,
        CAPABILITY_SANDBOX_TTL,
        CAPABILITY_SANDBOX_IMAGES,
        CAPABILITY_START_ON_ATTACH,
      ],
    })),

    createSandbox: unary("user", async (request) => ({
      sandbox: publicSandbox(await o.sandboxes.create(request)),
    })),

    getSandbox: unary("user", (request) => ({
      sandbox: o.sandboxes.withUsage(publicSandbox(o.sandboxes.get(request.workspace, request.name))),
    })),

    listSandboxes: unary("user", (request) => ({
      sandboxes: o.sandboxes.list(request).map(publicSandbox),
    })),

    // Connections to the sandbox are dropped as its processes go (SandboxesOptions.released).
    deleteSandbox: unary("user", async (request) => ({
      deleted: await o.sandboxes.delete(request.workspace, request.name),
    })),

    stopSandbox: unary("user", async (request) => ({
      sandbox: publicSandbox(await o.sandboxes.stop(request.workspace, request.name)),
    })),

    startSandbox: unary("user", async (request) => ({
      sandbox: publicSandbox(await o.sandboxes.start(request.workspace, request.name)),
    })),

    renewSandbox: unary("user", (request) => ({
      sandbox: publicSandbox(o.sandboxes.renew(request.workspace, request.name, request.ttlSeconds)),
    })),

    getSandboxLogs: unary("user", (request) => {
      if (request.sandboxId === "") throw invalidArgument("sandbox_id is required");
      o.sandboxes.byId(request.sandboxId);
      const all = o.bus.tailLogs(request.sandboxId);
      const lines = request.lines === 0 ? LOG_LINES_DEFAULT : request.lines;
      const logs = all
        .slice(-lines)
        .filter(
          (line) =>
            line.timestampMs >= request.sinceMs &&
            sourcePasses(line.source, request.sources) &&
            levelPasses(line.level, request.minLevel),
        );
      return {
        logs,
        bufferTotal: all.length,
        earlierLinesDropped: reachesDroppedLines(o.bus, request.sandboxId, lines, request.sinceMs),
      };
    }),

    watchSandbox: userStream<ServerWritableStream<WatchSandboxRequest, SandboxStreamEvent>>((call) => {
      const request = call.request;
      if (request.id === "") throw invalidArgument("id is required");
      const initial = o.sandboxes.byId(request.id);
      let closed = false;
      // A reader slower than the sandbox's log loses log lines, counted and
      // reported once it catches up; the gateway never queues a flood for it.
      let congested = false;
      let skipped = 0;
      const send = (event: SandboxStreamEvent): void => {
        if (closed) return;
        if (congested && event.payload?.$case === "log") {
          skipped++;
          return;
        }
        if (!call.write(event) && !congested) {
          congested = true;
          call.once("drain", () => {
            congested = false;
            if (skipped > 0) {
              const message = `${skipped} log line(s) dropped: this reader was slower than the sandbox's log`;
              skipped = 0;
              send({ payload: { $case: "warning", value: { message } } });
            }
          });
        }
      };
      const passes = (line: { timestampMs: number; source: string; level: string }): boolean =>
        sourcePasses(line.source, request.logSources) && levelPasses(line.level, request.logMinLevel);
      // Subscribe before the snapshot so no change between the two is lost.
      const unsubscribe = o.bus.subscribe(request.id, {
        status: () => {
          const sandbox = o.store.getSandbox(request.id);
          if (!sandbox) return;
          send({ payload: { $case: "sandbox", value: publicSandbox(sandbox) } });
          if (request.stopOnTerminal && phaseOf(sandbox) === SandboxPhase.SANDBOX_PHASE_READY) finish();
        },
        ...(request.followLogs
          ? { log: (line) => passes(line) && send({ payload: { $case: "log", value: line } }) }
          : {}),
        ...(request.followEvents
          ? { event: (event) => send({ payload: { $case: "event", value: event } }) }
          : {}),
        deleted: () => finish(),
      });
      const finish = (): void => {
        if (closed) return;
        closed = true;
        unsubscribe();
        call.end();
      };
      call.on("cancelled", finish);
      call.on("close", finish);
      if (request.stopOnTerminal && phaseOf(initial) === SandboxPhase.SANDBOX_PHASE_READY) {
        send({ payload: { $case: "sandbox", value: publicSandbox(initial) } });
        finish();
        return;
      }
      // The held lines before the state, as live lines come before the
      // state change that follows them: a client that sees the main command
      // completed has seen all of its output.
      if (request.followLogs) {
        const tail = request.logTailLines === 0 ? WATCH_LOG_TAIL_DEFAULT : request.logTailLines;
        if (reachesDroppedLines(o.bus, request.id, tail, request.logSinceMs)) {
          send({ payload: { $case: "warning", value: { message: EARLIER_LINES_DROPPED } } });
        }
        for (const line of o.bus.tailLogs(request.id).slice(-tail)) {
          if (line.timestampMs >= request.logSinceMs && passes(line))
            send({ payload: { $case: "log", value: line } });
        }
      }
      send({ payload: { $case: "sandbox", value: publicSandbox(initial) } });
      if (request.followEvents) {
        for (const event of o.bus.tailEvents(request.id, request.eventTail)) {
          send({ payload: { $case: "event", value: event } });
        }
      }
    }),

    createSshSession: unary("user", (request) => {
      if (request.sandboxId === "") throw invalidArgument("sandbox_id is required");
      return o.ssh.createSession(request.sandboxId);
    }),

    revokeSshSession: unary("user", (request) => ({ revoked: o.ssh.revokeSession(request.token) })),

    forwardTcp: userStream<ServerDuplexStream<TcpForwardFrame, TcpForwardFrame>>((call) =>
      o.ssh.forwardTcp(call),
    ),

    execSandbox: userStream<ServerWritableStream<ExecSandboxRequest, ExecSandboxEvent>>((call) =>
      o.ssh.exec(call),
    ),

    execSandboxInteractive: userStream<ServerDuplexStream<ExecSandboxInput, ExecSandboxEvent>>((call) =>
      o.ssh.execInteractive(call),
    ),

    // ---- supervisor methods ----------------------------------------------

    getSandboxConfig: unary("none", (request: GetSandboxConfigRequest, metadata) => {
      const supervisor = metadataValue(metadata, SUPERVISOR_METADATA_KEY) !== "";
      if (!supervisor) requireUser(metadata);
      const id = supervisor ? requireSupervisor(metadata, request.sandboxId) : request.sandboxId;
      const config = policies.config(o.sandboxes.byId(id));
      if (supervisor) o.sandboxes.supervisorConfigured();
      return config;
    }),

    watchSandboxConfig: (call: ServerWritableStream<GetSandboxConfigRequest, GetSandboxConfigResponse>) => {
      try {
        const id = requireSupervisor(call.metadata, call.request.sandboxId);
        const stop = policies.watch(
          id,
          (config) => call.write(config),
          () => call.end(),
        );
        call.on("cancelled", stop);
        call.on("close", stop);
      } catch (error) {
        call.emit("error", toStatus(error));
      }
    },

    reportPolicyStatus: unary("none", (request: ReportPolicyStatusRequest, metadata) => {
      policies.report(requireSupervisor(metadata, request.sandboxId), request);
      return {};
    }),

    getCurrentUser: unary("user", () => currentUser(o.token)),
    // The gateway has no settings: an empty map, as an OpenShell gateway with none set answers.
    getGatewayConfig: unary("user", () => ({ settings: {}, settingsRevision: 0 })),
    updateConfig: unary("user", (request: UpdateConfigRequest) => policies.update(request)),
    getSandboxPolicyStatus: unary("user", (request: GetSandboxPolicyStatusRequest) =>
      policies.status(request),
    ),

    getSandboxFiles: unary("none", async (request: GetSandboxFilesRequest, metadata) => {
      const id = requireSupervisor(metadata, request.sandboxId);
      const files = await o.sandboxes.files(id, request.withoutContent);
      return {
        files: files.map((file) => ({
          ...file,
          ...(request.withoutContent ? { content: Buffer.alloc(0) } : { size: file.content.length }),
        })),
      };
    }),

    listImages: unary("user", () => ({ images: o.sandboxes.listImages() })),
    pullImage: unary("user", (request: PullImageRequest) => o.sandboxes.pullImage(request.source)),
    removeImage: unary("user", (request: RemoveImageRequest) => ({
      digest: o.sandboxes.removeImage(request.image),
    })),
    pruneImages: unary("user", () => o.sandboxes.pruneImages()),

    getSupervisorLaunch: unary("none", (request: GetSupervisorLaunchRequest, metadata) =>
      o.sandboxes.supervisorLaunch(requireSupervisor(metadata, request.sandboxId)),
    ),

    reportSupervisorStatus: unary("none", (request: SupervisorStatusReport, metadata) => {
      const id = requireSupervisor(metadata, request.sandboxId);
      const report = reportFromWire(request);
      if (report) o.sandboxes.supervisorReport(id, report);
      return {};
    }),

    pushSandboxLogs: (
      call: ServerReadableStream<PushSandboxLogsRequest, Record<string, never>>,
      callback,
    ) => {
      let id: string;
      try {
        id = requireSupervisor(call.metadata);
      } catch (error) {
        callback(toStatus(error));
        return;
      }
      call.on("data", (request: PushSandboxLogsRequest) => {
        if (request.sandboxId !== id) {
          call.destroy();
          return;
        }
        o.bus.publishLogs(
          id,
          request.logs.slice(0, 100).map((line) => ({ ...line, sandboxId: id, source: "sandbox" })),
        );
      });
      call.on("end", () => callback(null, {}));
      call.on("error", () => {});
    },

    connectSupervisor: (call: ServerDuplexStream<SupervisorMessage, GatewayMessage>) => {
      let id: string;
      try {
        id = requireSupervisor(call.metadata);
        // A sandbox on its way out takes no session: its supervisor learns it is gone and stops.
        const sandbox = o.store.getSandbox(id);
        if (!sandbox || phaseOf(sandbox) === SandboxPhase.SANDBOX_PHASE_DELETING) {
          throw notFound(`sandbox ${id} is being deleted`);
        }
      } catch (error) {
        call.emit("error", toStatus(error));
        return;
      }
      call.once("data", (message: SupervisorMessage) => {
        if (message.payload?.$case !== "hello") {
          call.emit("error", toStatus(invalidArgument("first SupervisorMessage must be hello")));
          return;
        }
        const hello = message.payload.value;
        if (hello.sandboxId !== id) {
          call.emit("error", toStatus(notFound()));
          return;
        }
        o.relay.attach(call, id, hello.instanceId);
      });
    },

    reportMainProcessExit: (call, callback) => {
      try {
        const { sandboxId, instanceId, exitCode } = call.request;
        if (sandboxId === "" || instanceId === "")
          throw invalidArgument("sandbox_id and instance_id are required");
        requireSupervisor(call.metadata, sandboxId);
        o.sandboxes.mainProcessExited(sandboxId, instanceId, exitCode);
        callback(null, {});
      } catch (error) {
        callback(toStatus(error));
      }
    },

    relayStream: (call: ServerDuplexStream<RelayFrame, RelayFrame>) => {
      try {
        o.relay.claim(call, requireSupervisor(call.metadata));
      } catch (error) {
        call.emit("error", toStatus(error));
      }
    },
  };
}

export { StatusError };
