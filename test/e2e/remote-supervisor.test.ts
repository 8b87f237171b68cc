// The runtime contract as a supervisor on another machine speaks it: with
// OPENSHELL_SUPERVISOR_MODE=remote the gateway starts each supervisor with
// its identity in the environment and nothing on stdin, and the supervisor
// fetches its launch spec and injected files over gRPC, watches its
// configuration, and reports its failures and policy revisions there, through
// the real CLI, gateway, supervisor and bubblewrap.

import { existsSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { credentials, Metadata, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SUPERVISOR_METADATA_KEY } from "../../src/core/protocol.js";
import {
  OpenShellClient,
  PolicyStatus,
  type ReportPolicyStatusRequest,
  type SupervisorLaunchSpec,
} from "../../src/gen/openshell.js";
import type { GetSandboxConfigResponse } from "../../src/gen/sandbox.js";
import { gatewayClient, TestEnv, uniqueName, waitForPhase } from "../helpers/cli.js";
import { children, gatewayPid, isSupervisor } from "../helpers/processes.js";

const REMOTE = { OPENSHELL_SUPERVISOR_MODE: "remote" };

function environ(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/environ`, "utf8")
      .split("\0")
      .filter(Boolean)
      .map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]),
  );
}

describe("a supervisor told only through its environment and gRPC", () => {
  const env = new TestEnv();
  const name = uniqueName("remote");
  const note = Buffer.from("fetched over the wire\n");
  const tool = Buffer.from('#!/bin/sh\necho tool-ran "$@"\n');
  const stateDir = () => join(env.stateHome, "openshell", "gateways", "local");
  let sandboxId = "";
  let supervisorVars: Record<string, string> = {};

  beforeAll(async () => {
    await env.startGateway(REMOTE);
    writeFileSync(join(env.root, "note.txt"), note);
    writeFileSync(join(env.root, "tool.sh"), tool);
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--detach",
        "--file",
        "./note.txt:/sandbox/note.txt",
        "--file",
        "./tool.sh:/opt/tools/tool.sh:0555",
        "--",
        "sleep",
        "infinity",
      ],
      { cwd: env.root, env: REMOTE },
    );
    expect(created.code, created.stderr).toBe(0);
    const client = gatewayClient(env);
    sandboxId = await new Promise<string>((resolve, reject) =>
      client.getSandbox({ name, workspace: "" }, (error, response) =>
        error ? reject(error) : resolve(response.sandbox!.metadata!.id),
      ),
    );
    client.close();
  });
  afterAll(() => env.dispose());

  it("runs with its identity in its environment, no stdin from the gateway, and no spare beside it", () => {
    const supervisors = children(gatewayPid(env)).filter(isSupervisor);
    expect(supervisors).toHaveLength(1);
    const pid = supervisors[0]!;
    expect(readlinkSync(`/proc/${pid}/fd/0`)).toBe("/dev/null");
    const vars = environ(pid);
    supervisorVars = vars;
    expect(vars.OPENSHELL_SANDBOX_ID).toBe(sandboxId);
    expect(vars.OPENSHELL_ENDPOINT).toMatch(/^unix:\/\//);
    expect(vars.OPENSHELL_SANDBOX_SECRET).toMatch(/./);
    // What it runs came over gRPC, not in its environment.
    expect(Object.values(vars).join("\n")).not.toContain("infinity");
  });

  it("gives its launch spec to any process holding that environment, and to no one else", async () => {
    const client = new OpenShellClient(supervisorVars.OPENSHELL_ENDPOINT!, credentials.createInsecure());
    const launch = (credential: string, id = sandboxId) =>
      new Promise<SupervisorLaunchSpec>((resolve, reject) => {
        const metadata = new Metadata();
        if (credential !== "") metadata.set(SUPERVISOR_METADATA_KEY, credential);
        client.getSupervisorLaunch({ sandboxId: id }, metadata, (error, response) =>
          error ? reject(error) : resolve(response),
        );
      });
    try {
      const own = `${sandboxId}:${supervisorVars.OPENSHELL_SANDBOX_SECRET}`;
      const spec = await launch(own);
      expect(spec.sandboxId).toBe(sandboxId);
      expect(spec.sandboxName).toBe(name);
      expect(spec.command).toEqual(["sleep", "infinity"]);
      // Remote: no path on the gateway's host to read the files from.
      expect(spec.filesPath).toBe("");
      await expect(launch("")).rejects.toMatchObject({ code: status.UNAUTHENTICATED });
      await expect(launch(`${sandboxId}:not-the-secret`)).rejects.toMatchObject({
        code: status.UNAUTHENTICATED,
      });
      await expect(launch(own, "0b7c2c7e-9a43-4c1e-8d7e-3f3c1d2a9b10")).rejects.toMatchObject({
        code: status.NOT_FOUND,
      });
    } finally {
      client.close();
    }
  });

  it("watches its configuration and reports policy revisions with its own credential; bad reports are refused or bounded", async () => {
    const client = new OpenShellClient(supervisorVars.OPENSHELL_ENDPOINT!, credentials.createInsecure());
    const own = new Metadata();
    own.set(SUPERVISOR_METADATA_KEY, `${sandboxId}:${supervisorVars.OPENSHELL_SANDBOX_SECRET}`);
    const report = (request: Partial<ReportPolicyStatusRequest>, metadata = own) =>
      new Promise<unknown>((resolve, reject) =>
        client.reportPolicyStatus(
          { sandboxId, version: 1, status: PolicyStatus.POLICY_STATUS_LOADED, loadError: "", ...request },
          metadata,
          (error, response) => (error ? reject(error) : resolve(response)),
        ),
      );
    try {
      const first = await new Promise<GetSandboxConfigResponse>((resolve, reject) => {
        const stream = client.watchSandboxConfig({ sandboxId }, own);
        stream.once("data", (config: GetSandboxConfigResponse) => {
          stream.cancel();
          resolve(config);
        });
        stream.on("error", (error: { code?: number }) => {
          if (error.code !== status.CANCELLED) reject(error);
        });
      });
      expect(first.version).toBe(1);
      expect(first.policyHash).toMatch(/^[0-9a-f]{64}$/);
      await expect(report({ sandboxId: "0b7c2c7e-9a43-4c1e-8d7e-3f3c1d2a9b10" })).rejects.toMatchObject({
        code: status.NOT_FOUND,
      });
      await expect(report({ version: 9 })).rejects.toMatchObject({ code: status.NOT_FOUND });
      await expect(report({ status: PolicyStatus.POLICY_STATUS_PENDING })).rejects.toMatchObject({
        code: status.INVALID_ARGUMENT,
      });
      await expect(report({}, new Metadata())).rejects.toMatchObject({ code: status.UNAUTHENTICATED });
      // A megabyte of reason is kept as 4096 characters.
      await report({ status: PolicyStatus.POLICY_STATUS_FAILED, loadError: "x".repeat(1024 * 1024) });
      const failed = await env.run(["policy", "get", name, "-o", "json"], { env: REMOTE });
      expect(JSON.parse(failed.stdout)).toMatchObject({ status: "failed", load_error: "x".repeat(4096) });
      await report({});
      const loaded = await env.run(["policy", "get", name, "-o", "json"], { env: REMOTE });
      expect(JSON.parse(loaded.stdout)).toMatchObject({ version: 1, active_version: 1, status: "loaded" });
    } finally {
      client.close();
    }
  });

  it("fetched its injected files over gRPC: byte-identical, with their modes, and the tool runs", async () => {
    const log = readFileSync(join(stateDir(), "gateway.log"), "utf8");
    expect(log).toMatch(
      new RegExp(`SUP \\[${sandboxId}\\] launch spec, config and 2 injected file\\(s\\) fetched over gRPC`),
    );
    const shown = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "cat /sandbox/note.txt; stat -c %a /sandbox/note.txt /opt/tools/tool.sh; /opt/tools/tool.sh x",
    ]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toBe(`${note}444\n555\ntool-ran x\n`);
  });

  it("reports a failure to get its files over gRPC: the sandbox goes to Error (FileInjectionFailed), never runs without them", async () => {
    // Running sandboxes outlive their gateway: this one is stopped first, so that it starts again.
    const stopped = await env.run(["sandbox", "stop", name], { timeoutMs: 60_000 });
    expect(stopped.code, stopped.stderr).toBe(0);
    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    const stored = join(stateDir(), "sandboxes", sandboxId, "files.pb");
    expect(existsSync(stored)).toBe(true);
    rmSync(stored);
    await env.startGateway(REMOTE);
    const start = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(start.code).not.toBe(0);
    await waitForPhase(env, name, "Error");
    const got = await env.run(["sandbox", "get", name, "-o", "json"]);
    expect(got.stdout).toContain("FileInjectionFailed");
    expect(got.stdout).toContain("could not be fetched");
    const ran = await env.run(["sandbox", "exec", "-n", name, "--", "true"]);
    expect(ran.code).not.toBe(0);
  });
});
