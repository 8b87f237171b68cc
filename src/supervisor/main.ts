// The supervisor: one process per sandbox, the only privileged part. It
// fetches the sandbox's policy and injected files from the gateway (the files
// from the local file the gateway names, when it does), writes
// the files root-owned, starts the bubblewrap pod whose first process is the
// agent, and once the agent reports the main process running and SSH served
// it opens the supervisor session that makes the sandbox Ready. It relays
// SSH for the gateway, forwards the main process's output as log lines, and
// reports the main process's exit, after which the pod stays up (the agent
// keeps serving exec and file transfer) until the sandbox is stopped.
//
// Reports for the gateway (failures, progress) go to stdout as JSON lines;
// diagnostics go to stderr. stdin carries the launch configuration and stays
// open: its end means the gateway is gone, and the sandbox stops with it.

import { join } from "node:path";
import { createInterface } from "node:readline";
import { containUncaughtErrors } from "../host/last-resort.js";
import {
  POD_SUPPORT_DIR_ENV,
  SECCOMP_DENY_ENV,
  type SupervisorLaunch,
  type SupervisorNotice,
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
import { fileInjectionFailed } from "./setup-errors.js";

function report(message: SupervisorReport): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function diag(line: string): void {
  process.stderr.write(`${line}\n`);
}

/**
 * The injected files a local gateway names: their paths from the launch,
 * their content read from the file only when staging needs it (for most
 * sandboxes, once bwrap is starting). Content that cannot be read, or does
 * not match the paths, stops the sandbox before anything in it runs.
 */
function localFiles(path: string, paths: readonly string[], pending: boolean): InjectedFileSource {
  return {
    paths,
    load: async () => {
      // At create the gateway writes the content while this supervisor starts.
      if (pending) await stored;
      try {
        return readFileContent(path, paths);
      } catch (error) {
        throw fileInjectionFailed(path, `the injected files' ${(error as Error).message}`);
      }
    },
  };
}

/** Resolves when the gateway says the injected files' content is stored (SupervisorLaunch.filesPending). */
let contentStored: () => void = () => {};
const stored = new Promise<void>((resolve) => {
  contentStored = resolve;
});

/**
 * The launch configuration: the first line on stdin. Later lines are the
 * gateway's notices; stdin stays open, and its end (the gateway exiting)
 * stops the sandbox.
 */
function readLaunch(): Promise<SupervisorLaunch> {
  const lines = createInterface({ input: process.stdin });
  return new Promise((resolve, reject) => {
    let launched = false;
    lines.on("line", (line) => {
      if (!launched) {
        launched = true;
        process.stdin.on("end", () => shutdown("gateway connection closed", 0));
        resolve(JSON.parse(line) as SupervisorLaunch);
      } else if ((JSON.parse(line) as SupervisorNotice).kind === "files-stored") {
        contentStored();
      }
    });
    lines.on("close", () => {
      if (!launched) reject(new Error("no launch configuration on stdin"));
    });
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
    .finally(() => process.exit(code));
}

async function main(): Promise<void> {
  process.on("SIGTERM", () => shutdown("SIGTERM", 0));
  process.on("SIGINT", () => shutdown("SIGINT", 0));
  // A spare supervisor is started before its sandbox exists: it connects to
  // its gateway first, then waits on stdin for the sandbox to serve.
  const early = process.env.OPENSHELL_SUPERVISOR_GATEWAY
    ? supervisorClient(process.env.OPENSHELL_SUPERVISOR_GATEWAY)
    : undefined;
  early?.client.getChannel().getConnectivityState(true);
  const closure = nodeClosure();
  closure.catch(() => {}); // reported by startPod
  // The execute-only loader and the seccomp filter, shared by the host's pods:
  // a spare makes or finds them before its sandbox exists.
  const supportDir = process.env[POD_SUPPORT_DIR_ENV];
  const earlySupport = supportDir
    ? podSupport(supportDir, closure, process.env[SECCOMP_DENY_ENV])
    : undefined;
  earlySupport?.catch(() => {}); // reported by startPod
  const launch = await readLaunch();
  const disk = prepareGuestDisk(launch);
  disk?.catch(() => {}); // reported by startPod
  // Stopped before its pod is up, the supervisor still gives back the sandbox's filesystem.
  shutdownHook = async () => {
    await (await disk?.catch(() => undefined))?.unmount();
  };
  const start = performance.now();
  const since = (): string => `${Math.round(performance.now() - start)} ms after launch`;
  const { client, identify } = early ?? supervisorClient(launch.gateway);
  identify(launch.sandboxId, launch.secret);
  // A local gateway names the file that holds the content; otherwise it comes over the wire.
  const [config, remote] = await Promise.all([
    call(client.getSandboxConfig.bind(client), { sandboxId: launch.sandboxId }),
    launch.filesPath === undefined
      ? call(client.getSandboxFiles.bind(client), { sandboxId: launch.sandboxId })
      : undefined,
  ]);
  const files: InjectedFileSource = remote
    ? { paths: remote.files.map((file) => file.path), load: async () => remote.files }
    : localFiles(launch.filesPath!, launch.filePaths ?? [], launch.filesPending === true);
  diag(`config and ${files.paths.length} file path(s) fetched ${since()}`);
  const logs = new LogPusher(client, launch.sandboxId);
  let session: SupervisorSession | undefined;

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
          log: diag,
        });
        session.start();
        break;
      case "exit":
        void logs
          .close()
          .then(() =>
            call(client.reportMainProcessExit.bind(client), {
              sandboxId: launch.sandboxId,
              instanceId: launch.instanceId,
              exitCode: message.code,
            }),
          )
          .catch((error) => diag(`could not report the main process exit: ${(error as Error).message}`));
        // The pod stays: exec, upload, download and logs still serve a sandbox whose command completed.
        diag(`main process exited with status ${message.code}; the pod stays up`);
        break;
      case "fatal":
        report({ kind: "failure", reason: message.reason, message: message.message });
        shutdown(message.message, 1);
        break;
    }
  };

  let pod: Awaited<ReturnType<typeof startPod>>;
  try {
    pod = await startPod({
      launch,
      policy: config.policy,
      files,
      onAgent,
      logBackpressure: () => logs.backpressure(),
      onAgentLiveness: (responsive, detail) => {
        diag(detail);
        report({ kind: "liveness", responsive, message: detail });
      },
      onProgress: (step, detail) => report({ kind: "progress", step, message: detail }),
      onWarning: (warning) => report({ kind: "warning", message: warning }),
      onNetworkLog: (level, message) => logs.push(level, "network", message),
      diag,
      closure,
      support:
        earlySupport ??
        podSupport(join(launch.sandboxDir, "support"), closure, process.env[SECCOMP_DENY_ENV]),
      disk,
    });
  } catch (error) {
    if (error instanceof PodError) {
      report({ kind: "failure", reason: error.reason, message: error.message });
      process.exit(1);
    }
    throw error;
  }
  diag(`pod started ${since()}`);
  // Serving from here on: an error in one relay must not end the sandbox (see host/last-resort.ts).
  containUncaughtErrors("the supervisor", diag);
  shutdownHook = async () => {
    await logs.close();
    await pod.stop();
    // An attached client's last output and exit status are still on their way.
    await session?.drain(RELAY_DRAIN_MS);
    session?.stop();
  };
  pod.exited.then((status) => {
    if (!shuttingDown) {
      report({ kind: "failure", reason: "SandboxExited", message: `sandbox pod exited: ${status}` });
      shutdown("pod exited", 1);
    }
  });
}

main().catch((error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  report({ kind: "failure", reason: "SupervisorFailed", message });
  diag(error instanceof Error && error.stack ? error.stack : message);
  process.exit(1);
});
