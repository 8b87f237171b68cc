// `sandbox exec` end to end, through the real gateway, supervisor, bubblewrap
// pod and SSH: exit statuses, timeouts, streaming stdin and stdout in both
// directions, separate stderr, concurrency on one sandbox, and that an exec
// runs exactly where the main process does.

import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import { exitOf, runBytes } from "../helpers/ssh.js";

const sha256 = (data: Buffer): string => createHash("sha256").update(data).digest("hex");

// The main process records who and where it is, then serves HTTP on a port
// it picks itself (0) and publishes in /tmp/main.port once it listens.
const MAIN_SERVER_PY = `
import http.server, os
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the main process\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
open("/tmp/main.port.tmp", "w").write(str(server.server_address[1]))
os.rename("/tmp/main.port.tmp", "/tmp/main.port")
server.serve_forever()
`;
// perl-base is essential on Debian: the fallback where python3 is missing.
const MAIN_SERVER_PL = `
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 5, ReuseAddr => 1) or die "listen: $!";
open(my $f, ">", "/tmp/main.port.tmp") or die; print $f $s->sockport; close $f;
rename "/tmp/main.port.tmp", "/tmp/main.port";
while (my $c = $s->accept) { my $line = <$c>; print $c "HTTP/1.0 200 OK\\r\\nContent-Length: 28\\r\\n\\r\\nhello from the main process\\n"; close $c; }
`;
const NAMESPACES =
  "for ns in mnt net pid user ipc uts; do printf '%s=%s\\n' $ns $(readlink /proc/self/ns/$ns); done";
const MAIN_SCRIPT = [
  "id -u > /tmp/main.uid",
  `{ ${NAMESPACES}; } > /tmp/main.ns`,
  'if command -v python3 >/dev/null; then exec python3 -c "$1"; else exec perl -e "$2"; fi',
].join("\n");

describe("sandbox exec", () => {
  const env = new TestEnv("openshell-exec-");
  const name = uniqueName("exec");
  let gatewayPort = 0;

  /** `openshell sandbox exec -n NAME ARGS...` to completion. */
  const exec = (args: string[], options: Parameters<TestEnv["run"]>[1] = {}) =>
    env.run(["sandbox", "exec", "-n", name, ...args], { timeoutMs: 30_000, ...options });

  beforeAll(async () => {
    await env.startGateway();
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--",
        "sh",
        "-c",
        MAIN_SCRIPT,
        "main",
        MAIN_SERVER_PY,
        MAIN_SERVER_PL,
      ],
      { timeoutMs: 60_000 },
    );
    expect(created.stderr).toContain("ready");
    expect(created.code).toBe(0);
    const listening = await exec([
      "--timeout",
      "20",
      "--",
      "sh",
      "-c",
      "while [ ! -s /tmp/main.port ]; do sleep 0.05; done; cat /tmp/main.port",
    ]);
    expect(listening.code, `waiting for the main process to listen: ${listening.stderr}`).toBe(0);
    const endpoint = await env.run(["gateway", "list", "-o", "json"]);
    const gateways = JSON.parse(endpoint.stdout) as { name: string; endpoint: string }[];
    gatewayPort = Number(new URL(gateways.find((g) => g.name === "local")!.endpoint).port);
  });

  afterAll(async () => {
    await env.run(["sandbox", "delete", name], { timeoutMs: 60_000 }).catch(() => undefined);
    await env.dispose();
  });

  it("passes exit codes 0, 1, 42 and 255 through exactly", async () => {
    for (const code of [0, 1, 42, 255]) {
      const result = await exec(["--", "sh", "-c", `exit ${code}`]);
      expect({ code: result.code, stderr: result.stderr }).toEqual({ code, stderr: "" });
    }
  });

  it("reports a death by signal N as 128+N: kill -TERM $$ gives 143", async () => {
    const cases: [string, number][] = [
      ["TERM", 143],
      ["KILL", 137],
      // SIGSYS is not among the signal names SSH carries; the number must still come through.
      ["SYS", 159],
    ];
    for (const [signal, code] of cases) {
      const result = await exec(["--", "sh", "-c", `kill -${signal} $$`]);
      expect({ signal, code: result.code }).toEqual({ signal, code });
    }
  });

  it("--timeout 1 -- sleep 30 exits 124 and the remote command is gone", async () => {
    const started = Date.now();
    const result = await exec(["--timeout", "1", "--", "sleep", "30"]);
    expect(result.code).toBe(124);
    expect(Date.now() - started).toBeLessThan(10_000);
    // The kill travels separately from the exit status: wait (bounded) until ps no longer shows it.
    const gone = await exec([
      "--timeout",
      "10",
      "--",
      "sh",
      "-c",
      "while ps -eo args | grep -qx 'sleep 30'; do sleep 0.05; done; echo gone",
    ]);
    expect(gone.stdout, "waiting for the timed-out sleep to be killed").toBe("gone\n");
  });

  it("--timeout kills what the command started in the background too", async () => {
    const result = await exec(["--timeout", "1", "--", "sh", "-c", "sleep 301 & sleep 302"]);
    expect(result.code).toBe(124);
    const gone = await exec([
      "--timeout",
      "10",
      "--",
      "sh",
      "-c",
      "while ps -eo args | grep -qE '^sleep 30[12]$'; do sleep 0.05; done; echo gone",
    ]);
    expect(gone.stdout, "waiting for both sleeps to be killed").toBe("gone\n");
  });

  it("20 MB piped into sha256sum gives the right digest", async () => {
    const input = randomBytes(20 * 1024 * 1024);
    const result = await runBytes(env, ["sandbox", "exec", "-n", name, "--", "sha256sum"], {
      input,
      timeoutMs: 60_000,
    });
    expect(result.stderr).toBe("");
    expect(result.stdout.toString()).toBe(`${sha256(input)}  -\n`);
    expect(result.code).toBe(0);
  });

  it("30 MB of stdout arrives whole", async () => {
    const size = 30 * 1000 * 1000;
    const result = await runBytes(
      env,
      [
        "sandbox",
        "exec",
        "-n",
        name,
        "--",
        "sh",
        "-c",
        `head -c ${size} /dev/urandom > /tmp/big && sha256sum /tmp/big >&2 && cat /tmp/big && rm /tmp/big`,
      ],
      { timeoutMs: 60_000 },
    );
    expect(result.code).toBe(0);
    expect(result.stdout.length).toBe(size);
    expect(result.stderr).toBe(`${sha256(result.stdout)}  /tmp/big\n`);
  });

  it("streams stdin live: `started` arrives before stdin ends, then `late`", async () => {
    const child = env.spawn(["sandbox", "exec", "-n", name, "--", "sh", "-c", "echo started; cat"]);
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (data: Buffer) => {
      stdout += data.toString();
    });
    child.stderr!.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    try {
      await waitForOutput(
        child.stdout!,
        "started\n",
        "exec prints `started` while stdin is still open",
        20_000,
      );
      expect(child.exitCode).toBeNull();
      child.stdin!.write("late\n");
      await waitForOutput(child.stdout!, "late\n", "`late` written to stdin comes back through cat", 20_000);
      child.stdin!.end();
      expect(await exitOf(child, "exec exits once stdin ends", 20_000)).toBe(0);
      expect({ stdout, stderr }).toEqual({ stdout: "started\nlate\n", stderr: "" });
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("an open but idle stdin does not keep exec from exiting once the command ends", async () => {
    const child = env.spawn(["sandbox", "exec", "-n", name, "--", "echo", "done"]);
    let stdout = "";
    child.stdout!.on("data", (data: Buffer) => {
      stdout += data.toString();
    });
    try {
      // stdin is never written to nor closed.
      expect(await exitOf(child, "exec with an idle stdin pipe exits", 20_000)).toBe(0);
      expect(stdout).toBe("done\n");
    } finally {
      child.stdin!.destroy();
      child.kill("SIGKILL");
    }
  });

  it("keeps stdout and stderr apart", async () => {
    const result = await exec([
      "--",
      "sh",
      "-c",
      "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3",
    ]);
    expect(result).toMatchObject({ code: 3, stdout: "out1\nout2\n", stderr: "err1\nerr2\n" });
  });

  it("applies --env and --workdir", async () => {
    const result = await exec([
      "--env",
      "GREETING=hello, world's $HOME",
      "--env",
      "EMPTY=",
      "--workdir",
      "/tmp",
      "--",
      "sh",
      "-c",
      'printf "%s|%s|%s\\n" "$GREETING" "$(env | grep -x EMPTY=)" "$(pwd)"',
    ]);
    expect(result).toMatchObject({ code: 0, stdout: "hello, world's $HOME|EMPTY=|/tmp\n", stderr: "" });
  });

  it("--tty runs the command on a pseudo-terminal", async () => {
    const result = await exec(["--tty", "--", "sh", "-c", "tty; stty size"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^\/dev\/pts\/\d+\r\n24 80\r\n$/);
  });

  it("25 concurrent execs on one sandbox each get exactly their own output", async () => {
    const runs = Array.from({ length: 25 }, (_, i) => {
      const payload = `payload-${i}-`.repeat(6000);
      return exec(["--", "sh", "-c", 'printf "id=%s\\n" "$1"; cat; exit "$1"', "sh", String(i)], {
        input: payload,
        timeoutMs: 120_000,
      }).then((result) => ({ i, payload, result }));
    });
    for (const { i, payload, result } of await Promise.all(runs)) {
      expect({ i, code: result.code, stderr: result.stderr }).toEqual({ i, code: i, stderr: "" });
      expect(result.stdout === `id=${i}\n${payload}`, `exec ${i} got someone else's bytes`).toBe(true);
    }
  });

  it("runs as the same uid and in the same namespaces as the main process", async () => {
    const main = await exec(["--", "cat", "/tmp/main.uid", "/tmp/main.ns"]);
    const here = await exec(["--", "sh", "-c", `id -u; ${NAMESPACES}`]);
    expect(main.code).toBe(0);
    expect(here.code).toBe(0);
    expect(here.stdout).toBe(main.stdout);
    expect(here.stdout.split("\n")[0]).not.toBe("0");
    expect(here.stdout).toMatch(/^net=net:\[\d+\]$/m);
  });

  it("cannot see host paths or reach the network", async () => {
    const secret = join(env.root, "host-secret.txt");
    writeFileSync(secret, "host only\n");
    const paths = [secret, join(ROOT, "package.json"), join(env.stateHome, "openshell")];
    const seen = await exec([
      "--",
      "sh",
      "-c",
      'for p in "$@"; do if [ -e "$p" ]; then echo "visible $p"; else echo "hidden $p"; fi; done',
      "sh",
      ...paths,
    ]);
    expect(seen.stdout).toBe(paths.map((p) => `hidden ${p}\n`).join(""));

    const interfaces = await exec(["--", "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"]);
    expect(interfaces.stdout).toBe("lo\n");
    // The gateway listens on the host's 127.0.0.1; the sandbox's loopback is its own.
    const probe = (address: string) =>
      exec([
        "--timeout",
        "10",
        "--",
        "bash",
        "-c",
        `if exec 3<>/dev/tcp/${address}; then echo connected; else echo refused; fi`,
      ]);
    const gateway = await probe(`127.0.0.1/${gatewayPort}`);
    expect(gateway.stdout).toBe("refused\n");
    const outside = await probe("192.0.2.1/80");
    expect(outside.stdout).toBe("refused\n");
    expect(outside.stderr).toMatch(/unreachable/i);
  });

  it("reaches a server the main process listens on at 127.0.0.1", async () => {
    const result = await exec([
      "--timeout",
      "10",
      "--",
      "bash",
      "-c",
      'exec 3<>/dev/tcp/127.0.0.1/$(cat /tmp/main.port) && printf "GET / HTTP/1.0\\r\\nHost: main\\r\\n\\r\\n" >&3 && cat <&3',
    ]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^HTTP\/1\.\d 200/);
    expect(result.stdout.endsWith("\r\n\r\nhello from the main process\n")).toBe(true);
  });

  it("reports its own failures with codes no command produces", async () => {
    const missing = await env.run(["sandbox", "exec", "-n", "no-such-sandbox", "--", "true"]);
    expect(missing.code).toBe(243);
    expect(missing.stderr).toMatch(/no-such-sandbox|not found/);
    const usage = await env.run(["sandbox", "exec", "-n", name, "--env", "1BAD=x", "--", "true"]);
    expect(usage.code).toBe(240);
    expect(usage.stderr).toContain("1BAD");
  });
});
