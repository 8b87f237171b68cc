// The agent's SSH server, run outside any sandbox on a temp socket as the
// current user: exec semantics (exit codes, signals, stdout/stderr, stdin
// streaming, EOF, throughput, ordering of the exit status), ptys, channel
// close, the main-process attach, and interop with the system OpenSSH clients.

import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { ClientChannel } from "ssh2";
import ssh2 from "ssh2";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { MainProcess } from "../../src/supervisor/agent/main-process.js";
import {
  type AgentLogger,
  generateHostKey,
  type SshServer,
  startSshServer,
} from "../../src/supervisor/agent/ssh-server.js";

const PROXY_HELPER = resolve(import.meta.dirname, "../helpers/unix-socket-proxy.mjs");
const STEP_TIMEOUT_MS = 15_000;

const quietLogger: AgentLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** Waits for `promise`, failing with the step's name if it takes longer than `ms`. */
async function within<T>(promise: Promise<T>, step: string, ms = STEP_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`timed out after ${ms} ms: ${step}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface TestServer {
  dir: string;
  socketPath: string;
  server: SshServer;
}

type Cleanups = Array<() => Promise<void> | void>;
/** Undone after each test; a suite's shared server and client use their own list. */
const cleanups: Cleanups = [];
async function runCleanups(list: Cleanups): Promise<void> {
  while (list.length > 0) await list.pop()?.();
}
afterEach(() => runCleanups(cleanups));

function baseEnv(home: string): Record<string, string> {
  return {
    HOME: home,
    USER: "sandbox",
    SHELL: "/bin/sh",
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    LANG: "C.UTF-8",
    SANDBOX_GREETING: "hello from the sandbox env",
  };
}

async function startTestServer(mainProcess?: MainProcess, owner: Cleanups = cleanups): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), "agent-ssh-"));
  const socketPath = join(dir, "ssh.sock");
  const server = await startSshServer({
    socketPath,
    env: baseEnv(dir),
    workdir: dir,
    mainProcess,
    logger: quietLogger,
  });
  owner.push(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, socketPath, server };
}

async function connect(socketPath: string, owner: Cleanups = cleanups): Promise<ssh2.Client> {
  const client = new ssh2.Client();
  const ready = new Promise<void>((done, fail) => {
    client.once("ready", () => done());
    client.once("error", fail);
  });
  client.connect({ sock: net.connect(socketPath), username: "sandbox" });
  await within(ready, "ssh handshake and none auth");
  owner.push(() => {
    client.end();
  });
  return client;
}

interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  code: number | null;
  signal: string | undefined;
  /** Bytes of stdout received when the exit status arrived. */
  stdoutAtExit: number;
}

function openExec(
  client: ssh2.Client,
  command: string,
  options: ssh2.ExecOptions = {},
): Promise<ClientChannel> {
  return new Promise((done, fail) => {
    client.exec(command, options, (error, channel) => (error ? fail(error) : done(channel)));
  });
}

/** Collects a channel's output until it closes. */
function collect(channel: ClientChannel): Promise<ExecResult> {
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  let stdoutBytes = 0;
  let code: number | null = null;
  let signal: string | undefined;
  let stdoutAtExit = -1;
  channel.on("data", (data: Buffer) => {
    stdout.push(data);
    stdoutBytes += data.length;
  });
  channel.stderr.on("data", (data: Buffer) => stderr.push(data));
  channel.on("exit", (exitCode: number | null, exitSignal?: string) => {
    code = exitCode;
    signal = exitSignal;
    stdoutAtExit = stdoutBytes;
  });
  return new Promise((done) => {
    channel.on("close", () =>
      done({ stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr), code, signal, stdoutAtExit }),
    );
  });
}

async function run(client: ssh2.Client, command: string, stdin?: Buffer | string): Promise<ExecResult> {
  const channel = await within(openExec(client, command), `open exec ${command}`);
  const result = collect(channel);
  if (stdin !== undefined) channel.end(stdin);
  else channel.end();
  return within(result, `exec ${command}`);
}

/** Resolves once the accumulated text of `stream` matches `pattern`. */
function waitForText(stream: NodeJS.ReadableStream, pattern: RegExp): Promise<string> {
  let text = "";
  return new Promise((done) => {
    const onData = (data: Buffer) => {
      text += data.toString();
      if (pattern.test(text)) {
        stream.off("data", onData);
        done(text);
      }
    };
    stream.on("data", onData);
  });
}

async function writeAll(channel: ClientChannel, data: Buffer, chunkBytes = 256 * 1024): Promise<void> {
  for (let offset = 0; offset < data.length; offset += chunkBytes) {
    if (!channel.write(data.subarray(offset, offset + chunkBytes))) await once(channel, "drain");
  }
}

describe("agent ssh server: exec", () => {
  const suite: Cleanups = [];
  let server: TestServer;
  let client: ssh2.Client;
  beforeAll(async () => {
    server = await startTestServer(undefined, suite);
    client = await connect(server.socketPath, suite);
  });
  afterAll(() => runCleanups(suite));

  it("creates the socket with mode 0600", () => {
    expect(statSync(server.socketPath).mode & 0o777).toBe(0o600);
  });

  it.each([0, 1, 42, 255])("reports exit code %i exactly", async (code) => {
    const result = await run(client, `exit ${code}`);
    expect(result.code).toBe(code);
    expect(result.signal).toBeUndefined();
  });

  it("reports a death by signal as an exit signal", async () => {
    const result = await run(client, "kill -TERM $$");
    expect(result.code).toBeNull();
    expect(result.signal).toBe("SIGTERM");
  });

  it("keeps stdout and stderr apart", async () => {
    const result = await run(client, "echo to-out; echo to-err >&2; echo more-out");
    expect(result.stdout.toString()).toBe("to-out\nmore-out\n");
    expect(result.stderr.toString()).toBe("to-err\n");
    expect(result.code).toBe(0);
  });

  it("runs in the workdir with the base environment", async () => {
    const result = await run(client, 'pwd; echo "$SANDBOX_GREETING"; echo "$TERM"');
    expect(result.stdout.toString()).toBe(`${server.dir}\nhello from the sandbox env\ndumb\n`);
  });

  it("applies env requests to the session's process", async () => {
    const channel = await within(
      openExec(client, 'echo "$FROM_CLIENT"', { env: { FROM_CLIENT: "yes" } }),
      "open",
    );
    const result = collect(channel);
    channel.end();
    expect((await within(result, "exec with env")).stdout.toString()).toBe("yes\n");
  });

  it("streams stdin live and passes EOF", async () => {
    const channel = await within(openExec(client, "sh -c 'echo started; cat'"), "open exec");
    const result = collect(channel);
    await within(waitForText(channel, /started\n/), "output before any stdin");
    channel.write("ping\n");
    await within(waitForText(channel, /ping\n/), "stdin echoed back while the channel is open");
    channel.end();
    const done = await within(result, "exit after EOF");
    expect(done.code).toBe(0);
    expect(done.stdout.toString()).toBe("started\nping\n");
  });

  it("streams 20 MB of stdin through sha256sum intact", async () => {
    const data = randomBytes(20 * 1024 * 1024);
    const channel = await within(openExec(client, "sha256sum"), "open exec");
    const result = collect(channel);
    await within(writeAll(channel, data), "write 20 MB of stdin", 60_000);
    channel.end();
    const done = await within(result, "sha256sum exit", 60_000);
    expect(done.code).toBe(0);
    expect(done.stdout.toString().split(" ")[0]).toBe(createHash("sha256").update(data).digest("hex"));
  });

  it("delivers 30 MB of stdout whole", async () => {
    const bytes = 30 * 1024 * 1024;
    const result = await within(run(client, `head -c ${bytes} /dev/zero | tr '\\0' 'x'`), "30 MB", 60_000);
    expect(result.code).toBe(0);
    expect(result.stdout.length).toBe(bytes);
    expect(result.stdout.every((byte) => byte === 0x78)).toBe(true);
  });

  it("sends the exit status only after the last byte of output", async () => {
    const bytes = 5 * 1024 * 1024;
    const result = await run(client, `head -c ${bytes} /dev/zero; exit 3`);
    expect(result.code).toBe(3);
    expect(result.stdoutAtExit).toBe(bytes);
    expect(result.stdout.length).toBe(bytes);
  });

  it("gives each of 20 concurrent execs on 4 connections exactly its own output", async () => {
    const clients = [client, ...(await Promise.all([1, 2, 3].map(() => connect(server.socketPath))))];
    const results = await within(
      Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          run(
            clients[i % clients.length]!,
            `for n in 1 2 3 4 5; do echo exec-${i}-$n; echo err-${i} >&2; done; exit ${i}`,
          ),
        ),
      ),
      "20 concurrent execs",
    );
    results.forEach((result, i) => {
      expect(result.code).toBe(i);
      expect(result.stdout.toString()).toBe([1, 2, 3, 4, 5].map((n) => `exec-${i}-${n}\n`).join(""));
      expect(result.stderr.toString()).toBe(`err-${i}\n`.repeat(5));
    });
  });

  it("does not wait for background grandchildren holding the pipes", async () => {
    const result = await run(client, "sleep 30 & echo $!; echo parent-done");
    const [grandchild, last] = result.stdout.toString().split("\n");
    process.kill(Number(grandchild), "SIGKILL"); // it outlives the session, as with sshd
    expect(result.code).toBe(0);
    expect(last).toBe("parent-done");
  });

  it("runs a pty exec, merging output and applying window-change", async () => {
    const channel = await within(
      openExec(client, "stty size; echo to-err >&2; read line; stty size", {
        pty: { rows: 24, cols: 80, term: "xterm-256color" },
      }),
      "open pty exec",
    );
    const result = collect(channel);
    await within(waitForText(channel, /24 80\r\n[\s\S]*to-err\r\n/), "first stty size and merged stderr");
    channel.setWindow(40, 100, 0, 0);
    channel.write("\n");
    await within(waitForText(channel, /40 100\r\n/), "stty size after window-change");
    const done = await within(result, "pty exec exit");
    expect(done.code).toBe(0);
    expect(done.stderr.length).toBe(0);
  });

  it("forwards a signal request to the process group", async () => {
    const channel = await within(openExec(client, "echo ready; exec sleep 30"), "open exec");
    const result = collect(channel);
    await within(waitForText(channel, /ready\n/), "sleep started");
    channel.signal("INT");
    const done = await within(result, "exit after SIGINT");
    expect(done.signal).toBe("SIGINT");
  });

  it("kills the whole process group when the client closes the channel", async () => {
    const fifo = join(server.dir, "alive.fifo");
    execFileSync("mkfifo", [fifo]);
    // Every process holding the FIFO open for writing keeps our reader from
    // seeing EOF, so EOF means the shell and its background child both died.
    const reader = createReadStream(fifo);
    reader.resume();
    const readerEnded = once(reader, "end");
    const channel = await within(
      openExec(client, `exec 3>"${fifo}"; sleep 300 & echo ready; wait`),
      "open exec",
    );
    await within(waitForText(channel, /ready\n/), "shell and background child started");
    channel.close();
    await within(readerEnded, "process group killed after channel close");
  });

  it("refuses password authentication and unknown subsystems", async () => {
    const refused = new ssh2.Client();
    const failure = new Promise<Error>((done) => refused.once("error", done));
    refused.connect({
      sock: net.connect(server.socketPath),
      username: "sandbox",
      password: "secret",
      authHandler: ["password"],
    });
    expect((await within(failure, "password auth rejected")).message).toMatch(
      /authentication methods failed/,
    );
    const subsystem = new Promise<Error | undefined>((done) => client.subsys("nope", (error) => done(error)));
    expect(await within(subsystem, "unknown subsystem refused")).toBeInstanceOf(Error);
  });
});

describe("agent ssh server: lifecycle and forwarding", () => {
  it("close() ends connections and kills the running sessions' process groups", async () => {
    const { dir, socketPath, server } = await startTestServer();
    const client = await connect(socketPath);
    const fifo = join(dir, "alive.fifo");
    execFileSync("mkfifo", [fifo]);
    const reader = createReadStream(fifo);
    reader.resume();
    const readerEnded = once(reader, "end");
    const channel = await within(openExec(client, `exec 3>"${fifo}"; sleep 300 & echo ready; wait`), "open");
    const closed = once(channel, "close");
    await within(waitForText(channel, /ready\n/), "session started");
    await within(server.close(), "server close");
    await within(closed, "client sees its channel closed");
    await within(readerEnded, "session's process group killed");
  });

  it("forwards direct-tcpip to loopback only", async () => {
    const { socketPath } = await startTestServer();
    const client = await connect(socketPath);
    const echo = net.createServer((socket) => socket.pipe(socket));
    await new Promise<void>((done) => echo.listen(0, "127.0.0.1", () => done()));
    cleanups.push(() => new Promise<void>((done) => echo.close(() => done())));
    const port = (echo.address() as net.AddressInfo).port;

    const forwarded = await within(
      new Promise<ClientChannel>((done, fail) =>
        client.forwardOut("127.0.0.1", 0, "localhost", port, (error, channel) =>
          error ? fail(error) : done(channel),
        ),
      ),
      "open forward to localhost",
    );
    forwarded.write("round trip\n");
    await within(waitForText(forwarded, /round trip\n/), "echo through the forward");
    forwarded.end();

    const refused = new Promise<Error | undefined>((done) =>
      client.forwardOut("127.0.0.1", 0, "192.0.2.1", 80, (error) => done(error)),
    );
    expect(await within(refused, "forward to a non-loopback host refused")).toBeInstanceOf(Error);
  });
});

describe("agent ssh server: openshell-main", () => {
  function openMain(client: ssh2.Client): Promise<ClientChannel> {
    return new Promise((done, fail) => {
      client.subsys("openshell-main", (error, channel) => (error ? fail(error) : done(channel)));
    });
  }

  it("replays earlier output, takes stdin, and reports the exit status", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agent-main-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const main = new MainProcess({
      command: ["sh", "-c", 'echo first; echo warn >&2; read line; echo "got $line"; exit 5'],
      cwd: dir,
      env: baseEnv(dir),
      tty: false,
    });
    const firstLine = new Promise<void>((done) => main.on("line", (line) => line.text === "first" && done()));
    main.start();
    await within(firstLine, "main process printed its first line");
    const { socketPath } = await startTestServer(main);
    const client = await connect(socketPath);

    const holder = await within(openMain(client), "attach");
    const result = collect(holder);
    await within(waitForText(holder, /^first\n/), "replay of earlier output");

    const watcher = await within(openMain(client), "second attach");
    const watched = collect(watcher);
    await within(waitForText(watcher.stderr, /read-only/), "read-only notice for the second attacher");

    holder.write("hello\n");
    const done = await within(result, "attach ends with the main process");
    expect(done.stdout.toString()).toBe("first\ngot hello\n");
    expect(done.stderr.toString()).toBe("warn\n");
    expect(done.code).toBe(5);
    const watcherDone = await within(watched, "read-only attacher ends too");
    expect(watcherDone.code).toBe(5);
    expect(watcherDone.stdout.toString()).toBe("first\ngot hello\n");
    expect(main.exitStatus).toEqual({ code: 5, signal: null });
  });

  it("detaches on Ctrl-P Ctrl-Q with status 0 and leaves the process running", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agent-main-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const main = new MainProcess({ command: ["cat"], cwd: dir, env: baseEnv(dir), tty: false });
    main.start();
    cleanups.push(async () => {
      await main.stop(1000);
    });
    const { socketPath } = await startTestServer(main);
    const client = await connect(socketPath);

    const first = await within(openMain(client), "attach");
    const result = collect(first);
    first.write("echo-me\n");
    await within(waitForText(first, /echo-me\n/), "input reaches the main process");
    // The detach keys split across two writes still detach.
    first.write(Buffer.from([0x10]));
    first.write(Buffer.from([0x11]));
    const done = await within(result, "detached");
    expect(done.code).toBe(0);
    expect(main.state).toBe("running");

    // The stdin lease went back with the detach: the next attacher holds it.
    const second = await within(openMain(client), "attach again");
    const secondResult = collect(second);
    await within(waitForText(second, /^echo-me\n/), "replay on the second attach");
    second.write("again\n");
    await within(waitForText(second, /again\n/), "second attacher's input reaches the process");
    second.end(); // EOF closes cat's stdin: the main process ends
    const secondDone = await within(secondResult, "main process exit after EOF");
    expect(secondDone.code).toBe(0);
    expect(secondDone.stderr.toString()).toBe("");
  });

  it("starts a gated main process only on the first attach", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agent-main-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const main = new MainProcess({
      command: ["cat", "uploaded.txt"],
      cwd: dir,
      env: baseEnv(dir),
      tty: false,
      startOnAttach: true,
    });
    const { socketPath } = await startTestServer(main);
    const client = await connect(socketPath);
    // Files arrive (here: written directly) before anyone attaches.
    const upload = await run(client, `echo uploaded-content > ${dir}/uploaded.txt`);
    expect(upload.code).toBe(0);
    expect(main.state).toBe("pending");

    const attached = await within(openMain(client), "attach");
    const done = await within(collect(attached), "gated main process ran and exited");
    expect(done.stderr.toString()).toBe("");
    expect(done.stdout.toString()).toBe("uploaded-content\n");
    expect(done.code).toBe(0);
  });
});

describe("agent ssh server: OpenSSH interop", () => {
  const suite: Cleanups = [];
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer(undefined, suite);
  });
  afterAll(() => runCleanups(suite));

  function sshOptions(): string[] {
    return [
      "-F",
      "/dev/null",
      "-o",
      `ProxyCommand=${process.execPath} ${PROXY_HELPER} ${server.socketPath}`,
      "-o",
      "StrictHostKeyChecking=no",
      "-o",
      "UserKnownHostsFile=/dev/null",
      "-o",
      "GlobalKnownHostsFile=/dev/null",
      "-o",
      "BatchMode=yes",
      "-o",
      "LogLevel=ERROR",
    ];
  }

  function runTool(
    tool: string,
    args: string[],
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(tool, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (data: Buffer) => {
      stdout += data.toString();
    });
    child.stderr.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    return within(
      new Promise((done) => child.on("close", (code) => done({ code, stdout, stderr }))),
      `${tool} ${args.at(-1)}`,
    );
  }

  it("runs a command with ssh and exits with the remote code", async () => {
    const hi = await runTool("ssh", [...sshOptions(), "sandbox", "echo hi"]);
    expect(hi).toMatchObject({ code: 0, stdout: "hi\n" });
    const failed = await runTool("ssh", [...sshOptions(), "sandbox", "echo oops >&2; exit 7"]);
    expect(failed).toMatchObject({ code: 7, stdout: "", stderr: "oops\n" });
  });

  it("runs a command on a pty with ssh -tt", async () => {
    const result = await runTool("ssh", [...sshOptions(), "-tt", "sandbox", "stty size; tty; exit 4"]);
    expect(result.code).toBe(4);
    expect(result.stdout).toMatch(/^\d+ \d+\r\n\/dev\/pts\/\d+\r\n/);
  });

  it("puts and gets a file with sftp", async () => {
    const local = join(server.dir, "local.bin");
    const fetched = join(server.dir, "fetched.bin");
    const content = randomBytes(300 * 1024);
    writeFileSync(local, content);
    const batch = join(server.dir, "batch.txt");
    writeFileSync(batch, `put ${local} remote-sftp.bin\nget remote-sftp.bin ${fetched}\n`);
    const result = await runTool("sftp", [...sshOptions(), "-b", batch, "sandbox"]);
    expect(result.code).toBe(0);
    // Relative remote paths land in the workdir.
    expect(readFileSync(join(server.dir, "remote-sftp.bin")).equals(content)).toBe(true);
    expect(readFileSync(fetched).equals(content)).toBe(true);
  });

  it("round-trips a file with scp", async () => {
    const local = join(server.dir, "scp-local.bin");
    const back = join(server.dir, "scp-back.bin");
    const content = randomBytes(200 * 1024);
    writeFileSync(local, content);
    const up = await runTool("scp", [...sshOptions(), local, "sandbox:scp-remote.bin"]);
    expect(up.code).toBe(0);
    const down = await runTool("scp", [...sshOptions(), "sandbox:scp-remote.bin", back]);
    expect(down.code).toBe(0);
    expect(readFileSync(back).equals(content)).toBe(true);
  });
});

describe("host keys", () => {
  it("every generated host key parses (ssh2 sometimes writes one it cannot read back)", async () => {
    for (let i = 0; i < 2000; i++) {
      expect(ssh2.utils.parseKey(await generateHostKey())).not.toBeInstanceOf(Error);
    }
  });
});
