// SSH into sandboxes through the gateway: the system OpenSSH client (ssh,
// scp, sftp) with the config `sandbox ssh-config` prints, and the gateway's
// ForwardTcp rules — session tokens that stop working when revoked or
// expired (and say why), and the per-token and per-sandbox connection caps,
// which exec does not count against.

import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collect, ROOT, TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import { exitOf, type GatewayApi, gatewayApi, type HeldForward, openForward } from "../helpers/ssh.js";

const sha256 = (data: Buffer): string => createHash("sha256").update(data).digest("hex");
const UNAUTHENTICATED = 16;
const RESOURCE_EXHAUSTED = 8;

/** Expects a ForwardTcp open to be refused with `code` and a message matching `reason`. */
async function expectRefused(opening: Promise<HeldForward>, code: number, reason: RegExp): Promise<void> {
  const error = await opening.then(
    (held) => {
      held.close();
      throw new Error("the gateway accepted a connection it should have refused");
    },
    (e: ServiceError) => e,
  );
  expect({ code: error.code, details: error.details }).toEqual({
    code,
    details: expect.stringMatching(reason),
  });
}

describe("OpenSSH and ForwardTcp", () => {
  const env = new TestEnv("openshell-ssh-");
  const name = uniqueName("ssh");
  const other = uniqueName("ssh-other");
  const host = `openshell-${name}.default`;
  let config = "";
  let api: GatewayApi;
  let sandboxId = "";

  const ssh = (tool: "ssh" | "scp" | "sftp", args: string[], input?: string) =>
    collect(
      spawn(tool, ["-F", config, "-o", "BatchMode=yes", ...args], {
        env: env.env(),
        cwd: env.root,
        stdio: ["pipe", "pipe", "pipe"],
      }),
      `${tool} ${args.join(" ")}`,
      { timeoutMs: 30_000, ...(input === undefined ? {} : { input }) },
    );

  beforeAll(async () => {
    await env.startGateway();
    for (const sandbox of [name, other]) {
      const created = await env.run(["sandbox", "create", "--name", sandbox], { timeoutMs: 60_000 });
      expect(created.code, created.stderr).toBe(0);
    }
    const printed = await env.run(["sandbox", "ssh-config", name]);
    expect(printed.code, printed.stderr).toBe(0);
    expect(printed.stdout.split("\n")[0]).toBe(`Host ${host}`);
    config = join(env.root, "ssh_config");
    writeFileSync(config, printed.stdout);
    api = gatewayApi(env);
    sandboxId = await api.sandboxId(name);
  });

  afterAll(async () => {
    api?.close();
    await env.run(["sandbox", "delete", name, other], { timeoutMs: 60_000 }).catch(() => undefined);
    await env.dispose();
  });

  it("ssh -F <(openshell sandbox ssh-config NAME) HOST 'echo hi' works", async () => {
    const hi = await ssh("ssh", [host, "echo hi"]);
    expect(hi).toMatchObject({ code: 0, stdout: "hi\n", stderr: "" });
    const status = await ssh("ssh", [host, "echo out; echo err >&2; exit 42"]);
    expect(status).toMatchObject({ code: 42, stdout: "out\n", stderr: "err\n" });
    const who = await ssh("ssh", [host, "id -un; pwd"]);
    expect(who.stdout).toBe("sandbox\n/sandbox\n");
  });

  it("a client that closes its input at once still gets the server's reply (half-close crosses the relay)", async () => {
    const result = await env.run(["ssh-proxy", "--gateway-name", "local", "--name", name], { input: "" });
    expect(result.stdout).toMatch(/^SSH-2\.0-/);
  });

  it("scp copies into the sandbox and back, byte for byte (SFTP and legacy protocol)", async () => {
    const original = randomBytes(1024 * 1024 + 17);
    const local = join(env.root, "scp-in.bin");
    writeFileSync(local, original);
    for (const [protocol, flags] of [
      ["sftp", []],
      ["legacy", ["-O"]],
    ] as const) {
      const remote = `/sandbox/scp-${protocol}.bin`;
      const up = await ssh("scp", [...flags, local, `${host}:${remote}`]);
      expect({ protocol, code: up.code, stderr: up.stderr }).toEqual({ protocol, code: 0, stderr: "" });
      const inside = await env.run(["sandbox", "exec", "-n", name, "--", "sha256sum", remote]);
      expect(inside.stdout).toBe(`${sha256(original)}  ${remote}\n`);
      const back = join(env.root, `scp-${protocol}-back.bin`);
      const down = await ssh("scp", [...flags, `${host}:${remote}`, back]);
      expect({ protocol, code: down.code, stderr: down.stderr }).toEqual({ protocol, code: 0, stderr: "" });
      expect(readFileSync(back).equals(original)).toBe(true);
    }
  });

  it("sftp puts, lists, gets and removes files", async () => {
    const dir = join(env.root, "sftp");
    mkdirSync(dir);
    writeFileSync(join(dir, "notes.txt"), "written over sftp\n");
    const batch = [
      "mkdir /sandbox/sftp-dir",
      `put ${join(dir, "notes.txt")} /sandbox/sftp-dir/notes.txt`,
      "ls -1 /sandbox/sftp-dir",
      `get /sandbox/sftp-dir/notes.txt ${join(dir, "back.txt")}`,
      "rm /sandbox/sftp-dir/notes.txt",
      "rmdir /sandbox/sftp-dir",
    ].join("\n");
    const result = await ssh("sftp", ["-b", "-", host], `${batch}\n`);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("/sandbox/sftp-dir/notes.txt");
    expect(readFileSync(join(dir, "back.txt"), "utf8")).toBe("written over sftp\n");
    const gone = await env.run(["sandbox", "exec", "-n", name, "--", "test", "-e", "/sandbox/sftp-dir"]);
    expect(gone.code).toBe(1);
  });

  it("a session ends, remote command included, when its ssh client goes away", async () => {
    const client = spawn(
      "ssh",
      ["-F", config, "-o", "BatchMode=yes", host, "echo started; exec sleep 4321"],
      { env: env.env(), cwd: env.root, stdio: ["pipe", "pipe", "pipe"] },
    );
    try {
      await waitForOutput(client.stdout!, "started\n", "the remote command has started");
      client.kill("SIGTERM");
      await exitOf(client, "ssh exits on SIGTERM");
    } finally {
      client.kill("SIGKILL");
    }
    const gone = await env.run(
      [
        "sandbox",
        "exec",
        "-n",
        name,
        "--timeout",
        "10",
        "--",
        "sh",
        "-c",
        "while ps -eo args | grep -qx 'sleep 4321'; do sleep 0.05; done; echo gone",
      ],
      { timeoutMs: 20_000 },
    );
    expect(gone.stdout, "waiting for the abandoned remote command to end").toBe("gone\n");
  });

  it("a revoked token cannot open a new connection, and the error says it was revoked", async () => {
    const { token } = await api.createSshSession(sandboxId);
    const before = await openForward(api, sandboxId, token, "ForwardTcp with a fresh token");
    before.close();
    expect(await api.revokeSshSession(token)).toBe(true);
    await expectRefused(openForward(api, sandboxId, token, "after revoke"), UNAUTHENTICATED, /revoked/);
    const proxy = await env.run(["ssh-proxy", "--sandbox-id", sandboxId, "--token", token], {
      timeoutMs: 20_000,
    });
    expect(proxy.code).toBe(1);
    expect(proxy.stdout).toBe("");
    expect(proxy.stderr).toMatch(/SSH session token is not valid: it was revoked/);
  });

  it("an unknown token, or one issued for another sandbox, is refused with the reason", async () => {
    await expectRefused(
      openForward(api, sandboxId, "not-a-token", "unknown token"),
      UNAUTHENTICATED,
      /SSH session token not found/,
    );
    const foreign = await api.createSshSession(await api.sandboxId(other));
    await expectRefused(
      openForward(api, sandboxId, foreign.token, "token of another sandbox"),
      UNAUTHENTICATED,
      /issued for another sandbox/,
    );
    const proxy = await env.run(["ssh-proxy", "--sandbox-id", sandboxId, "--token", "not-a-token"], {
      timeoutMs: 20_000,
    });
    expect(proxy.code).toBe(1);
    expect(proxy.stderr).toMatch(/SSH session token not found/);
  });

  it("caps ForwardTcp at 3 per token and 20 per sandbox; execs do not count and slots come back", async () => {
    // More connections one after another than the sandbox has slots: each
    // closed one must give its slot back.
    for (let i = 0; i < 21; i++) {
      const { token } = await api.createSshSession(sandboxId);
      (await openForward(api, sandboxId, token, `open-and-close ${i + 1}`)).close();
    }
    const held: HeldForward[] = [];
    try {
      const first = await api.createSshSession(sandboxId);
      for (let i = 0; i < 3; i++)
        held.push(await openForward(api, sandboxId, first.token, `token slot ${i + 1}`));
      await expectRefused(
        openForward(api, sandboxId, first.token, "4th on one token"),
        RESOURCE_EXHAUSTED,
        /^SSH session connection limit reached/,
      );
      while (held.length < 20) {
        const { token } = await api.createSshSession(sandboxId);
        for (let i = 0; i < 3 && held.length < 20; i++) {
          held.push(await openForward(api, sandboxId, token, `sandbox slot ${held.length + 1}`));
        }
      }
      const fresh = await api.createSshSession(sandboxId);
      await expectRefused(
        openForward(api, sandboxId, fresh.token, "21st on the sandbox"),
        RESOURCE_EXHAUSTED,
        /^sandbox SSH connection limit reached/,
      );
      // OpenSSH users see the gateway's reason, not a bare closed connection.
      const refused = await ssh("ssh", [host, "true"]);
      expect(refused.code).toBe(255);
      expect(refused.stderr).toContain("sandbox SSH connection limit reached");

      // Execs ride the gateway's own pooled connection: all of them run while every slot is taken.
      const execs = await Promise.all(
        Array.from({ length: 22 }, (_, i) =>
          env.run(["sandbox", "exec", "-n", name, "--", "echo", `exec-${i}`], { timeoutMs: 120_000 }),
        ),
      );
      expect(execs.map((r) => [r.code, r.stdout])).toEqual(execs.map((_, i) => [0, `exec-${i}\n`]));
    } finally {
      for (const forward of held) forward.close();
    }
    // Slots are released as the streams end; OpenSSH works again.
    const again = await ssh("ssh", [host, "echo back"]);
    expect(again).toMatchObject({ code: 0, stdout: "back\n" });
  });
});

/**
 * A gateway started directly with a short session TTL (`--ssh-session-ttl`),
 * registered with `gateway add`, so a token can be seen to expire.
 */
describe("an expired SSH session token", () => {
  const env = new TestEnv("openshell-ssh-ttl-");
  const name = uniqueName("ttl");
  const TTL_SECONDS = 2;
  let gateway: ChildProcess | undefined;
  let api: GatewayApi;

  beforeAll(async () => {
    const stateDir = join(env.stateHome, "openshell", "gateways", "short");
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const tokenFile = join(env.root, "gateway-token");
    writeFileSync(tokenFile, `${randomBytes(24).toString("hex")}\n`, { mode: 0o600 });
    gateway = spawn(
      process.execPath,
      [
        join(ROOT, "dist", "gateway.mjs"),
        "--name",
        "short",
        "--state-dir",
        stateDir,
        "--port",
        "0",
        "--token-file",
        tokenFile,
        "--ssh-session-ttl",
        String(TTL_SECONDS),
      ],
      { env: env.env(), stdio: ["ignore", "pipe", "inherit"] },
    );
    const ready = await new Promise<{ ready: boolean; port: number; error?: string }>(
      (resolveLine, reject) => {
        const timer = setTimeout(
          () => reject(new Error("short-TTL gateway: no ready line within 30 s")),
          30_000,
        );
        createInterface({ input: gateway!.stdout! }).once("line", (line) => {
          clearTimeout(timer);
          resolveLine(JSON.parse(line));
        });
      },
    );
    expect(ready, ready.error).toMatchObject({ ready: true });
    const added = await env.run([
      "gateway",
      "add",
      `http://127.0.0.1:${ready.port}`,
      "--name",
      "short",
      "--token-file",
      tokenFile,
    ]);
    expect(added.code, added.stderr).toBe(0);
    const created = await env.run(["sandbox", "create", "--name", name], { timeoutMs: 60_000 });
    expect(created.code, created.stderr).toBe(0);
    api = gatewayApi(env, "short");
  });

  afterAll(async () => {
    api?.close();
    await env.run(["sandbox", "delete", name], { timeoutMs: 60_000 }).catch(() => undefined);
    if (gateway && gateway.exitCode === null) {
      const exited = new Promise((done) => gateway!.once("exit", done));
      gateway.kill("SIGTERM");
      await exited;
    }
    await env.dispose();
  });

  it("cannot open a new connection once expired, and the error says it expired", async () => {
    const sandboxId = await api.sandboxId(name);
    const session = await api.createSshSession(sandboxId);
    expect(session.expiresAtMs).toBeGreaterThan(Date.now());
    const fresh = await openForward(api, sandboxId, session.token, "ForwardTcp before expiry");
    fresh.close();
    // Expiry is a moment, not an event: wait until just past the time the gateway reported.
    await new Promise((done) => setTimeout(done, Math.max(0, session.expiresAtMs - Date.now()) + 50));
    await expectRefused(
      openForward(api, sandboxId, session.token, "after expiry"),
      UNAUTHENTICATED,
      /SSH session token expired/,
    );
    const proxy = await env.run(["ssh-proxy", "--sandbox-id", sandboxId, "--token", session.token], {
      timeoutMs: 20_000,
    });
    expect(proxy.code).toBe(1);
    expect(proxy.stderr).toMatch(/SSH session token expired/);
  });
});
