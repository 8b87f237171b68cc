// Waiting for a new sandbox to be Ready, with progress for people (a spinner
// on a live terminal, ended on every way out) or for logs and scripts
// (timestamped lines). The wait and its rules are the API's (upstream's:
// Error is terminal at once; Ready counts only after a non-Ready phase was
// seen; the idle timeout is extended only by progress events); this shows
// its progress events.

import type { OpenShell } from "../api/client.js";
import type { ProgressEvent } from "../api/link.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import type { Sandbox } from "../gen/openshell.js";
import type { Ui } from "./output/ui.js";

export type ProgressMode = "interactive" | "plain" | "silent";

const SPINNER_DELAY_MS = 300;

export function provisionTimeoutSecs(env: NodeJS.ProcessEnv): number {
  const value = Number(env.OPENSHELL_PROVISION_TIMEOUT);
  return Number.isFinite(value) && value > 0 ? value : 300;
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

  /** One step of the API's progress; every text in it may come from the sandbox, so it is escaped. */
  event(event: ProgressEvent): void {
    const text = escapeForTerminal(event.message);
    if (event.kind === "warning") {
      // Warnings reach stderr in every mode: `-o json` silences progress, not what the user must know.
      this.ui.warn(text);
      return;
    }
    if (event.kind !== "step" && event.kind !== "detail") return;
    const done = event.kind === "step" && event.done === true;
    if (this.mode === "plain") {
      if (done || event.kind === "detail") this.line(text);
      else this.line(`${text}...`);
    } else if (this.mode === "interactive") {
      if (done) {
        this.spinner?.stopAndPersist({ symbol: this.ui.err.green("✓"), text: `${text} (${this.elapsed()})` });
      } else this.text = event.kind === "detail" ? text : `${text}...`;
      if (this.spinner) {
        if (!this.spinner.isSpinning) this.spinner.start(this.text);
        else this.spinner.text = this.text;
      }
    }
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

/** Waits on the API for `created` to be Ready, showing its progress in `mode`. */
export async function waitForReady(
  ui: Ui,
  api: OpenShell,
  created: Sandbox,
  /** eventTail: how many past events to replay (50; 0 for a restart, whose past is the first boot's). */
  options: { mode: ProgressMode; signal: AbortSignal; env: NodeJS.ProcessEnv; eventTail?: number },
): Promise<Sandbox> {
  const progress = new Progress(ui, options.mode);
  try {
    const ready = await api.waitReady(created, {
      signal: options.signal,
      timeoutMs: provisionTimeoutSecs(options.env) * 1000,
      ...(options.eventTail !== undefined ? { eventTail: options.eventTail } : {}),
      onProgress: (event) => progress.event(event),
    });
    progress.finish(true, `Sandbox '${ready.metadata!.name}' ready`);
    return ready;
  } catch (error) {
    progress.finish(false, error instanceof Error ? error.message : String(error));
    throw error;
  }
}
