// The gateway's SSH-facing API as tests need it: a gRPC client for a test
// environment's gateway, raw ForwardTcp streams (to hold connection slots and
// to see the gateway's own refusals), and running the CLI with byte-exact
// output for the data-integrity tests.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ServiceError } from "@grpc/grpc-js";
import type { OpenShellClient } from "../../src/gen/openshell.js";
import { connectGateway, type GatewayTarget, unary } from "../../src/transport/grpc.js";
import type { RunOptions, TestEnv } from "./cli.js";

export interface GatewayApi {
  target: GatewayTarget;
  client: OpenShellClient;
  sandboxId(name: string): Promise<string>;
  createSshSession(sandboxId: string): Promise<{ token: string; expiresAtMs: number }>;
  revokeSshSession(token: string): Promise<boolean>;
  close(): void;
}

/** A gRPC client for the gateway `name` registered in `env`, with its bearer token. */
export function gatewayApi(env: TestEnv, name = "local"): GatewayApi {
  const dir = join(env.configHome, "openshell", "gateways", name);
  const metadata = JSON.parse(readFileSync(join(dir, "metadata.json"), "utf8")) as {
    gateway_endpoint: string;
    token_file?: string;
  };
  const target: GatewayTarget = {
    name,
    endpoint: metadata.gateway_endpoint,
    token: readFileSync(metadata.token_file ?? join(dir, "token"), "utf8").trim(),
  };
  const client = connectGateway(target);
  return {
    target,
    client,
    async sandboxId(sandbox) {
      const response = await unary(target, client.getSandbox.bind(client), { name: sandbox, workspace: "" });
      return response.sandbox!.metadata!.id;
    },
    async createSshSession(sandboxId) {
      const session = await unary(target, client.createSshSession.bind(client), { sandboxId });
      return { token: session.token, expiresAtMs: Number(session.expiresAtMs) };
    },
    async revokeSshSession(token) {
      return (await unary(target, client.revokeSshSession.bind(client), { token })).revoked;
    },
    close: () => client.close(),
  };
}

export interface HeldForward {
  close(): void;
}

/**
 * Opens a ForwardTcp stream to the sandbox's SSH server and resolves once the
 * server's SSH banner has come back through it (so the slot is really taken),
 * or rejects with the gateway's status error.
 */
export function openForward(
  api: GatewayApi,
  sandboxId: string,
  token: string,
  step: string,
  timeoutMs = 20_000,
): Promise<HeldForward> {
  const call = api.client.forwardTcp();
  call.write({
    payload: {
      $case: "init",
      value: {
        sandboxId,
        serviceId: `test:${sandboxId}`,
        target: { $case: "ssh", value: {} },
        authorizationToken: token,
      },
    },
  });
  return new Promise((resolveHeld, reject) => {
    let seen = "";
    const timer = setTimeout(() => {
      call.cancel();
      reject(new Error(`${step}: no SSH banner through ForwardTcp within ${timeoutMs} ms`));
    }, timeoutMs);
    call.on("data", (frame) => {
      if (frame.payload?.$case !== "data") return;
      seen += frame.payload.value.toString("latin1");
      if (seen.startsWith("SSH-2.0-")) {
        clearTimeout(timer);
        resolveHeld({ close: () => call.cancel() });
      }
    });
    call.on("error", (error: ServiceError) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

export interface ByteResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the CLI to completion keeping stdout as bytes (binary data must not pass through UTF-8). */
export function runBytes(
  env: TestEnv,
  args: string[],
  options: RunOptions & { input?: Buffer } = {},
): Promise<ByteResult> {
  const child = env.spawn(args, options);
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout!.on("data", (data: Buffer) => stdout.push(data));
  child.stderr!.on("data", (data: Buffer) => stderr.push(data));
  child.stdin!.on("error", () => {});
  child.stdin!.end(options.input);
  const timeoutMs = options.timeoutMs ?? 60_000;
  return new Promise((resolveResult, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`openshell ${args.join(" ")}: no exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolveResult({
        code,
        stdout: Buffer.concat(stdout),
        stderr: Buffer.concat(stderr).toString("utf8"),
      });
    });
  });
}

/** Resolves with a child's exit code, failing with the step named if it has not exited in time. */
export function exitOf(
  child: import("node:child_process").ChildProcess,
  step: string,
  timeoutMs = 30_000,
): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolveCode, reject) => {
    const timer = setTimeout(() => reject(new Error(`${step}: no exit within ${timeoutMs} ms`)), timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolveCode(code);
    });
  });
}
