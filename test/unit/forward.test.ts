// Port forwarding's pure rules (core/forward.ts) and the host's end of the
// pod's forward socket (transport/pod-forward.ts) against agents that answer
// wrongly: never, too much, with terminal escapes, or by hanging up.

import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loopbackAddress, parseForwardSpec } from "../../src/core/forward.js";
import { decodeForwardRequest, openPodForward, PodForwardRefused } from "../../src/transport/pod-forward.js";

describe("forward specs", () => {
  it.each([
    ["8080", { bind: "127.0.0.1", port: 8080 }],
    ["0.0.0.0:8080", { bind: "0.0.0.0", port: 8080 }],
    ["0:8080", { bind: "0", port: 8080 }],
    ["::1:8080", { bind: "::1", port: 8080 }],
    ["[::1]:8080", { bind: "::1", port: 8080 }],
    ["localhost:65535", { bind: "localhost", port: 65535 }],
  ])("reads %s as %j", (value, spec) => {
    expect(parseForwardSpec("PORT", value)).toEqual(spec);
  });

  it.each([
    ["", /invalid forward spec/],
    ["http", /invalid forward spec/],
    ["0", /port must be between 1 and 65535/],
    ["65536", /port must be between 1 and 65535/],
    ["123456", /invalid forward spec/],
    [":80", /the bind address before ':' is empty/],
    ["a b:80", /is not a host name or IP address/],
  ])("refuses %j", (value, message) => {
    expect(parseForwardSpec("PORT", value)).toMatch(message);
  });

  it("takes port 0 (any free port) only where it is allowed", () => {
    expect(parseForwardSpec("--local", "0", { allowZero: true })).toEqual({ bind: "127.0.0.1", port: 0 });
    expect(parseForwardSpec("--local", "0")).toMatch(/between 1 and 65535/);
  });

  it("reaches the sandbox's loopback only", () => {
    expect(
      ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"].map(loopbackAddress),
    ).toEqual(["127.0.0.1", "127.0.0.1", "127.1.2.3", "::1", "::1", "127.0.0.1"]);
    expect(["10.0.0.1", "0.0.0.0", "example.com", "::", "128.0.0.1"].map(loopbackAddress)).toEqual([
      undefined,
      undefined,
      undefined,
      undefined,
      undefined,
    ]);
  });

  it("the agent reads a request for a loopback port only", () => {
    expect(decodeForwardRequest("openshell-forward/1 127.0.0.1 8080")).toEqual({
      host: "127.0.0.1",
      port: 8080,
    });
    expect(decodeForwardRequest("openshell-forward/1 localhost 1")).toEqual({ host: "127.0.0.1", port: 1 });
    for (const line of [
      "openshell-forward/1 10.0.0.1 80",
      "openshell-forward/1 127.0.0.1 0",
      "openshell-forward/1 127.0.0.1 65536",
      "openshell-forward/1  127.0.0.1 80",
      "openshell-forward/2 127.0.0.1 80",
      "GET / HTTP/1.1",
    ]) {
      expect(decodeForwardRequest(line)).toBeUndefined();
    }
  });
});

describe("the host's end of a pod's forward socket", () => {
  const dirs: string[] = [];
  const servers: Server[] = [];
  afterEach(() => {
    for (const server of servers.splice(0)) server.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  function tempDir(): string {
    const dir = mkdtempSync(join(tmpdir(), "openshell-pod-forward-"));
    dirs.push(dir);
    return dir;
  }

  /** A fake agent on a Unix socket, answering each connection with `answer`. */
  async function agent(answer: (socket: Socket) => void): Promise<string> {
    const path = join(tempDir(), "forward.sock");
    const server = createServer((socket) => {
      socket.on("error", () => {});
      socket.once("data", () => answer(socket));
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(path, resolve));
    return path;
  }

  const target = { host: "127.0.0.1", port: 8080 };

  it("hands over the socket after 'ok', with the bytes that came with it", async () => {
    const path = await agent((socket) => socket.write("ok\nfirst bytes"));
    const socket = await openPodForward(path, target);
    const first = new Promise<string>((resolve) => socket.once("data", (d: Buffer) => resolve(d.toString())));
    socket.resume();
    expect(await first).toBe("first bytes");
    socket.destroy();
  });

  it("rejects with the agent's reason, made printable and cut to 300 characters", async () => {
    const path = await agent((socket) => socket.end(`error nothing \x1b[31mlistens${"x".repeat(900)}\n`));
    const error = await openPodForward(path, target).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PodForwardRefused);
    expect((error as Error).message).not.toContain("\x1b");
    expect((error as Error).message.length).toBeLessThanOrEqual(300);
  });

  it("gives up on an agent that never answers, or answers more than 1 KiB without a line, or hangs up", async () => {
    const silent = await agent(() => {});
    await expect(openPodForward(silent, target, 200)).rejects.toThrow(
      /did not answer the forward within 0.2 s/,
    );
    const endless = await agent((socket) => socket.write("x".repeat(4096)));
    await expect(openPodForward(endless, target)).rejects.toThrow(/the sandbox's answer is too long/);
    const gone = await agent((socket) => socket.end());
    await expect(openPodForward(gone, target)).rejects.toThrow(/closed the forward before answering/);
    const other = await agent((socket) => socket.write("SSH-2.0-OpenSSH\n"));
    await expect(openPodForward(other, target)).rejects.toThrow(/answered the forward with something else/);
  });

  it("names a socket that is missing, or not a socket", async () => {
    const dir = tempDir();
    await expect(openPodForward(join(dir, "none.sock"), target)).rejects.toThrow(
      /the sandbox's forward socket: ENOENT/,
    );
    await expect(openPodForward(dir, target)).rejects.toThrow(/is not a socket/);
  });
});
