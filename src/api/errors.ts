// The API's one error hierarchy. Every failure the API reports is an
// OpenShellError (the same class, code, message and hint the CLI prints);
// the classes below tell the kinds apart with `instanceof`. `toApiError` is
// the one place an error from below (a gRPC status already mapped by
// transport/grpc.ts, an SSH failure, a local check) becomes one of them.

import { status } from "@grpc/grpc-js";
import { type ErrorCode, OpenShellError } from "../core/errors.js";

export type { ErrorCode };
export { OpenShellError };

interface ErrorOptions {
  hint?: string | undefined;
  cause?: unknown;
}

function opts(options: ErrorOptions): { hint?: string; cause?: unknown } {
  return {
    ...(options.hint !== undefined ? { hint: options.hint } : {}),
    ...(options.cause !== undefined ? { cause: options.cause } : {}),
  };
}

/** No such sandbox, file or gateway entry. */
export class NotFoundError extends OpenShellError {
  constructor(message: string, options: ErrorOptions = {}) {
    super("not_found", message, opts(options));
    this.name = "NotFoundError";
  }
}

/** A sandbox of that name exists already. */
export class AlreadyExistsError extends OpenShellError {
  constructor(message: string, options: ErrorOptions = {}) {
    super("already_exists", message, opts(options));
    this.name = "AlreadyExistsError";
  }
}

/** An argument was refused, by the API's own checks or by the gateway; `field` names it when known. */
export class InvalidArgumentError extends OpenShellError {
  readonly field: string | undefined;
  constructor(message: string, options: ErrorOptions & { field?: string | undefined; usage?: boolean } = {}) {
    super(options.usage ? "usage" : "invalid_input", message, opts(options));
    this.name = "InvalidArgumentError";
    this.field = options.field;
  }
}

/** The gateway refused the caller: a wrong or missing token, or a client certificate it does not accept. */
export class NotAuthorizedError extends OpenShellError {
  /** True when the gateway knows the caller but refuses it this call (gRPC PERMISSION_DENIED: admins only). */
  readonly permissionDenied: boolean;
  constructor(message: string, options: ErrorOptions = {}) {
    super("not_authorized", message, opts(options));
    this.name = "NotAuthorizedError";
    this.permissionDenied =
      (options.cause as { code?: unknown } | undefined)?.code === status.PERMISSION_DENIED;
  }
}

/** The gateway cannot be reached (none configured, down, TLS failure), or the connection to it was lost. */
export class UnavailableError extends OpenShellError {
  constructor(
    message: string,
    options: ErrorOptions & { code?: "gateway_unreachable" | "no_gateway" | "connection_lost" } = {},
  ) {
    super(options.code ?? "gateway_unreachable", message, opts(options));
    this.name = "UnavailableError";
  }
}

/** The sandbox failed: it entered the Error phase; `reason` is its condition's reason. */
export class SandboxFailedError extends OpenShellError {
  readonly reason: string;
  constructor(message: string, options: ErrorOptions & { reason?: string } = {}) {
    super("sandbox_error", message, opts(options));
    this.name = "SandboxFailedError";
    this.reason = options.reason ?? "";
  }
}

/** A call's `timeoutMs` (or the gateway's deadline) passed; a command it ended was killed in the sandbox. */
export class TimeoutError extends OpenShellError {
  constructor(message: string, options: ErrorOptions = {}) {
    super("timeout", message, opts(options));
    this.name = "TimeoutError";
  }
}

/** The caller's AbortSignal fired; a command it ended was killed in the sandbox. Its name is "AbortError", as fetch's. */
export class AbortError extends OpenShellError {
  constructor(message = "the operation was aborted", options: ErrorOptions = {}) {
    super("connection_lost", message, opts(options));
    this.name = "AbortError";
  }
}

type Make = (message: string, options: ErrorOptions) => OpenShellError;
const KINDS: Partial<Record<ErrorCode, Make>> = {
  not_found: (m, o) => new NotFoundError(m, o),
  already_exists: (m, o) => new AlreadyExistsError(m, o),
  invalid_input: (m, o) => new InvalidArgumentError(m, o),
  usage: (m, o) => new InvalidArgumentError(m, { ...o, usage: true }),
  not_authorized: (m, o) => new NotAuthorizedError(m, o),
  gateway_unreachable: (m, o) => new UnavailableError(m, { ...o, code: "gateway_unreachable" }),
  no_gateway: (m, o) => new UnavailableError(m, { ...o, code: "no_gateway" }),
  connection_lost: (m, o) => new UnavailableError(m, { ...o, code: "connection_lost" }),
  sandbox_error: (m, o) => new SandboxFailedError(m, o),
  timeout: (m, o) => new TimeoutError(m, o),
};

/**
 * The API's class for any thrown value: a plain OpenShellError of a kind
 * above becomes that class (same code, message, hint and cause), anything
 * else is returned as it is.
 */
export function toApiError(error: unknown): unknown {
  if (!(error instanceof OpenShellError) || error.constructor !== OpenShellError) return error;
  const make = KINDS[error.code];
  if (!make) return error;
  const converted = make(error.message, { hint: error.hint, cause: error.cause });
  if (error.stack) converted.stack = error.stack.replace(/^OpenShellError/, converted.name);
  return converted;
}

/** Runs `work` and rethrows its failure as the API's class. */
export async function typed<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    throw toApiError(error);
  }
}
