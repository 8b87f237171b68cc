import { describe, expect, it } from "vitest";
import { FILE_LIMITS, validateSandboxPath } from "../../src/core/files.js";
import { COMMAND_LIMITS, ENVIRONMENT_LIMITS } from "../../src/core/names.js";
import { MAX_POLICY_ENCODED_BYTES } from "../../src/core/policy/validate.js";
import { CreateSandboxRequest } from "../../src/gen/openshell.js";
import { SandboxPolicy } from "../../src/gen/sandbox.js";
import { MAX_MESSAGE_BYTES } from "../../src/transport/grpc.js";

/** An absolute path of exactly `bytes` bytes, in components of at most 255 bytes, unique by `index`. */
function longPath(index: number, bytes: number): string {
  let path = `/opt/f${index}`;
  while (path.length < bytes) path += "/" + "d".repeat(Math.min(255, bytes - path.length - 1));
  return path;
}

/** The largest create request every limit allows at once. */
function largestCreateRequest(): Uint8Array {
  const perFile = FILE_LIMITS.total / FILE_LIMITS.count;
  const content = Buffer.alloc(perFile, 0x61);
  const files = Array.from({ length: FILE_LIMITS.count }, (_, i) => ({
    path: longPath(i, FILE_LIMITS.pathBytes),
    content,
    mode: 0o777,
    size: perFile,
    sha256: "f".repeat(64),
  }));
  // A policy of filesystem paths, as many as its encoded cap holds.
  const readOnly: string[] = [];
  const policy = () => ({
    version: 1,
    filesystem: { includeWorkdir: true, readOnly, readWrite: [] },
    networkPolicies: {},
    networkMiddlewares: {},
  });
  const encodedPolicy = () => SandboxPolicy.encode(policy()).finish().length;
  while (encodedPolicy() + 4100 <= MAX_POLICY_ENCODED_BYTES) readOnly.push(longPath(readOnly.length, 4096));
  const environment: Record<string, string> = {};
  const entry = ENVIRONMENT_LIMITS.keyBytes + ENVIRONMENT_LIMITS.valueBytes;
  for (let i = 0; (i + 1) * entry <= ENVIRONMENT_LIMITS.totalBytes; i++) {
    environment[`K${i}`.padEnd(ENVIRONMENT_LIMITS.keyBytes, "_")] = "v".repeat(ENVIRONMENT_LIMITS.valueBytes);
  }
  const command = Array.from({ length: COMMAND_LIMITS.totalBytes / COMMAND_LIMITS.argBytes }, () =>
    "c".repeat(COMMAND_LIMITS.argBytes),
  );
  return CreateSandboxRequest.encode({
    spec: {
      logLevel: "debug",
      environment,
      policy: policy(),
      providers: [],
      command,
      tty: true,
      files,
    },
    name: "n".repeat(63),
    labels: {},
    annotations: {},
    workspace: "w".repeat(63),
  }).finish();
}

describe("the gRPC message cap", () => {
  it("is computed from the file limits: 10 MiB of files, 256 paths of 4096 bytes and their framing, policy, environment, command and 128 KiB for the rest", () => {
    expect(MAX_MESSAGE_BYTES).toBe(
      FILE_LIMITS.total + FILE_LIMITS.count * (FILE_LIMITS.pathBytes + 96) + 3 * 256 * 1024 + 128 * 1024,
    );
    expect(MAX_MESSAGE_BYTES).toBe(12_476_416);
  });

  it("fits the largest create request the limits allow (which 11 MiB did not), with under 256 KiB to spare, and stays under the 12 MiB a test sends to be refused", () => {
    expect(validateSandboxPath(longPath(255, FILE_LIMITS.pathBytes))).toBeUndefined();
    const size = largestCreateRequest().length;
    expect(size).toBeGreaterThan(11 * 1024 * 1024);
    expect(size).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    expect(MAX_MESSAGE_BYTES - size).toBeLessThan(256 * 1024);
    expect(MAX_MESSAGE_BYTES).toBeLessThan(12 * 1024 * 1024);
  });
});
