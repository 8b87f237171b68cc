// Running the real `openshell` binary in tests, each test environment with
// its own XDG config and state directories (so its own gateway, token and
// sandboxes), and tearing it all down afterwards.

import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = join(ROOT, "bin", "openshell");

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Fails the run (with the step named) if it has not exited by then. */
  timeoutMs?: number;
  uid?: number;
  gid?: number;
  /** A command that runs the CLI: its words before the CLI's path and arguments (`nsenter ...`). */
  under?: string[];
}

export class TestEnv {
  readonly root: string;
  readonly configHome: string;
  readonly stateHome: string;
  readonly home: string;

  constructor(prefix = "openshell-test-") {
    this.root = mkdtempSync(join(tmpdir(), prefix));
    chmodSync(this.root, 0o755);
    this.configHome = join(this.root, "config");
    this.stateHome = join(this.root, "state");
    this.home = join(this.root, "home");
  }

  env(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      LANG: "C.UTF-8",
      HOME: this.home,
      XDG_CONFIG_HOME: this.configHome,
      XDG_STATE_HOME: this.stateHome,
      NO_COLOR: "1",
      // Every test picks a free port: tests run side by side.
      ...extra,
    };
    for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
    return env;
  }

  /** Spawns the CLI and returns the child (for streaming tests). */
  spawn(args: string[], options: RunOptions = {}): ChildProcess {
    // As a user runs it: through its #! line, which also sets its malloc tunables.
    const [command, ...rest] = [...(options.under ?? []), BIN, ...args];
    return spawn(command!, rest, {
      env: this.env(options.env),
      cwd: options.cwd ?? this.root,
      stdio: ["pipe", "pipe", "pipe"],
      ...(options.uid !== undefined ? { uid: options.uid, gid: options.gid ?? options.uid } : {}),
    });
  }

  /** Runs the CLI to completion. */
  run(args: string[], options: RunOptions = {}): Promise<RunResult> {
    const child = this.spawn(args, options);
    return collect(child, `openshell ${args.join(" ")}`, options);
  }

  /** `sandbox create --name NAME [FLAGS] --detach -- sleep infinity`: a sandbox that idles until deleted. */
  createIdle(name: string, options: RunOptions = {}, flags: string[] = []): Promise<RunResult> {
    return this.run(
      ["sandbox", "create", "--name", name, ...flags, "--detach", "--", "sleep", "infinity"],
      options,
    );
  }

  /** `sandbox exec -n NAME -- sh -c SCRIPT`. */
  sh(name: string, script: string, options: RunOptions = {}): Promise<RunResult> {
    return this.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", script], options);
  }

  /** `sandbox exec -n NAME -- sh -c SCRIPT`. */
  shell(name: string, script: string, options: RunOptions = {}): Promise<RunResult> {
    return this.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", script], options);
  }

  /** Starts this environment's gateway on a free port. */
  async startGateway(env: Record<string, string> = {}): Promise<void> {
    const under = this.hostsNamespace
      ? ["nsenter", `--mount=/proc/${this.hostsNamespace.pid}/ns/mnt`, "--"]
      : [];
    const result = await this.run(["gateway", "start", "--port", "0"], { timeoutMs: 30_000, env, under });
    if (result.code !== 0) throw new Error(`gateway start failed: ${result.stderr}`);
  }

  /** The process that holds the mount namespace of addHosts, until dispose or this process's end. */
  private hostsNamespace: ChildProcess | undefined;

  /**
   * Makes the gateways this environment starts from now on, and the
   * supervisors they start, resolve `hosts` (names to addresses) as a machine
   * whose /etc/hosts has them: they run in a mount namespace (root only)
   * where /etc/hosts is the machine's lines and these, and the rest of the
   * machine sees nothing of it. One namespace for every start, so that a
   * restarted gateway sees the sandboxes' disks its supervisors mounted.
   */
  async addHosts(hosts: Record<string, string>): Promise<void> {
    const file = join(this.root, "hosts");
    const lines = Object.entries(hosts).map(([name, address]) => `${address} ${name}\n`);
    writeFileSync(file, `${readFileSync("/etc/hosts", "utf8").trimEnd()}\n${lines.join("")}`);
    // The sandboxes' disks are shared with the pods' namespaces there as on
    // the machine (see guest-disk.ts); `cat` holds the namespace until its
    // input, this process's pipe, ends.
    const hold = [
      'mount --bind "$0" /etc/hosts',
      `if mountpoint -q ${DISKS_ROOT}; then mount --make-shared ${DISKS_ROOT}; fi`,
      "echo ready",
      "exec cat",
    ].join(" && ");
    const unshare = ["--mount", "--propagation", "private", "--", "sh", "-c", hold, file];
    this.hostsNamespace = spawn("unshare", unshare, { stdio: ["pipe", "pipe", "inherit"] });
    await waitForOutput(this.hostsNamespace.stdout!, "ready\n", "the mount namespace with the added hosts");
  }

  /** The supervisors this environment's gateways recorded, running or not. */
  supervisorRecords(): ProcessIdentity[] {
    const gateways = join(this.stateHome, "openshell", "gateways");
    const records: ProcessIdentity[] = [];
    for (const gateway of existsSync(gateways) ? readdirSync(gateways) : []) {
      const sandboxes = join(gateways, gateway, "sandboxes");
      for (const id of existsSync(sandboxes) ? readdirSync(sandboxes) : []) {
        const record = readSupervisorRecord(join(sandboxes, id));
        if (record) records.push(record);
      }
    }
    return records;
  }

  /**
   * Stops the gateway and removes everything. Sandboxes outlive their
   * gateway; their supervisors end once their directories are gone, and are
   * waited for (killed after 15 s) so that no test leaves processes behind.
   */
  async dispose(): Promise<void> {
    await this.run(["gateway", "stop"], { timeoutMs: 60_000 }).catch(() => undefined);
    const supervisors = this.supervisorRecords();
    rmSync(this.root, { recursive: true, force: true, maxRetries: 5 });
    const deadline = Date.now() + 15_000;
    while (supervisors.some(identityAlive) && Date.now() < deadline) {
      await new Promise((done) => setTimeout(done, 50));
    }
    for (const supervisor of supervisors.filter(identityAlive)) process.kill(supervisor.pid, "SIGKILL");
    this.hostsNamespace?.stdin?.end();
  }
}

export function collect(child: ChildProcess, step: string, options: RunOptions = {}): Promise<RunResult> {
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout?.on("data", (d: Buffer) => stdout.push(d));
  child.stderr?.on("data", (d: Buffer) => stderr.push(d));
  if (options.input !== undefined) child.stdin?.end(options.input);
  else child.stdin?.end();
  child.stdin?.on("error", () => {});
  return new Promise((resolveResult, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `${step}: no exit within ${options.timeoutMs ?? 60_000} ms\nstdout: ${Buffer.concat(stdout).toString()}\nstderr: ${Buffer.concat(stderr).toString()}`,
        ),
      );
    }, options.timeoutMs ?? 60_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolveResult({
        code,
        signal,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: Buffer.concat(stderr).toString("utf8"),
      });
    });
  });
}

/** Polls `probe` every 20 ms until it returns a value, which it resolves with; fails naming `step` after `timeoutMs`. */
export async function waitFor<T>(step: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`waiting for ${step}: not within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 20));
  }
}

/** Waits until `text` appears on a stream, failing with the step named after `timeoutMs`. */
export function waitForOutput(
  stream: NodeJS.ReadableStream,
  text: string | RegExp,
  step: string,
  timeoutMs = 30_000,
): Promise<string> {
  return new Promise((resolveText, reject) => {
    let seen = "";
    const onData = (data: Buffer): void => {
      seen += data.toString("utf8");
      if (typeof text === "string" ? seen.includes(text) : text.test(seen)) {
        clearTimeout(timer);
        stream.off("data", onData);
        resolveText(seen);
      }
    };
    const timer = setTimeout(() => {
      stream.off("data", onData);
      reject(
        new Error(`${step}: did not see ${String(text)} within ${timeoutMs} ms; saw: ${seen.slice(-2000)}`),
      );
    }, timeoutMs);
    stream.on("data", onData);
  });
}

/** The codes in the first column of the tables under README's "## Exit codes". */
export function documentedExitCodes(): number[] {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## Exit codes"));
  const body = section.slice(0, section.indexOf("\n## ", 3));
  return [...body.matchAll(/^\| (\d+) \|/gm)].map((match) => Number(match[1]));
}

/** Parses stdout as exactly one JSON document. */
export function json<T = unknown>(result: RunResult): T {
  return JSON.parse(result.stdout) as T;
}

/** A sandbox name unique to this run (names are at most 19 characters). */
let counter = 0;
export function uniqueName(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid.toString(36)}${counter.toString(36)}`.slice(0, 19).replace(/-$/, "");
}

// ---- the gateway's own API, for waiting on events and inspecting the wire ----

import { readFileSync } from "node:fs";
import { readSupervisorRecord } from "../../src/gateway/runtime.js";
import { type OpenShellClient, SandboxPhase, WatchSandboxRequest } from "../../src/gen/openshell.js";
import { identityAlive, type ProcessIdentity } from "../../src/host/process.js";
import { DISKS_ROOT } from "../../src/runtime/guest-disk.js";
import { connectGateway, type GatewayTarget } from "../../src/transport/grpc.js";

export function gatewayTarget(env: TestEnv, name = "local"): GatewayTarget {
  const dir = join(env.configHome, "openshell", "gateways", name);
  const metadata = JSON.parse(readFileSync(join(dir, "metadata.json"), "utf8")) as {
    gateway_endpoint: string;
  };
  // A local gateway started with --tls is verified with the CA it made.
  const ca = join(env.stateHome, "openshell", "gateways", name, "tls", "ca.crt");
  return {
    name,
    endpoint: metadata.gateway_endpoint,
    token: readFileSync(join(dir, "token"), "utf8").trim(),
    ...(metadata.gateway_endpoint.startsWith("https:") && existsSync(ca) ? { ca: readFileSync(ca) } : {}),
  };
}

export function gatewayClient(env: TestEnv, name = "local"): OpenShellClient {
  return connectGateway(gatewayTarget(env, name));
}

const PHASES: Record<string, SandboxPhase> = {
  Provisioning: SandboxPhase.SANDBOX_PHASE_PROVISIONING,
  Ready: SandboxPhase.SANDBOX_PHASE_READY,
  Error: SandboxPhase.SANDBOX_PHASE_ERROR,
};

/** Waits on WatchSandbox until the sandbox reaches `phase`. */
export async function waitForPhase(
  env: TestEnv,
  name: string,
  phase: "Provisioning" | "Ready" | "Error",
  timeoutMs = 30_000,
): Promise<void> {
  const client = gatewayClient(env);
  try {
    const id = await new Promise<string>((resolveId, reject) => {
      client.getSandbox({ name, workspace: "" }, (error, response) =>
        error ? reject(error) : resolveId(response.sandbox!.metadata!.id),
      );
    });
    await new Promise<void>((resolveWait, reject) => {
      const stream = client.watchSandbox(WatchSandboxRequest.fromPartial({ id, followStatus: true }));
      const timer = setTimeout(() => {
        stream.cancel();
        reject(new Error(`sandbox ${name} did not reach ${phase} within ${timeoutMs} ms`));
      }, timeoutMs);
      stream.on("data", (event) => {
        if (event.payload?.$case === "sandbox" && event.payload.value.status?.phase === PHASES[phase]) {
          clearTimeout(timer);
          stream.cancel();
          resolveWait();
        }
      });
      stream.on("error", (error: Error & { code?: number }) => {
        if (error.code !== 1) {
          clearTimeout(timer);
          reject(error);
        }
      });
    });
  } finally {
    client.close();
  }
}
