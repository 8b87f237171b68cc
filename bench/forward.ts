// Section 11: port forwarding's throughput. The same small Python server
// (it reads a count, sends that many bytes and closes) runs on a sandbox's
// loopback and on the host's; 100 MB are read from it through the API's
// `sandbox.forward` (in process), through `ssh -L` to the private sshd, and
// straight from the host's copy, interleaved, in the same run.

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { OpenShell } from "../src/api/index.js";
import { progress, type Section } from "./lib/report.js";
import { megabytesPerSecond, percentile, round } from "./lib/stats.js";
import type { Shared } from "./run.js";

const BYTES = 100_000_000;
const ROUNDS = 3;
const RATIO_TARGET = 1.0;

/** Listens on a free loopback port, prints it, and sends each client the count of bytes it asks for. */
const SOURCE = `
import socket, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print("port", s.getsockname()[1], flush=True)
def serve(c):
    line = c.makefile().readline()
    if not line:
        return c.close()
    left = int(line); chunk = b"b" * 262144
    while left > 0:
        n = min(left, len(chunk)); c.sendall(chunk[:n]); left -= n
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

/** Reads BYTES from 127.0.0.1:`port`; resolves with the milliseconds it took. */
function pull(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    let received = 0;
    const socket = connect(port, "127.0.0.1");
    socket.on("data", (d: Buffer) => {
      received += d.length;
    });
    socket.on("end", () => {
      if (received !== BYTES) reject(new Error(`${received} of ${BYTES} bytes arrived on port ${port}`));
      else resolve(Number(process.hrtime.bigint() - started) / 1e6);
    });
    socket.on("error", reject);
    socket.write(`${BYTES}\n`);
  });
}

/** A loopback port nothing listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Waits until something accepts connections on 127.0.0.1:`port` (ssh -L binds after its handshake). */
async function accepting(port: number, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const probe = connect(port, "127.0.0.1");
      probe.once("connect", () => {
        probe.destroy();
        resolve(true);
      });
      probe.once("error", () => resolve(false));
    });
    if (ok) return;
    if (child.exitCode !== null) throw new Error(`ssh -L exited (status ${child.exitCode})`);
    await delay(25);
  }
  throw new Error(`nothing accepted on 127.0.0.1:${port} within 10 s`);
}

export async function forwardThroughput(s: Section, shared: Shared): Promise<void> {
  const { env } = shared;
  const gateway = shared.gateway();
  const token = readFileSync(join(env.configHome, "openshell", "gateways", "local", "token"), "utf8").trim();
  const client = new OpenShell({ endpoint: gateway.endpoint, token });
  const host = spawn("python3", ["-c", SOURCE], { stdio: ["ignore", "pipe", "inherit"] });
  let tunnel: ChildProcess | undefined;
  const rates = { forward: [] as number[], ssh: [] as number[], direct: [] as number[] };
  try {
    const hostPort = await new Promise<number>((resolve, reject) => {
      host.stdout!.once("data", (d: Buffer) => resolve(Number(/port (\d+)/.exec(d.toString())?.[1])));
      host.once("exit", () => reject(new Error("the host's python3 server did not start")));
    });
    const sandbox = await s.attempt("create the sandbox with the server", () =>
      client.create({ name: `bench-forward-${process.pid}`, command: ["python3", "-c", SOURCE] }),
    );
    try {
      let sandboxPort = 0;
      for await (const line of sandbox.logs({ follow: true, sources: ["sandbox"] })) {
        const port = /port (\d+)/.exec(line.message)?.[1];
        if (port) {
          sandboxPort = Number(port);
          break;
        }
      }
      await using forward = await sandbox.forward(sandboxPort);
      let sshPort = 0;
      try {
        const sshd = await shared.sshd();
        sshPort = await freePort();
        tunnel = spawn("ssh", ["-N", "-L", `127.0.0.1:${sshPort}:127.0.0.1:${hostPort}`, ...sshd.sshArgs()], {
          stdio: "ignore",
        });
        await accepting(sshPort, tunnel);
      } catch (error) {
        sshPort = 0;
        s.note(`ssh -L yardstick not measured: ${error instanceof Error ? error.message : String(error)}`);
      }
      for (let i = 0; i < ROUNDS; i++) {
        rates.forward.push(
          megabytesPerSecond(BYTES, await s.attempt("through sandbox.forward", () => pull(forward.port))),
        );
        if (sshPort)
          rates.ssh.push(megabytesPerSecond(BYTES, await s.attempt("through ssh -L", () => pull(sshPort))));
        rates.direct.push(
          megabytesPerSecond(BYTES, await s.attempt("straight to the host's server", () => pull(hostPort))),
        );
        progress(
          `round ${i + 1}: forward ${rates.forward.at(-1)!.toFixed(0)} MB/s` +
            (sshPort ? `, ssh -L ${rates.ssh.at(-1)!.toFixed(0)} MB/s` : "") +
            `, direct ${rates.direct.at(-1)!.toFixed(0)} MB/s`,
        );
      }
    } finally {
      await sandbox.delete().catch((error: Error) => s.note(`cleanup: ${error.message}`));
    }
  } finally {
    tunnel?.kill("SIGTERM");
    host.kill("SIGTERM");
    client.close();
    for (const [key, values] of Object.entries(rates)) s.samples(`${key}_mb_per_s`, values);
    const median = (values: number[]): number => percentile(values, 50);
    const labels = {
      forward: "sandbox.forward, 100 MB from the sandbox's loopback",
      ssh: "ssh -L to the private sshd, the same from the host's loopback",
      direct: "straight to the host's loopback, the same",
    };
    for (const [key, label] of Object.entries(labels) as [keyof typeof rates, string][]) {
      if (rates[key].length === 0) continue;
      const value = median(rates[key]);
      s.figure(
        `${key === "ssh" ? "ssh_l" : key}_mb_per_s`,
        label,
        round(value),
        "MB/s",
        `${value.toFixed(0)} MB/s`,
      );
    }
    if (rates.forward.length > 0 && rates.ssh.length > 0) {
      const ratio = median(rates.forward) / median(rates.ssh);
      s.figure("forward_over_ssh_l", "forward / ssh -L", round(ratio, 2), "ratio", `${ratio.toFixed(2)} ×`, {
        text: `≥ ${RATIO_TARGET.toFixed(1)} ×`,
        met: ratio >= RATIO_TARGET,
      });
    }
  }
}
