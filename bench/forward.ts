// Section 11: port forwarding against `ssh -L`. The same small Python server
// runs on a sandbox's loopback and on the host's: it reads a line, and either
// sends the count of bytes it names and closes, or, for an HTTP request,
// answers it with a short body of its own. Through the API's `sandbox.forward`
// (in process), through `ssh -L` to the private sshd, and straight to the
// host's copy, interleaved, in the same run:
// - throughput: 100 MB through one connection, five rounds after one
//   untimed round per path. The first 100 MB through a gateway's forward are
//   also shown: the gateway's V8 is still compiling the forwarding code then
//   (a CPU profile of that round is mostly TurboFan), which a long-running
//   gateway did once;
// - latency: 200 HTTP requests at once, each on its own connection (so each
//   is a ForwardTcp call of its own), after 20 untimed ones; p50 and p95.

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { OpenShell } from "../src/api/index.js";
import { freePort, httpGet } from "../test/helpers/net.js";
import { waitForTcp } from "./lib/proc.js";
import { progress, type Section } from "./lib/report.js";
import { megabytesPerSecond, percentile, round } from "./lib/stats.js";
import type { Shared } from "./run.js";

const BYTES = 100_000_000;
const ROUNDS = 5;
const REQUESTS = 200;
const WARM_REQUESTS = 20;
const RATIO_TARGET = 1.0;

/** Listens on a free loopback port, prints it, and answers each client's line (a count, or an HTTP request). */
const SOURCE = `
import socket, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(256)
print("port", s.getsockname()[1], flush=True)
def serve(c):
    f = c.makefile("rb")
    line = f.readline()
    if line.startswith(b"GET "):
        while f.readline() not in (b"\\r\\n", b""):
            pass
        body = b"hello " + line.split()[1]
        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
        return c.close()
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

/** `count` HTTP requests to 127.0.0.1:`port` at once, each on its own connection; the milliseconds each took. */
async function requests(port: number, count: number): Promise<number[]> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const started = process.hrtime.bigint();
      const { status, body } = await httpGet(port, `/r${i}`, 60_000);
      if (status !== 200 || body !== `hello /r${i}`) {
        throw new Error(`request ${i} on port ${port} got ${status} ${JSON.stringify(body.slice(0, 80))}`);
      }
      return Number(process.hrtime.bigint() - started) / 1e6;
    }),
  );
}

type Path = "forward" | "ssh" | "direct";

export async function forwardThroughput(s: Section, shared: Shared): Promise<void> {
  const { env } = shared;
  const gateway = shared.gateway();
  const token = readFileSync(join(env.configHome, "openshell", "gateways", "local", "token"), "utf8").trim();
  const client = new OpenShell({ endpoint: gateway.endpoint, token });
  const host = spawn("python3", ["-c", SOURCE], { stdio: ["ignore", "pipe", "inherit"] });
  let tunnel: ChildProcess | undefined;
  const rates: Record<Path, number[]> = { forward: [], ssh: [], direct: [] };
  const latencies: Record<Path, number[]> = { forward: [], ssh: [], direct: [] };
  let cold: number | undefined;
  try {
    // print() may reach the pipe in more than one write: the port is read from the whole line.
    const hostPort = await new Promise<number>((resolve, reject) => {
      createInterface({ input: host.stdout! }).once("line", (line) =>
        resolve(Number(/port (\d+)/.exec(line)?.[1])),
      );
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
        // ssh -L binds after its handshake; an ssh that exits first is the failure.
        const child = tunnel;
        const exited = new Promise<never>((_, reject) =>
          child.once("exit", (code) => reject(new Error(`ssh -L exited (status ${code})`))),
        );
        exited.catch(() => undefined);
        await Promise.race([waitForTcp(sshPort, "ssh -L", 10_000), exited]);
      } catch (error) {
        sshPort = 0;
        s.note(`ssh -L yardstick not measured: ${error instanceof Error ? error.message : String(error)}`);
      }
      const ports: [Path, number, string][] = [
        ["forward", forward.port, "through sandbox.forward"],
        ...(sshPort ? [["ssh", sshPort, "through ssh -L"] as [Path, number, string]] : []),
        ["direct", hostPort, "straight to the host's server"],
      ];
      // The untimed round: the first through the forward is the cold figure.
      for (const [path, port, label] of ports) {
        const ms = await s.attempt(`${label} (first round)`, () => pull(port));
        if (path === "forward") cold = megabytesPerSecond(BYTES, ms);
      }
      for (let i = 0; i < ROUNDS; i++) {
        for (const [path, port, label] of ports) {
          rates[path].push(megabytesPerSecond(BYTES, await s.attempt(label, () => pull(port))));
        }
        progress(
          `round ${i + 1}: ${ports.map(([path]) => `${path} ${rates[path].at(-1)!.toFixed(0)} MB/s`).join(", ")}`,
        );
      }
      for (const [, port, label] of ports) {
        await s.attempt(`${WARM_REQUESTS} requests ${label} (untimed)`, () => requests(port, WARM_REQUESTS));
      }
      for (const [path, port, label] of ports) {
        latencies[path] = await s.attempt(`${REQUESTS} requests at once ${label}`, () =>
          requests(port, REQUESTS),
        );
        progress(`${REQUESTS} requests ${label}: p50 ${percentile(latencies[path], 50).toFixed(1)} ms`);
      }
    } finally {
      await sandbox.delete().catch((error: Error) => s.note(`cleanup: ${error.message}`));
    }
  } finally {
    tunnel?.kill("SIGTERM");
    host.kill("SIGTERM");
    client.close();
    for (const path of Object.keys(rates) as Path[]) {
      s.samples(`${path}_mb_per_s`, rates[path]);
      s.samples(`${path}_request_ms`, latencies[path]);
    }
    report(s, rates, latencies, cold);
  }
}

function report(
  s: Section,
  rates: Record<Path, number[]>,
  latencies: Record<Path, number[]>,
  cold: number | undefined,
): void {
  const median = (values: number[]): number => percentile(values, 50);
  const key = (path: Path): string => (path === "ssh" ? "ssh_l" : path);
  const labels: Record<Path, string> = {
    forward: "sandbox.forward, 100 MB from the sandbox's loopback",
    ssh: "ssh -L to the private sshd, the same from the host's loopback",
    direct: "straight to the host's loopback, the same",
  };
  if (cold !== undefined) {
    s.figure(
      "forward_first_mb_per_s",
      "sandbox.forward, the gateway's first 100 MB",
      round(cold),
      "MB/s",
      `${cold.toFixed(0)} MB/s`,
    );
  }
  for (const path of Object.keys(labels) as Path[]) {
    if (rates[path].length === 0) continue;
    const value = median(rates[path]);
    s.figure(
      `${key(path)}_mb_per_s`,
      `${labels[path]} (median of ${rates[path].length})`,
      round(value),
      "MB/s",
      `${value.toFixed(0)} MB/s`,
    );
  }
  if (rates.forward.length > 0 && rates.ssh.length > 0) {
    const ratio = median(rates.forward) / median(rates.ssh);
    s.figure(
      "forward_over_ssh_l",
      "forward / ssh -L, throughput",
      round(ratio, 2),
      "ratio",
      `${ratio.toFixed(2)} ×`,
      {
        text: `≥ ${RATIO_TARGET.toFixed(1)} ×`,
        met: ratio >= RATIO_TARGET,
      },
    );
  }
  const requestLabels: Record<Path, string> = {
    forward: `${REQUESTS} requests at once through sandbox.forward`,
    ssh: `${REQUESTS} requests at once through ssh -L`,
    direct: `${REQUESTS} requests at once straight to the host's server`,
  };
  for (const path of Object.keys(requestLabels) as Path[]) {
    if (latencies[path].length === 0) continue;
    const p50 = percentile(latencies[path], 50);
    const p95 = percentile(latencies[path], 95);
    s.figure(
      `${key(path)}_request_p50_ms`,
      `${requestLabels[path]}, p50`,
      round(p50),
      "ms",
      `${p50.toFixed(1)} ms (p95 ${p95.toFixed(1)})`,
    );
  }
  if (latencies.forward.length > 0 && latencies.ssh.length > 0) {
    const ratio = percentile(latencies.forward, 50) / percentile(latencies.ssh, 50);
    s.figure(
      "forward_over_ssh_l_request_p50",
      "forward / ssh -L, request p50",
      round(ratio, 2),
      "ratio",
      `${ratio.toFixed(2)} ×`,
    );
  }
}
