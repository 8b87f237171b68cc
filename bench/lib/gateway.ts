// The bench's own openshell environment: private XDG config and state
// directories, its own gateway on a free port, the CLI run as a user runs it
// (bin/openshell), and an in-process gRPC client for gateway-side timings.

import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type ServiceError, status } from "@grpc/grpc-js";
import {
  type OpenShellClient,
  type Sandbox,
  type SandboxFile,
  SandboxPhase,
  type SandboxStreamEvent,
  WatchSandboxRequest,
} from "../../src/gen/openshell.js";
import { connectGateway } from "../../src/transport/grpc.js";
import { processesMentioning } from "../../test/helpers/processes.js";
import {
  descendants,
  isAlive,
  type RunOptions,
  runOk,
  runTimed,
  type Timed,
  throwIfAborted,
  waitForExit,
} from "./proc.js";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = join(ROOT, "bin", "openshell");

export interface GatewayInfo {
  pid: number;
  port: number;
  endpoint: string;
}

export class BenchEnv {
  readonly root: string;
  readonly configHome: string;
  readonly stateHome: string;
  readonly home: string;
  gateway: GatewayInfo | undefined;
  private grpc: OpenShellClient | undefined;

  constructor() {
    this.root = mkdtempSync(join(tmpdir(), "openshell-bench-"));
    // The sandboxes' unprivileged uid must be able to reach the state below it.
    chmodSync(this.root, 0o755);
    this.configHome = join(this.root, "config");
    this.stateHome = join(this.root, "state");
    this.home = join(this.root, "home");
    mkdirSync(this.home);
  }

  env(): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH,
      LANG: "C.UTF-8",
      HOME: this.home,
      XDG_CONFIG_HOME: this.configHome,
      XDG_STATE_HOME: this.stateHome,
      NO_COLOR: "1",
      // Passed on so that a run with OPENSHELL_NO_PATCHES measures what the patches buy.
      ...(process.env.OPENSHELL_NO_PATCHES === undefined
        ? {}
        : { OPENSHELL_NO_PATCHES: process.env.OPENSHELL_NO_PATCHES }),
    };
  }

  /** Runs `bin/openshell ARGS` (as a user would, through its shebang) and times it. */
  cli(args: readonly string[], options: RunOptions = {}): Promise<Timed> {
    return runTimed(BIN, args, { env: this.env(), cwd: this.root, ...options });
  }

  /** Like cli(), but a non-zero exit is a failure carrying the command and its output. */
  cliOk(args: readonly string[], options: RunOptions = {}): Promise<Timed> {
    return runOk(BIN, args, { env: this.env(), cwd: this.root, ...options });
  }

  async startGateway(settings: Record<string, string> = {}): Promise<GatewayInfo> {
    await this.cliOk(["gateway", "start", "--port", "0"], {
      timeoutMs: 60_000,
      env: { ...this.env(), ...settings },
    });
    const info = JSON.parse(
      readFileSync(join(this.stateHome, "openshell", "gateways", "local", "gateway.json"), "utf8"),
    ) as GatewayInfo;
    this.gateway = info;
    return info;
  }

  /** The in-process gRPC client, built from the gateway's endpoint and token on first use. */
  client(): OpenShellClient {
    if (!this.grpc) {
      if (!this.gateway) throw new Error("the gateway is not started");
      const token = readFileSync(
        join(this.configHome, "openshell", "gateways", "local", "token"),
        "utf8",
      ).trim();
      this.grpc = connectGateway({ name: "local", endpoint: this.gateway.endpoint, token });
    }
    return this.grpc;
  }

  /**
   * Creates a sandbox over gRPC and resolves with the milliseconds from sending
   * CreateSandbox to receiving the Ready snapshot on WatchSandbox.
   */
  async createReady(name: string, command: string[], files: SandboxFile[] = []): Promise<number> {
    throwIfAborted();
    const client = this.client();
    const started = process.hrtime.bigint();
    const request = {
      name,
      labels: {},
      annotations: {},
      workspace: "default",
      spec: {
        logLevel: "",
        environment: {},
        providers: [],
        command,
        tty: false,
        // Without digests, as the CLI sends them: the gateway computes them.
        files: files.map((file) => ({ ...file, sha256: "" })),
      },
    };
    const created = await new Promise<Sandbox>((resolveCreate, reject) => {
      client.createSandbox(request, (error: ServiceError | null, response) => {
        if (error) reject(new Error(`CreateSandbox ${name}: ${error.details || error.message}`));
        else if (!response.sandbox?.metadata) reject(new Error(`CreateSandbox ${name}: no sandbox returned`));
        else resolveCreate(response.sandbox);
      });
    });
    await this.watchUntilReady(name, created.metadata!.id, 60_000);
    return Number(process.hrtime.bigint() - started) / 1e6;
  }

  private watchUntilReady(name: string, id: string, timeoutMs: number): Promise<void> {
    const stream = this.client().watchSandbox(WatchSandboxRequest.fromPartial({ id, followStatus: true }));
    return new Promise((resolveReady, reject) => {
      let settled = false;
      const settle = (error?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        stream.cancel();
        if (error) reject(error);
        else resolveReady();
      };
      const timer = setTimeout(
        () => settle(new Error(`WatchSandbox ${name}: not Ready within ${timeoutMs} ms`)),
        timeoutMs,
      );
      stream.on("data", (event: SandboxStreamEvent) => {
        if (event.payload?.$case !== "sandbox") return;
        const status = event.payload.value.status;
        if (status?.phase === SandboxPhase.SANDBOX_PHASE_READY) settle();
        else if (status?.phase === SandboxPhase.SANDBOX_PHASE_ERROR) {
          const why = status.conditions.map((c) => `${c.reason}: ${c.message}`).join("; ");
          settle(new Error(`sandbox ${name} went to Error: ${why || "(no condition)"}`));
        }
      });
      stream.on("error", (error: ServiceError) => {
        if (error.code !== 1) settle(new Error(`WatchSandbox ${name}: ${error.details || error.message}`));
      });
      stream.on("end", () => settle(new Error(`WatchSandbox ${name}: the stream ended before Ready`)));
    });
  }

  /** Deletes a sandbox over gRPC; one that does not exist (a create that failed early) counts as deleted. */
  deleteSandbox(name: string): Promise<void> {
    return new Promise((resolveDelete, reject) => {
      this.client().deleteSandbox({ name, workspace: "default" }, (error: ServiceError | null) => {
        if (error && error.code !== status.NOT_FOUND) {
          reject(new Error(`DeleteSandbox ${name}: ${error.details || error.message}`));
        } else resolveDelete();
      });
    });
  }

  /**
   * Deletes every sandbox, stops the gateway, ends any process left behind
   * (only this run's own, by pid) and removes the temp directories. Returns
   * what went wrong, for the report.
   */
  async dispose(): Promise<string[]> {
    const problems: string[] = [];
    // This run's processes: the gateway's tree, and anything else naming this
    // run's directories (a gateway a CLI started on its own, with its tree).
    const ours = (): number[] => {
      const roots = processesMentioning(this.root);
      if (this.gateway && isAlive(this.gateway.pid)) roots.push(this.gateway.pid);
      return [...new Set(roots.flatMap((pid) => [pid, ...descendants(pid)]))];
    };
    const before = ours();
    const cleanupCommand = async (args: string[], timeoutMs: number): Promise<void> => {
      const result = await this.cli(args, { timeoutMs, duringAbort: true }).catch((error: Error) => error);
      if (result instanceof Error || result.code !== 0) {
        const why = result instanceof Error ? result.message : result.stderr.trim();
        problems.push(`cleanup: openshell ${args.join(" ")} failed: ${why}`);
      }
    };
    if (this.gateway) await cleanupCommand(["sandbox", "delete", "--all"], 120_000);
    this.grpc?.close();
    this.grpc = undefined;
    if (this.gateway) await cleanupCommand(["gateway", "stop"], 60_000);
    const left = await waitForExit([...new Set([...before, ...ours()])], 10_000);
    if (left.length > 0) {
      problems.push(`cleanup: ${left.length} process(es) of this run outlived \`gateway stop\`; killed`);
      for (const pid of left) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      await waitForExit(left, 5_000);
    }
    try {
      rmSync(this.root, { recursive: true, force: true });
    } catch (error) {
      problems.push(`cleanup: could not remove ${this.root}: ${(error as Error).message}`);
    }
    return problems;
  }
}
