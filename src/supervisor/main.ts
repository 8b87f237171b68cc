// The supervisor: one process per sandbox, the only privileged part. It is
// told what to run through the runtime contract (src/runtime/contract.ts):
// its sandbox, credential and gateway in its environment, then over gRPC its
// launch spec, policy and injected files (the files from the local file the
// spec names, when it does). It writes the files root-owned, starts the
// bubblewrap pod whose first process is the agent, and once the agent reports
// the main process running and SSH served it opens the supervisor session
// that makes the sandbox Ready. It relays SSH for the gateway, forwards the
// main process's output as log lines, and reports the main process's exit,
// after which the pod stays up (the agent keeps serving exec and file
// transfer) until the sandbox is stopped.
//
// Progress and failures go to the gateway over gRPC (ReportSupervisorStatus);
// diagnostics go to stderr, and to a bounded file in the sandbox's directory
// once stderr's reader is gone. A supervisor started before its sandbox exists
// (a spare) reads the contract's environment as one JSON line on stdin; a
// spare whose stdin ends first exits.
//
// The sandbox outlives its gateway: a gateway that goes away ends none of its
// processes. The supervisor's session reconnects (link.ts) until a gateway
// listens again and adopts it, and a main process exit that could not be
// reported is reported then. Only a stop from the gateway (SIGTERM), its
// pod's end, or the removal of its sandbox's directory (the sandbox deleted,
// or its gateway's state removed while it was away) ends it.

import { appendFileSync, existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { messageOf } from "../core/errors.js";
import { defaultPolicy, liveChangeProblem, policyHash } from "../core/policy.js";
import type { OpenShellClient } from "../gen/openshell.js";
import { containUncaughtErrors } from "../host/last-resort.js";
import { VERSION } from "../host/version.js";
import {
  EXTERNAL_SANDBOX_DIR,
  POD_SUPPORT_DIR_ENV,
  parseSupervisorEndpoint,
  readSupervisorEnv,
  readSupervisorTls,
  reportToWire,
  SECCOMP_DENY_ENV,
  SUPERVISOR_ENV,
  type SupervisorIdentity,
  type SupervisorLaunch,
  type SupervisorReport,
} from "../runtime/contract.js";
import { readFileContent } from "../runtime/file-content.js";
import { call, LogPusher, SupervisorSession, supervisorClient } from "./link.js";
import {
  type AgentMessage,
  type InjectedFileSource,
  nodeClosure,
  PodError,
  podSupport,
  prepareGuestDisk,
  startPod,
} from "./pod.js";
import { watchPolicy } from "./policy-watch.js";
import { fileInjectionFailed } from "./setup-errors.js";

/** The diagnostics file, once stderr's reader (the gateway that started this supervisor) is gone. */
let diagFile: string | undefined;
let diagFileBytes = 0;
/** Diagnostics kept in the file at most: past that they are dropped. */
const DIAG_FILE_MAX_BYTES = 1024 * 1024;
let stderrGone = false;
process.stderr.on("error", () => {
  stderrGone = true;
});

function diag(line: string): void {
  if (!stderrGone) {
    process.stderr.write(`${line}\n`);
    return;
  }
  if (!diagFile || diagFileBytes >= DIAG_FILE_MAX_BYTES) return;
  const text = `${new Date().toISOString()} ${line.slice(0, 4096)}\n`;
  diagFileBytes += Buffer.byteLength(text);
  try {
    appendFileSync(diagFile, text, { mode: 0o600 });
  } catch {
    // Diagnostics only.
  }
}

/** How often the supervisor looks whether its sandbox's directory is still there (see the header). */
const SANDBOX_DIR_POLL_MS = 2000;

/** The longest a report may wait for the gateway: a stopping supervisor does not hang on a gone one. */
const REPORT_DEADLINE_MS = 5000;
let reporter: { client: OpenShellClient; sandboxId: string } | undefined;
/** Reports in flight, in order; a supervisor exits only once they are through. */
let reports: Promise<void> = Promise.resolve();

function report(message: SupervisorReport): Promise<void> {
  const to = reporter;
  if (!to) {
    diag(`${message.kind}: ${message.message}`);
    return reports;
  }
  reports = reports.then(
    () =>
      new Promise<void>((resolve) => {
        const deadline = new Date(Date.now() + REPORT_DEADLINE_MS);
        to.client.reportSupervisorStatus(
          reportToWire(to.sandboxId, message),
          new Metadata(),
          { deadline },
          (error) => {
            if (error) diag(`could not report ${message.kind} (${message.message}): ${error.message}`);
            resolve();
          },
        );
      }),
  );
  return reports;
}

/**
 * The injected files whose content is on this host: their paths from the
 * launch spec, their content read from the file only when staging needs it
 * (for most sandboxes, once bwrap is starting) and once the gateway says it
 * is stored. Content that cannot be read, or does not match the paths, stops
 * the sandbox before anything in it runs.
 */
function localFiles(path: string, paths: readonly string[], stored: Promise<unknown>): InjectedFileSource {
  return {
    paths,
    load: async () => {
      await stored;
      try {
        return readFileContent(path, paths);
      } catch (error) {
        throw fileInjectionFailed(path, `the injected files' ${(error as Error).message}`);
      }
    },
  };
}

/**
 * The supervisor's identity: from its environment, or for a spare the same
 * variables as one JSON line on stdin, whose end then stops the sandbox.
 */
function readIdentity(): Promise<SupervisorIdentity> {
  const fromEnv = readSupervisorEnv(process.env);
  if (fromEnv) return Promise.resolve(fromEnv);
  const lines = createInterface({ input: process.stdin });
  return new Promise((resolve, reject) => {
    lines.once("line", (line) => {
      // From here on the end of stdin is only the gateway going away: the sandbox stays.
      lines.removeAllListeners("close");
      try {
        const identity = readSupervisorEnv({
          ...process.env,
          ...(JSON.parse(line) as Record<string, string>),
        });
        if (identity) resolve(identity);
        else reject(new Error(`no ${SUPERVISOR_ENV.sandboxId} on stdin`));
      } catch (error) {
        reject(error);
      }
    });
    lines.on("close", () =>
      reject(
        new Error(`no sandbox named: set ${SUPERVISOR_ENV.sandboxId} (or give the environment on stdin)`),
      ),
    );
  });
}

/** How long a stopping supervisor lets open relays deliver their last bytes. */
const RELAY_DRAIN_MS = 2000;

let shutdownHook: (() => Promise<void>) | undefined;
let shuttingDown = false;

function shutdown(reason: string, code: number): void {
  if (shuttingDown) return;
  shuttingDown = true;
  diag(`stopping: ${reason}`);
  const hook = shutdownHook ?? (() => Promise.resolve());
  hook()
    .catch((error) => diag(`error while stopping: ${(error as Error).message}`))
    // Reports on their way (a failure) reach the gateway before the exit does.
    .finally(() => reports.then(() => process.exit(code)));
}

/** A failure its message says all of (the environment is wrong, the gateway out of reach): no stack. */
class StartupError extends Error {}

/**
 * The gateway could not be reached (its first call): said in one line, with
 * the variables that decide how it is dialed.
 */
class GatewayUnreachable extends StartupError {
  constructor(identity: SupervisorIdentity, details: string) {
    // grpc-js words it "No connection established. Last error: <cause>. Resolution note: …",
    // and an OpenSSL alert as "…:SSL routines:<function>:<reason>:<file>:…".
    const last = /Last error: (?:Error: )?([^\n]*?)\.? Resolution note:/.exec(details)?.[1] ?? details;
    const cause = /SSL routines:[^:]*:([^:]+):/.exec(last)?.[1] ?? last;
    const target = parseSupervisorEndpoint(identity.endpoint);
    const tls =
      target.kind === "tcp" && target.tls
        ? `; check ${SUPERVISOR_ENV.tlsCa} (the CA that signed the gateway's certificate), and ${SUPERVISOR_ENV.tlsCert} and ${SUPERVISOR_ENV.tlsKey} when it requires client certificates`
        : "";
    super(`cannot reach the gateway at ${SUPERVISOR_ENV.endpoint}=${identity.endpoint}: ${cause}${tls}`);
  }
}

/** `step()`, its failure a StartupError. */
function startupStep<T>(step: () => T): T {
  try {
    return step();
  } catch (error) {
    throw new StartupError(messageOf(error));
  }
}

/** This supervisor's own installation (dist/ and node_modules/ below it): a bundle's root, or the gateway's. */
const OWN_APP_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The launch with the places only the supervisor's own host knows filled in:
 * a gateway that did not start it (a pod's) names no sandbox directory (the
 * environment's, else EXTERNAL_SANDBOX_DIR, made here) and no app root (this
 * supervisor's own).
 */
function placed(launch: SupervisorLaunch, identity: SupervisorIdentity): SupervisorLaunch {
  if (launch.sandboxDir !== "" && launch.appRoot !== "") return launch;
  const sandboxDir = launch.sandboxDir || identity.sandboxDir || EXTERNAL_SANDBOX_DIR;
  mkdirSync(sandboxDir, { recursive: true, mode: 0o711 });
  return { ...launch, sandboxDir, appRoot: launch.appRoot || OWN_APP_ROOT };
}

async function main(): Promise<void> {
  if (process.argv.includes("--version")) {
    process.stdout.write(`openshell-supervisor ${VERSION} (node ${process.version}, ${process.arch})\n`);
    return;
  }
  process.on("SIGTERM", () => shutdown("SIGTERM", 0));
  process.on("SIGINT", () => shutdown("SIGINT", 0));
  // A spare supervisor is started before its sandbox exists: it connects to
  // its gateway first, then waits on stdin for the sandbox to serve.
  const endpoint = process.env[SUPERVISOR_ENV.endpoint];
  const early = endpoint
    ? startupStep(() => supervisorClient(endpoint, readSupervisorTls(process.env)))
    : undefined;
  early?.client.getChannel().getConnectivityState(true);
  const closure = nodeClosure(OWN_APP_ROOT);
  closure.catch(() => {}); // reported by startPod
  // The execute-only loader and the seccomp filter, shared by the host's pods:
  // a spare makes or finds them before its sandbox exists.
  const supportDir = process.env[POD_SUPPORT_DIR_ENV];
  const earlySupport = supportDir
    ? podSupport(supportDir, closure, process.env[SECCOMP_DENY_ENV])
    : undefined;
  earlySupport?.catch(() => {}); // reported by startPod
  const identity = await readIdentity().catch((error: Error) => {
    throw new StartupError(error.message);
  });
  const start = performance.now();
  const since = (): string => `${Math.round(performance.now() - start)} ms after launch`;
  const { client, identify } = early ?? startupStep(() => supervisorClient(identity.endpoint, identity.tls));
  identify(identity.sandboxId, identity.secret);
  reporter = { client, sandboxId: identity.sandboxId };
  const sandboxId = identity.sandboxId;
  const configured = call(client.getSandboxConfig.bind(client), { sandboxId });
  configured.catch(() => {}); // awaited below
  const launch = placed(
    await call(client.getSupervisorLaunch.bind(client), { sandboxId }).catch((error: ServiceError) => {
      throw error.code === status.UNAVAILABLE ? new GatewayUnreachable(identity, error.details) : error;
    }),
    identity,
  );
  diagFile = join(launch.sandboxDir, "supervisor.log");
  setInterval(() => {
    if (!existsSync(launch.sandboxDir)) shutdown("the sandbox's directory was removed", 0);
  }, SANDBOX_DIR_POLL_MS).unref();
  const disk = prepareGuestDisk(launch);
  disk?.catch(() => {}); // reported by startPod
  // Stopped before its pod is up, the supervisor still gives back the sandbox's filesystem.
  shutdownHook = async () => {
    await (await disk?.catch(() => undefined))?.unmount();
  };
  // The fast path reads the content on this host once the gateway has stored
  // it; otherwise the content comes over the wire.
  const getFiles = (withoutContent: boolean) =>
    call(client.getSandboxFiles.bind(client), { sandboxId, withoutContent });
  const stored = launch.filesPath === "" ? undefined : getFiles(true);
  stored?.catch(() => {}); // awaited when the content is read
  const [config, remote] = await Promise.all([
    configured,
    launch.filesPath === ""
      ? getFiles(false).catch((error: Error) => {
          throw new PodError(
            "FileInjectionFailed",
            `the injected files could not be fetched: ${error.message}`,
          );
        })
      : undefined,
  ]);
  const files: InjectedFileSource = remote
    ? { paths: remote.files.map((file) => file.path), load: async () => remote.files }
    : localFiles(launch.filesPath, launch.filePaths, stored!);
  diag(
    `launch spec, config and ${files.paths.length} injected file(s) ` +
      `${remote ? "fetched over gRPC" : `at ${launch.filesPath}`} ${since()}`,
  );
  const logs = new LogPusher(client, launch.sandboxId);
  let session: SupervisorSession | undefined;
  /** The main process's exit status until a gateway has taken it (it may be away when it happens). */
  let exitToReport: number | undefined;
  const reportExit = (): void => {
    const exitCode = exitToReport;
    if (exitCode === undefined) return;
    call(client.reportMainProcessExit.bind(client), {
      sandboxId: launch.sandboxId,
      instanceId: launch.instanceId,
      exitCode,
    }).then(
      () => {
        exitToReport = undefined;
      },
      (error: Error) =>
        diag(`could not report the main process exit (again once reconnected): ${error.message}`),
    );
  };

  const onAgent = (message: AgentMessage): void => {
    switch (message.t) {
      case "log":
        // The target is the stream the message came from, one of two the
        // decoder allows: nothing on this channel can log as "network".
        logs.push(message.s === "stderr" ? "WARN" : "INFO", message.s, message.m);
        break;
      case "ready":
        diag(`agent ready ${since()}`);
        session = new SupervisorSession({
          client,
          sandboxId: launch.sandboxId,
          instanceId: launch.instanceId,
          sshSocket: pod.sshSocket,
          forwardSocket: pod.forwardSocket,
          log: diag,
          accepted: reportExit,
          // A pod's supervisor is not stopped by its gateway: it stops when its sandbox is gone.
          gone: (reason) => shutdown(`the gateway no longer has this sandbox (${reason})`, 0),
        });
        session.start();
        break;
      case "exit":
        exitToReport = message.code;
        void logs.close().then(reportExit);
        // The pod stays: exec, upload, download and logs still serve a sandbox whose command completed.
        diag(`main process exited with status ${message.code}; the pod stays up`);
        break;
      case "fatal":
        void report({ kind: "failure", reason: message.reason, message: message.message });
        shutdown(message.message, 1);
        break;
    }
  };

  // A PodError rejects main: its reason becomes the sandbox's (see the end).
  let pod: Awaited<ReturnType<typeof startPod>>;
  pod = await startPod({
    launch,
    policy: config.policy,
    files,
    onAgent,
    logBackpressure: () => logs.backpressure(),
    onAgentLiveness: (responsive, detail) => {
      diag(detail);
      void report({ kind: "liveness", responsive, message: detail });
    },
    onProgress: (step, detail) => void report({ kind: "progress", step, message: detail }),
    onWarning: (warning) => void report({ kind: "warning", message: warning }),
    onNetworkLog: (level, message) => logs.push(level, "network", message),
    diag,
    closure,
    support:
      earlySupport ?? podSupport(join(launch.sandboxDir, "support"), closure, process.env[SECCOMP_DENY_ENV]),
    disk,
  });
  diag(`pod started ${since()}`);
  // Serving from here on: an error in one relay must not end the sandbox (see host/last-resort.ts).
  containUncaughtErrors("the supervisor", diag);
  const started = config.policy ?? defaultPolicy();
  const policyWatch = watchPolicy({
    client,
    sandboxId,
    startedHash: policyHash(started),
    apply: (policy) => {
      const problem = liveChangeProblem(started, policy);
      if (problem === undefined) pod.setNetworkPolicy(policy);
      return problem;
    },
    log: diag,
  });
  shutdownHook = async () => {
    policyWatch.stop();
    await logs.close();
    await pod.stop();
    // An attached client's last output and exit status are still on their way.
    await session?.drain(RELAY_DRAIN_MS);
    session?.stop();
  };
  pod.exited.then((status) => {
    if (!shuttingDown) {
      void report({ kind: "failure", reason: "SandboxExited", message: `sandbox pod exited: ${status}` });
      shutdown("pod exited", 1);
    }
  });
}

main().catch(async (error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  diag(error instanceof Error && error.stack && !(error instanceof StartupError) ? error.stack : message);
  const reason = error instanceof PodError ? error.reason : "SupervisorFailed";
  await report({ kind: "failure", reason, message });
  process.exit(1);
});
