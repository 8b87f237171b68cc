// One error type for everything the CLI reports: a stable code, the process
// exit code, and an optional hint line that says how to fix it. gRPC status
// codes map onto it in one place (src/transport/grpc.ts).

export type ErrorCode =
  | "usage"
  | "invalid_input"
  | "no_gateway"
  | "gateway_unreachable"
  | "not_authorized"
  | "not_found"
  | "already_exists"
  | "not_ready"
  | "failed_precondition"
  | "connection_lost"
  | "timeout"
  | "sandbox_error"
  | "unsupported"
  | "internal";

/** Exit codes of the CLI's own failures. See README "Exit codes". */
export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
} as const;

/**
 * Commands that pass a remote command's exit status through (`sandbox exec`,
 * `sandbox connect`, attached `sandbox create`) report their own failures with
 * codes no ordinary command or signal death produces (128+N stops at 192).
 * The one exception is a gateway refusing the caller: that is 1 from every
 * command alike, so a stranger's script sees one answer wherever it knocks.
 */
export const PASSTHROUGH_EXIT: Record<ErrorCode, number> = {
  usage: 240,
  invalid_input: 240,
  no_gateway: 241,
  gateway_unreachable: 241,
  not_authorized: EXIT.failure,
  not_found: 243,
  not_ready: 243,
  already_exists: 240,
  failed_precondition: 243,
  connection_lost: 244,
  timeout: 244,
  sandbox_error: 243,
  unsupported: 240,
  internal: 245,
};

export class OpenShellError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OpenShellError";
    this.code = code;
    this.hint = options.hint;
    this.exitCode = code === "usage" ? EXIT.usage : EXIT.failure;
  }
}

export function usageError(message: string, hint?: string): OpenShellError {
  return new OpenShellError("usage", message, hint === undefined ? {} : { hint });
}

export function invalidInput(message: string, hint?: string): OpenShellError {
  return new OpenShellError("invalid_input", message, hint === undefined ? {} : { hint });
}

export function isOpenShellError(error: unknown): error is OpenShellError {
  return error instanceof OpenShellError;
}

/** The message of any thrown value, for places that must print something. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
