// What every command receives: the streams, the environment, the global
// options, an abort signal (Ctrl-C), and the API client on the command line's
// gateway, resolved lazily.
// One context lives for one command line; nothing about a run is kept in a
// module, so command lines can run side by side in one process.

import { OpenShell } from "../api/client.js";
import { invalidInput, OpenShellError } from "../core/errors.js";
import { validateWorkspaceName } from "../core/names.js";
import { DEFAULT_WORKSPACE, readLastSandbox, writeLastSandbox } from "../host/config.js";
import { installPatches } from "../host/patches.js";
import { type GlobalOptions, type ResolvedGateway, resolveGateway } from "./gateways.js";
import { type Io, Ui } from "./output/ui.js";

/** The command line's gateway, resolved (and started, for sandbox commands), with its workspace. */
export interface ConnectedGateway extends ResolvedGateway {
  workspace: string;
}

export class CommandContext {
  readonly ui: Ui;
  private connected: Promise<ConnectedGateway> | undefined;
  private readonly abort = new AbortController();
  private passingThrough = false;
  private apiClient: OpenShell | undefined;
  /** 128+N once signal N cancelled the command. */
  interruptStatus: number | undefined;

  constructor(
    readonly io: Io,
    readonly env: NodeJS.ProcessEnv,
    readonly globals: GlobalOptions,
  ) {
    this.ui = new Ui(io, env);
  }

  /**
   * From here on the command's exit status is a remote command's (exec,
   * connect, attached create), so the CLI's own failures take the codes no
   * command produces (README "Exit codes").
   */
  markPassthrough(): void {
    this.passingThrough = true;
  }

  get passthrough(): boolean {
    return this.passingThrough;
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** Ctrl-C or SIGTERM: `status` is what the command line exits with if it fails because of it. */
  cancel(status = 130): void {
    this.interruptStatus ??= status;
    this.abort.abort(this.interruptStatus);
  }

  /** The workspace sandbox commands address, checked before any RPC. */
  get workspace(): string {
    const flag = this.globals.workspace;
    const workspace = flag ?? this.env.OPENSHELL_WORKSPACE ?? DEFAULT_WORKSPACE;
    const problem = workspace === "" ? "workspace must not be empty" : validateWorkspaceName(workspace);
    if (problem) {
      const source = flag !== undefined ? "--workspace" : "OPENSHELL_WORKSPACE=";
      throw invalidInput(
        `${source}${source.endsWith("=") ? "" : " "}${JSON.stringify(workspace)}: ${problem}`,
        "A workspace name is lowercase letters, digits and single hyphens, at most 19 bytes.",
      );
    }
    return workspace;
  }

  /** Resolves the gateway once; `autoStart` for sandbox commands. */
  gateway(options: { autoStart?: boolean } = {}): Promise<ConnectedGateway> {
    // A bad workspace is refused before a gateway is resolved or started.
    const workspace = this.workspace;
    this.connected ??= resolveGateway(this.globals, {
      autoStart: options.autoStart ?? true,
      env: this.env,
      notice: (line) => this.ui.note(this.ui.err.dim(line)),
    }).then((resolved) => ({ ...resolved, workspace }));
    return this.connected;
  }

  /**
   * The API client on this command line's gateway (resolved, and started
   * when `autoStart`, as for `gateway()`); commands on the API talk to the
   * gateway only through it.
   */
  async api(options: { autoStart?: boolean } = {}): Promise<OpenShell> {
    const gateway = await this.gateway(options);
    if (!this.apiClient) {
      // The CLI's patch, once a command talks to a gateway: help, the version
      // and usage errors do not load grpc-js.
      for (const failure of installPatches(["grpc-in-place-framing"])) {
        if (this.env.OPENSHELL_DEBUG) this.ui.warn(`openshell: ${failure.message}`);
      }
    }
    this.apiClient ??= OpenShell.forResolved(gateway, gateway.workspace, this.env);
    return this.apiClient;
  }

  close(): void {
    this.apiClient?.close();
  }

  /** The sandbox NAME argument, or the last-used one with a notice. */
  async sandboxName(name: string | undefined): Promise<string> {
    if (name) return name;
    const gateway = await this.gateway();
    const last = readLastSandbox(gateway.name);
    if (!last || last.workspace !== gateway.workspace) {
      throw new OpenShellError("usage", "No sandbox name provided and no last-used sandbox.", {
        hint: "Specify a sandbox name, or create one first: openshell sandbox create --name <name>",
      });
    }
    this.ui.note(`${this.ui.err.bold("→")} Using sandbox '${last.name}' (last used)`);
    return last.name;
  }

  async rememberSandbox(name: string): Promise<void> {
    const gateway = await this.gateway();
    writeLastSandbox(gateway.name, { workspace: gateway.workspace, name });
  }
}
