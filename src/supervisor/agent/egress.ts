// The sandbox's end of the egress proxy. Inside the pod's network namespace
// (loopback only) the agent listens on 127.0.0.1:3128 (and [::1]:3128), where
// the proxy variables of every sandboxed process point, and carries each
// accepted connection to the supervisor's proxy over its Unix socket, bound
// read-only into the pod. The proxy decides; this side only forwards.
//
// Before forwarding, it names the process that opened the connection, for the
// policy's `binaries`: the client's source port leads to its socket's inode in
// /proc/net/tcp{,6}, the inode to the processes holding that socket in
// /proc/<pid>/fd, and each of those to its executable (/proc/<pid>/exe) and
// its ancestors' up to the agent. Best effort, and not a security boundary:
// any process of the sandbox can open the proxy's socket itself and say what
// it likes (see supervisor/egress/proxy.ts).

import { readdir, readFile, readlink } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import type { EgressPeer } from "../egress/match.js";
import { encodePreamble, MAX_PREAMBLE_BYTES, PREAMBLE_ACK, splice } from "../egress/protocol.js";

export const EGRESS_PROXY_PORT = 3128;
const PROXY_URL = `http://127.0.0.1:${EGRESS_PROXY_PORT}`;
const NO_PROXY = "127.0.0.1,localhost,::1";

/** The variables that send a sandboxed process's HTTP(S) traffic through the forwarder (upstream's set). */
export function proxyEnvironment(): Record<string, string> {
  return {
    HTTP_PROXY: PROXY_URL,
    HTTPS_PROXY: PROXY_URL,
    ALL_PROXY: PROXY_URL,
    http_proxy: PROXY_URL,
    https_proxy: PROXY_URL,
    all_proxy: PROXY_URL,
    grpc_proxy: PROXY_URL,
    NO_PROXY,
    no_proxy: NO_PROXY,
    // Node 24 and later honour the variables above only when asked.
    NODE_USE_ENV_PROXY: "1",
  };
}

export interface EgressForwarderOptions {
  /** The proxy's Unix socket, as a path inside the pod. */
  proxySocket: string;
  /** Default 3128. */
  port?: number;
  log(message: string): void;
}

export interface EgressForwarder {
  close(): Promise<void>;
}

/** Listens on loopback; resolves once 127.0.0.1 is bound (::1 is added when the pod has IPv6). */
export async function startEgressForwarder(o: EgressForwarderOptions): Promise<EgressForwarder> {
  const port = o.port ?? EGRESS_PROXY_PORT;
  const servers: Server[] = [];
  const open = new Set<Socket>();
  for (const [host, required] of [
    ["127.0.0.1", true],
    ["::1", false],
  ] as const) {
    const server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
      open.add(client);
      client.on("close", () => open.delete(client));
      forward(client, o.proxySocket, port, o.log);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ host, port, exclusive: true }, () => {
          server.off("error", reject);
          resolve();
        });
      });
      servers.push(server);
    } catch (error) {
      if (required) {
        for (const s of servers) s.close();
        throw new Error(`cannot listen on ${host}:${port} for the egress proxy: ${(error as Error).message}`);
      }
    }
  }
  return {
    close: async () => {
      for (const socket of open) socket.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    },
  };
}

function forward(client: Socket, proxySocket: string, listenPort: number, log: (m: string) => void): void {
  client.on("error", () => client.destroy());
  const family = client.remoteFamily === "IPv6" ? 6 : 4;
  void identifyPeers(client.remotePort ?? 0, listenPort, family)
    .catch(() => [] as EgressPeer[])
    .then((peers) => {
      if (client.destroyed) return;
      const upstream = connect({ path: proxySocket, allowHalfOpen: true });
      upstream.on("error", (error) => {
        log(`egress forwarder: ${proxySocket}: ${error.message}`);
        if (!client.destroyed) {
          client.end(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" +
              "the sandbox's egress proxy is not reachable\n",
          );
        }
        upstream.destroy();
      });
      upstream.once("connect", () => upstream.write(encodePreamble({ peers })));
      let acknowledged = false;
      // The proxy hangs up without a word when it refuses the preamble.
      upstream.once("close", () => {
        if (!acknowledged) client.destroy();
      });
      let ack = Buffer.alloc(0);
      const onAck = (chunk: Buffer) => {
        ack = Buffer.concat([ack, chunk]);
        const newline = ack.indexOf(10);
        if (newline < 0) {
          if (ack.length > MAX_PREAMBLE_BYTES) upstream.destroy(new Error("no acknowledgement"));
          return;
        }
        upstream.off("data", onAck);
        acknowledged = true;
        if (ack.subarray(0, newline + 1).toString() !== PREAMBLE_ACK) {
          upstream.destroy(new Error("unexpected acknowledgement"));
          return;
        }
        upstream.pause();
        const rest = ack.subarray(newline + 1);
        if (rest.length > 0) client.write(rest);
        splice(client, upstream);
        client.resume();
      };
      upstream.on("data", onAck);
    });
}

/**
 * The processes (in this pod's PID namespace) holding the client end of the
 * loopback connection from `clientPort` to `listenPort`; empty when it cannot
 * be found (the process already exited, or /proc is not readable).
 */
export async function identifyPeers(
  clientPort: number,
  listenPort: number,
  family: 4 | 6,
): Promise<EgressPeer[]> {
  const table = await readFile(family === 6 ? "/proc/net/tcp6" : "/proc/net/tcp", "utf8");
  const inode = findSocketInode(table, clientPort, listenPort);
  if (inode === undefined) return [];
  const holders = await socketHolders(inode);
  const peers: EgressPeer[] = [];
  for (const pid of holders) {
    const exe = await readlink(`/proc/${pid}/exe`).catch(() => undefined);
    if (exe === undefined) continue;
    peers.push({ exe, ancestors: await ancestorExecutables(pid) });
  }
  return peers;
}

/**
 * The inode of the socket whose local port is `localPort` and remote port
 * `remotePort`, from the text of /proc/net/tcp or /proc/net/tcp6.
 */
export function findSocketInode(table: string, localPort: number, remotePort: number): string | undefined {
  for (const line of table.split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    const local = fields[1];
    const remote = fields[2];
    const inode = fields[9];
    if (local === undefined || remote === undefined || inode === undefined) continue;
    if (portOf(local) === localPort && portOf(remote) === remotePort && inode !== "0") return inode;
  }
  return undefined;
}

function portOf(address: string): number {
  return Number.parseInt(address.slice(address.lastIndexOf(":") + 1), 16);
}

async function socketHolders(inode: string): Promise<number[]> {
  const target = `socket:[${inode}]`;
  const holders: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^[0-9]+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "")) === target) {
        holders.push(pid);
        break;
      }
    }
  }
  return holders;
}

/** The executables of `pid`'s parent, grandparent, ... stopping before the agent (which started them all). */
async function ancestorExecutables(pid: number): Promise<string[]> {
  const ancestors: string[] = [];
  let current = pid;
  for (let depth = 0; depth < 64; depth++) {
    const status = await readFile(`/proc/${current}/status`, "utf8").catch(() => "");
    const parent = Number(/^PPid:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    if (parent <= 1 || parent === process.pid) break;
    const exe = await readlink(`/proc/${parent}/exe`).catch(() => undefined);
    if (exe !== undefined) ancestors.push(exe);
    current = parent;
  }
  return ancestors;
}
