// Port forwarding end to end: servers on a sandbox's own loopback
// (test/fixtures/forward-server.py) reached through the real gateway,
// supervisor and agent, from the API (`sandbox.forward`), the CLI (`forward
// start`, `-d`, `list`, `stop`, `sandbox delete`) and OpenShell's own
// ForwardTcp call shape; many connections at once, one kept open throughout,
// websockets (the `ws` package on both ends) held for a minute with a long
// silence in it, half-close both ways, a port with nothing on it, and
// hostile servers.

import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { readdirSync, readFileSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { setTimeout as pause } from "node:timers/promises";
import { Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  type CreateFile,
  OpenShell,
  type OpenShellError,
  type PortForward,
  type Sandbox,
} from "../../src/api/index.js";
import type { TcpForwardFrame } from "../../src/gen/openshell.js";
import { processAlive } from "../../src/host/process.js";
import { gatewayClient, json, ROOT, TestEnv, uniqueName, waitFor, waitForOutput } from "../helpers/cli.js";
import { freePort, httpGet } from "../helpers/net.js";
import { gatewayPid } from "../helpers/processes.js";

const SERVER = join(ROOT, "test", "fixtures", "forward-server.py");
const WEBSOCKET_SERVER = join(ROOT, "test", "fixtures", "websocket-echo.cjs");
const WS_PACKAGE = join(ROOT, "node_modules", "ws");

/** The websocket server and the `ws` package under /opt, where the sandbox's node finds it. */
function websocketFiles(): CreateFile[] {
  const lib = readdirSync(join(WS_PACKAGE, "lib")).map((file) => join("lib", file));
  return [
    { path: "/opt/websocket-echo.cjs", from: WEBSOCKET_SERVER },
    ...["package.json", "index.js", ...lib].map((file) => ({
      path: `/opt/node_modules/ws/${file}`,
      from: join(WS_PACKAGE, file),
    })),
  ];
}

/** Writes `payload`, ends our side, and resolves with all the server sent until its end. */
function exchange(port: number, payload: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    const chunks: Buffer[] = [];
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.on("end", () => {
      socket.end();
      resolve(Buffer.concat(chunks));
    });
    socket.on("error", reject);
    socket.end(payload);
  });
}

/** Whether something listens on 127.0.0.1:`port`. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(true));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(false)));
  });
}

async function serverSandbox(client: OpenShell, name: string): Promise<Sandbox> {
  const sandbox = await client.create({
    name,
    files: [{ path: "/opt/forward-server.py", from: SERVER }, ...websocketFiles()],
    command: ["python3", "/opt/forward-server.py"],
  });
  const started = new AbortController();
  const timer = setTimeout(() => started.abort(), 30_000);
  try {
    for await (const line of sandbox.logs({ follow: true, sources: ["sandbox"], signal: started.signal })) {
      if (line.message.includes("listening")) return sandbox;
    }
  } finally {
    clearTimeout(timer);
  }
  throw new Error(`the servers in ${name} did not say they listen within 30 s`);
}

/** Opens a server on `port` inside the sandbox through its control port. */
async function open(sandbox: Sandbox, kind: "http" | "line" | "websocket", port: number): Promise<void> {
  await using control = await sandbox.forward(7008);
  expect((await exchange(control.port, `${kind} ${port}\n`)).toString()).toBe("ok\n");
}

/**
 * Seconds after opening at which a held websocket sends a message to be
 * echoed: nothing for the first 40 s (a forward that drops a connection idle
 * for 30 s fails here), then one every 5 s until a minute has passed.
 */
const WEBSOCKET_ECHOES = [0, 40, 45, 50, 55, 60];

interface HeldWebSocket {
  openedAt: number;
  /** The echoes of WEBSOCKET_ECHOES once the last has come back, or the first failure. */
  minute: Promise<string[] | Error>;
  /** Sends `text` and resolves with what came back. */
  echo(text: string): Promise<string>;
  /** How the socket ended, if it did. */
  ended(): string | undefined;
  close(): void;
}

/** Opens a websocket to 127.0.0.1:`port` and sends the echoes of WEBSOCKET_ECHOES on it. */
async function holdWebSocket(port: number, signal: AbortSignal): Promise<HeldWebSocket> {
  const socket = new WebSocket(`ws://127.0.0.1:${port}/`);
  let ended: string | undefined;
  socket.on("error", (error) => {
    ended ??= `error: ${error.message}`;
  });
  socket.on("close", (code, reason) => {
    ended ??= `closed with ${code} ${reason.toString()}`;
  });
  await once(socket, "open", { signal: AbortSignal.timeout(10_000) }).catch((error: Error) => {
    throw new Error(`opening a websocket through port ${port}: ${error.message}`);
  });
  const openedAt = Date.now();
  const echo = (text: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the echo of "${text}": none within 10 s`)), 10_000);
      socket.once("message", (data: Buffer) => {
        clearTimeout(timer);
        resolve(data.toString());
      });
      socket.send(text, (error) => {
        if (error) reject(error);
      });
    });
  const minute = (async () => {
    const answers: string[] = [];
    for (const at of WEBSOCKET_ECHOES) {
      // Paces the messages; the wait is for each echo.
      await pause(Math.max(0, openedAt + at * 1000 - Date.now()), undefined, { signal });
      answers.push(await echo(`at ${at} s`));
    }
    return answers;
  })().catch((error: Error) => new Error(`${error.message}; the socket: ${ended ?? "open"}`));
  return { openedAt, minute, echo, ended: () => ended, close: () => socket.terminate() };
}

function forwardTests(viaRelay: boolean): void {
  const env = new TestEnv(viaRelay ? "openshell-fwd-relay-" : "openshell-fwd-");
  let client: OpenShell;
  let sandbox: Sandbox;
  let echo: PortForward;
  const errors: OpenShellError[] = [];
  /** Opened first and used again by the last test: it lives through all the others. */
  let longLived: Socket;
  const longLivedRead = (): Promise<string> =>
    new Promise((resolve) => longLived.once("data", (d: Buffer) => resolve(d.toString())));

  beforeAll(async () => {
    await env.startGateway(viaRelay ? { OPENSHELL_SSH_VIA_RELAY: "1" } : {});
    process.env.XDG_CONFIG_HOME = env.configHome;
    process.env.XDG_STATE_HOME = env.stateHome;
    client = await OpenShell.connect();
    sandbox = await serverSandbox(client, uniqueName(viaRelay ? "fwdr" : "fwd"));
    echo = await sandbox.forward(7000, { onConnectionError: (e) => errors.push(e) });
    longLived = connect({ port: echo.port, host: "127.0.0.1" });
    longLived.write("first\n");
    expect(await longLivedRead()).toBe("first\n");
  }, 120_000);

  const opened: PortForward[] = [];
  /** The local port of a forward to `target`, open until the end of the file's tests. */
  const port = async (target: number): Promise<number> => {
    const forward = await sandbox.forward(target);
    opened.push(forward);
    return forward.port;
  };

  afterAll(async () => {
    longLived?.destroy();
    for (const forward of opened) await forward.close();
    await echo?.close();
    await sandbox?.delete().catch(() => undefined);
    client?.close();
    await env.dispose();
  }, 120_000);

  it("carries 50 connections at once through one forward, each with its own bytes", async () => {
    const payloads = Array.from({ length: 50 }, (_, i) => Buffer.alloc(16_384 + i, i));
    const results = await Promise.all(payloads.map((payload) => exchange(echo.port, payload)));
    expect(results.map((result, i) => result.equals(payloads[i]!))).toEqual(payloads.map(() => true));
    expect(errors).toEqual([]);
  });

  it("moves 24 MB up and 24 MB down through one connection each, every byte in order", async () => {
    const up = Buffer.alloc(24_000_000);
    for (let i = 0; i < up.length; i++) up[i] = (i * 7) % 256;
    const answer = (await exchange(await port(7004), up)).toString();
    expect(answer).toBe(`${up.length} ${createHash("sha256").update(up).digest("hex")}`);
    const down = await exchange(await port(7005), "24000000\n");
    const expected = Buffer.alloc(24_000_000);
    for (let i = 0; i < expected.length; i++) expected[i] = i % 251;
    expect(down.length).toBe(expected.length);
    expect(down.equals(expected)).toBe(true);
  });

  it("echoes 8 MB both ways at once through one connection", async () => {
    const payload = Buffer.alloc(8_000_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 13) % 256;
    expect((await exchange(echo.port, payload)).equals(payload)).toBe(true);
  });

  it("passes the client's end on, and the server's reply after it comes back (half-close, client side)", async () => {
    const payload = Buffer.from("written before our end\n".repeat(1000));
    expect((await exchange(echo.port, payload)).equals(payload)).toBe(true);
  });

  it("passes the server's end on while the client can still send (half-close, server side)", async () => {
    await using greeter = await sandbox.forward(7001);
    const socket = connect({ port: greeter.port, host: "127.0.0.1", allowHalfOpen: true });
    let greeting = "";
    socket.on("data", (d: Buffer) => {
      greeting += d.toString();
    });
    await new Promise<void>((resolve) => socket.once("end", () => resolve()));
    expect(greeting).toBe("hello\n");
    socket.end("sent after the server's end");
    await new Promise<void>((resolve) => socket.once("close", () => resolve()));
    expect((await sandbox.exec("cat /tmp/after-eof")).stdout).toBe("sent after the server's end");
  });

  it("ends a connection to a port with nothing on it with the reason, and serves the port once it listens", async () => {
    const refused: OpenShellError[] = [];
    await using late = await sandbox.forward(7009, { onConnectionError: (e) => refused.push(e) });
    expect((await exchange(late.port, "anyone?")).length).toBe(0);
    expect(refused.map((e) => e.message)).toEqual([
      expect.stringMatching(/nothing listens on 127\.0\.0\.1:7009 in the sandbox \(connection refused\)/),
    ]);
    await open(sandbox, "line", 7009);
    expect((await exchange(late.port, "")).toString()).toBe("late\n");
  });

  it("refuses a target off the sandbox's loopback, and a port out of range, before listening", async () => {
    await expect(sandbox.forward(7000, { targetHost: "10.0.0.1" })).rejects.toMatchObject({
      name: "InvalidArgumentError",
      message: expect.stringMatching(/targetHost 10\.0\.0\.1: only the sandbox's loopback/),
    });
    await expect(sandbox.forward(65536)).rejects.toMatchObject({ name: "InvalidArgumentError" });
  });

  it("close() frees the local port", async () => {
    const forward = await sandbox.forward(7000);
    expect(await listening(forward.port)).toBe(true);
    await forward.close();
    expect(await listening(forward.port)).toBe(false);
  });

  it("kept the first connection open and working through everything else", async () => {
    longLived.write("still here\n");
    expect(await longLivedRead()).toBe("still here\n");
  });
}

describe("forwarding to a sandbox's loopback (a local gateway reaches the pod's socket itself)", () => {
  forwardTests(false);
});

describe("forwarding through the supervisor's relay, as a remote supervisor serves it", () => {
  forwardTests(true);
});

describe("forwards from the CLI, a hostile sandbox, and OpenShell's own call shape", () => {
  const env = new TestEnv("openshell-fwd-cli-");
  let client: OpenShell;
  let web: Sandbox;
  let hostile: Sandbox;
  const children: ChildProcess[] = [];
  /** Opened first and checked by the last test: a minute through the CLI's forward and the API's. */
  const websockets: HeldWebSocket[] = [];
  const stopPacing = new AbortController();
  let websocketForward: PortForward | undefined;

  beforeAll(async () => {
    await env.startGateway();
    process.env.XDG_CONFIG_HOME = env.configHome;
    process.env.XDG_STATE_HOME = env.stateHome;
    client = await OpenShell.connect();
    [web, hostile] = await Promise.all([
      serverSandbox(client, uniqueName("web")),
      serverSandbox(client, uniqueName("bad")),
    ]);
    const port = await freePort();
    await open(web, "websocket", port);
    const child = env.spawn(["forward", "start", `0:${port}`, web.name]);
    children.push(child);
    await waitForOutput(child.stderr!, "Press Ctrl+C", "forward start for the websocket listening");
    websockets.push(await holdWebSocket(port, stopPacing.signal));
    websocketForward = await web.forward(port);
    websockets.push(await holdWebSocket(websocketForward.port, stopPacing.signal));
  }, 180_000);

  afterAll(async () => {
    stopPacing.abort();
    for (const websocket of websockets) websocket.close();
    await websocketForward?.close();
    for (const child of children) child.kill("SIGKILL");
    await env.run(["forward", "list"]);
    client?.close();
    await env.dispose();
  }, 120_000);

  const forwards = async (): Promise<{ sandbox: string; port: number; pid: number }[]> =>
    json(await env.run(["forward", "list", "-o", "json"]));

  it("forward start 0:PORT carries 200 concurrent HTTP requests, each answered with its own body", async () => {
    const port = await freePort();
    await open(web, "http", port);
    const child = env.spawn(["forward", "start", `0:${port}`, web.name]);
    children.push(child);
    const said = await waitForOutput(child.stderr!, "Press Ctrl+C", "forward start listening");
    expect(said).toContain(`Forwarding port ${port} to sandbox ${web.name}`);
    expect(said).toContain(`Access at: http://localhost:${port}/`);
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => httpGet(port, `/request-${i}`)));
    expect(answers).toEqual(Array.from({ length: 200 }, (_, i) => ({ status: 200, body: `/request-${i}` })));
    child.kill("SIGINT");
    const code = await new Promise((resolve) => child.once("exit", resolve));
    expect(code).toBe(0);
    expect(await listening(port)).toBe(false);
  });

  it("a -d forward outlives the CLI and is listed; its stale record goes after a kill -9; stop frees the port", async () => {
    const port = await freePort();
    await open(web, "http", port);
    const started = await env.run(["forward", "start", String(port), web.name, "-d"]);
    expect(started.code, started.stderr).toBe(0);
    expect(started.stderr).toContain(`Forwarding port ${port} to sandbox ${web.name} in the background`);
    expect(started.stderr).toContain(`Stop with: openshell forward stop ${port} ${web.name}`);
    const [record] = await forwards();
    expect(record).toMatchObject({ sandbox: web.name, port, bind: "127.0.0.1", target_port: port });
    expect(processAlive(record!.pid)).toBe(true);
    expect(await httpGet(port, "/background")).toEqual({ status: 200, body: "/background" });

    const again = await env.run(["forward", "start", String(port), web.name, "-d"]);
    expect([again.code, again.stderr]).toEqual([
      1,
      expect.stringContaining(`Port ${port} is already forwarded to sandbox '${web.name}'.`),
    ]);

    process.kill(record!.pid, "SIGKILL");
    await waitFor("the killed forward to be gone", 10_000, () =>
      processAlive(record!.pid) ? undefined : true,
    );
    const listed = await env.run(["forward", "list"]);
    expect(listed.stderr).toContain(
      `Removed the record of a forward that no longer runs (port ${port}, sandbox ${web.name}, pid ${record!.pid})`,
    );
    expect(listed.stderr).toContain("No active forwards.");

    expect((await env.run(["forward", "start", String(port), web.name, "-d"])).code).toBe(0);
    const [restarted] = await forwards();
    const stopped = await env.run(["forward", "stop", String(port)]);
    expect([stopped.code, stopped.stderr]).toEqual([
      0,
      `→ Found forward on sandbox '${web.name}'\n✓ Stopped forward of port ${port} for sandbox ${web.name}\n`,
    ]);
    expect(processAlive(restarted!.pid)).toBe(false);
    expect(await listening(port)).toBe(false);
    const none = await env.run(["forward", "stop", String(port)]);
    expect([none.code, none.stderr]).toEqual([
      1,
      expect.stringContaining(`No active forward found for port ${port}`),
    ]);
  });

  it("deleting a sandbox ends its forwards: through the CLI at once, through the API by the forward itself", async () => {
    const viaCli = await serverSandbox(client, uniqueName("gone"));
    const viaApi = await serverSandbox(client, uniqueName("gone"));
    const [first, second] = [await freePort(), await freePort()];
    for (const [sandbox, port] of [
      [viaCli, first],
      [viaApi, second],
    ] as const) {
      const started = await env.run(["forward", "start", String(port), sandbox.name, "-d"]);
      expect(started.code, started.stderr).toBe(0);
    }
    const pids = Object.fromEntries((await forwards()).map((r) => [r.sandbox, r.pid]));
    const deleted = await env.run(["sandbox", "delete", viaCli.name]);
    expect(deleted.stderr).toContain(`✓ Stopped forward of port ${first} for sandbox ${viaCli.name}`);
    expect(processAlive(pids[viaCli.name]!)).toBe(false);

    await viaApi.delete();
    await waitFor("the forward of the deleted sandbox to end", 15_000, () =>
      processAlive(pids[viaApi.name]!) ? undefined : true,
    );
    expect(await forwards()).toEqual([]);
    expect(await listening(second)).toBe(false);
  });

  it("a server that floods an unread connection, or resets, harms neither the gateway nor another sandbox's forward", async () => {
    const pid = gatewayPid(env);
    const rss = (): number =>
      Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024;
    const before = rss();
    const problems: OpenShellError[] = [];
    await using flood = await hostile.forward(7002, { onConnectionError: (e) => problems.push(e) });
    await using reset = await hostile.forward(7003, { onConnectionError: (e) => problems.push(e) });
    await using echo = await web.forward(7000);
    // Read nothing: the flood can only fill the buffers on its way, not the gateway.
    const unread = connect({ port: flood.port, host: "127.0.0.1" });
    unread.pause();
    // And one read as fast as it comes.
    const drained = connect({ port: flood.port, host: "127.0.0.1" });
    let drainedBytes = 0;
    drained.on("data", (d: Buffer) => {
      drainedBytes += d.length;
    });
    await waitFor("64 MiB of the flood to arrive", 60_000, () =>
      drainedBytes > 64 * 1024 * 1024 ? true : undefined,
    );
    const resets = await Promise.all(
      Array.from({ length: 10 }, () => exchange(reset.port, "x").catch(() => Buffer.alloc(0))),
    );
    expect(resets.every((r) => r.length === 0)).toBe(true);
    const payload = Buffer.alloc(1_000_000, 5);
    expect((await exchange(echo.port, payload)).equals(payload)).toBe(true);
    expect(rss() - before).toBeLessThan(128 * 1024 * 1024);
    unread.destroy();
    drained.destroy();
    const health = await env.run(["status"]);
    expect(health.code, health.stderr).toBe(0);
    expect((await exchange(echo.port, "after\n")).toString()).toBe("after\n");
  });

  it("frees the slot of every connection cut short: after 300 of them (the limit is 256) the next goes through", async () => {
    const cutShort: OpenShellError[] = [];
    await using flood = await web.forward(7002, { onConnectionError: (e) => cutShort.push(e) });
    for (let batch = 0; batch < 6; batch++) {
      await Promise.all(
        Array.from(
          { length: 50 },
          () =>
            new Promise<void>((resolve) => {
              const socket = connect({ port: flood.port, host: "127.0.0.1" });
              socket.once("data", () => {
                socket.destroy();
                resolve();
              });
              socket.on("error", () => resolve());
            }),
        ),
      );
    }
    await using echo = await web.forward(7000);
    expect((await exchange(echo.port, "after 300\n")).toString()).toBe("after 300\n");
    expect(cutShort.filter((e) => /limit/.test(e.message))).toEqual([]);
  });

  it("serves OpenShell's SDK call shape: a token per connection, no half-close frames, the call ended at the server's end", async () => {
    const grpc = gatewayClient(env);
    const session = await new Promise<{ token: string }>((resolve, reject) =>
      grpc.createSshSession({ sandboxId: web.id }, (error, response) =>
        error ? reject(error) : resolve(response),
      ),
    );
    const call = grpc.forwardTcp(new Metadata());
    const frames: TcpForwardFrame[] = [];
    const ended = new Promise<void>((resolve, reject) => {
      call.on("data", (frame: TcpForwardFrame) => frames.push(frame));
      call.on("end", () => resolve());
      call.on("error", reject);
    });
    call.write({
      payload: {
        $case: "init",
        value: {
          sandboxId: web.id,
          serviceId: `service-forward:${web.name}:127.0.0.1:7001`,
          target: { $case: "tcp", value: { host: "127.0.0.1", port: 7001 } },
          authorizationToken: session.token,
        },
      },
    });
    // The greeter ends its side at once: the call ends with it, though ours never did.
    await ended;
    const data = frames.map((f) => (f.payload?.$case === "data" ? Buffer.from(f.payload.value) : undefined));
    expect(data.every((d) => d !== undefined && d.length > 0)).toBe(true);
    expect(Buffer.concat(data as Buffer[]).toString()).toBe("hello\n");
    await new Promise((resolve) => grpc.revokeSshSession({ token: session.token }, resolve));
    grpc.close();
  });

  it("refuses a raw TCP target beyond the sandbox's loopback, or with no port, before reaching it", async () => {
    const grpc = gatewayClient(env);
    const refusal = async (host: string, port: number): Promise<{ code?: number; details?: string }> => {
      const session = await new Promise<{ token: string }>((resolve, reject) =>
        grpc.createSshSession({ sandboxId: web.id }, (error, response) =>
          error ? reject(error) : resolve(response),
        ),
      );
      const call = grpc.forwardTcp(new Metadata());
      const failed = new Promise<{ code?: number; details?: string }>((resolve) => {
        call.on("data", () => {});
        call.on("error", (error: { code?: number; details?: string }) => resolve(error));
        call.on("end", () => resolve({}));
      });
      call.write({
        payload: {
          $case: "init",
          value: {
            sandboxId: web.id,
            serviceId: "",
            target: { $case: "tcp", value: { host, port } },
            authorizationToken: session.token,
          },
        },
      });
      return failed;
    };
    for (const host of ["10.0.0.1", "example.test", "127.999.0.1", "::2"]) {
      expect(await refusal(host, 7001)).toMatchObject({
        code: 3,
        details: "tcp target host must be loopback",
      });
    }
    expect(await refusal("127.0.0.1", 0)).toMatchObject({
      code: 3,
      details: "tcp target port must be between 1 and 65535",
    });
    grpc.close();
  });

  it("kept a websocket open for a minute through forward start 0:PORT and one through the API: silent for 40 s, then an echo every 5 s, never closed", async () => {
    expect(websockets.length).toBe(2);
    for (const websocket of websockets) {
      expect(await websocket.minute).toEqual(WEBSOCKET_ECHOES.map((at) => `at ${at} s`));
      expect(await websocket.echo("after a minute")).toBe("after a minute");
      expect(Date.now() - websocket.openedAt).toBeGreaterThanOrEqual(60_000);
      expect(websocket.ended()).toBeUndefined();
    }
  }, 90_000);
});
