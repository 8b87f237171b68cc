// Waiting for a new sandbox to be Ready, on WatchSandbox, with progress for
// people (a spinner on a live terminal, ended on every way out) or for logs
// and scripts (timestamped lines), and
// upstream's readiness rules: Error is terminal at once; Ready counts only
// after a non-Ready phase was seen; the idle timeout is extended only by
// progress events.

import type { ClientReadableStream } from "@grpc/grpc-js";
import { OpenShellError } from "../core/errors.js";
import { readyFalseMessage } from "../core/phases.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import { type PlatformEvent, type Sandbox, SandboxPhase, type SandboxStreamEvent } from "../gen/openshell.js";
import { mapGrpcError } from "../transport/grpc.js";
import type { ConnectedGateway } from "./context.js";
import type { Ui } from "./output/ui.js";

export type ProgressMode = "interactive" | "plain" | "silent";

const STEP_LABELS: Record<string, { active: string; done: string }> = {
  requesting_sandbox: { active: "Requesting sandbox", done: "Sandbox allocated" },
  starting_sandbox: { active: "Starting sandbox", done: "Sandbox ready" },
};
const SPINNER_DELAY_MS = 300;

function isProgress(event: PlatformEvent): boolean {
  return [
    "openshell.progress.complete_step",
    "openshell.progress.active_step",
    "openshell.progress.active_detail",
  ].some((key) => key in event.metadata);
}

export function provisionTimeoutSecs(env: NodeJS.ProcessEnv): number {
  const value = Number(env.OPENSHELL_PROVISION_TIMEOUT);
  return Number.isFinite(value) && value > 0 ? value : 300;
}

function escapeIfSet(text: string | undefined): string | undefined {
  return text === undefined ? undefined : escapeForTerminal(text);
}

class Progress {
  private readonly started = Date.now();
  private spinner: import("ora").Ora | undefined;
  private spinnerTimer: NodeJS.Timeout | undefined;
  private text = "Requesting sandbox...";

  constructor(
    private readonly ui: Ui,
    private readonly mode: ProgressMode,
  ) {
    if (mode === "interactive") {
      this.spinnerTimer = setTimeout(() => {
        void import("ora").then(({ default: ora }) => {
          if (this.spinnerTimer === undefined) return;
          // Decided here (ui.interactive), not by ora; stdin is left alone so
          // no exit path can leave the terminal in raw mode.
          this.spinner = ora({
            text: this.text,
            stream: ui.io.stderr as NodeJS.WritableStream,
            isEnabled: true,
            color: ui.colored ? "cyan" : false,
            discardStdin: false,
          }).start();
        });
      }, SPINNER_DELAY_MS);
    } else if (mode === "plain") this.line("Requesting sandbox...");
  }

  private elapsed(): string {
    return `${((Date.now() - this.started) / 1000).toFixed(1)}s`;
  }

  private line(text: string): void {
    this.ui.note(`  [${this.elapsed()}] ${text}`);
  }

  event(event: PlatformEvent): void {
    // Event texts may quote the sandbox (a supervisor's progress or warning).
    const done = escapeIfSet(event.metadata["openshell.progress.complete_step"]);
    const active = escapeIfSet(event.metadata["openshell.progress.active_step"]);
    const detail = escapeIfSet(event.metadata["openshell.progress.active_detail"]);
    if (this.mode === "plain") {
      if (done) this.line(STEP_LABELS[done]?.done ?? done);
      if (detail) this.line(detail);
      else if (active) this.line(`${STEP_LABELS[active]?.active ?? active}...`);
    } else if (this.mode === "interactive") {
      if (done)
        this.spinner?.stopAndPersist({
          symbol: this.ui.err.green("✓"),
          text: `${STEP_LABELS[done]?.done ?? done} (${this.elapsed()})`,
        });
      this.text = detail ?? (active ? `${STEP_LABELS[active]?.active ?? active}...` : this.text);
      if (this.spinner) {
        if (!this.spinner.isSpinning) this.spinner.start(this.text);
        else this.spinner.text = this.text;
      }
    }
    // Warnings reach stderr in every mode: `-o json` silences progress, not what the user must know.
    if (event.type === "Warning") this.ui.warn(escapeForTerminal(event.message));
  }

  finish(ok: boolean, message: string): void {
    if (this.spinnerTimer) clearTimeout(this.spinnerTimer);
    this.spinnerTimer = undefined;
    if (this.spinner) {
      if (ok) this.spinner.stopAndPersist({ symbol: this.ui.err.green("✓"), text: message });
      else this.spinner.stopAndPersist({ symbol: this.ui.err.red("✗"), text: message });
    } else if (this.mode !== "silent" && ok) {
      if (this.mode === "plain") this.line(message);
      else this.ui.success(message);
    }
  }
}

export function waitForReady(
  ui: Ui,
  gateway: ConnectedGateway,
  created: Sandbox,
  /** eventTail: how many past events to replay (50; 0 for a restart, whose past is the first boot's). */
  options: { mode: ProgressMode; signal: AbortSignal; env: NodeJS.ProcessEnv; eventTail?: number },
): Promise<Sandbox> {
  const id = created.metadata!.id;
  const progress = new Progress(ui, options.mode);
  const timeoutSecs = provisionTimeoutSecs(options.env);
  let sawNonReady = created.status?.phase !== SandboxPhase.SANDBOX_PHASE_READY;
  let last = created;
  return new Promise<Sandbox>((resolve, reject) => {
    let settled = false;
    let timer: NodeJS.Timeout;
    const stream: ClientReadableStream<SandboxStreamEvent> = gateway.client.watchSandbox({
      id,
      followStatus: true,
      followLogs: false,
      followEvents: true,
      logTailLines: 200,
      eventTail: options.eventTail ?? 50,
      stopOnTerminal: false,
      logSinceMs: 0,
      logSources: ["gateway"],
      logMinLevel: "",
    });
    const settle = (error: OpenShellError | undefined, sandbox?: Sandbox): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal.removeEventListener("abort", onAbort);
      stream.cancel();
      if (error) {
        progress.finish(false, error.message);
        reject(error);
      } else {
        progress.finish(true, `Sandbox '${sandbox!.metadata!.name}' ready`);
        resolve(sandbox!);
      }
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const reason = readyFalseMessage(last);
        settle(
          new OpenShellError(
            "timeout",
            `sandbox provisioning timed out after ${timeoutSecs}s${reason ? `. Last reported status: ${escapeForTerminal(reason)}` : ""}`,
          ),
        );
      }, timeoutSecs * 1000);
    };
    const onAbort = (): void =>
      settle(new OpenShellError("connection_lost", "interrupted while waiting for the sandbox to be ready"));
    options.signal.addEventListener("abort", onAbort, { once: true });
    arm();
    stream.on("data", (event: SandboxStreamEvent) => {
      const payload = event.payload;
      if (payload?.$case === "sandbox") {
        last = payload.value;
        const phase = last.status?.phase;
        if (phase === SandboxPhase.SANDBOX_PHASE_ERROR) {
          const reason = readyFalseMessage(last);
          settle(
            new OpenShellError(
              "sandbox_error",
              `sandbox entered error phase while provisioning${reason ? `: ${escapeForTerminal(reason)}` : ""}`,
            ),
          );
        } else if (phase === SandboxPhase.SANDBOX_PHASE_READY) {
          if (sawNonReady) settle(undefined, last);
        } else sawNonReady = true;
      } else if (payload?.$case === "event") {
        if (isProgress(payload.value)) arm();
        progress.event(payload.value);
      } else if (payload?.$case === "warning") {
        ui.warn(escapeForTerminal(payload.value.message));
      }
    });
    stream.on("error", (error) => {
      if (!settled) settle(mapGrpcError(error, gateway.target));
    });
    stream.on("end", () =>
      settle(
        new OpenShellError(
          "connection_lost",
          "sandbox provisioning stream ended before reaching terminal phase",
        ),
      ),
    );
  });
}
