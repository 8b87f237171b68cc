// The sandbox lifecycle through the real CLI, gateway, supervisor and
// bubblewrap: auto-started gateway, create/list/get/logs/delete, isolation
// seen from inside, local validation, main-process exit, gateway restart.

import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collect, json, TestEnv, uniqueName, waitForOutput, waitForPhase } from "../helpers/cli.js";

interface SandboxDoc {
  id: string;
  name: string;
  phase: string;
  exit_code?: number;
  main_exit_status?: number | null;
  reason?: string;
}

function sandboxesDir(env: TestEnv): string {
  return join(env.stateHome, "openshell", "gateways", "local", "sandboxes");
}

describe("first use on a fresh machine", () => {
  const env = new TestEnv();
  afterAll(() => env.dispose());

  it("create starts the local gateway, waits for Ready, and the sandbox is listed, logged and deleted", async () => {
    const created = await env.run(
      ["sandbox", "create", "--name", "demo", "--", "sh", "-c", "id -u; sleep infinity"],
      {
        timeoutMs: 60_000,
      },
    );
    expect(created.code, created.stderr).toBe(0);
    expect(created.stderr).toMatch(/Started gateway 'local' at http:\/\/127\.0\.0\.1:\d+/);
    expect(created.stderr).toContain("ready");

    // The main process's output is kept as log lines; its uid is not root.
    const tail = env.spawn(["logs", "demo", "--tail"]);
    const seen = await waitForOutput(tail.stdout!, /\[stdout\] \d+\n/, "uid line in the sandbox log");
    tail.kill("SIGINT");
    const uidLine = seen.split("\n").find((line) => /\[stdout\] \d+$/.test(line));
    expect(uidLine).toBeDefined();
    const logs = await env.run(["logs", "demo"]);
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toContain(uidLine!);
    expect(Number(uidLine!.split(" ").pop())).toBeGreaterThan(0);

    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(list.code).toBe(0);
    const docs = json<SandboxDoc[]>(list);
    expect(docs.map((d) => [d.name, d.phase])).toEqual([["demo", "Ready"]]);

    const get = await env.run(["sandbox", "get", "demo", "-o", "json"]);
    expect(get.code).toBe(0);
    const doc = json<SandboxDoc>(get);
    expect(doc.phase).toBe("Ready");
    expect(existsSync(join(sandboxesDir(env), doc.id))).toBe(true);

    const deleted = await env.run(["sandbox", "delete", "demo"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stderr).toContain("Deleted sandbox demo");
    expect(existsSync(join(sandboxesDir(env), doc.id))).toBe(false);
    const after = await env.run(["sandbox", "list", "-o", "json"]);
    expect(json(after)).toEqual([]);
  });
});

describe("isolation seen from inside a sandbox", () => {
  const env = new TestEnv();
  let hostListener: Server;
  let hostPort = 0;
  const a = uniqueName("iso-a");
  const b = uniqueName("iso-b");

  beforeAll(async () => {
    await env.startGateway();
    hostListener = createServer((socket) => socket.end("host-secret\n"));
    await new Promise<void>((resolve) => hostListener.listen(0, "127.0.0.1", resolve));
    hostPort = (hostListener.address() as { port: number }).port;
    for (const name of [a, b]) {
      const result = await env.createIdle(name);
      expect(result.code, result.stderr).toBe(0);
    }
  });
  afterAll(async () => {
    hostListener?.close();
    await env.dispose();
  });

  const sh = (name: string, script: string) =>
    env.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", script]);

  it("runs as a non-root uid", async () => {
    const result = await sh(a, "id -u");
    expect(result.code).toBe(0);
    expect(Number(result.stdout.trim())).toBeGreaterThan(0);
  });

  it("cannot see the host's /root, /home or the gateway's state directory", async () => {
    const result = await sh(
      a,
      `for p in /root /home ${env.stateHome} ${env.root}; do if [ -e "$p" ]; then echo "visible $p"; else echo "absent $p"; fi; done`,
    );
    expect(result.code).toBe(0);
    expect(result.stdout).not.toContain("visible");
    expect(result.stdout.match(/absent/g)).toHaveLength(4);
  });

  it("cannot write outside /sandbox and /tmp, and can write inside them", async () => {
    const result = await sh(
      a,
      'for p in /x /usr/x /etc/x /bin/x /var/x /sandbox/ok /tmp/ok; do if touch "$p" 2>/dev/null; then echo "wrote $p"; else echo "refused $p"; fi; done',
    );
    expect(result.code).toBe(0);
    for (const p of ["/x", "/usr/x", "/etc/x", "/bin/x", "/var/x"])
      expect(result.stdout).toContain(`refused ${p}`);
    expect(result.stdout).toContain("wrote /sandbox/ok");
    expect(result.stdout).toContain("wrote /tmp/ok");
  });

  it("cannot reach a TCP listener on the host's 127.0.0.1", async () => {
    // bash's /dev/tcp opens a raw TCP connection; inside the pod 127.0.0.1 is the pod's own loopback.
    const result = await sh(
      a,
      `bash -c 'exec 3<>/dev/tcp/127.0.0.1/${hostPort} && cat <&3' 2>&1; echo "status $?"`,
    );
    expect(result.stdout).not.toContain("host-secret");
    expect(result.stdout).toMatch(/status [1-9]/);
  });

  it("does not see another sandbox's processes", async () => {
    const marker = `sleep ${31_000 + (process.pid % 1000)}`;
    // An exec's processes end with it, so the marker's exec stays open meanwhile.
    const holder = env.spawn([
      "sandbox",
      "exec",
      "-n",
      b,
      "--",
      "sh",
      "-c",
      `setsid ${marker} & echo started; wait`,
    ]);
    const held = collect(holder, "the marker's exec");
    const started = await waitForOutput(holder.stdout!, "started", "the marker started");
    expect(started).toContain("started");
    const inB = await sh(b, "ps -eo args");
    expect(inB.stdout).toContain(marker);
    const inA = await sh(a, "ps -eo args");
    expect(inA.code).toBe(0);
    expect(inA.stdout).not.toContain(marker);
    holder.kill("SIGTERM");
    await held;
  });
});

describe("bad input is refused before anything is created", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  it.each([
    [["--name", "Bad_Name"], "Bad_Name"],
    [["--name", "a".repeat(20)], "a".repeat(20)],
    [["--env", "1BAD=x"], "1BAD"],
    [["--label", "novalue"], "novalue"],
  ])("%j exits non-zero with a one-line message naming the input", async (flags, named) => {
    const result = await env.run(["sandbox", "create", ...flags, "--detach", "--", "true"]);
    expect(result.code).not.toBe(0);
    const errorLines = result.stderr.split("\n").filter((line) => line.startsWith("error:"));
    expect(errorLines).toHaveLength(1);
    expect(errorLines[0]).toContain(named);
    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(json(list)).toEqual([]);
  });
});

describe("main process exit and gateway restart", () => {
  const env = new TestEnv();
  beforeAll(() => env.startGateway());
  afterAll(() => env.dispose());

  it("a main process that exits leaves the sandbox Ready with its exit status, not Error", async () => {
    const name = uniqueName("exits");
    const created = await env.run([
      "sandbox",
      "create",
      "--name",
      name,
      "--detach",
      "--",
      "sh",
      "-c",
      // The main process exits when the test says so, after Ready was reported.
      "until [ -e /sandbox/go ]; do sleep 0.05; done; exit 3",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const go = await env.run(["sandbox", "exec", "-n", name, "--", "touch", "/sandbox/go"]);
    expect(go.code).toBe(0);
    const waited = await env.run(["sandbox", "wait", name]);
    expect(waited.code).toBe(3);
    const doc = json<SandboxDoc>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(doc?.phase).toBe("Ready");
    expect(doc?.exit_code).toBe(3);
    expect(doc?.main_exit_status).toBe(3);
    expect(doc?.reason).toBeUndefined();
  });

  it("an exit with status 0 is no Error either", async () => {
    const name = uniqueName("exits0");
    const created = await env.run(["sandbox", "create", "--name", name, "--no-keep", "--", "true"]);
    expect(created.code).toBe(0);
  });

  it("gateway stop then start keeps every sandbox listed and running, adopted by the new gateway", async () => {
    const names = [uniqueName("keep-a"), uniqueName("keep-b")];
    for (const name of names) {
      const created = await env.createIdle(name);
      expect(created.code, created.stderr).toBe(0);
      const write = await env.run([
        "sandbox",
        "exec",
        "-n",
        name,
        "--",
        "sh",
        "-c",
        "echo kept > /sandbox/state",
      ]);
      expect(write.code).toBe(0);
    }
    const before = json<SandboxDoc[]>(await env.run(["sandbox", "list", "-o", "json"]));
    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    expect(stop.stderr).toContain("stopped");
    await env.startGateway();
    const after = json<SandboxDoc[]>(await env.run(["sandbox", "list", "-o", "json"]));
    expect(after.map((d) => d.name).sort()).toEqual(before.map((d) => d.name).sort());
    for (const name of names) {
      await waitForPhase(env, name, "Ready");
      const read = await env.run(["sandbox", "exec", "-n", name, "--", "cat", "/sandbox/state"]);
      expect(read.stdout).toBe("kept\n");
    }
    // Sandboxes in Error stay listed in Error, with their reason; one whose
    // command completed (the exit test's above) is Ready again, its status kept.
    const completed = after.filter(
      (doc) => doc.main_exit_status !== null && doc.main_exit_status !== undefined,
    );
    expect(completed.length).toBeGreaterThan(0);
    for (const doc of completed) await waitForPhase(env, doc.name, "Ready");
    const again = json<SandboxDoc[]>(await env.run(["sandbox", "list", "-o", "json"]));
    for (const doc of again) {
      if (completed.some((c) => c.name === doc.name)) {
        expect([doc.name, doc.phase, doc.main_exit_status]).toEqual([doc.name, "Ready", 3]);
      } else expect(["Ready", "Provisioning", "Error"]).toContain(doc.phase);
    }
    expect(readdirSync(join(env.stateHome, "openshell", "gateways", "local", "sandboxes")).length).toBe(
      after.length,
    );
  });
});

describe("listing and interrupting", () => {
  const env = new TestEnv();
  beforeAll(async () => {
    await env.startGateway();
    for (const [name, team] of [
      ["list-a", "red"],
      ["list-b", "blue"],
      ["list-c", "red"],
    ]) {
      const result = await env.run([
        "sandbox",
        "create",
        "--name",
        name!,
        "--label",
        `team=${team}`,
        "--detach",
        "--",
        "sleep",
        "infinity",
      ]);
      expect(result.code, result.stderr).toBe(0);
    }
  });
  afterAll(() => env.dispose());

  it("filters by label selector, pages with limit and offset, and prints names or ids", async () => {
    const red = await env.run(["sandbox", "list", "--selector", "team=red", "--names"]);
    expect(red.stdout).toBe("list-a\nlist-c\n");
    const page = await env.run(["sandbox", "list", "--limit", "1", "--offset", "1", "--names"]);
    expect(page.stdout).toBe("list-b\n");
    const ids = await env.run(["sandbox", "list", "--ids"]);
    expect(ids.stdout.trim().split("\n")).toHaveLength(3);
    for (const id of ids.stdout.trim().split("\n")) expect(id).toMatch(/^[0-9a-f-]{36}$/);
    const table = await env.run(["sandbox", "list"]);
    expect(table.stdout.split("\n")[0]).toMatch(/^NAME\s+CREATED\s+PHASE$/);
    const bad = await env.run(["sandbox", "list", "--names", "-o", "json"]);
    expect(bad.code).toBe(2);
  });

  it("remembers the last sandbox created, and uses it when no name is given", async () => {
    const result = await env.run(["sandbox", "exec", "--", "hostname"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe("list-c\n");
    expect(result.stderr).toContain("Using sandbox 'list-c' (last used)");
  });

  it("Ctrl-C while waiting for Ready deletes a --no-keep sandbox instead of leaving it behind", async () => {
    // Hold the gateway's spare supervisor so the new sandbox stays Provisioning
    // until the CLI is interrupted.
    const info = JSON.parse(
      readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.json"), "utf8"),
    ) as { pid: number };
    const spare = execFileSync("pgrep", ["-P", String(info.pid), "-f", "supervisor.mjs"], {
      encoding: "utf8",
    })
      .trim()
      .split("\n")
      .map(Number)
      .filter((pid) => pid > 0);
    expect(spare.length).toBeGreaterThan(0);
    for (const pid of spare) process.kill(pid, "SIGSTOP");
    try {
      const child = env.spawn([
        "sandbox",
        "create",
        "--name",
        "interrupted",
        "--no-keep",
        "--",
        "sleep",
        "infinity",
      ]);
      const exited = collect(child, "interrupted create", { timeoutMs: 60_000 });
      await waitForOutput(child.stderr!, "Created sandbox: interrupted", "create reports the sandbox");
      child.kill("SIGINT");
      const result = await exited;
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain("Deleted sandbox interrupted");
    } finally {
      for (const pid of spare) {
        try {
          process.kill(pid, "SIGCONT");
        } catch {
          // Already gone: the delete stopped it.
        }
      }
    }
    const names = await env.run(["sandbox", "list", "--names"]);
    expect(names.stdout).not.toContain("interrupted");
  });
});
