// gRPC status errors as the gateway returns them: unary handlers pass one to
// their callback; streaming handlers emit it as the stream's 'error', which
// grpc-js turns into the call's final status.

import { type ServiceError, status } from "@grpc/grpc-js";

export class StatusError extends Error {
  readonly code: status;
  readonly details: string;

  constructor(code: status, details: string) {
    super(details);
    this.code = code;
    this.details = details;
  }
}

export const invalidArgument = (details: string): StatusError =>
  new StatusError(status.INVALID_ARGUMENT, details);
export const notFound = (details = "sandbox not found"): StatusError =>
  new StatusError(status.NOT_FOUND, details);
export const failedPrecondition = (details: string): StatusError =>
  new StatusError(status.FAILED_PRECONDITION, details);
export const unauthenticated = (details: string): StatusError =>
  new StatusError(status.UNAUTHENTICATED, details);
export const unavailable = (details: string): StatusError => new StatusError(status.UNAVAILABLE, details);
export const internal = (details: string): StatusError => new StatusError(status.INTERNAL, details);

/** Any thrown value as a status a client can read (unknown errors become INTERNAL). */
export function toStatus(error: unknown): Partial<ServiceError> {
  if (error instanceof StatusError)
    return { code: error.code, details: error.details, message: error.details };
  if (typeof error === "object" && error !== null && "code" in error && typeof error.code === "number") {
    const e = error as { code: number; details?: string; message?: string };
    const details = e.details ?? e.message ?? "error";
    return { code: e.code, details, message: details };
  }
  const details = error instanceof Error ? error.message : String(error);
  return { code: status.INTERNAL, details, message: details };
}
