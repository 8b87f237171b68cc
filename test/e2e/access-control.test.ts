// Gateway access control through the real CLI and gateway: only the owner of
// a gateway (whoever can read its token) drives it; network binds need TLS;
// mTLS when asked; Health open so `status` tells "down" from "refused"; SSH
// session tokens tied to the gateway's credential, expiring and revoked on
// delete; and the token itself never printed or logged.

import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServiceError } from "@grpc/grpc-js";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashToken } from "../../src/gateway/store.js";
import { createCertificate } from "../../src/gateway/tls.js";
import type { OpenShellClient } from "../../src/gen/openshell.js";
import { connectGateway, type GatewayTarget } from "../../src/transport/grpc.js";
import { BIN, type RunOptions, type RunResult, TestEnv, uniqueName } from "../helpers/cli.js";

/** A uid with no passwd entry: "another local user". */
const OTHER_UID = 1_234_567;
const isRoot = process.getuid?.() === 0;

/** Whether OTHER_UID can run the CLI from where this checkout lives (a clone under /root cannot). */
function reachableByOtherUser(): boolean {
  try {
    execFileSync(process.execPath, ["-e", `require("fs").accessSync(${JSON.stringify(BIN)})`], {
      uid: OTHER_UID,
      gid: OTHER_UID,
      stdio: "ignore",
    });
    return true;
  } catch {
    return false;
  }
}

// ---- what every command printed, and every gateway's token and log, checked at the end ----

const outputs: { step: string; text: string }[] = [];
const tokens: string[] = [];

async function run(env: TestEnv, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await env.run(args, { timeoutMs: 60_000, ...options });
  outputs.push({ step: `openshell ${args.join(" ")}`, text: result.stdout + result.stderr });
  return result;
}

function gatewayDir(env: TestEnv, name = "local"): string {
  return join(env.configHome, "openshell", "gateways", name);
}

function stateDir(env: TestEnv, name = "local"): string {
  return join(env.stateHome, "openshell", "gateways", name);
}

interface Metadata {
  gateway_endpoint: string;
  gateway_port: number;
  ca_file?: string;
  client_cert_file?: string;
  client_key_file?: string;
  local_settings?: { bind: string; ssh_session_ttl_secs?: number; client_ca_file?: string };
}

function metadataOf(env: TestEnv, name = "local"): Metadata {
  return JSON.parse(readFileSync(join(gatewayDir(env, name), "metadata.json"), "utf8")) as Metadata;
}

function readToken(env: TestEnv, name = "local"): string {
  const token = readFileSync(join(gatewayDir(env, name), "token"), "utf8").trim();
  tokens.push(token);
  return token;
}

/** A gRPC target as the owner's CLI builds it: endpoint, CA and client certificate from metadata. */
function ownerTarget(env: TestEnv, token: string | undefined): GatewayTarget {
  const metadata = metadataOf(env);
  const file = (path: string | undefined): Buffer | undefined => (path ? readFileSync(path) : undefined);
  return {
    name: "local",
    endpoint: metadata.gateway_endpoint,
    token,
    ca: file(metadata.ca_file),
    clientCert: file(metadata.client_cert_file),
    clientKey: file(metadata.client_key_file),
  };
}

function rpc<Res>(
  start: (callback: (error: ServiceError | null, response: Res) => void) => void,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    start((error, response) => (error ? reject(error) : resolve(response))),
  );
}

async function sandboxId(client: OpenShellClient, name: string): Promise<string> {
  const response = await rpc<{ sandbox?: { metadata?: { id: string } } }>((cb) =>
    client.getSandbox({ name, workspace: "default" }, cb),
  );
  return response.sandbox!.metadata!.id;
}

interface ForwardOutcome {
  /** The first bytes the sandbox's SSH server sent, when the stream was let through. */
  banner?: string;
  error?: ServiceError;
  /** Cancels the stream. */
  close(): void;
  /** Resolves when the stream ends or fails after having opened. */
  ended: Promise<void>;
}

/** Opens ForwardTcp to the sandbox's SSH server and waits for its banner or a refusal. */
function forwardTcp(
  client: OpenShellClient,
  id: string,
  sessionToken: string,
  step: string,
): Promise<ForwardOutcome> {
  const call = client.forwardTcp();
  let settle!: () => void;
  const ended = new Promise<void>((resolve) => {
    settle = resolve;
  });
  call.on("end", () => settle());
  call.on("close", () => settle());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      call.cancel();
      reject(new Error(`${step}: no SSH banner and no refusal within 20 s`));
    }, 20_000);
    call.once("data", (frame: { payload?: { $case: string; value: unknown } }) => {
      clearTimeout(timer);
      const banner =
        frame.payload?.$case === "data" ? (frame.payload.value as Buffer).toString("latin1") : "";
      resolve({ banner, close: () => call.cancel(), ended });
    });
    call.on("error", (error: ServiceError) => {
      clearTimeout(timer);
      settle();
      resolve({ error, close: () => {}, ended });
    });
    call.write({
      payload: {
        $case: "init",
        value: {
          sandboxId: id,
          serviceId: `test:${id}`,
          target: { $case: "ssh", value: {} },
          authorizationToken: sessionToken,
        },
      },
    });
  });
}

/** Fails with the step named if `promise` has not settled within `ms`. */
function within<T>(promise: Promise<T>, ms: number, step: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${step}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves at `whenMs` on the wall clock: the moment a TTL runs out is the event waited for. */
function clockReaches(whenMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, whenMs - Date.now())));
}

const NOT_FOUND = 5;
const UNAUTHENTICATED = 16;

// -------------------------------------------------------------------------------------

describe.skipIf(!isRoot || !reachableByOtherUser())(
  "a local gateway is its owner's only (another uid on the same machine)",
  () => {
    const owner = new TestEnv("openshell-acl-owner-");
    const other = new TestEnv("openshell-acl-other-");
    const as = { uid: OTHER_UID, gid: OTHER_UID };
    const target = uniqueName("acl-a");
    let token = "";
    let port = 0;

    beforeAll(async () => {
      const started = await run(owner, ["gateway", "start", "--port", "0"]);
      expect(started.code, started.stderr).toBe(0);
      token = readToken(owner);
      port = metadataOf(owner).gateway_port;
      const created = await run(owner, [
        "sandbox",
        "create",
        "--name",
        target,
        "--detach",
        "--",
        "sleep",
        "infinity",
      ]);
      expect(created.code, created.stderr).toBe(0);
      for (const dir of [other.configHome, other.stateHome, other.home]) {
        mkdirSync(dir, { recursive: true });
        chownSync(dir, OTHER_UID, OTHER_UID);
      }
      writeFileSync(join(other.home, "note.txt"), "from another user\n");
      chownSync(join(other.home, "note.txt"), OTHER_UID, OTHER_UID);
    });

    afterAll(async () => {
      outputs.push({
        step: "owner's gateway.log",
        text: readFileSync(join(stateDir(owner), "gateway.log"), "utf8"),
      });
      await owner.dispose();
      await other.dispose();
    });

    it("keeps the token 0600 in a 0700 directory, unreadable by another user", async () => {
      const tokenPath = join(gatewayDir(owner), "token");
      expect(statSync(tokenPath).mode & 0o777).toBe(0o600);
      expect(statSync(gatewayDir(owner)).mode & 0o777).toBe(0o700);
      // Even with every parent opened up, the token's own modes keep it private.
      for (const dir of [
        owner.configHome,
        join(owner.configHome, "openshell"),
        join(owner.configHome, "openshell", "gateways"),
      ]) {
        chmodSync(dir, 0o755);
      }
      const attempt = (code: string): string => {
        try {
          execFileSync(process.execPath, ["-e", code], { ...as, stdio: "pipe" });
          return "read";
        } catch (error) {
          return String((error as { stderr?: Buffer }).stderr);
        }
      };
      expect(attempt(`require("fs").readFileSync(${JSON.stringify(tokenPath)})`)).toMatch(/EACCES/);
      expect(attempt(`require("fs").readdirSync(${JSON.stringify(gatewayDir(owner))})`)).toMatch(/EACCES/);

      // Registering with the owner's token file fails with a reason, not a stack trace.
      const stolen = await run(
        other,
        ["gateway", "add", `http://127.0.0.1:${port}`, "--name", "stolen", "--token-file", tokenPath],
        as,
      );
      expect(stolen.code).toBe(1);
      expect(stolen.stderr).toContain(`--token-file ${tokenPath}: permission denied`);
      expect(stolen.stderr).toMatch(/readable by its owner only/);
    });

    it("lets another user reach it but not list, create, exec, upload or delete", async () => {
      const added = await run(other, ["gateway", "add", `http://127.0.0.1:${port}`, "--name", "x"], as);
      expect(added.code, added.stderr).toBe(0);
      expect(added.stderr).toMatch(/reachable but does not accept these credentials/);

      const notAuthorized = /error: not authorized by gateway 'x': missing bearer token/;
      const list = await run(other, ["sandbox", "list"], as);
      expect([list.code, list.stdout]).toEqual([1, ""]);
      expect(list.stderr).toMatch(notAuthorized);
      expect(list.stderr).toMatch(/hint: Gateway 'x' needs its owner's token/);

      const create = await run(
        other,
        ["sandbox", "create", "--name", uniqueName("acl-x"), "--detach", "--", "sleep", "infinity"],
        as,
      );
      expect(create.code).toBe(1);
      expect(create.stderr).toMatch(notAuthorized);

      // Refused before anything runs: 1, as from every other command (exec's
      // other own failures use 240-245).
      const exec = await run(other, ["sandbox", "exec", "-n", target, "--", "cat", "/etc/hostname"], as);
      expect(exec.code).toBe(1);
      expect(exec.stdout).toBe("");
      expect(exec.stderr).toMatch(notAuthorized);

      const upload = await run(other, ["sandbox", "upload", target, join(other.home, "note.txt")], as);
      expect(upload.code).toBe(1);
      expect(upload.stderr).toMatch(notAuthorized);

      const remove = await run(other, ["sandbox", "delete", target], as);
      expect(remove.code).toBe(1);
      expect(remove.stderr).toMatch(notAuthorized);

      const get = await run(other, ["sandbox", "get", target], as);
      expect(get.code).toBe(1);
      expect(get.stderr).toMatch(notAuthorized);

      // A token of its own making is no better.
      writeFileSync(join(other.home, "guess"), `${"A".repeat(43)}\n`);
      chownSync(join(other.home, "guess"), OTHER_UID, OTHER_UID);
      const guessed = await run(
        other,
        [
          "gateway",
          "add",
          `http://127.0.0.1:${port}`,
          "--name",
          "guess",
          "--token-file",
          join(other.home, "guess"),
        ],
        as,
      );
      expect(guessed.code, guessed.stderr).toBe(0);
      const wrong = await run(other, ["sandbox", "list"], as);
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(/not authorized by gateway 'guess': invalid bearer token/);

      // Nothing happened to the owner's sandboxes.
      const owners = await run(owner, ["sandbox", "list", "--names"]);
      expect(owners.stdout.trim().split("\n")).toEqual([target]);
    });

    it("lets its owner list, create, exec, upload and delete", async () => {
      const second = uniqueName("acl-b");
      const create = await run(owner, [
        "sandbox",
        "create",
        "--name",
        second,
        "--detach",
        "--",
        "sleep",
        "infinity",
      ]);
      expect(create.code, create.stderr).toBe(0);
      const list = await run(owner, ["sandbox", "list", "--names"]);
      expect(list.stdout.trim().split("\n").sort()).toEqual([target, second].sort());
      writeFileSync(join(owner.root, "note.txt"), "from the owner\n");
      const upload = await run(owner, ["sandbox", "upload", second, join(owner.root, "note.txt")]);
      expect(upload.code, upload.stderr).toBe(0);
      const exec = await run(owner, ["sandbox", "exec", "-n", second, "--", "cat", "/sandbox/note.txt"]);
      expect([exec.code, exec.stdout]).toEqual([0, "from the owner\n"]);
      const remove = await run(owner, ["sandbox", "delete", second]);
      expect(remove.code, remove.stderr).toBe(0);
    });

    it("requires the gateway's token on ForwardTcp too: a session token alone opens nothing", async () => {
      const withToken = connectGateway(ownerTarget(owner, token));
      const withoutToken = connectGateway(ownerTarget(owner, undefined));
      const wrongToken = connectGateway(ownerTarget(owner, "B".repeat(43)));
      try {
        const id = await sandboxId(withToken, target);
        const session = await rpc<{ token: string; expiresAtMs: number }>((cb) =>
          withToken.createSshSession({ sandboxId: id }, cb),
        );
        // The default lifetime is 24 hours.
        expect(session.expiresAtMs - Date.now()).toBeGreaterThan(86_400_000 - 60_000);
        expect(session.expiresAtMs - Date.now()).toBeLessThanOrEqual(86_400_000);

        const bare = await forwardTcp(withoutToken, id, session.token, "ForwardTcp without bearer");
        expect(bare.error?.code).toBe(UNAUTHENTICATED);
        expect(bare.error?.details).toBe("missing bearer token");
        const wrong = await forwardTcp(wrongToken, id, session.token, "ForwardTcp with a wrong bearer");
        expect(wrong.error?.code).toBe(UNAUTHENTICATED);
        expect(wrong.error?.details).toBe("invalid bearer token");
        // Nor can anyone without the token mint a session.
        await expect(rpc((cb) => withoutToken.createSshSession({ sandboxId: id }, cb))).rejects.toMatchObject(
          { code: UNAUTHENTICATED },
        );

        const allowed = await forwardTcp(withToken, id, session.token, "ForwardTcp with both tokens");
        expect(allowed.error).toBeUndefined();
        expect(allowed.banner).toMatch(/^SSH-2\.0-/);
        allowed.close();
      } finally {
        withToken.close();
        withoutToken.close();
        wrongToken.close();
      }
    });

    it("revokes a sandbox's SSH sessions when it is deleted", async () => {
      const doomed = uniqueName("acl-d");
      const create = await run(owner, [
        "sandbox",
        "create",
        "--name",
        doomed,
        "--detach",
        "--",
        "sleep",
        "infinity",
      ]);
      expect(create.code, create.stderr).toBe(0);
      const client = connectGateway(ownerTarget(owner, token));
      try {
        const id = await sandboxId(client, doomed);
        const session = await rpc<{ token: string }>((cb) => client.createSshSession({ sandboxId: id }, cb));
        const open = await forwardTcp(client, id, session.token, "ForwardTcp before delete");
        expect(open.banner).toMatch(/^SSH-2\.0-/);

        const remove = await run(owner, ["sandbox", "delete", doomed]);
        expect(remove.code, remove.stderr).toBe(0);
        // The open stream is cut, and the token opens nothing any more: the
        // gateway revoked it, then dropped it with the sandbox's records.
        await within(open.ended, 20_000, "the open ForwardTcp stream ending on delete");
        const after = await forwardTcp(client, id, session.token, "ForwardTcp after delete");
        expect(after.banner).toBeUndefined();
        expect(after.error?.code).toBe(NOT_FOUND);
        const db = new Database(join(stateDir(owner), "openshell.db"), {
          readonly: true,
          fileMustExist: true,
        });
        try {
          const row = db
            .prepare("SELECT revoked FROM ssh_sessions WHERE token_hash = ?")
            .get(hashToken(session.token));
          expect(row).toBeUndefined();
        } finally {
          db.close();
        }
        // Nor does it open a new sandbox of the same name.
        const again = await run(owner, [
          "sandbox",
          "create",
          "--name",
          doomed,
          "--detach",
          "--",
          "sleep",
          "infinity",
        ]);
        expect(again.code, again.stderr).toBe(0);
        const successor = await sandboxId(client, doomed);
        expect(successor).not.toBe(id);
        const reused = await forwardTcp(client, successor, session.token, "ForwardTcp into the successor");
        expect(reused.error?.code).toBe(UNAUTHENTICATED);
        expect(reused.error?.details).toBe("SSH session token not found");
      } finally {
        client.close();
      }
    });

    it("answers Health to anyone, so status tells 'not allowed' from 'not running'", async () => {
      const mine = await run(owner, ["status"]);
      expect(mine.code, mine.stderr).toBe(0);
      expect(mine.stdout).toMatch(/Status: Connected/);
      expect(mine.stdout).toMatch(/Auth: authenticated/);

      const refused = await run(other, ["--gateway", "x", "status"], as);
      expect(refused.code).toBe(1);
      expect(refused.stdout).toMatch(/Status: Connected/);
      expect(refused.stdout).toMatch(/Auth: failed \(not authorized by gateway 'x': missing bearer token\)/);
      expect(refused.stderr).toMatch(/needs its owner's token/);
      const refusedJson = await run(other, ["--gateway", "x", "status", "-o", "json"], as);
      expect(refusedJson.code).toBe(1);
      expect(JSON.parse(refusedJson.stdout)).toMatchObject({
        status: "connected",
        authentication: { status: "failed" },
      });

      const stopped = await run(owner, ["gateway", "stop"]);
      expect(stopped.code, stopped.stderr).toBe(0);
      const down = await run(other, ["--gateway", "x", "status"], as);
      expect(down.code).toBe(1);
      expect(down.stdout).toMatch(/Status: Disconnected/);
      expect(down.stdout).not.toMatch(/Auth:|not authorized/);
      const downJson = await run(other, ["--gateway", "x", "status", "-o", "json"], as);
      expect(JSON.parse(downJson.stdout)).toMatchObject({ status: "disconnected" });
    });
  },
);

// -------------------------------------------------------------------------------------

describe("a network bind needs TLS; with --tls a second CLI works end to end", () => {
  const owner = new TestEnv("openshell-tls-owner-");
  const remote = new TestEnv("openshell-tls-remote-");
  const stranger = new TestEnv("openshell-tls-stranger-");
  const sandbox = uniqueName("tls-a");
  const TTL = 3;
  let token = "";
  let port = 0;
  let addLine: RegExpExecArray;

  beforeAll(async () => {
    const refused = await run(owner, ["gateway", "start", "--bind", "0.0.0.0", "--port", "0"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("error: --bind 0.0.0.0: a gateway reachable from the network needs TLS");
    expect(refused.stderr).toContain("hint: Add --tls");

    const started = await run(owner, [
      "gateway",
      "start",
      "--bind",
      "0.0.0.0",
      "--port",
      "0",
      "--tls",
      "--ssh-session-ttl",
      String(TTL),
    ]);
    expect(started.code, started.stderr).toBe(0);
    token = readToken(owner);
    port = metadataOf(owner).gateway_port;
    expect(started.stderr).toContain(`Gateway 'local' started at https://127.0.0.1:${port}`);
    addLine = /openshell gateway add (https:\/\/\S+) --ca (\S+) --token-file (\S+)\n/.exec(started.stderr)!;
    expect(addLine, started.stderr).not.toBeNull();
  });

  afterAll(async () => {
    outputs.push({
      step: "TLS gateway.log",
      text: readFileSync(join(stateDir(owner), "gateway.log"), "utf8"),
    });
    await owner.dispose();
    await remote.dispose();
    await stranger.dispose();
  });

  it("generates a CA and a server certificate into the state directory, keys 0600", () => {
    const tls = join(stateDir(owner), "tls");
    expect(addLine[2]).toBe(join(tls, "ca.crt"));
    expect(addLine[3]).toBe(join(gatewayDir(owner), "token"));
    expect(new URL(addLine[1]!).port).toBe(String(port));
    expect(statSync(tls).mode & 0o777).toBe(0o700);
    expect(statSync(join(tls, "ca.key")).mode & 0o777).toBe(0o600);
    expect(statSync(join(tls, "server.key")).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(tls, "server.crt"), "utf8")).toMatch(/^-----BEGIN CERTIFICATE-----/);
    const metadata = metadataOf(owner);
    expect(metadata.gateway_endpoint).toBe(`https://127.0.0.1:${port}`);
    expect(metadata.local_settings).toMatchObject({ bind: "0.0.0.0", ssh_session_ttl_secs: TTL });
  });

  it("serves a second CLI that has the CA and the token: create, exec, upload", async () => {
    const added = await run(remote, [
      "gateway",
      "add",
      `https://127.0.0.1:${port}`,
      "--ca",
      addLine[2]!,
      "--token-file",
      addLine[3]!,
    ]);
    expect(added.code, added.stderr).toBe(0);
    expect(added.stderr).not.toMatch(/!/);

    const create = await run(remote, [
      "sandbox",
      "create",
      "--name",
      sandbox,
      "--detach",
      "--",
      "sleep",
      "infinity",
    ]);
    expect(create.code, create.stderr).toBe(0);
    const exec = await run(remote, [
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "sh",
      "-c",
      "echo over-tls; exit 7",
    ]);
    expect([exec.code, exec.stdout]).toEqual([7, "over-tls\n"]);
    writeFileSync(join(remote.root, "payload.txt"), "uploaded over TLS\n");
    const upload = await run(remote, ["sandbox", "upload", sandbox, join(remote.root, "payload.txt")]);
    expect(upload.code, upload.stderr).toBe(0);
    const check = await run(remote, ["sandbox", "exec", "-n", sandbox, "--", "cat", "/sandbox/payload.txt"]);
    expect([check.code, check.stdout]).toEqual([0, "uploaded over TLS\n"]);
    // Node's notice about IP server names is not ours to show.
    expect(exec.stderr + upload.stderr).not.toMatch(/DeprecationWarning|DEP0123/);
  });

  it("refuses a client without the CA at the TLS layer, naming the fix", async () => {
    const added = await run(stranger, [
      "gateway",
      "add",
      `https://127.0.0.1:${port}`,
      "--token-file",
      addLine[3]!,
    ]);
    expect(added.code, added.stderr).toBe(0);
    expect(added.stderr).toMatch(/! Gateway is not reachable .*TLS: cannot verify the certificate/);
    const list = await run(stranger, ["sandbox", "list"]);
    expect(list.code).toBe(1);
    expect(list.stderr).toMatch(
      /error: TLS: cannot verify the certificate of gateway 'openshell' at https:\/\/127\.0\.0\.1:\d+: it is signed by a CA this CLI does not trust \((unable to verify the first certificate|self[- ]signed certificate.*)\)\n/,
    );
    expect(list.stderr).toMatch(/hint: Trust the CA that signed it: openshell gateway add .* --ca ca\.crt/);
    expect(list.stderr).not.toMatch(/not authorized/);

    // --gateway-insecure skips verification, and says so on stderr.
    const insecure = await run(stranger, ["--gateway-insecure", "sandbox", "list", "--names"]);
    expect(insecure.code, insecure.stderr).toBe(0);
    expect(insecure.stdout.trim()).toBe(sandbox);
    expect(insecure.stderr).toMatch(
      /warning: --gateway-insecure: not verifying the TLS certificate of gateway 'openshell'/,
    );
  });

  it("expires SSH session tokens after --ssh-session-ttl", async () => {
    const client = connectGateway(ownerTarget(owner, token));
    try {
      const id = await sandboxId(client, sandbox);
      const session = await rpc<{ token: string; expiresAtMs: number }>((cb) =>
        client.createSshSession({ sandboxId: id }, cb),
      );
      expect(session.expiresAtMs - Date.now()).toBeLessThanOrEqual(TTL * 1000);
      const fresh = await forwardTcp(client, id, session.token, "ForwardTcp with a fresh session");
      expect(fresh.banner).toMatch(/^SSH-2\.0-/);
      fresh.close();
      await clockReaches(session.expiresAtMs + 1);
      const stale = await forwardTcp(client, id, session.token, "ForwardTcp with an expired session");
      expect(stale.error?.code).toBe(UNAUTHENTICATED);
      expect(stale.error?.details).toBe("SSH session token expired");
    } finally {
      client.close();
    }
  });

  it("comes back with TLS, the same address and port, the CA and the TTL after a restart", async () => {
    const ca = readFileSync(addLine[2]!, "utf8");
    const stopped = await run(owner, ["gateway", "stop"]);
    expect(stopped.code, stopped.stderr).toBe(0);
    // Auto-start by a sandbox command.
    const list = await run(owner, ["sandbox", "list", "--names"]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stderr).toContain(`Started gateway 'local' at https://127.0.0.1:${port}`);
    expect(readFileSync(addLine[2]!, "utf8")).toBe(ca);
    const log = readFileSync(join(stateDir(owner), "gateway.log"), "utf8");
    const listening = log.split("\n").filter((line) => line.includes("listening on"));
    expect(listening).toHaveLength(2);
    for (const line of listening) {
      expect(line).toContain(`listening on https://0.0.0.0:${port} (TLS, bearer token required`);
      expect(line).toContain(`SSH sessions expire after ${TTL}s`);
    }
    // The remote CLI's registration still holds.
    const again = await run(remote, ["sandbox", "list", "--names"]);
    expect([again.code, again.stdout.trim()]).toEqual([0, sandbox]);
    // And `gateway start` with no flags keeps the settings too.
    const restart = await run(owner, ["gateway", "start"]);
    expect(restart.code, restart.stderr).toBe(0);
    expect(restart.stderr).toContain("is already running at https://");
    expect(restart.stderr).not.toMatch(/other settings/);
  });
});

// -------------------------------------------------------------------------------------

describe("--client-ca requires client certificates (mTLS)", () => {
  const owner = new TestEnv("openshell-mtls-owner-");
  const alice = new TestEnv("openshell-mtls-alice-");
  const nocert = new TestEnv("openshell-mtls-nocert-");
  const mallory = new TestEnv("openshell-mtls-mallory-");
  const certs = join(owner.root, "client-certs");
  let port = 0;
  let caFile = "";

  beforeAll(async () => {
    mkdirSync(certs, { recursive: true });
    const clientsCa = await createCertificate({
      commonName: "test clients CA",
      usage: "ca",
      validityDays: 2,
    });
    const aliceCert = await createCertificate(
      { commonName: "alice", usage: "client", validityDays: 2 },
      clientsCa,
    );
    const otherCa = await createCertificate({ commonName: "another CA", usage: "ca", validityDays: 2 });
    const malloryCert = await createCertificate(
      { commonName: "mallory", usage: "client", validityDays: 2 },
      otherCa,
    );
    writeFileSync(join(certs, "clients-ca.crt"), clientsCa.cert);
    writeFileSync(join(certs, "alice.crt"), aliceCert.cert);
    writeFileSync(join(certs, "alice.key"), aliceCert.key, { mode: 0o600 });
    writeFileSync(join(certs, "mallory.crt"), malloryCert.cert);
    writeFileSync(join(certs, "mallory.key"), malloryCert.key, { mode: 0o600 });

    const started = await run(owner, [
      "gateway",
      "start",
      "--port",
      "0",
      "--tls",
      "--client-ca",
      join(certs, "clients-ca.crt"),
    ]);
    expect(started.code, started.stderr).toBe(0);
    expect(started.stderr).toContain(
      `Client certificates: required, signed by ${join(certs, "clients-ca.crt")}`,
    );
    expect(started.stderr).toMatch(/--client-cert <client\.crt> --client-key <client\.key>/);
    readToken(owner); // checked for in every output at the end
    port = metadataOf(owner).gateway_port;
    caFile = join(stateDir(owner), "tls", "ca.crt");
  });

  afterAll(async () => {
    outputs.push({
      step: "mTLS gateway.log",
      text: readFileSync(join(stateDir(owner), "gateway.log"), "utf8"),
    });
    for (const env of [owner, alice, nocert, mallory]) await env.dispose();
  });

  const add = (env: TestEnv, extra: string[]): Promise<RunResult> =>
    run(env, [
      "gateway",
      "add",
      `https://127.0.0.1:${port}`,
      "--ca",
      caFile,
      "--token-file",
      join(gatewayDir(owner), "token"),
      ...extra,
    ]);

  it("still lets its owner's CLI in", async () => {
    const list = await run(owner, ["sandbox", "list"]);
    expect(list.code, list.stderr).toBe(0);
    expect(statSync(join(stateDir(owner), "tls", "client.key")).mode & 0o777).toBe(0o600);
  });

  it("refuses a client without a certificate, even with the CA and the token", async () => {
    const added = await add(nocert, []);
    expect(added.code, added.stderr).toBe(0);
    const list = await run(nocert, ["sandbox", "list"]);
    expect(list.code).toBe(1);
    expect(list.stderr).toMatch(
      /error: gateway 'openshell' at https:\/\/127\.0\.0\.1:\d+ refused the TLS connection: it requires a client certificate/,
    );
    expect(list.stderr).toMatch(/hint: .*--client-cert FILE --client-key FILE/);
  });

  it("refuses a certificate another CA signed", async () => {
    const added = await add(mallory, [
      "--client-cert",
      join(certs, "mallory.crt"),
      "--client-key",
      join(certs, "mallory.key"),
    ]);
    expect(added.code, added.stderr).toBe(0);
    const list = await run(mallory, ["sandbox", "list"]);
    expect(list.code).toBe(1);
    // Under TLS 1.3 the refusal reaches the client as an alert or as the connection closing.
    expect(list.stderr).toMatch(
      /error: gateway 'openshell' at https:\/\/127\.0\.0\.1:\d+ (refused our client certificate|closed the TLS connection during setup)/,
    );
    expect(list.stderr).toMatch(/hint: .*client certificate/);
  });

  it("serves a client whose certificate the client CA signed", async () => {
    const added = await add(alice, [
      "--client-cert",
      join(certs, "alice.crt"),
      "--client-key",
      join(certs, "alice.key"),
    ]);
    expect(added.code, added.stderr).toBe(0);
    expect(added.stderr).toContain("Auth: mtls + bearer token");
    expect(added.stderr).not.toMatch(/!/);
    const name = uniqueName("mtls");
    const create = await run(alice, [
      "sandbox",
      "create",
      "--name",
      name,
      "--detach",
      "--",
      "sleep",
      "infinity",
    ]);
    expect(create.code, create.stderr).toBe(0);
    const exec = await run(alice, ["sandbox", "exec", "-n", name, "--", "echo", "mutual"]);
    expect([exec.code, exec.stdout]).toEqual([0, "mutual\n"]);
  });
});

// -------------------------------------------------------------------------------------

describe("the token", () => {
  it("never appears in any command's output or error, nor in a gateway's log", () => {
    expect(tokens.length).toBeGreaterThan(0);
    expect(outputs.length).toBeGreaterThan(20);
    for (const token of tokens) {
      expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      for (const { step, text } of outputs) {
        if (text.includes(token)) throw new Error(`the token appears in: ${step}`);
      }
    }
  });
});
