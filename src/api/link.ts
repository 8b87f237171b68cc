// The gRPC side of a client, shared by it and its sandbox handles: the
// resolved gateway, a channel opened on first use, unary calls with their
// errors mapped, server streams as async iterables, and the waits for a
// sandbox's phase. Internal to the API.

import {
  type CallOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  type Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { OpenShellError } from "../core/errors.js";
import { readyFalseMessage } from "../core/phases.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import {
  type OpenShellClient,
  type PlatformEvent,
  type Sandbox,
  SandboxPhase,
  type SandboxStreamEvent,
  WatchSandboxRequest,
} from "../gen/openshell.js";
import { connectGateway, type GatewayTarget, mapGrpcError, unary } from "../transport/grpc.js";
import type { ResolvedGateway } from "./config.js";
import { AbortError, NotFoundError, SandboxFailedError, TimeoutError, UnavailableError } from "./errors.js";

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** A step of a sandbox's creation, as `sandbox create` shows it. */
export interface ProgressEvent {
  /** `created` once the gateway accepted it, `step` / `detail` as it provisions, `warning`, `ready`. */
  kind: "created" | "step" | "detail" | "warning" | "ready";
  /** What happened, for a person: "Requesting sandbox", "Sandbox allocated", a warning's text. */
  message: string;
  /** For a step: true once it is complete. */
  done?: boolean;
}

/** How long a sandbox may take to be Ready without progress, unless OPENSHELL_PROVISION_TIMEOUT says otherwise. */
const PROVISION_TIMEOUT_MS = 300_000;

const STEP_LABELS: Record<string, { active: string; done: string }> = {
  requesting_sandbox: { active: "Requesting sandbox", done: "Sandbox allocated" },
  starting_sandbox: { active: "Starting sandbox", done: "Sandbox ready" },
};

function isProgress(event: PlatformEvent): boolean {
  return [
    "openshell.progress.complete_step",
    "openshell.progress.active_step",
    "openshell.progress.active_detail",
  ].some((key) => key in event.metadata);
}

export class Link {
  #resolved: (() => ResolvedGateway) | undefined;
  #gateway: ResolvedGateway | undefined;
  #client: OpenShellClient | undefined;
  #capabilities: Promise<string[]> | undefined;

  constructor(
    resolve: () => ResolvedGateway,
    readonly workspace: string,
    readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.#resolved = resolve;
  }

  /** The resolved gateway (resolution runs once, on first use). */
  gateway(): ResolvedGateway {
    if (!this.#gateway) {
      this.#gateway = this.#resolved!();
      this.#resolved = undefined;
    }
    return this.#gateway;
  }

  /** The gRPC client, connected on first use. */
  async grpc(): Promise<{ client: OpenShellClient; target: GatewayTarget }> {
    const { target } = this.gateway();
    this.#client ??= connectGateway(target);
    return { client: this.#client, target };
  }

  call<Req, Res>(
    target: GatewayTarget,
    method: UnaryMethod<Req, Res>,
    request: Req,
    options: { deadlineMs?: number; signal?: AbortSignal } = {},
  ): Promise<Res> {
    return unary(target, method, request, options).catch((error: unknown) => {
      // The cancelled call's own message (what the CLI prints on Ctrl-C), as an AbortError.
      if (options.signal?.aborted)
        throw new AbortError(error instanceof Error ? error.message : "the call was aborted", {
          cause: error,
        });
      throw error;
    });
  }

  /** The sandbox `name` of this workspace; a missing one is a NotFoundError naming it. */
  async sandbox(name: string, options: { signal?: AbortSignal; deadlineMs?: number } = {}): Promise<Sandbox> {
    const { client, target } = await this.grpc();
    const { sandbox } = await this.call(
      target,
      client.getSandbox.bind(client),
      { name, workspace: this.workspace },
      options,
    ).catch((error: unknown) => {
      if (!(error instanceof OpenShellError) || error.code !== "not_found") throw error;
      throw new NotFoundError(`sandbox '${name}' not found in workspace '${this.workspace}'`, {
        hint: `See the sandboxes there with \`openshell${this.workspace === "default" ? "" : ` --workspace ${this.workspace}`} sandbox list\`.`,
        cause: error,
      });
    });
    if (!sandbox?.metadata?.id) {
      throw new OpenShellError("internal", `sandbox '${name}': the gateway's answer has no metadata`);
    }
    return sandbox;
  }

  /**
   * What the gateway implements (GetGatewayInfo), asked to learn whether it
   * `question` ("takes files (--file)"). An OpenShell gateway answers
   * GetGatewayInfo to its admins only: anyone else is told the question
   * cannot be answered, not that they lack the gateway's token.
   */
  async capabilities(question: string): Promise<string[]> {
    this.#capabilities ??= this.grpc().then(({ client, target }) =>
      this.call(target, client.getGatewayInfo.bind(client), {}).then((info) => info.capabilities),
    );
    this.#capabilities.catch(() => {
      this.#capabilities = undefined;
    });
    return this.#capabilities.catch((error: unknown) => {
      const cause = (error as { cause?: { code?: unknown } }).cause;
      if (!(error instanceof OpenShellError) || cause?.code !== status.PERMISSION_DENIED) throw error;
      throw new OpenShellError(
        "unsupported",
        `cannot tell whether gateway '${this.gateway().name}' ${question}: it answers GetGatewayInfo, where a gateway says what it supports, only to its admins`,
        {
          hint: "An OpenShell gateway does not: leave the option out, or ask the gateway's admin whether it is an openshell gateway.",
          cause: error,
        },
      );
    });
  }

  async requireCapability(capability: string, what: string, refusal?: () => OpenShellError): Promise<void> {
    if ((await this.capabilities(`supports ${what}`)).includes(capability)) return;
    throw refusal ? refusal() : this.unsupported(capability, what);
  }

  /** The refusal of `what` by a gateway that lacks `capability`. */
  unsupported(capability: string, what: string): OpenShellError {
    return new OpenShellError(
      "unsupported",
      `gateway '${this.gateway().name}' does not support ${what}: it lacks ${capability}`,
      { hint: "Use an openshell gateway (`openshell gateway start`)." },
    );
  }

  /** Deletes sandbox `name`; false when there was none. */
  async delete(name: string, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    const { client, target } = await this.grpc();
    try {
      const { deleted } = await this.call(
        target,
        client.deleteSandbox.bind(client),
        { name, workspace: this.workspace },
        { deadlineMs: 60_000, ...options },
      );
      return deleted;
    } catch (error) {
      if (error instanceof OpenShellError && error.code === "not_found") return false;
      throw error;
    }
  }

  /** WatchSandbox as an async iterable; leaving the loop (or the signal) cancels the call. */
  async *watch(request: WatchSandboxRequest, signal?: AbortSignal): AsyncGenerator<SandboxStreamEvent> {
    const { client, target } = await this.grpc();
    const stream: ClientReadableStream<SandboxStreamEvent> = client.watchSandbox(request);
    const onAbort = (): void => stream.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const event of stream as AsyncIterable<SandboxStreamEvent>) yield event;
    } catch (error) {
      // Ended by our side (the signal, or a cancel): the end of the stream, not a failure.
      if (signal?.aborted || (error as { code?: number }).code === status.CANCELLED) return;
      throw mapGrpcError(error, target);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      stream.cancel();
    }
  }

  /**
   * Waits on WatchSandbox for Stopped, as upstream's CLI does
   * (OPENSHELL_LIFECYCLE_TIMEOUT, 300 s); Error fails.
   */
  async waitStopped(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Sandbox> {
    const value = Number(this.env.OPENSHELL_LIFECYCLE_TIMEOUT);
    const timeoutSecs = Number.isFinite(value) && value > 0 ? value : 300;
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), timeoutSecs * 1000);
    const stop = AbortSignal.any([timeout.signal, ...(options.signal ? [options.signal] : [])]);
    try {
      for await (const event of this.watch(
        WatchSandboxRequest.fromPartial({ id, followStatus: true }),
        stop,
      )) {
        if (event.payload?.$case !== "sandbox") continue;
        const sandbox = event.payload.value;
        if (sandbox.status?.phase === SandboxPhase.SANDBOX_PHASE_STOPPED) return sandbox;
        if (sandbox.status?.phase === SandboxPhase.SANDBOX_PHASE_ERROR) {
          const reason = readyFalseMessage(sandbox);
          throw new SandboxFailedError(escapeForTerminal(reason) || "sandbox entered Error", { reason });
        }
      }
    } finally {
      clearTimeout(timer);
    }
    if (options.signal?.aborted) {
      throw new AbortError("interrupted while the sandbox stops", { cause: options.signal.reason });
    }
    if (timeout.signal.aborted) {
      throw new TimeoutError(`timed out after ${timeoutSecs}s waiting for the sandbox to stop`);
    }
    throw new UnavailableError("the sandbox watch ended before it was stopped", { code: "connection_lost" });
  }

  /**
   * Waits for a new (or restarted) sandbox to be Ready with upstream's rules:
   * Error fails at once, Ready counts only after a non-Ready phase was seen,
   * and the idle timeout is extended by progress events only.
   */
  async waitReady(
    created: Sandbox,
    options: {
      signal?: AbortSignal | undefined;
      timeoutMs?: number | undefined;
      eventTail?: number;
      onProgress?: ((event: ProgressEvent) => void) | undefined;
    },
  ): Promise<Sandbox> {
    const timeoutMs =
      options.timeoutMs ??
      (Number(this.env.OPENSHELL_PROVISION_TIMEOUT) > 0
        ? Number(this.env.OPENSHELL_PROVISION_TIMEOUT) * 1000
        : PROVISION_TIMEOUT_MS);
    let sawNonReady = created.status?.phase !== SandboxPhase.SANDBOX_PHASE_READY;
    let last = created;
    const idle = new AbortController();
    const stop = AbortSignal.any([idle.signal, ...(options.signal ? [options.signal] : [])]);
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => idle.abort(), timeoutMs);
    };
    arm();
    const emit = (event: ProgressEvent): void => options.onProgress?.(event);
    try {
      const request = WatchSandboxRequest.fromPartial({
        id: created.metadata!.id,
        followStatus: true,
        followEvents: true,
        logTailLines: 200,
        eventTail: options.eventTail ?? 50,
        logSources: ["gateway"],
      });
      for await (const event of this.watch(request, stop)) {
        const payload = event.payload;
        if (payload?.$case === "sandbox") {
          last = payload.value;
          const phase = last.status?.phase;
          if (phase === SandboxPhase.SANDBOX_PHASE_ERROR) {
            const reason = readyFalseMessage(last);
            throw new SandboxFailedError(
              `sandbox entered error phase while provisioning${reason ? `: ${escapeForTerminal(reason)}` : ""}`,
              { reason },
            );
          }
          if (phase === SandboxPhase.SANDBOX_PHASE_READY) {
            if (sawNonReady) {
              emit({ kind: "ready", message: `Sandbox '${last.metadata!.name}' ready` });
              return last;
            }
          } else sawNonReady = true;
        } else if (payload?.$case === "event") {
          const e = payload.value;
          if (isProgress(e)) arm();
          const done = e.metadata["openshell.progress.complete_step"];
          const active = e.metadata["openshell.progress.active_step"];
          const detail = e.metadata["openshell.progress.active_detail"];
          if (done) emit({ kind: "step", message: STEP_LABELS[done]?.done ?? done, done: true });
          if (detail) emit({ kind: "detail", message: detail });
          else if (active)
            emit({ kind: "step", message: STEP_LABELS[active]?.active ?? active, done: false });
          if (e.type === "Warning") emit({ kind: "warning", message: e.message });
        } else if (payload?.$case === "warning") {
          emit({ kind: "warning", message: payload.value.message });
        }
      }
      if (options.signal?.aborted) {
        throw new AbortError("interrupted while waiting for the sandbox to be ready", {
          cause: options.signal.reason,
        });
      }
      if (idle.signal.aborted) {
        const reason = readyFalseMessage(last);
        throw new TimeoutError(
          `sandbox provisioning timed out after ${timeoutMs / 1000}s${reason ? `. Last reported status: ${escapeForTerminal(reason)}` : ""}`,
        );
      }
      throw new UnavailableError("sandbox provisioning stream ended before reaching terminal phase", {
        code: "connection_lost",
      });
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.#client?.close();
    this.#client = undefined;
  }
}
