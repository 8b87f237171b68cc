// The egress proxy on its real Unix socket, spoken to as the agent's
// forwarder does: the preamble, then HTTP proxy requests. Name resolution is
// handed a fixed answer so the tests need no DNS; the allowed upstream is a
// local HTTP server on one of this machine's non-loopback addresses.

import { mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { connect, type Socket } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkEndpoint } from "../../src/gen/sandbox.js";
import { parseIp } from "../../src/supervisor/egress/ip.js";
import { EgressPolicy } from "../../src/supervisor/egress/match.js";
import { encodePreamble } from "../../src/supervisor/egress/protocol.js";
import { type EgressProxy, startEgressProxy } from "../../src/supervisor/egress/proxy.js";

/** A non-loopback IPv4 address of this machine, where a local server is reachable without loopback. */
const LOCAL_ADDRESS = Object.values(networkInterfaces())
  .flat()
  .find((nic) => nic !== undefined && nic.family === "IPv4" && !nic.internal)?.address;

/** Reads from `socket` until `pattern` has been seen, failing with the step named. */
function readUntil(socket: Socket, pattern: RegExp, step: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => {
      socket.off("data", onData);
      reject(
        new Error(`${step}: did not see ${pattern} within ${timeoutMs} ms; saw ${JSON.stringify(seen)}`),
      );
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      seen += chunk.toString("utf8");
      if (pattern.test(seen)) {
        clearTimeout(timer);
        socket.off("data", onData);
        resolve(seen);
      }
    };
    socket.on("data", onData);
  });
}

/** A connection to the proxy at `socketPath` past the preamble, as the forwarder hands it over. */
async function proxyClient(socketPath: string): Promise<Socket> {
  const socket = connect(socketPath);
  socket.write(encodePreamble({ peers: [{ exe: "/usr/bin/curl", ancestors: [] }] }));
  await readUntil(socket, /^ok\n$/, "the proxy's acknowledgement");
  return socket;
}

function closed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once("close", () => resolve());
  });
}

describe("the egress proxy", () => {
  const dir = mkdtempSync(join(tmpdir(), "openshell-egress-"));
  const socketPath = join(dir, "egress", "proxy.sock");
  const logs: string[] = [];
  let proxy: EgressProxy;
  let upstream: Server;
  let upstreamPort = 0;

  beforeAll(async () => {
    upstream = createServer((req, res) =>
      res.end(`hello ${req.method} ${req.url} host=${req.headers.host}\n`),
    );
    // An upgrade answered with 101, after which the origin echoes what it gets.
    upstream.on("upgrade", (_req, socket) => {
      socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n");
      socket.pipe(socket);
    });
    await new Promise<void>((resolve) => upstream.listen(0, "0.0.0.0", resolve));
    upstreamPort = (upstream.address() as { port: number }).port;
    const policy = EgressPolicy.compile({
      app: {
        name: "app",
        endpoints: [
          NetworkEndpoint.fromPartial({ host: "app.test", ports: [upstreamPort] }),
          NetworkEndpoint.fromPartial({ host: "loop.test", ports: [upstreamPort] }),
        ],
        binaries: [],
      },
    });
    const answers: Record<string, string> = {
      "app.test": LOCAL_ADDRESS ?? "192.0.2.1",
      "loop.test": "127.0.0.1",
    };
    proxy = await startEgressProxy({
      socketPath,
      policy,
      owner: null,
      log: (level, message) => logs.push(`${level} ${message}`),
      resolve: async (host) => {
        const answer = answers[host];
        if (answer === undefined) throw Object.assign(new Error("not found"), { code: "ENOTFOUND" });
        return [parseIp(answer)!];
      },
    });
  });

  afterAll(async () => {
    await proxy?.close();
    upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (): Promise<Socket> => proxyClient(socketPath);

  it("keeps its socket private to the pod's user and its directory traversable only", () => {
    expect(statSync(socketPath).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, "egress")).mode & 0o777).toBe(0o711);
  });

  it("refuses a CONNECT to an unlisted host with 403 and a one-line reason, and logs it", async () => {
    const socket = await client();
    socket.write("CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\n\r\n");
    const response = await readUntil(socket, /\r\n\r\n.*\n/s, "the 403 response");
    expect(response).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(response.split("\r\n\r\n")[1]).toBe(
      "egress to elsewhere.test:443 denied: not allowed by any network policy\n",
    );
    await closed(socket);
    expect(logs).toContain(
      "WARN egress denied: CONNECT elsewhere.test:443 from /usr/bin/curl: not allowed by any network policy",
    );
  });

  it("refuses a listed host that resolves to loopback", async () => {
    const socket = await client();
    socket.write(`CONNECT loop.test:${upstreamPort} HTTP/1.1\r\n\r\n`);
    const response = await readUntil(socket, /\r\n\r\n.*\n/s, "the 403 response");
    expect(response).toContain("403 Forbidden");
    expect(response).toContain(
      "loop.test resolves to 127.0.0.1; loopback, link-local and unspecified addresses",
    );
    socket.destroy();
  });

  it("answers a denied plain request with 403 and keeps the client connection for the next one", async () => {
    const socket = await client();
    socket.write("GET http://elsewhere.test/x HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n");
    await readUntil(socket, /403 Forbidden[\s\S]*not allowed by any network policy\n/, "the first 403");
    socket.write("GET http://other.test:8080/ HTTP/1.1\r\nHost: other.test\r\n\r\n");
    await readUntil(socket, /egress to other\.test:8080 denied/, "the second 403 on the same connection");
    socket.destroy();
  });

  it("refuses origin-form requests: it is a proxy, not a server", async () => {
    const socket = await client();
    socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await readUntil(socket, /400 Bad Request[\s\S]*absolute-form/, "the 400");
    socket.destroy();
  });

  it("drops a connection that does not start with the preamble", async () => {
    const socket = connect(socketPath);
    socket.write("GET http://app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n");
    socket.resume();
    await closed(socket);
    expect(logs.some((line) => line.includes("without a valid preamble"))).toBe(true);
  });

  it.skipIf(LOCAL_ADDRESS === undefined)(
    "forwards allowed plain requests over one keep-alive connection",
    async () => {
      const socket = await client();
      const origin = `app.test:${upstreamPort}`;
      socket.write(
        `GET http://${origin}/one HTTP/1.1\r\nHost: ${origin}\r\nProxy-Connection: keep-alive\r\n\r\n`,
      );
      await readUntil(socket, new RegExp(`hello GET /one host=${origin}\\n`), "the first response");
      socket.write(
        `POST http://${origin}/two?q=1 HTTP/1.1\r\nHost: ${origin}\r\nContent-Length: 2\r\n\r\nhi`,
      );
      await readUntil(socket, /hello POST \/two\?q=1/, "the second response on the same connection");
      socket.destroy();
      expect(logs).toContain(
        `INFO egress allowed: GET ${origin} (${LOCAL_ADDRESS}) from /usr/bin/curl by network policy 'app'`,
      );
    },
  );

  it.skipIf(LOCAL_ADDRESS === undefined)("tunnels an allowed CONNECT", async () => {
    const socket = await client();
    socket.write(`CONNECT app.test:${upstreamPort} HTTP/1.1\r\n\r\n`);
    await readUntil(socket, /^HTTP\/1\.1 200 Connection Established\r\n\r\n$/, "the tunnel");
    socket.write("GET /through HTTP/1.1\r\nHost: tunnelled\r\nConnection: close\r\n\r\n");
    await readUntil(socket, /hello GET \/through host=tunnelled\n/, "the response through the tunnel");
    await closed(socket);
  });

  it.skipIf(LOCAL_ADDRESS === undefined)(
    "carries an allowed upgrade, then the upgraded protocol",
    async () => {
      const socket = await client();
      const origin = `app.test:${upstreamPort}`;
      socket.write(
        `GET http://${origin}/ws HTTP/1.1\r\nHost: ${origin}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n`,
      );
      await readUntil(socket, /^HTTP\/1\.1 101 Switching Protocols\r\n[\s\S]*\r\n\r\n$/, "the 101");
      socket.write("ping\n");
      await readUntil(socket, /^ping\n$/, "the echo after the upgrade");
      socket.destroy();
    },
  );
});

describe.skipIf(LOCAL_ADDRESS === undefined)("the egress proxy given new rules while it runs", () => {
  const dir = mkdtempSync(join(tmpdir(), "openshell-egress-live-"));
  const socketPath = join(dir, "egress", "proxy.sock");
  let proxy: EgressProxy;
  let upstream: Server;
  let port = 0;
  const only = (host: string): EgressPolicy =>
    EgressPolicy.compile({
      lab: { name: "lab", endpoints: [NetworkEndpoint.fromPartial({ host, ports: [port] })], binaries: [] },
    });

  beforeAll(async () => {
    upstream = createServer((req, res) => res.end(`hello ${req.url} host=${req.headers.host}\n`));
    await new Promise<void>((resolve) => upstream.listen(0, "0.0.0.0", resolve));
    port = (upstream.address() as { port: number }).port;
    proxy = await startEgressProxy({
      socketPath,
      policy: only("app.test"),
      owner: null,
      log: () => {},
      // Both names are this machine: only the rules tell them apart.
      resolve: async () => [parseIp(LOCAL_ADDRESS!)!],
    });
  });

  afterAll(async () => {
    await proxy?.close();
    upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (): Promise<Socket> => proxyClient(socketPath);

  /** A CONNECT's status line, and the socket (a tunnel when 200). */
  async function tunnel(host: string): Promise<{ status: string; socket: Socket }> {
    const socket = await client();
    socket.write(`CONNECT ${host}:${port} HTTP/1.1\r\n\r\n`);
    const head = await readUntil(socket, /\r\n\r\n/, `the CONNECT ${host} answer`);
    return { status: head.split("\r\n")[0]!, socket };
  }

  it("lets example.test through only after the update; a tunnel opened before keeps carrying requests", async () => {
    const before = await tunnel("example.test");
    expect(before.status).toBe("HTTP/1.1 403 Forbidden");
    before.socket.destroy();

    const open = await tunnel("app.test");
    expect(open.status).toBe("HTTP/1.1 200 Connection Established");
    open.socket.write(`GET /one HTTP/1.1\r\nHost: app.test:${port}\r\n\r\n`);
    await readUntil(open.socket, /hello \/one/, "the first request through the open tunnel");

    // A client connection of plain proxy requests, also open across the update.
    const plain = await client();
    plain.write(`GET http://app.test:${port}/a HTTP/1.1\r\nHost: app.test:${port}\r\n\r\n`);
    await readUntil(plain, /hello \/a/, "the first plain request");

    proxy.setPolicy(only("example.test"));

    const after = await tunnel("example.test");
    expect(after.status).toBe("HTTP/1.1 200 Connection Established");
    after.socket.write(`GET /new HTTP/1.1\r\nHost: example.test:${port}\r\n\r\n`);
    await readUntil(after.socket, /hello \/new host=example\.test/, "a request through a new tunnel");
    after.socket.destroy();
    const refused = await tunnel("app.test");
    expect(refused.status).toBe("HTTP/1.1 403 Forbidden");
    refused.socket.destroy();

    // The tunnel opened before: its bytes still flow.
    open.socket.write(`GET /two HTTP/1.1\r\nHost: app.test:${port}\r\n\r\n`);
    await readUntil(open.socket, /hello \/two/, "the second request through the open tunnel");
    open.socket.destroy();
    // Each plain request is checked as it comes: the next one on the same connection is refused.
    plain.write(`GET http://app.test:${port}/b HTTP/1.1\r\nHost: app.test:${port}\r\n\r\n`);
    await readUntil(plain, /403 Forbidden[\s\S]*denied: not allowed by any network policy/, "the refusal");
    plain.destroy();
  });
});
