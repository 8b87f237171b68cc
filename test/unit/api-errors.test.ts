// The API's error classes: each gRPC status the CLI maps (transport/grpc.ts)
// becomes the class that names its kind, with the CLI's code, message, hint
// and exit code unchanged.

import { Metadata, status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { toApiError } from "../../src/api/errors.js";
import {
  AlreadyExistsError,
  InvalidArgumentError,
  NotAuthorizedError,
  NotFoundError,
  OpenShellError,
  TimeoutError,
  UnavailableError,
} from "../../src/api/index.js";
import { mapGrpcError } from "../../src/transport/grpc.js";

const target = { name: "local", endpoint: "http://127.0.0.1:1" };

function serviceError(code: status, details: string) {
  return Object.assign(new Error(`${code} ${details}`), { code, details, metadata: new Metadata() });
}

describe("the API's errors", () => {
  const cases: [status, string, abstract new (...args: never[]) => OpenShellError, string][] = [
    [status.NOT_FOUND, "sandbox 'x' not found", NotFoundError, "not_found"],
    [status.ALREADY_EXISTS, "sandbox 'x' already exists", AlreadyExistsError, "already_exists"],
    [status.INVALID_ARGUMENT, "bad label", InvalidArgumentError, "invalid_input"],
    [status.UNAUTHENTICATED, "bad token", NotAuthorizedError, "not_authorized"],
    [status.PERMISSION_DENIED, "not yours", NotAuthorizedError, "not_authorized"],
    [
      status.UNAVAILABLE,
      "No connection established. Last error: connect ECONNREFUSED",
      UnavailableError,
      "gateway_unreachable",
    ],
    [status.DEADLINE_EXCEEDED, "Deadline exceeded", TimeoutError, "timeout"],
  ];
  for (const [code, details, kind, errorCode] of cases) {
    it(`maps gRPC ${status[code]} to ${kind.name}, keeping the CLI's message, hint and exit code`, () => {
      const cli = mapGrpcError(serviceError(code, details), target);
      const api = toApiError(cli) as OpenShellError;
      expect(api).toBeInstanceOf(kind);
      expect(api).toBeInstanceOf(OpenShellError);
      expect(api.code).toBe(errorCode);
      expect(api.message).toBe(cli.message);
      expect(api.hint).toBe(cli.hint);
      expect(api.exitCode).toBe(cli.exitCode);
    });
  }

  it("leaves other errors as they are", () => {
    const plain = new Error("x");
    expect(toApiError(plain)).toBe(plain);
    const precondition = new OpenShellError("failed_precondition", "not now");
    expect(toApiError(precondition)).toBe(precondition);
  });
});
