// A host for egress tests: a real HTTP server in a network namespace of its
// own behind a veth pair, so a sandbox's traffic to it leaves the machine's
// network stack as it would for a remote host, and nothing else on the
// machine answers at its address. Needs root and iproute2.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { waitForOutput } from "./cli.js";

/**
 * A policy's start for a sandbox that talks to the host: read-only system
 * paths so curl, bash and python run inside; no network rules until added.
 */
export const FILESYSTEM = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /sbin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/tmp, /dev/null]
landlock:
  compatibility: best_effort
`;

/** Why this machine cannot make one (not root, no `ip netns`); undefined when it can. */
export function netnsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return "creating a network namespace needs root";
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore" });
  } catch {
    return "`ip netns` is not available";
  }
  return undefined;
}

export interface TestHost {
  /** The server's address, reachable from the host's namespace. */
  address: string;
  /** The host's own address on the veth pair. */
  hostSide: string;
  /** Ports chosen by the kernel, each answering `hello PORT PATH`. */
  ports: number[];
  /** Kills the server and removes the namespace and the link. */
  remove(): void;
}

/**
 * Starts the server with `count` listening ports. `slot` (0-9) keeps several
 * hosts of one test process apart; test processes get a /24 each.
 */
export async function startTestHost(count: number, slot = 0): Promise<TestHost> {
  const tag = `${process.pid % 10000}${slot}`;
  const subnet = `10.${231 + slot}.${(process.pid % 250) + 1}`;
  const address = `${subnet}.2`;
  const netns = `openshell-egress-${tag}`;
  const hostIf = `osh${tag}h`;
  const nsIf = `osh${tag}n`;
  const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
  let server: ChildProcess | undefined;
  const remove = (): void => {
    server?.kill("SIGKILL");
    for (const args of [
      ["netns", "del", netns],
      ["link", "del", hostIf],
    ]) {
      try {
        ip(...args);
      } catch {}
    }
  };
  try {
    ip("netns", "add", netns);
    ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf);
    ip("link", "set", nsIf, "netns", netns);
    ip("addr", "add", `${subnet}.1/24`, "dev", hostIf);
    ip("link", "set", hostIf, "up");
    ip("netns", "exec", netns, "ip", "addr", "add", `${address}/24`, "dev", nsIf);
    ip("netns", "exec", netns, "ip", "link", "set", nsIf, "up");
    ip("netns", "exec", netns, "ip", "link", "set", "lo", "up");
    // Ports chosen by the kernel, printed once all listen. `/hold` answers
    // its head at once and its body's end only on `/release` (a long connection).
    const program = `
      const http = require("node:http");
      const ports = [];
      const held = [];
      for (let i = 0; i < ${count}; i++) {
        const s = http.createServer((req, res) => {
          if (req.url === "/hold") { res.write("held " + s.address().port + "\\n"); held.push(res); return; }
          if (req.url === "/release") { for (const r of held.splice(0)) r.end("released\\n"); }
          res.end("hello " + s.address().port + " " + req.url + "\\n");
        });
        s.listen(0, ${JSON.stringify(address)}, () => {
          ports.push(s.address().port);
          if (ports.length === ${count}) console.log("ports " + ports.join(" "));
        });
      }`;
    server = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", program], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const line = await waitForOutput(server.stdout!, /ports[ \d]+\n/, "the test server in the namespace");
    const ports = /ports ([ \d]+)\n/.exec(line)![1]!.trim().split(" ").map(Number);
    return { address, hostSide: `${subnet}.1`, ports, remove };
  } catch (error) {
    remove();
    throw error;
  }
}
