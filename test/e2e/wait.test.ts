// A main command that completes, through the real CLI, gateway, supervisor
// and bubblewrap: the sandbox stays Ready and usable with the exit status
// recorded, `sandbox wait` collects that status (and the output with
// --logs), and `create --attach` gives the same in one command.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { identityAlive } from "../../src/host/process.js";
import { collect, json, TestEnv, uniqueName, waitFor, waitForOutput, waitForPhase } from "../helpers/cli.js";

interface SandboxDoc {
  phase: string;
  created_at: string;
  main_exit_status: number | null;
  reason?: string;
  conditions?: { type: string; status: string; reason: string; message: string }[];
}

const ISO_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

describe("a completed main command", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway(), 60_000);
  afterAll(() => env.dispose());

  it("`create -- true` in a script, then exec and get: Ready, exit status 0, no error", async () => {
    const name = uniqueName("done");
    const created = await env.run(["sandbox", "create", "--name", name, "--", "true"]);
    expect(created.code, created.stderr).toBe(0);
    // A script's notice names the command that collects the status.
    expect(created.stderr).toContain(`openshell sandbox wait ${name}`);
    const waited = await env.run(["sandbox", "wait", name, "--timeout", "30"]);
    expect(waited.code, waited.stderr).toBe(0);

    const exec = await env.run(["sandbox", "exec", "-n", name, "--", "echo", "ok"]);
    expect(exec.code, exec.stderr).toBe(0);
    expect(exec.stdout).toBe("ok\n");

    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc.phase).toBe("Ready");
    expect(doc.main_exit_status).toBe(0);
    expect(doc.reason).toBeUndefined();
    expect(doc.created_at).toMatch(ISO_UTC);
    const text = await env.run(["sandbox", "get", name]);
    expect(text.stdout).toContain("completed, exit status 0");

    // A stop keeps the record of the run that completed; start runs the command anew.
    expect((await env.run(["sandbox", "stop", name])).code).toBe(0);
    const stopped = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect([stopped.phase, stopped.main_exit_status]).toEqual(["Stopped", 0]);
    expect((await env.run(["sandbox", "start", name])).code).toBe(0);
    const again = await env.run(["sandbox", "wait", name, "--timeout", "30"]);
    expect(again.code, again.stderr).toBe(0);
    expect((await env.run(["sandbox", "exec", "-n", name, "--", "true"])).code).toBe(0);
  });

  it("detached create, then `sandbox wait --logs` prints the output and exits with the status", async () => {
    const name = uniqueName("w");
    const created = await env.run(["sandbox", "create", "--name", name, "--", "sh", "-c", "echo hi; exit 3"]);
    expect(created.code, created.stderr).toBe(0);
    const waited = await env.run(["sandbox", "wait", name, "--logs"]);
    expect(waited.stdout).toBe("hi\n");
    expect(waited.code, waited.stderr).toBe(3);
    // A non-zero status is a completed command, not a failed sandbox.
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc.phase).toBe("Ready");
    expect(doc.main_exit_status).toBe(3);
    const exec = await env.run(["sandbox", "exec", "-n", name, "--", "echo", "still here"]);
    expect(exec.stdout).toBe("still here\n");
  });

  it("`sandbox wait` follows a running command to its end, stderr to stderr", async () => {
    const name = uniqueName("later");
    const created = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--",
      "sh",
      "-c",
      "echo before; until [ -e /sandbox/go ]; do sleep 0.05; done; echo after >&2; exit 7",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const waiting = env.run(["sandbox", "wait", name, "--logs"]);
    const go = await env.run(["sandbox", "exec", "-n", name, "--", "touch", "/sandbox/go"]);
    expect(go.code).toBe(0);
    const waited = await waiting;
    expect(waited.code, waited.stderr).toBe(7);
    expect(waited.stdout).toBe("before\n");
    expect(waited.stderr).toContain("after\n");
  });

  it("--timeout (244), Ctrl-C (130) and SIGTERM (143) end a wait, the command runs on; a stop ends it with 243", async () => {
    const name = uniqueName("forever");
    const idle = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--",
      "sh",
      "-c",
      "echo idle; exec sleep infinity",
    ]);
    expect(idle.code, idle.stderr).toBe(0);
    const started = Date.now();
    const waited = await env.run(["sandbox", "wait", name, "--timeout", "1"]);
    expect(waited.code).toBe(244);
    expect(waited.stderr).toContain("did not complete within 1 s");
    expect(Date.now() - started).toBeLessThan(10_000);
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc.main_exit_status).toBeNull();

    // Ctrl-C and SIGTERM end a wait as a shell reports them; the command runs on.
    for (const [signal, code] of [
      ["SIGINT", 130],
      ["SIGTERM", 143],
    ] as const) {
      const child = env.spawn(["sandbox", "wait", name, "--logs"]);
      const ended = collect(child, `sandbox wait, then ${signal}`, { timeoutMs: 10_000 });
      // Connected and waiting: the command's first output line arrived.
      await waitForOutput(child.stdout!, "idle\n", "the wait streaming the command's output");
      child.kill(signal);
      expect((await ended).code).toBe(code);
    }

    // A sandbox stopped before its command completed ends the wait with 243.
    const waiting = env.run(["sandbox", "wait", name]);
    expect((await env.run(["sandbox", "stop", name])).code).toBe(0);
    const cut = await waiting;
    expect(cut.code).toBe(243);
    expect(cut.stderr).toContain("was stopped before its command completed");
  });

  it("`create --attach` prints the output and exits with the status in one command", async () => {
    const name = uniqueName("att");
    const created = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--attach",
      "--",
      "sh",
      "-c",
      "echo hi; exit 3",
    ]);
    expect(created.stdout).toBe("hi\n");
    expect(created.code, created.stderr).toBe(3);
  });

  it("waiting on a missing sandbox is 243 and names it", async () => {
    const waited = await env.run(["sandbox", "wait", "nope-missing"]);
    expect(waited.code).toBe(243);
    expect(waited.stderr).toContain("nope-missing");
  });
});

describe("a completed command across a gateway restart", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway(), 60_000);
  afterAll(() => env.dispose());

  it("comes back Ready with its status kept (its pod outlived the gateway), or Stopped when its pod is gone; its command is not run again until start", async () => {
    const name = uniqueName("once");
    const created = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--",
      "sh",
      "-c",
      "echo run >> /sandbox/runs; exit 5",
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect((await env.run(["sandbox", "wait", name])).code).toBe(5);
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    await env.startGateway();
    await waitForPhase(env, name, "Ready");
    const adopted = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect([adopted.phase, adopted.main_exit_status]).toEqual(["Ready", 5]);
    expect((await env.run(["sandbox", "wait", name])).code).toBe(5);
    const once = await env.run(["sandbox", "exec", "-n", name, "--", "cat", "/sandbox/runs"]);
    expect(once.stdout).toBe("run\n");

    // Its supervisor killed while no gateway runs: the pod is gone, the status stays.
    const [supervisor] = env.supervisorRecords();
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    process.kill(supervisor!.pid, "SIGKILL");
    await waitFor("the supervisor to be gone", 10_000, () => (identityAlive(supervisor!) ? undefined : true));
    await env.startGateway();
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect([doc.phase, doc.main_exit_status]).toEqual(["Stopped", 5]);
    expect((await env.run(["sandbox", "wait", name])).code).toBe(5);
    expect((await env.run(["sandbox", "start", name])).code).toBe(0);
    expect((await env.run(["sandbox", "wait", name])).code).toBe(5);
    const runs = await env.run(["sandbox", "exec", "-n", name, "--", "cat", "/sandbox/runs"]);
    expect(runs.stdout).toBe("run\nrun\n");
  });
});

describe("machine-readable output", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway(), 60_000);
  afterAll(() => env.dispose());

  it("-o json of get, list, upload, download, delete and exec parses, with ISO times; logs --raw and -o json", async () => {
    const name = uniqueName("json");
    const created = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--",
      "sh",
      "-c",
      "echo one; echo two >&2; printf 'three\\n'",
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect((await env.run(["sandbox", "wait", name])).code).toBe(0);

    const list = json<SandboxDoc[]>(await env.run(["sandbox", "list", "-o", "json"]));
    expect(list[0]!.created_at).toMatch(ISO_UTC);

    // logs --raw: exactly the command's lines; -o json: one record per line.
    const raw = await env.run(["logs", name, "--raw"]);
    expect(raw.code, raw.stderr).toBe(0);
    expect(raw.stdout.split("\n").filter(Boolean).sort()).toEqual(["one", "three", "two"]);
    const records = (await env.run(["logs", name, "-o", "json", "--source", "sandbox"])).stdout
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, string>);
    const two = records.find((r) => r.message === "two");
    expect(two).toMatchObject({ source: "sandbox", stream: "stderr", level: "WARN" });
    expect(two!.time).toMatch(ISO_UTC);

    writeFileSync(join(env.root, "in.txt"), "hello\n");
    const up = await env.run([
      "sandbox",
      "upload",
      name,
      join(env.root, "in.txt"),
      "/sandbox/in.txt",
      "-o",
      "json",
    ]);
    expect(up.code, up.stderr).toBe(0);
    const upDoc = JSON.parse(up.stdout) as Record<string, unknown>;
    expect(upDoc).toMatchObject({ sandbox: name, direction: "upload", files: 1, bytes: 6 });
    expect(upDoc.completed_at).toMatch(ISO_UTC);

    const down = await env.run([
      "sandbox",
      "download",
      name,
      "in.txt",
      join(env.root, "out.txt"),
      "-o",
      "json",
    ]);
    expect(down.code, down.stderr).toBe(0);
    expect(JSON.parse(down.stdout)).toMatchObject({ direction: "download", files: 1, bytes: 6 });
    expect(readFileSync(join(env.root, "out.txt"), "utf8")).toBe("hello\n");

    // exec: the output streams as ever; the document is the last line of stderr.
    const exec = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "-o",
      "json",
      "--",
      "sh",
      "-c",
      "echo out; printf err >&2; exit 4",
    ]);
    expect(exec.code).toBe(4);
    expect(exec.stdout).toBe("out\n");
    const lines = exec.stderr.split("\n").filter(Boolean);
    expect(lines[0]).toBe("err");
    const execDoc = JSON.parse(lines.at(-1)!) as Record<string, unknown>;
    expect(execDoc).toMatchObject({ exit_status: 4, stdout_bytes: 4, stderr_bytes: 3 });
    expect(execDoc.ended_at).toMatch(ISO_UTC);

    const del = await env.run(["sandbox", "delete", name, "nope-gone", "-o", "json"]);
    expect(del.code).toBe(1);
    expect(JSON.parse(del.stdout)).toEqual({ deleted: [name], not_found: ["nope-gone"] });
  });
});
