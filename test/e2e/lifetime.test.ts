// Sandbox lifetimes through the real CLI and gateway: `--ttl` at create,
// `sandbox renew`, expiry deleting the sandbox (supervisor, pod, directory),
// the expiry holding across a gateway killed with SIGKILL, the gateway's
// default and maximum, and the CLI refusing lifetimes against a gateway that
// does not keep them. The waits that define the schedule are deliberate;
// everything else waits on events.

import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newSandboxStatus, setReadyCondition } from "../../src/core/phases.js";
import { type Sandbox, SandboxPhase, WatchSandboxRequest } from "../../src/gen/openshell.js";
import { gatewayClient, json, TestEnv, uniqueName } from "../helpers/cli.js";
import { type StandIn, startStandIn } from "../helpers/stand-in.js";

interface SandboxDoc {
  id: string;
  phase: string;
  expires_at: string | null;
}

const sleepUntil = (at: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, at - Date.now())));

function stateDir(env: TestEnv): string {
  return join(env.stateHome, "openshell", "gateways", "local");
}

async function getDoc(env: TestEnv, name: string): Promise<SandboxDoc> {
  const result = await env.run(["sandbox", "get", name, "-o", "json"]);
  expect(result.code, result.stderr).toBe(0);
  return json<SandboxDoc>(result);
}

/** Resolves when the gateway deletes sandbox `id` (its watch stream ends), with the time it did. */
function deletion(env: TestEnv, id: string, timeoutMs: number): Promise<number> {
  const client = gatewayClient(env);
  return new Promise<number>((resolve, reject) => {
    const stream = client.watchSandbox(WatchSandboxRequest.fromPartial({ id, followStatus: true }));
    const timer = setTimeout(() => {
      stream.cancel();
      reject(new Error(`sandbox ${id} was not deleted within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (): void => {
      clearTimeout(timer);
      client.close();
      resolve(Date.now());
    };
    stream.on("data", () => {});
    stream.on("end", done);
    stream.on("error", (error: Error & { code?: number }) => {
      // NOT_FOUND: it was gone before the watch began.
      if (error.code === status.NOT_FOUND) done();
      else if (error.code !== status.CANCELLED) {
        clearTimeout(timer);
        reject(error);
      }
    });
  });
}

/** A sandbox as a stand-in gateway returns it. */
function standIn(name: string, phase: SandboxPhase): Sandbox {
  return {
    metadata: {
      id: "00000000-0000-4000-8000-000000000000",
      name,
      createdAtMs: 0,
      labels: {},
      resourceVersion: 1,
      annotations: {},
      workspace: "default",
      deletionTimestampMs: 0,
    },
    status: { ...newSandboxStatus(name), phase },
  };
}

function processesWith(marker: string): string[] {
  try {
    return execFileSync("pgrep", ["-f", marker], { encoding: "utf8" }).split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

describe("sandbox lifetimes", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  it("--ttl 20s: the gateway killed at 10 s and started at 15 s deletes the sandbox by 25 s", async () => {
    const name = uniqueName("ttl");
    const t0 = Date.now();
    const created = await env.run(
      ["sandbox", "create", "--name", name, "--ttl", "20s", "--detach", "--", "sleep", "infinity"],
      {
        timeoutMs: 30_000,
      },
    );
    expect(created.code, created.stderr).toBe(0);
    const doc = await getDoc(env, name);
    const expiresAt = Date.parse(doc.expires_at ?? "");
    expect(expiresAt).toBeGreaterThanOrEqual(t0 + 20_000);
    expect(expiresAt).toBeLessThanOrEqual(Date.now() + 20_000);
    const list = json<SandboxDoc[]>(await env.run(["sandbox", "list", "-o", "json"]));
    expect(list.find((d) => d.id === doc.id)?.expires_at).toBe(doc.expires_at);
    const table = await env.run(["sandbox", "list"]);
    expect(table.stdout).toMatch(/NAME\s+CREATED\s+EXPIRES\s+PHASE/);

    await sleepUntil(t0 + 10_000);
    const pid = Number(readFileSync(join(stateDir(env), "gateway.pid"), "utf8").trim());
    process.kill(pid, "SIGKILL");
    execFileSync("tail", [`--pid=${pid}`, "-f", "/dev/null"], { timeout: 10_000 });
    await sleepUntil(t0 + 15_000);
    await env.startGateway();
    // Not yet expired: still there after the restart, expiry unchanged.
    expect((await getDoc(env, name)).expires_at).toBe(doc.expires_at);

    const deletedAt = await deletion(env, doc.id, Math.max(1, t0 + 25_000 - Date.now()));
    expect(deletedAt).toBeGreaterThanOrEqual(expiresAt);
    expect(deletedAt).toBeLessThan(t0 + 25_000);
    const gone = await env.run(["sandbox", "get", name]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/not found/);
    expect(existsSync(join(stateDir(env), "sandboxes", doc.id))).toBe(false);
    expect(processesWith(doc.id)).toEqual([]);
  }, 60_000);

  it("renew extends the lifetime, stopped or not; renew after expiry is refused", async () => {
    const name = uniqueName("renew");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--ttl",
        "8s",
        "--detach",
        "-o",
        "json",
        "--",
        "sleep",
        "infinity",
      ],
      { timeoutMs: 30_000 },
    );
    expect(created.code, created.stderr).toBe(0);
    const first = Date.parse(json<SandboxDoc>(created).expires_at ?? "");
    const renewedAt = Date.now();
    const renewed = await env.run(["sandbox", "renew", name, "--ttl", "1h"]);
    expect(renewed.code, renewed.stderr).toBe(0);
    expect(renewed.stderr).toMatch(new RegExp(`Renewed sandbox ${name}: expires at .* \\(in 1h\\)`));
    const doc = await getDoc(env, name);
    expect(Date.parse(doc.expires_at ?? "")).toBeGreaterThanOrEqual(renewedAt + 3600_000);
    // Past the first lifetime, it lives on.
    await sleepUntil(first + 1000);
    expect((await getDoc(env, name)).phase).toBe("Ready");

    // A stopped sandbox can be renewed, and expires as a running one does.
    expect((await env.run(["sandbox", "stop", name])).code).toBe(0);
    expect((await env.run(["sandbox", "renew", name, "--ttl", "1s"])).code).toBe(0);
    await deletion(env, doc.id, 10_000);
    const late = await env.run(["sandbox", "renew", name, "--ttl", "1h"]);
    expect(late.code).toBe(1);
    expect(late.stderr).toMatch(/not found/);
    expect((await env.run(["sandbox", "get", name])).code).toBe(1);
  }, 60_000);

  it("a sandbox that expired while the gateway was down is deleted at start, not resumed", async () => {
    const name = uniqueName("expired");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--ttl",
        "8s",
        "--detach",
        "-o",
        "json",
        "--",
        "sleep",
        "infinity",
      ],
      { timeoutMs: 30_000 },
    );
    expect(created.code, created.stderr).toBe(0);
    const doc = json<SandboxDoc>(created);
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    // Still there when the gateway stopped: only the next start can delete it.
    expect(existsSync(join(stateDir(env), "sandboxes", doc.id))).toBe(true);
    await sleepUntil(Date.parse(doc.expires_at ?? "") + 200);
    await env.startGateway();
    expect((await env.run(["sandbox", "get", name])).code).toBe(1);
    expect(existsSync(join(stateDir(env), "sandboxes", doc.id))).toBe(false);
    expect(processesWith(doc.id)).toEqual([]);
  }, 60_000);

  it("the gateway's maximum refuses a longer --ttl; its default applies when none is asked", async () => {
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    await env.startGateway({ OPENSHELL_GATEWAY_DEFAULT_TTL: "10m", OPENSHELL_GATEWAY_MAX_TTL: "1h" });
    const long = uniqueName("long");
    const refused = await env.run([
      "sandbox",
      "create",
      "--name",
      long,
      "--ttl",
      "2h",
      "--detach",
      "--",
      "true",
    ]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("exceeds this gateway's maximum lifetime of 1h");
    expect((await env.run(["sandbox", "get", long])).code).toBe(1);
    const name = uniqueName("dflt");
    const t0 = Date.now();
    expect((await env.createIdle(name)).code).toBe(0);
    const expiresAt = Date.parse((await getDoc(env, name)).expires_at ?? "");
    expect(expiresAt).toBeGreaterThanOrEqual(t0 + 600_000);
    expect(expiresAt).toBeLessThanOrEqual(Date.now() + 600_000);
    const renew = await env.run(["sandbox", "renew", name, "--ttl", "2h"]);
    expect(renew.code).toBe(1);
    expect(renew.stderr).toContain("maximum lifetime of 1h");
    expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
  }, 60_000);

  it("a gateway with a default above its maximum does not start", async () => {
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    const start = await env.run(["gateway", "start", "--port", "0"], {
      timeoutMs: 30_000,
      env: { OPENSHELL_GATEWAY_DEFAULT_TTL: "2h", OPENSHELL_GATEWAY_MAX_TTL: "1h" },
    });
    expect(start.code).not.toBe(0);
    expect(start.stderr).toContain("OPENSHELL_GATEWAY_DEFAULT_TTL exceeds OPENSHELL_GATEWAY_MAX_TTL");
    await env.startGateway();
  }, 60_000);
});

describe("against a gateway without lifetimes", () => {
  // Answers GetGatewayInfo as an OpenShell gateway does (no capabilities) and
  // records whether anything was created or renewed. Like an OpenShell
  // gateway, it answers StopSandbox while the sandbox is still stopping.
  let upstream: StandIn;
  let calls = 0;
  let watches = 0;
  const stopping: string[] = [];
  const env = new TestEnv();

  beforeAll(async () => {
    upstream = await startStandIn(
      {
        stopSandbox: (call: { request: { name: string } }, callback: (e: null, r: unknown) => void) => {
          stopping.push(call.request.name);
          callback(null, { sandbox: standIn(call.request.name, SandboxPhase.SANDBOX_PHASE_STOPPING) });
        },
        // The sandbox "up" stops; any other fails while stopping.
        watchSandbox: (call: { request: { id: string }; write(event: unknown): boolean }) => {
          watches += 1;
          const name = stopping.shift() ?? "";
          call.write({
            payload: { $case: "sandbox", value: standIn(name, SandboxPhase.SANDBOX_PHASE_STOPPING) },
          });
          const last = standIn(
            name,
            name === "up" ? SandboxPhase.SANDBOX_PHASE_STOPPED : SandboxPhase.SANDBOX_PHASE_ERROR,
          );
          if (name !== "up") setReadyCondition(last, "False", "StopFailed", "the pod would not stop");
          setImmediate(() => call.write({ payload: { $case: "sandbox", value: last } }));
        },
      },
      () => {
        calls += 1;
      },
    );
  });
  afterAll(async () => {
    upstream.server.forceShutdown();
    await env.dispose();
  });

  it("stop waits on the watch until the sandbox is Stopped, and reports a failure to stop", async () => {
    const endpoint = ["--gateway-endpoint", upstream.endpoint];
    const stop = await env.run([...endpoint, "sandbox", "stop", "up"], { timeoutMs: 10_000 });
    expect(stop.code, stop.stderr).toBe(0);
    expect(stop.stderr).toContain("Stopped sandbox up");
    const failed = await env.run([...endpoint, "sandbox", "stop", "down"], { timeoutMs: 10_000 });
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain("StopFailed: the pod would not stop");
    expect(failed.stderr).not.toContain("Stopped sandbox");
    expect(watches).toBe(2);
  });

  it("refuses create --ttl and sandbox renew before asking for either, and says why", async () => {
    const endpoint = ["--gateway-endpoint", upstream.endpoint];
    const create = await env.run([
      ...endpoint,
      "sandbox",
      "create",
      "--ttl",
      "30m",
      "--detach",
      "--",
      "true",
    ]);
    expect(create.code).toBe(1);
    expect(create.stderr).toContain("does not support --ttl");
    const renew = await env.run([...endpoint, "sandbox", "renew", "x", "--ttl", "30m"]);
    expect(renew.code).toBe(1);
    expect(renew.stderr).toContain("does not support sandbox renew");
    expect(calls).toBe(0);
  });
});
