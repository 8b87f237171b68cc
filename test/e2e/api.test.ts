// The TypeScript API end to end, in process, against a real gateway,
// supervisor and bubblewrap pod: exec's results and streams, cancellation
// that reaches the process in the sandbox (checked from inside), files,
// logs, the error classes, and `await using`.

import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AbortError,
  InvalidArgumentError,
  NotAuthorizedError,
  NotFoundError,
  OpenShell,
  OpenShellError,
  type Sandbox,
  TimeoutError,
  UnavailableError,
} from "../../src/api/index.js";
import { SandboxPhase } from "../../src/gen/openshell.js";
import { gatewayTarget, TestEnv, uniqueName } from "../helpers/cli.js";

describe("the TypeScript API", () => {
  const env = new TestEnv("openshell-api-");
  let client: OpenShell;
  let sandbox: Sandbox;

  beforeAll(async () => {
    await env.startGateway();
    // The same configuration the CLI reads: this environment's XDG directories.
    process.env.XDG_CONFIG_HOME = env.configHome;
    process.env.XDG_STATE_HOME = env.stateHome;
    client = await OpenShell.connect();
    sandbox = await client.create({ name: uniqueName("api") });
  }, 120_000);

  afterAll(async () => {
    await sandbox?.delete().catch(() => undefined);
    client?.close();
    await env.dispose();
  }, 120_000);

  it("resolves an exec with the exit status, without throwing on a non-zero one", async () => {
    expect(sandbox.phase).toBe("Ready");
    const result = await sandbox.exec("echo out; echo err >&2; exit 3");
    expect(result).toMatchObject({
      exitCode: 3,
      signal: null,
      stdout: "out\n",
      stderr: "err\n",
      truncated: false,
    });
    const words = await sandbox.exec(["printf", "%s|", "a b", "$HOME", "'q'"]);
    expect(words.stdout).toBe("a b|$HOME|'q'|");
  });

  it("passes env and workdir, and refuses a reserved variable before anything runs", async () => {
    const result = await sandbox.exec('echo "$GREETING" && pwd', {
      env: { GREETING: "hi there" },
      workdir: "/tmp",
    });
    expect(result.stdout).toBe("hi there\n/tmp\n");
    await expect(sandbox.exec("true", { env: { OPENSHELL_X: "1" } })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(sandbox.exec("true", { env: { OPENSHELL_X: "1" } })).rejects.toMatchObject({ field: "env" });
  });

  it("gives 50 concurrent execs each exactly their own output, over one connection", async () => {
    const runs = Array.from({ length: 50 }, (_, i) =>
      sandbox.exec(
        `echo start-${i}; i=0; while [ $i -lt 200 ]; do echo ${i}-$i; i=$((i+1)); done; echo end-${i} >&2`,
      ),
    );
    const results = await Promise.all(runs);
    results.forEach((result, i) => {
      const expected = [`start-${i}`, ...Array.from({ length: 200 }, (_, j) => `${i}-${j}`)].join("\n");
      expect(result.exitCode).toBe(0);
      expect(result.stdout).toBe(`${expected}\n`);
      expect(result.stderr).toBe(`end-${i}\n`);
    });
  });

  it("calls onStdout with a line before the command that prints it has ended", async () => {
    const flag = `/tmp/go-${process.pid}`;
    // The command ends only once the line has reached the callback and the callback answered.
    const result = await sandbox.exec(`echo ready; while [ ! -e ${flag} ]; do sleep 0.02; done; echo done`, {
      onStdout: (text) => {
        if (text.includes("ready")) void sandbox.writeFile(flag, "go");
      },
    });
    expect(result.stdout).toBe("ready\ndone\n");
  });

  it("does not cut off long output: every byte reaches the callback, the result keeps its bound", async () => {
    let seen = 0;
    const total = 40 * 1024 * 1024;
    const result = await sandbox.exec(`head -c ${total} /dev/zero | tr '\\0' a`, {
      onStdout: (text) => {
        seen += text.length;
      },
      maxOutputBytes: 1024 * 1024,
    });
    expect(result.exitCode).toBe(0);
    expect(seen).toBe(total);
    expect(result.stdout.length).toBe(1024 * 1024);
    expect(result.truncated).toBe(true);
  });

  it("keeps a slow command's output past every keepalive and idle timer (20 s)", async () => {
    const lines: string[] = [];
    const result = await sandbox.exec(
      "i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); sleep 0.2; done",
      {
        onStdout: (text) => lines.push(text),
      },
    );
    expect(result.exitCode).toBe(0);
    expect(result.stdout.trim().split("\n")).toHaveLength(100);
    expect(result.stdout).toContain("line 99\n");
    expect(lines.length).toBeGreaterThan(1);
  }, 90_000);

  /** Runs `sleep` under a shell that records its pid, then ends the exec with `end`; returns the error and whether the pid is gone inside. */
  async function endAndCheck(
    tag: string,
    start: (onStarted: () => void) => Promise<unknown>,
  ): Promise<{ error: unknown; gone: boolean }> {
    const pidFile = `/tmp/pid-${tag}`;
    let started!: () => void;
    const startedPromise = new Promise<void>((done) => {
      started = done;
    });
    const outcome = start(started).then(
      () => undefined,
      (error: unknown) => error,
    );
    await startedPromise;
    const error = await outcome;
    // From inside: the recorded process must be gone within 2 s of the exec's end.
    const check = await sandbox.exec(
      `p=$(cat ${pidFile}); i=0; while [ $i -lt 40 ]; do kill -0 "$p" 2>/dev/null || exit 0; i=$((i+1)); sleep 0.05; done; exit 1`,
    );
    return { error, gone: check.exitCode === 0 };
  }

  it("aborting an exec ends the remote process and rejects with an AbortError", async () => {
    const tag = `abort-${process.pid}`;
    const { error, gone } = await endAndCheck(tag, (onStarted) => {
      const controller = new AbortController();
      return sandbox.exec(`sleep 1000 & echo $! > /tmp/pid-${tag}; echo started; wait`, {
        signal: controller.signal,
        onStdout: (text) => {
          if (!text.includes("started")) return;
          onStarted();
          setTimeout(() => controller.abort(), 1000);
        },
      });
    });
    expect(error).toBeInstanceOf(AbortError);
    expect((error as Error).name).toBe("AbortError");
    expect(gone).toBe(true);
  });

  it("timeoutMs ends the remote process and rejects with a TimeoutError", async () => {
    const tag = `timeout-${process.pid}`;
    const { error, gone } = await endAndCheck(tag, (onStarted) =>
      sandbox.exec(`sleep 1000 & echo $! > /tmp/pid-${tag}; echo started; wait`, {
        timeoutMs: 1500,
        onStdout: (text) => {
          if (text.includes("started")) onStarted();
        },
      }),
    );
    expect(error).toBeInstanceOf(TimeoutError);
    expect(gone).toBe(true);
  });

  it("spawn streams stdin to stdout, and kill signals the command", async () => {
    const cat = await sandbox.spawn(["cat"]);
    const chunks: Buffer[] = [];
    cat.stdout.on("data", (d: Buffer) => chunks.push(d));
    cat.stdin.end("hello through stdin\n");
    expect(await cat.wait()).toEqual({ exitCode: 0, signal: null });
    expect(Buffer.concat(chunks).toString()).toBe("hello through stdin\n");

    const sleeper = await sandbox.spawn("echo up; exec sleep 1000");
    sleeper.stdout.once("data", () => sleeper.kill("SIGKILL"));
    expect(await sleeper.wait()).toEqual({ exitCode: 137, signal: "SIGKILL" });
  });

  it("writes, reads, uploads and downloads files", async () => {
    await sandbox.writeFile("/sandbox/notes/a.txt", "alpha\n", { mode: 0o600 });
    expect((await sandbox.readFile("/sandbox/notes/a.txt")).toString()).toBe("alpha\n");
    expect((await sandbox.exec("stat -c %a /sandbox/notes/a.txt")).stdout).toBe("600\n");
    await expect(sandbox.readFile("/sandbox/missing")).rejects.toBeInstanceOf(NotFoundError);

    const local = mkdtempSync(join(env.root, "up-"));
    mkdirSync(join(local, "tree", "sub"), { recursive: true });
    writeFileSync(join(local, "tree", "one.txt"), "one\n");
    writeFileSync(join(local, "tree", "sub", "two.txt"), "two\n");
    const up = await sandbox.upload(join(local, "tree"), "/sandbox/tree");
    expect(up).toMatchObject({ files: 2, path: "/sandbox/tree" });
    expect((await sandbox.exec("cat /sandbox/tree/sub/two.txt")).stdout).toBe("two\n");

    const down = mkdtempSync(join(env.root, "down-"));
    const got = await sandbox.download("/sandbox/tree", down);
    expect(got.files).toBe(2);
    expect(readFileSync(join(got.path, "one.txt"), "utf8")).toBe("one\n");
  });

  it("lists by label selector, gets by name, and reports a missing sandbox as NotFound", async () => {
    const names: string[] = [];
    for await (const s of client.list()) names.push(s.metadata!.name);
    expect(names).toContain(sandbox.name);
    const none: string[] = [];
    for await (const s of client.list({ selector: "team=nobody" })) none.push(s.metadata!.name);
    expect(none).toEqual([]);
    const again = await client.get(sandbox.name);
    expect(again.id).toBe(sandbox.id);
    await expect(client.get("no-such-sandbox")).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.get("no-such-sandbox")).rejects.toThrow(
      "sandbox 'no-such-sandbox' not found in workspace 'default'",
    );
  });

  it("reads logs once and followed", async () => {
    const name = uniqueName("api-logs");
    await using logged = await client.create({
      name,
      labels: { team: "logs" },
      command: ["sh", "-c", "echo first-line; echo second-line; sleep 1000"],
    });
    const seen: string[] = [];
    const controller = new AbortController();
    for await (const line of logged.logs({ follow: true, sources: ["sandbox"], signal: controller.signal })) {
      seen.push(line.message);
      if (line.message.includes("second-line")) controller.abort();
    }
    expect(seen.join("\n")).toContain("first-line");
    const once: string[] = [];
    for await (const line of logged.logs({ sources: ["sandbox"] })) once.push(line.message);
    expect(once).toContain("second-line");
    const labelled: string[] = [];
    for await (const s of client.list({ selector: "team=logs" })) labelled.push(s.metadata!.name);
    expect(labelled).toEqual([name]);
  });

  it("`await using` deletes the sandbox when the scope ends, also when its body throws", async () => {
    const name = uniqueName("api-using");
    const events: string[] = [];
    const body = async (): Promise<void> => {
      await using scoped = await client.create({ name, onProgress: (event) => events.push(event.kind) });
      expect((await scoped.exec("echo inside")).stdout).toBe("inside\n");
      throw new Error("the body failed");
    };
    await expect(body()).rejects.toThrow("the body failed");
    expect(events[0]).toBe("created");
    expect(events.at(-1)).toBe("ready");
    await expect(client.get(name)).rejects.toBeInstanceOf(NotFoundError);
  });

  it("stops and starts a sandbox, watched, and a handle whose connection was lost opens a new one", async () => {
    await using other = await client.get(sandbox.name);
    expect((await other.exec("echo before")).stdout).toBe("before\n");
    const controller = new AbortController();
    const phases: string[] = [];
    const watching = (async () => {
      for await (const info of client.watch(sandbox.name, { signal: controller.signal })) {
        phases.push(String(info.status?.phase));
        if (info.status?.phase === SandboxPhase.SANDBOX_PHASE_STOPPED) controller.abort();
      }
    })();
    await sandbox.stop();
    expect(sandbox.phase).toBe("Stopped");
    await watching;
    expect(phases.at(-1)).toBe(String(SandboxPhase.SANDBOX_PHASE_STOPPED));
    await expect(other.exec("true")).rejects.toBeInstanceOf(OpenShellError);
    await sandbox.start();
    expect(sandbox.phase).toBe("Ready");
    // `other` lost its connection with the stop; its next command opens a new one.
    expect((await other.exec("echo after")).stdout).toBe("after\n");
  });

  it("reads the policy in force, takes it back unchanged, and refuses what only a restart could bring", async () => {
    const info = await sandbox.policy();
    expect(info).toMatchObject({ revision: 1, activeRevision: 1, status: "loaded" });
    expect(info.policy).toHaveProperty("filesystem_policy");
    // The document it gives is one setPolicy takes; the same policy is no new revision.
    expect(await sandbox.setPolicy(info.policy, { wait: true })).toEqual({
      revision: 1,
      hash: info.hash,
      changed: false,
    });
    const widened = structuredClone(info.policy) as { filesystem_policy: { read_only: string[] } };
    widened.filesystem_policy.read_only.push("/var");
    const refused = sandbox.setPolicy(widened);
    await expect(refused).rejects.toBeInstanceOf(OpenShellError);
    await expect(refused).rejects.toThrow(/filesystem_policy cannot change on a running sandbox/);
    const network = {
      ...info.policy,
      network_policies: { lab: { name: "lab", endpoints: [{ host: "example.test", port: 443 }] } },
    };
    await expect(sandbox.setPolicy(network)).rejects.toThrow(
      /network rules cannot be added to a sandbox running without any/,
    );
    expect((await sandbox.policy()).revision).toBe(1);
    expect(await client.whoami()).toMatchObject({
      subject: "token-holder",
      roles: ["owner"],
      identityProvider: "bearer_token",
    });
  });

  it("refuses a wrong token with NotAuthorized", async () => {
    const target = gatewayTarget(env);
    const stranger = new OpenShell({ endpoint: target.endpoint, token: "not-the-token" });
    try {
      await expect(stranger.get(sandbox.name)).rejects.toBeInstanceOf(NotAuthorizedError);
    } finally {
      stranger.close();
    }
  });

  it("reports a gateway that is not running as Unavailable, not a hang", async () => {
    // A port that was listening a moment ago and no longer is: a stopped gateway's.
    const server = createServer();
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const { port } = server.address() as { port: number };
    await new Promise<void>((done) => server.close(() => done()));
    const down = new OpenShell({ endpoint: `http://127.0.0.1:${port}`, token: "x" });
    try {
      await expect(down.get("any")).rejects.toBeInstanceOf(UnavailableError);
    } finally {
      down.close();
    }
  }, 5_000);
});
