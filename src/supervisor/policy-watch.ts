// Live policy updates, the supervisor's side of the runtime contract: it
// watches its sandbox's configuration (WatchSandboxConfig: the configuration
// now, then each new revision), applies each revision it has not applied, and
// reports what it made of it (ReportPolicyStatus: LOADED, or FAILED with why,
// the revision in force staying). Both are gRPC calls on the supervisor's own
// credentials, so a supervisor on another host does the same.
//
// The first configuration after (re)connecting is reported too: at start it
// is the revision the pod started with, which makes it the revision in force;
// after a gateway restart it is whatever was stored meanwhile. A report that
// does not reach the gateway is made again on the next connection.

import type { ClientReadableStream } from "@grpc/grpc-js";
import { type OpenShellClient, PolicyStatus } from "../gen/openshell.js";
import type { GetSandboxConfigResponse, SandboxPolicy } from "../gen/sandbox.js";
import { call } from "./link.js";

/** Waits between two attempts to reach a gateway that is away. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 2000;

export interface PolicyWatchOptions {
  client: OpenShellClient;
  sandboxId: string;
  /** The hash of the policy the pod started with. */
  startedHash: string;
  /** Puts `policy` in force, or says why it cannot (a throw says so too). */
  apply(policy: SandboxPolicy): string | undefined;
  log(line: string): void;
}

export function watchPolicy(options: PolicyWatchOptions): { stop(): void } {
  let stopped = false;
  let stream: ClientReadableStream<GetSandboxConfigResponse> | undefined;
  let appliedHash = options.startedHash;
  /** The revision last reported, and how; reported again only when it changes. */
  let reported = "";
  let retryMs = RETRY_MIN_MS;
  let retry: NodeJS.Timeout | undefined;

  const report = (version: number, status: PolicyStatus, loadError: string): void => {
    const key = `${version}:${status}`;
    if (key === reported) return;
    call(options.client.reportPolicyStatus.bind(options.client), {
      sandboxId: options.sandboxId,
      version,
      status,
      loadError,
    }).then(
      () => {
        reported = key;
      },
      (error: Error) =>
        options.log(`could not report policy revision ${version} (again once reconnected): ${error.message}`),
    );
  };

  const onConfig = (config: GetSandboxConfigResponse): void => {
    retryMs = RETRY_MIN_MS;
    if (config.policy === undefined) return;
    if (config.policyHash === appliedHash) {
      report(config.version, PolicyStatus.POLICY_STATUS_LOADED, "");
      return;
    }
    let problem: string | undefined;
    try {
      problem = options.apply(config.policy);
    } catch (error) {
      problem = (error as Error).message;
    }
    if (problem === undefined) {
      appliedHash = config.policyHash;
      options.log(`policy revision ${config.version} in force`);
      report(config.version, PolicyStatus.POLICY_STATUS_LOADED, "");
    } else {
      options.log(`policy revision ${config.version} not applied: ${problem}`);
      report(config.version, PolicyStatus.POLICY_STATUS_FAILED, problem);
    }
  };

  const connect = (): void => {
    if (stopped) return;
    const current = options.client.watchSandboxConfig({ sandboxId: options.sandboxId });
    stream = current;
    // A report lost with the last connection is made again for what this one sends first.
    reported = "";
    current.on("data", onConfig);
    current.on("error", () => {});
    // Once per call, however it ended.
    current.on("status", () => {
      if (stopped || stream !== current) return;
      retry = setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    });
  };
  connect();

  return {
    stop: () => {
      stopped = true;
      clearTimeout(retry);
      stream?.cancel();
    },
  };
}
