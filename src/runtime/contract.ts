// The runtime contract: how a gateway tells the supervisor of a sandbox what
// to run, and how the supervisor reports back. The gateway and the supervisor
// both import this module and neither owns it; nothing here depends on either
// side.
//
// A supervisor needs only its environment and a network path to the gateway,
// as upstream's supervisor in a pod does: the environment names the sandbox,
// the gateway's endpoint and the sandbox's credential (supervisorEnv); over
// gRPC the supervisor then fetches its launch spec (GetSupervisorLaunch), its
// policy (GetSandboxConfig) and its injected files (GetSandboxFiles), and
// reports progress and failure (ReportSupervisorStatus). While it runs it
// watches its configuration (WatchSandboxConfig: now, then each new policy
// revision), applies what may change on a running sandbox (the network rules,
// core/policy/live.ts) and says what it made of each revision
// (ReportPolicyStatus: loaded, or failed with why). A supervisor on another
// machine (a pod's) dials the gateway's TCP listener over TLS, trusting the CA
// its environment names, with a client certificate when the gateway requires
// one: its sandbox credential authorizes its calls, never the connection. The
// local runtime's
// fast path is an option of the same spec: `filesPath` names a file on the
// supervisor's host holding the content, read there instead of fetched.
//
// The local runtime starts supervisors ahead of need (a spare), before their
// sandbox exists; such a supervisor gets the same environment as one JSON line
// on stdin (a process's environment is fixed when it starts), and the end of
// that stdin means its gateway is gone.

import type { SupervisorLaunchSpec, SupervisorStatusReport } from "../gen/openshell.js";

/** The environment variables of the contract, upstream's names where it has them. */
export const SUPERVISOR_ENV = {
  sandboxId: "OPENSHELL_SANDBOX_ID",
  /**
   * The gateway's gRPC target: `unix:///…/supervisor.sock` (the local
   * runtime), `host:port` or `https://host:port` (TLS), `http://host:port`
   * (plaintext TCP, only when named so).
   */
  endpoint: "OPENSHELL_ENDPOINT",
  /** The sandbox's credential, presented on every call. */
  secret: "OPENSHELL_SANDBOX_SECRET",
  /** The CA certificate (PEM file) a TLS endpoint is verified with; the system's roots when unset. */
  tlsCa: "OPENSHELL_TLS_CA",
  /** A client certificate and its key (PEM files), for a gateway that requires them (mTLS). */
  tlsCert: "OPENSHELL_TLS_CERT",
  tlsKey: "OPENSHELL_TLS_KEY",
  /**
   * Where a supervisor the gateway did not start keeps the sandbox's
   * directories (workspace, run, tmp) when its launch names none; default
   * EXTERNAL_SANDBOX_DIR.
   */
  sandboxDir: "OPENSHELL_SANDBOX_DIR",
} as const;

/** A supervisor's sandbox directory when neither its launch nor its environment names one. */
export const EXTERNAL_SANDBOX_DIR = "/var/lib/openshell/sandbox";

/** The variables without which a supervisor cannot serve its sandbox. */
const REQUIRED_ENV = ["sandboxId", "endpoint", "secret"] as const;

/** The files a supervisor dialing TLS reads: paths from its environment. */
export interface SupervisorTls {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
}

/** Who a supervisor is and where its gateway is: all it is told outside gRPC. */
export interface SupervisorIdentity {
  sandboxId: string;
  endpoint: string;
  secret: string;
  tls?: SupervisorTls | undefined;
  sandboxDir?: string | undefined;
}

/** The environment that tells a supervisor its identity. */
export function supervisorEnv(identity: SupervisorIdentity): Record<string, string> {
  const optional: [string, string | undefined][] = [
    [SUPERVISOR_ENV.tlsCa, identity.tls?.ca],
    [SUPERVISOR_ENV.tlsCert, identity.tls?.cert],
    [SUPERVISOR_ENV.tlsKey, identity.tls?.key],
    [SUPERVISOR_ENV.sandboxDir, identity.sandboxDir],
  ];
  return {
    [SUPERVISOR_ENV.sandboxId]: identity.sandboxId,
    [SUPERVISOR_ENV.endpoint]: identity.endpoint,
    [SUPERVISOR_ENV.secret]: identity.secret,
    ...Object.fromEntries(optional.filter((entry): entry is [string, string] => entry[1] !== undefined)),
  };
}

/**
 * A supervisor's identity from its environment; undefined when the sandbox is
 * not named yet (a spare), and an error naming the variable when it is
 * incomplete.
 */
export function readSupervisorEnv(env: Record<string, string | undefined>): SupervisorIdentity | undefined {
  const sandboxId = env[SUPERVISOR_ENV.sandboxId];
  if (sandboxId === undefined || sandboxId === "") return undefined;
  const missing = REQUIRED_ENV.find((key) => !env[SUPERVISOR_ENV[key]]);
  if (missing) {
    throw new Error(
      `${SUPERVISOR_ENV[missing]} is not set: a supervisor needs ${REQUIRED_ENV.map((key) => SUPERVISOR_ENV[key]).join(", ")}`,
    );
  }
  const sandboxDir = env[SUPERVISOR_ENV.sandboxDir] || undefined;
  const tls = readSupervisorTls(env);
  return {
    sandboxId,
    endpoint: env[SUPERVISOR_ENV.endpoint]!,
    secret: env[SUPERVISOR_ENV.secret]!,
    ...(tls ? { tls } : {}),
    ...(sandboxDir ? { sandboxDir } : {}),
  };
}

/** The TLS files a supervisor's environment names; undefined when it names none. */
export function readSupervisorTls(env: Record<string, string | undefined>): SupervisorTls | undefined {
  const [ca, cert, key] = [SUPERVISOR_ENV.tlsCa, SUPERVISOR_ENV.tlsCert, SUPERVISOR_ENV.tlsKey].map(
    (name) => env[name] || undefined,
  );
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error(
      `${SUPERVISOR_ENV.tlsCert} and ${SUPERVISOR_ENV.tlsKey} go together: set both or neither`,
    );
  }
  return ca || cert ? { ca, cert, key } : undefined;
}

/** How a supervisor reaches its gateway's endpoint (see SUPERVISOR_ENV.endpoint). */
export type SupervisorTarget =
  | { kind: "unix"; target: string }
  | { kind: "tcp"; target: string; tls: boolean };

/**
 * Reads an endpoint: `unix://…` as it is, `http://host:port` as plaintext
 * TCP, and `host:port` or `https://host:port` as TLS. Throws naming the
 * variable when it is none of these.
 */
export function parseSupervisorEndpoint(endpoint: string): SupervisorTarget {
  if (endpoint.startsWith("unix:")) return { kind: "unix", target: endpoint };
  const match = /^(?:(https?):\/\/)?((?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5})\/?$/.exec(endpoint);
  if (!match) {
    throw new Error(
      `${SUPERVISOR_ENV.endpoint}=${endpoint}: expected host:port (TLS), https://host:port, http://host:port or unix:///path`,
    );
  }
  return { kind: "tcp", target: match[2]!, tls: match[1] !== "http" };
}

/**
 * What a supervisor runs: the launch spec of GetSupervisorLaunch, its fields
 * documented in proto/openshell.proto. Unset is zero there: no `diskBytes`
 * (directories in `sandboxDir`), no `ttyCols`/`ttyRows` (80x24), no
 * `filesPath` (the files are fetched with GetSandboxFiles).
 */
export type SupervisorLaunch = SupervisorLaunchSpec;

/** What a supervisor reports (on the wire: SupervisorStatusReport). */
export type SupervisorReport =
  | { kind: "failure"; reason: string; message: string }
  | { kind: "progress"; step: string; message: string }
  | { kind: "warning"; message: string }
  /** The sandbox's agent stopped answering its supervisor (frozen, or its event loop stuck), or answers again. */
  | { kind: "liveness"; responsive: boolean; message: string };

/** The longest report text the gateway keeps; a supervisor's words are bounded like any sandbox's. */
export const REPORT_TEXT_MAX = 4096;
/** A failure reason or progress step: a condition reason's shape. */
const REPORT_WORD = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

export function reportToWire(sandboxId: string, report: SupervisorReport): SupervisorStatusReport {
  switch (report.kind) {
    case "failure":
      return {
        sandboxId,
        report: { $case: "failure", value: { reason: report.reason, message: report.message } },
      };
    case "progress":
      return {
        sandboxId,
        report: { $case: "progress", value: { step: report.step, message: report.message } },
      };
    case "warning":
      return { sandboxId, report: { $case: "warning", value: report.message } };
    case "liveness":
      return {
        sandboxId,
        report: { $case: "liveness", value: { responsive: report.responsive, message: report.message } },
      };
  }
}

/**
 * A report as the gateway takes it: texts cut to REPORT_TEXT_MAX, a reason
 * or step that is not a plain word replaced; undefined when it says nothing.
 */
export function reportFromWire(wire: SupervisorStatusReport): SupervisorReport | undefined {
  const text = (value: string): string => value.slice(0, REPORT_TEXT_MAX);
  const word = (value: string, fallback: string): string => (REPORT_WORD.test(value) ? value : fallback);
  const report = wire.report;
  switch (report?.$case) {
    case "failure":
      return {
        kind: "failure",
        reason: word(report.value.reason, "SupervisorFailed"),
        message: text(report.value.message),
      };
    case "progress":
      return {
        kind: "progress",
        step: word(report.value.step, "Progress"),
        message: text(report.value.message),
      };
    case "warning":
      return { kind: "warning", message: text(report.value) };
    case "liveness":
      return { kind: "liveness", responsive: report.value.responsive, message: text(report.value.message) };
    default:
      return undefined;
  }
}

/** Syscall names as libseccomp spells them; anything else in a deny list is refused before it reaches it. */
const SYSCALL_NAME = /^[a-z_][a-z0-9_]{0,63}$/;

/**
 * The environment variable naming the directory where supervisors keep what
 * every pod shares (the compiled filter, the agent's execute-only loader);
 * the local runtime sets it.
 */
export const POD_SUPPORT_DIR_ENV = "OPENSHELL_POD_SUPPORT_DIR";

/** The environment variable through which the gateway's operator names calls to refuse besides the defaults. */
export const SECCOMP_DENY_ENV = "OPENSHELL_SECCOMP_DENY";

/**
 * Parses a deny list: system call names separated by commas or spaces, e.g.
 * `OPENSHELL_SECCOMP_DENY=io_setup,io_submit`. Throws with the offending
 * entry named.
 */
export function parseDenyList(text: string | undefined): string[] {
  if (text === undefined) return [];
  const names = text.split(/[\s,]+/).filter((name) => name !== "");
  for (const name of names) {
    if (!SYSCALL_NAME.test(name)) {
      throw new Error(
        `${SECCOMP_DENY_ENV}: '${name}' is not a system call name (expected names like keyctl or io_setup, separated by commas)`,
      );
    }
  }
  return names;
}
