// The egress proxy: the only way out of a sandbox whose policy has network
// rules. It runs in the supervisor, in the host's network namespace, and
// listens on a Unix socket that is bound read-only into the pod; the agent's
// forwarder (agent/egress.ts) accepts the sandbox's TCP connections to
// 127.0.0.1:3128 inside the pod and carries each one here. The pod's own
// network namespace has nothing but loopback, so a connection that does not
// come through here goes nowhere.
//
// It speaks HTTP proxy: `CONNECT host:port` opens a tunnel (HTTPS, or any
// TCP protocol), and absolute-form requests (`GET http://host:port/path`) are
// forwarded one by one, each checked on its own, over a keep-alive client
// connection. Every target is checked against the policy (match.ts) and then
// resolved here, and the proxy dials exactly the addresses it checked, so a
// name cannot be re-resolved to a different address in between. Refusals
// answer 403 with a one-line reason; every decision is logged.
//
// Binaries: each connection starts with the forwarder's word on which
// process opened it (protocol.ts), read from the pod's /proc. That is a
// best-effort identification, not a security boundary: every process in the
// sandbox runs as the same user as the agent, can reach the proxy's socket
// itself, and can claim to be any binary; and the supervisor cannot check the
// claim, because verifying the socket's peer (SO_PEERCRED) is not available to
// node without native code, and even a verified peer would be the forwarder,
// which shares its user with the processes it speaks for. `binaries` keeps
// well-behaved tools in their lanes; hosts, ports and addresses are enforced.

import { lookup } from "node:dns/promises";
import { chmodSync, chownSync, closeSync, constants, mkdirSync, openSync, rmSync } from "node:fs";
import {
  createServer as createHttpServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { connect, createServer, type Socket } from "node:net";
import { basename, dirname } from "node:path";
import type { Duplex } from "node:stream";
import type { SandboxPolicy } from "../../gen/sandbox.js";
import { orElse } from "../../host/fs.js";
import { formatIp, type IpAddress, parseIp } from "./ip.js";
import {
  authorizeAddresses,
  type EgressPeer,
  EgressPolicy,
  type EgressTarget,
  formatHostPort,
  type Grant,
  normalizeTargetHost,
} from "./match.js";
import { decodePreamble, MAX_PREAMBLE_BYTES, PREAMBLE_ACK, splice } from "./protocol.js";

export type EgressLogLevel = "INFO" | "WARN";

export interface EgressProxyOptions {
  /** Created with its directory (mode 0711), replacing a stale socket. */
  socketPath: string;
  policy: EgressPolicy;
  /** The pod's host uid/gid, given the socket when the supervisor is root; null when the pod runs as us. */
  owner: { uid: number; gid: number } | null;
  log(level: EgressLogLevel, message: string): void;
  /** Name resolution; the system resolver by default. */
  resolve?: (host: string) => Promise<IpAddress[]>;
}

export interface EgressProxy {
  socketPath: string;
  /**
   * Replaces the rules (a live policy update): each connection and each
   * proxied request opened from now on is checked against them; tunnels
   * already open keep going.
   */
  setPolicy(policy: EgressPolicy): void;
  close(): Promise<void>;
}

const PREAMBLE_TIMEOUT_MS = 10_000;
const DIAL_TIMEOUT_MS = 15_000;
/** Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own, never forwarded either way. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

const NOT_A_PROXY_REQUEST = "this is an HTTP proxy: send absolute-form http:// requests or CONNECT host:port";

type Opened = { ok: true; upstream: Socket } | { ok: false; status: 400 | 403 | 502; text: string };

type Decision =
  | { allowed: true; addresses: IpAddress[]; grant: Grant }
  | { allowed: false; status: 400 | 403 | 502; reason: string };

export async function startEgressProxy(o: EgressProxyOptions): Promise<EgressProxy> {
  const resolve = o.resolve ?? resolveSystem;
  let policy = o.policy;
  const peersOf = new WeakMap<Duplex, EgressPeer[]>();
  const open = new Set<Socket>();

  const describePeers = (socket: Duplex): string => {
    const peers = peersOf.get(socket) ?? [];
    return peers.length === 0 ? "an unidentified process" : peers.map((p) => p.exe).join(", ");
  };

  const decide = async (target: EgressTarget, socket: Duplex): Promise<Decision> => {
    const match = policy.match(target, peersOf.get(socket));
    if (!match.allowed) return { allowed: false, status: 403, reason: match.reason };
    const literal = parseIp(target.host);
    let addresses: IpAddress[];
    if (literal !== undefined) addresses = [literal];
    else {
      try {
        addresses = await resolve(target.host);
      } catch (error) {
        return { allowed: false, status: 502, reason: `cannot resolve ${target.host}: ${errorText(error)}` };
      }
    }
    const decision = authorizeAddresses(match.grants, target, addresses);
    if (!decision.allowed) return { allowed: false, status: 403, reason: decision.reason };
    return { allowed: true, addresses, grant: decision.grant };
  };

  /** Decides, logs, and dials: the upstream socket, or the refusal to send back. */
  const openUpstream = async (what: string, target: EgressTarget, socket: Duplex): Promise<Opened> => {
    const where = formatHostPort(target.host, target.port);
    const who = describePeers(socket);
    const decision = await decide(target, socket);
    if (!decision.allowed) {
      const verdict = decision.status === 403 ? "denied" : "failed";
      o.log("WARN", `egress ${verdict}: ${what} ${where} from ${who}: ${decision.reason}`);
      return {
        ok: false,
        status: decision.status,
        text: `egress to ${where} ${verdict}: ${decision.reason}`,
      };
    }
    const via = decision.addresses.map(formatIp).join(", ");
    try {
      const upstream = await dial(decision.addresses, target.port);
      o.log(
        "INFO",
        `egress allowed: ${what} ${where} (${via}) from ${who} by network policy '${decision.grant.policy}'`,
      );
      return { ok: true, upstream };
    } catch (error) {
      const reason = `cannot connect to ${via}: ${errorText(error)}`;
      o.log("WARN", `egress failed: ${what} ${where} from ${who}: ${reason}`);
      return { ok: false, status: 502, text: `egress to ${where} failed: ${reason}` };
    }
  };

  const onConnect = (req: IncomingMessage, client: Duplex, head: Buffer): void => {
    client.on("error", () => client.destroy());
    const target = parseAuthority(req.url ?? "");
    if (target === undefined) {
      refuseRaw(client, 400, `CONNECT needs host:port, got '${oneLine(req.url ?? "")}'`);
      return;
    }
    void openUpstream("CONNECT", target, client).then((opened) => {
      if (!opened.ok) return refuseRaw(client, opened.status, opened.text);
      if (client.destroyed) return opened.upstream.destroy();
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length > 0) opened.upstream.write(head);
      splice(client, opened.upstream);
    });
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const url = parseAbsoluteHttp(req.url ?? "");
    if (url === undefined) {
      refuse(res, 400, NOT_A_PROXY_REQUEST);
      return;
    }
    const { target, path, authority } = url;
    void openUpstream(req.method ?? "GET", target, req.socket).then((opened) => {
      if (!opened.ok) return refuse(res, opened.status, opened.text);
      if (res.destroyed) return opened.upstream.destroy();
      // One request per upstream connection: the client's keep-alive is the proxy's, not the origin's.
      const outgoing = httpRequest({
        method: req.method,
        path,
        headers: [...forwardedHeaders(req.rawHeaders), "Host", authority, "Connection", "close"],
        setHost: false,
        // With no agent, node sends this one request on this socket (an agent would dial its own).
        createConnection: () => opened.upstream,
      });
      outgoing.on("response", (incoming) => {
        res.writeHead(
          incoming.statusCode ?? 502,
          incoming.statusMessage,
          forwardedHeaders(incoming.rawHeaders),
        );
        incoming.pipe(res);
        incoming.on("error", () => res.destroy());
      });
      outgoing.on("error", (error) => {
        const where = formatHostPort(target.host, target.port);
        if (!res.headersSent) refuse(res, 502, `egress to ${where} failed: ${errorText(error)}`);
        else res.destroy();
      });
      res.on("close", () => {
        if (!res.writableFinished) outgoing.destroy();
      });
      req.pipe(outgoing);
    });
  };

  const onUpgrade = (req: IncomingMessage, client: Duplex, head: Buffer): void => {
    client.on("error", () => client.destroy());
    const url = parseAbsoluteHttp(req.url ?? "");
    if (url === undefined) {
      refuseRaw(client, 400, NOT_A_PROXY_REQUEST);
      return;
    }
    const { target, path, authority } = url;
    void openUpstream(`${req.method ?? "GET"} (upgrade)`, target, client).then((opened) => {
      if (!opened.ok) return refuseRaw(client, opened.status, opened.text);
      // The upgrade itself needs Connection and Upgrade; only the proxy's own headers go.
      const lines = [`${req.method} ${path} HTTP/1.1`, `Host: ${authority}`];
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i]!;
        const lower = name.toLowerCase();
        if (lower === "host" || lower.startsWith("proxy-")) continue;
        lines.push(`${name}: ${req.rawHeaders[i + 1]}`);
      }
      opened.upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (head.length > 0) opened.upstream.write(head);
      splice(client, opened.upstream);
    });
  };

  const http: Server = createHttpServer({ requestTimeout: 0 });
  http.on("request", onRequest);
  http.on("connect", onConnect);
  http.on("upgrade", onUpgrade);
  http.on("clientError", (error, socket) => {
    if (socket.writable && !(error as NodeJS.ErrnoException).code?.startsWith("ECONN")) {
      refuseRaw(socket, 400, `malformed proxy request: ${errorText(error)}`);
    } else socket.destroy();
  });

  const unix = createServer({ allowHalfOpen: true }, (socket) => {
    open.add(socket);
    socket.on("close", () => open.delete(socket));
    socket.on("error", () => socket.destroy());
    readPreamble(socket)
      .then((peers) => {
        peersOf.set(socket, peers);
        http.emit("connection", socket);
        socket.write(PREAMBLE_ACK);
      })
      .catch((error: Error) => {
        o.log("WARN", `egress denied: a connection without a valid preamble (${error.message})`);
        socket.destroy();
      });
  });

  // The directory is ours alone until the socket has its owner and mode.
  const dir = dirname(o.socketPath);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  rmSync(o.socketPath, { force: true });
  // A sandbox's directory can be deeper than a Unix socket path may be long (108 bytes):
  // bind through a descriptor of the directory instead.
  const dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await new Promise<void>((resolveListen, reject) => {
      unix.once("error", reject);
      unix.listen(`/proc/self/fd/${dirFd}/${basename(o.socketPath)}`, () => {
        unix.off("error", reject);
        resolveListen();
      });
    });
  } catch (error) {
    closeSync(dirFd);
    throw error;
  }
  chmodSync(o.socketPath, 0o600);
  if (o.owner !== null) chownSync(o.socketPath, o.owner.uid, o.owner.gid);
  chmodSync(dir, 0o711);
  for (const warning of policy.warnings) o.log("WARN", `egress: ${warning}`);

  let closing: Promise<void> | undefined;
  return {
    socketPath: o.socketPath,
    setPolicy: (next) => {
      policy = next;
      for (const warning of next.warnings) o.log("WARN", `egress: ${warning}`);
    },
    close: () => {
      closing ??= (async () => {
        const closed = new Promise<void>((done) => unix.close(() => done()));
        for (const socket of open) socket.destroy();
        await closed;
        http.close();
        rmSync(o.socketPath, { force: true });
        closeSync(dirFd);
      })();
      return closing;
    },
  };
}

/** Builds the proxy's policy; `undefined` when there are no network rules, and so no proxy and no egress. */
export function egressPolicyFor(policy: SandboxPolicy | undefined): EgressPolicy | undefined {
  const compiled = EgressPolicy.compile(policy?.networkPolicies ?? {});
  return compiled.empty ? undefined : compiled;
}

function readPreamble(socket: Socket): Promise<EgressPeer[]> {
  return new Promise((resolvePeers, reject) => {
    let buffered = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error("no preamble in time")), PREAMBLE_TIMEOUT_MS);
    const finish = (error: Error | undefined, peers?: EgressPeer[]) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.pause();
      if (error) reject(error);
      else resolvePeers(peers!);
    };
    const onEnd = () => finish(new Error("closed before the preamble"));
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const newline = buffered.indexOf(10);
      if (newline < 0) {
        if (buffered.length > MAX_PREAMBLE_BYTES) finish(new Error("preamble too long"));
        return;
      }
      // The forwarder waits for our acknowledgement before sending more; anything else is not it.
      if (newline !== buffered.length - 1) return finish(new Error("data before the acknowledgement"));
      const preamble = decodePreamble(buffered.subarray(0, newline).toString("utf8"));
      if (preamble === undefined) return finish(new Error("malformed preamble"));
      finish(undefined, preamble.peers);
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
  });
}

async function resolveSystem(host: string): Promise<IpAddress[]> {
  const answers = await lookup(host, { all: true, verbatim: true });
  return answers.map((a) => parseIp(a.address)).filter((ip): ip is IpAddress => ip !== undefined);
}

/** Connects to the first address that answers, in the resolver's order. */
async function dial(addresses: readonly IpAddress[], port: number): Promise<Socket> {
  let lastError: Error = new Error("no address");
  for (const address of addresses) {
    try {
      return await new Promise<Socket>((resolveSocket, reject) => {
        const socket = connect({ host: formatIp(address), port, noDelay: true });
        socket.setTimeout(DIAL_TIMEOUT_MS, () => socket.destroy(new Error("connection timed out")));
        socket.once("connect", () => {
          socket.setTimeout(0);
          socket.removeListener("error", reject);
          resolveSocket(socket);
        });
        socket.once("error", reject);
      });
    } catch (error) {
      lastError = error as Error;
    }
  }
  throw lastError;
}

/** `host:port` (CONNECT's authority form), IPv6 in brackets; the port is required. */
export function parseAuthority(authority: string): EgressTarget | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]/@\s]+)):([0-9]{1,5})$/.exec(authority);
  if (m === null) return undefined;
  const port = Number(m[3]);
  const host = normalizeTargetHost(m[1] ?? m[2]!);
  if (host === undefined || port < 1 || port > 65_535) return undefined;
  return { host, port };
}

/** An absolute-form `http://` request target: where to connect, the origin-form path, and the Host header. */
export function parseAbsoluteHttp(
  target: string,
): { target: EgressTarget; path: string; authority: string } | undefined {
  if (!/^http:\/\//i.test(target)) return undefined;
  const url = orElse(undefined, () => new URL(target));
  if (url === undefined) return undefined;
  if (url.username !== "" || url.password !== "") return undefined;
  const host = normalizeTargetHost(url.hostname);
  if (host === undefined) return undefined;
  const port = url.port === "" ? 80 : Number(url.port);
  return { target: { host, port }, path: `${url.pathname}${url.search}`, authority: url.host };
}

/** The headers in `raw` (name, value, name, value, ...) minus hop-by-hop ones and those `Connection` names. */
function forwardedHeaders(raw: readonly string[]): string[] {
  const named = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === "connection") {
      for (const token of raw[i + 1]!.split(",")) named.add(token.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named.has(lower) || lower === "host") continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

const STATUS_TEXT = { 400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway" } as const;

function refuse(res: ServerResponse, status: 400 | 403 | 502, reason: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = `${oneLine(reason)}\n`;
  res.writeHead(status, {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
}

/** A complete response on a socket the HTTP server no longer owns (CONNECT, upgrade, parse errors). */
function refuseRaw(socket: Duplex, status: 400 | 403 | 502, reason: string): void {
  const body = `${oneLine(reason)}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, " ").slice(0, 1000);
}

function errorText(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  return e.code ?? e.message ?? String(error);
}
