// The supervisor's pod path, as on Kubernetes but on this machine (no
// cluster runs here): a gateway started with TLS on TCP in external mode
// (OPENSHELL_SUPERVISOR_MODE=external: create starts no supervisor, it
// records the sandbox and hands out its supervisor's environment); the
// bundle installed by the init container's command into a folder; and the
// sandbox container's command, `openshell-supervisor`, started with only what
// the pod spec gives it (the contract's environment and the CA file) in a
// network namespace of its own whose one way out is a veth pair to the
// gateway's TLS listener, in a container whose root is the static-busybox
// image (no node, no C library, no bash) and which sees nothing else of this
// host (the gateway's state and Unix socket among it). Create, exec, upload,
// download and delete then go through the real CLI and gateway.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomInt } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCertificate } from "../../src/gateway/tls.js";
import { containerEnv, makeBundle } from "../helpers/bundle.js";
import {
  collect,
  json,
  type RunResult,
  TestEnv,
  uniqueName,
  waitFor,
  waitForOutput,
} from "../helpers/cli.js";
import { freePort, httpGet } from "../helpers/net.js";
import { killMentioning, processesMentioning } from "../helpers/processes.js";
import { busybox } from "../helpers/registry.js";

const EXTERNAL = { OPENSHELL_SUPERVISOR_MODE: "external" };

/** A network namespace joined to this one by a veth pair on a /30 of its own. */
class PodNetwork {
  readonly name = `osh-pod-${process.pid.toString(36)}-${randomInt(1 << 20).toString(36)}`;
  /** The host's end (where the gateway listens) and the pod's. */
  readonly hostAddress: string;
  readonly podAddress: string;
  private readonly hostLink: string;

  constructor() {
    const tag = randomInt(1 << 24).toString(36);
    this.hostLink = `osh${tag}h`;
    const used = execFileSync("ip", ["-o", "-4", "addr"], { encoding: "utf8" });
    let base: string;
    do {
      base = `10.${200 + randomInt(50)}.${randomInt(256)}.${randomInt(64) * 4}`;
    } while (used.includes(` ${base.replace(/\d+$/, "")}`));
    const last = Number(base.split(".")[3]);
    this.hostAddress = base.replace(/\d+$/, String(last + 1));
    this.podAddress = base.replace(/\d+$/, String(last + 2));
    const podLink = `osh${tag}p`;
    const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
    ip("netns", "add", this.name);
    try {
      ip("link", "add", this.hostLink, "type", "veth", "peer", "name", podLink);
      ip("link", "set", podLink, "netns", this.name);
      ip("addr", "add", `${this.hostAddress}/30`, "dev", this.hostLink);
      ip("link", "set", this.hostLink, "up");
      ip("-n", this.name, "addr", "add", `${this.podAddress}/30`, "dev", podLink);
      ip("-n", this.name, "link", "set", podLink, "up");
      ip("-n", this.name, "link", "set", "lo", "up");
    } catch (error) {
      this.remove();
      throw error;
    }
  }

  /** The pids of the processes in the namespace. */
  pids(): number[] {
    const out = execFileSync("ip", ["netns", "pids", this.name], { encoding: "utf8" });
    return out.split("\n").filter(Boolean).map(Number);
  }

  /** Kills what runs in it, then removes it and the veth pair (both ends go with the namespace). */
  remove(): void {
    try {
      for (const pid of this.pids()) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // Gone already.
        }
      }
    } catch {
      // No namespace: nothing runs in it.
    }
    // The link first: removed with the namespace, it would go only once the kernel gets to it.
    for (const args of [
      ["link", "del", this.hostLink],
      ["netns", "del", this.name],
    ]) {
      try {
        execFileSync("ip", args, { stdio: "ignore" });
      } catch {
        // Not there (the link goes with the namespace).
      }
    }
  }

  /** Whether the namespace or the host's end of the pair is still there. */
  exists(): boolean {
    const namespaces = execFileSync("ip", ["netns", "list"], { encoding: "utf8" });
    const links = execFileSync("ip", ["-o", "link"], { encoding: "utf8" });
    return (
      namespaces.split("\n").some((line) => line.split(" ")[0] === this.name) ||
      links.includes(`${this.hostLink}@`)
    );
  }
}

/** The `NAME=value` lines of a supervisor.env file. */
function readEnvFile(path: string): Record<string, string> {
  return Object.fromEntries(
    readFileSync(path, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
  );
}

/** Where the pod spec mounts the bundle, the Secret's CA and the sandbox's volume in the sandbox container. */
const IN_POD = {
  install: "/opt/openshell",
  secret: "/etc/openshell/tls",
  caFile: "/etc/openshell/tls/ca.crt",
  sandboxDir: "/var/lib/openshell/sandbox",
};

/**
 * A pod on this host: the sandbox container's image (the static busybox the
 * image tests use: no node, no C library, no bash), the emptyDir the bundle is
 * installed into by the init container's command (from a bundle made as the
 * supervisor image's), the mounted Secret's CA and the sandbox's volume.
 */
class PodFiles {
  readonly root = mkdtempSync(join(tmpdir(), "openshell-pod-"));
  readonly image = join(this.root, "image");
  readonly install = join(this.root, "empty-dir");
  /** The Secret's files, mounted at /etc/openshell/tls. */
  readonly secret = join(this.root, "secret");
  readonly caFile = join(this.secret, "ca.crt");
  readonly sandboxDir = join(this.root, "volume");

  constructor(bundle: string, gatewayCa: string) {
    chmodSync(this.root, 0o755);
    busybox(this.image);
    // The mount points a container runtime would make.
    for (const path of [IN_POD.install, IN_POD.secret, IN_POD.sandboxDir]) {
      mkdirSync(join(this.image, path), { recursive: true, mode: 0o755 });
    }
    const installed = execFileSync(join(bundle, "bin", "openshell-install"), [this.install], {
      encoding: "utf8",
    });
    expect(installed).toBe(`openshell-install: supervisor bundle installed in ${this.install}\n`);
    mkdirSync(join(this.caFile, ".."), { recursive: true });
    copyFileSync(gatewayCa, this.caFile);
    mkdirSync(this.sandboxDir, { mode: 0o755 });
  }

  /**
   * The sandbox container, as a container runtime starts it: bubblewrap (as
   * root, keeping root's capabilities, as a privileged container) with the
   * image as its root, /proc, /dev, its own /tmp, the emptyDir read-only
   * at /opt/openshell, the CA file and the sandbox's volume; nothing else of
   * this host, the gateway's state among it.
   */
  container(): string[] {
    return [
      "bwrap",
      "--cap-add",
      "ALL",
      "--die-with-parent",
      "--bind",
      this.image,
      "/",
      // The host's /proc, unmasked: bubblewrap in the pod mounts a proc of
      // its own, which the kernel allows only where a proc is fully visible
      // (a pod needs the same: a privileged container, or procMount: Unmasked).
      "--bind",
      "/proc",
      "/proc",
      "--dev-bind",
      "/dev",
      "/dev",
      "--tmpfs",
      "/tmp",
      "--ro-bind",
      this.install,
      IN_POD.install,
      "--ro-bind",
      this.secret,
      IN_POD.secret,
      "--bind",
      this.sandboxDir,
      IN_POD.sandboxDir,
      "--",
    ];
  }

  remove(): void {
    killMentioning(this.root);
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** A supervisor started as a pod's sandbox container is, and what it printed. */
class PodSupervisor {
  readonly child: ChildProcess;
  output = "";
  readonly exited: Promise<number | null>;

  /**
   * `vars` is its whole environment, besides the CA file's path the pod
   * spec sets; in `network`'s namespace when given.
   */
  constructor(pod: PodFiles, vars: Record<string, string>, network?: PodNetwork) {
    const command = [
      ...(network ? ["ip", "netns", "exec", network.name] : []),
      ...pod.container(),
      ...containerEnv({ OPENSHELL_TLS_CA: IN_POD.caFile, ...vars }),
      `${IN_POD.install}/bin/openshell-supervisor`,
    ];
    this.child = spawn(command[0]!, command.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      stream.on("data", (chunk: Buffer) => {
        this.output += chunk.toString("utf8");
      });
    }
    this.exited = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
  }
}

/** The create's result once it succeeded; a failure naming what the supervisor said when either ends first. */
async function readyOrExited(creating: Promise<RunResult>, supervisor: PodSupervisor): Promise<RunResult> {
  const ended = await Promise.race([creating, supervisor.exited.then((code) => ({ exited: code }))]);
  if ("exited" in ended || ended.code !== 0) {
    const what =
      "exited" in ended ? `the supervisor exited (${ended.exited})` : `create failed: ${ended.stderr}`;
    throw new Error(`${what}\nsupervisor: ${supervisor.output.slice(-3000)}`);
  }
  return ended;
}

/**
 * Starts `sandbox create` (it waits for Ready, as while a pod starts) and
 * resolves with it and the supervisor environment the gateway handed out.
 */
async function createExternal(
  env: TestEnv,
  name: string,
): Promise<{ creating: Promise<RunResult>; identity: Record<string, string> }> {
  const creating = collect(
    env.spawn(["sandbox", "create", "--name", name, "--detach", "--", "sleep", "infinity"]),
    "create",
    { timeoutMs: 120_000 },
  );
  const sandboxes = join(env.stateHome, "openshell", "gateways", "local", "sandboxes");
  const envFile = await waitFor("the supervisor's environment to be handed out", 30_000, () => {
    const id = existsSync(sandboxes)
      ? readdirSync(sandboxes).find((entry) => existsSync(join(sandboxes, entry, "supervisor.env")))
      : undefined;
    return id === undefined ? undefined : join(sandboxes, id, "supervisor.env");
  });
  expect(statSync(envFile).mode & 0o777).toBe(0o600);
  return { creating, identity: readEnvFile(envFile) };
}

describe("a sandbox served by a supervisor started as its pod starts it, over TCP with TLS only", () => {
  const env = new TestEnv("openshell-pod-path-");
  const name = uniqueName("pod");
  let network: PodNetwork | undefined;
  let pod: PodFiles | undefined;
  let supervisor: PodSupervisor | undefined;
  let identity: Record<string, string> = {};
  let creating: Promise<RunResult> | undefined;
  const stateDir = () => join(env.stateHome, "openshell", "gateways", "local");

  /** The sandbox container's command, with `vars` as its whole environment, in the pod's network namespace. */
  const startSupervisor = (vars: Record<string, string>): PodSupervisor =>
    new PodSupervisor(pod!, vars, network);

  beforeAll(async () => {
    network = new PodNetwork();
    const started = await env.run(
      ["gateway", "start", "--bind", network.hostAddress, "--port", "0", "--tls"],
      { env: EXTERNAL, timeoutMs: 30_000 },
    );
    expect(started.code, started.stderr).toBe(0);
    pod = new PodFiles(makeBundle(join(env.root, "bundle")), join(stateDir(), "tls", "ca.crt"));
  });

  afterAll(async () => {
    // On a failure, whatever of the pod still runs (its supervisor, its bubblewrap) goes first.
    supervisor?.child.kill("SIGKILL");
    pod?.remove();
    network?.remove();
    await env.dispose();
  });

  it("creates the sandbox without starting a supervisor, and hands out its environment: the gateway's TLS listener", async () => {
    ({ creating, identity } = await createExternal(env, name));
    const port = (JSON.parse(readFileSync(join(stateDir(), "gateway.json"), "utf8")) as { port: number })
      .port;
    const id = identity.OPENSHELL_SANDBOX_ID!;
    expect(identity).toEqual({
      OPENSHELL_SANDBOX_ID: expect.stringMatching(/^[0-9a-f-]{36}$/),
      OPENSHELL_ENDPOINT: `${network!.hostAddress}:${port}`,
      OPENSHELL_SANDBOX_SECRET: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    const got = json<{ id: string; phase: string }>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect([got.id, got.phase]).toEqual([id, "Provisioning"]);
    // No supervisor of the gateway's: nothing on this host mentions the sandbox's id.
    expect(processesMentioning(id)).toEqual([]);
  });

  it("refuses a gateway its CA did not sign: the supervisor stops with the TLS failure", async () => {
    const otherCa = await createCertificate({
      commonName: "not the gateway's CA",
      usage: "ca",
      validityDays: 1,
    });
    // The Secret's CA file holds another CA for this start.
    const gatewayCa = readFileSync(pod!.caFile);
    writeFileSync(pod!.caFile, otherCa.cert);
    const wrong = startSupervisor(identity);
    await wrong.exited.finally(() => writeFileSync(pod!.caFile, gatewayCa));
    expect(await wrong.exited).toBe(1);
    expect(wrong.output).toContain(
      `cannot reach the gateway at OPENSHELL_ENDPOINT=${identity.OPENSHELL_ENDPOINT}: unable to verify the first certificate; check OPENSHELL_TLS_CA`,
    );
    const got = json<{ phase: string }>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(got.phase).toBe("Provisioning");
  });

  it("is served by the installed supervisor in its own network namespace, reaching the gateway over TCP with TLS", async () => {
    supervisor = startSupervisor(identity);
    const created = await readyOrExited(creating!, supervisor);
    expect(created.stderr).toContain(`Sandbox '${name}' ready`);
    // Its one connection out: from the pod's address to the gateway's TLS port.
    const port = identity.OPENSHELL_ENDPOINT!.split(":")[1];
    const connections = execFileSync(
      "ip",
      ["netns", "exec", network!.name, "ss", "-Htn", "state", "established"],
      {
        encoding: "utf8",
      },
    );
    expect(connections).toContain(`${network!.podAddress}:`);
    expect(connections).toContain(`${network!.hostAddress}:${port}`);
    // The sandbox's directories are the pod's, not the gateway's.
    expect(readdirSync(pod!.sandboxDir)).toEqual(expect.arrayContaining(["workspace", "run"]));
  });

  it("runs commands through the gateway", async () => {
    const ran = await env.shell(name, "echo from-the-pod; id -u; exit 3");
    expect([ran.code, ran.stdout]).toEqual([3, "from-the-pod\n1000\n"]);
  });

  it("uploads a directory into the sandbox and downloads it back byte for byte", async () => {
    const local = join(env.root, "tree");
    mkdirSync(join(local, "sub"), { recursive: true });
    const blob = Buffer.alloc(300_000, 7);
    writeFileSync(join(local, "a.txt"), "alpha\n");
    writeFileSync(join(local, "sub", "blob.bin"), blob);
    const up = await env.run(["sandbox", "upload", name, local, "/sandbox/tree"]);
    expect(up.code, up.stderr).toBe(0);
    const seen = await env.shell(name, "cat /sandbox/tree/a.txt; ls /sandbox/tree/sub");
    expect(seen.stdout).toBe("alpha\nblob.bin\n");
    const back = join(env.root, "back");
    const down = await env.run(["sandbox", "download", name, "/sandbox/tree", back]);
    expect(down.code, down.stderr).toBe(0);
    expect(readFileSync(join(back, "a.txt"), "utf8")).toBe("alpha\n");
    expect(readFileSync(join(back, "sub", "blob.bin")).equals(blob)).toBe(true);
  });

  it("forwards a port of the sandbox to this host through the gateway", async () => {
    const port = await freePort();
    const page = await env.shell(
      name,
      "mkdir -p /sandbox/www && echo from-the-pod > /sandbox/www/index.html",
    );
    expect(page.code, page.stderr).toBe(0);
    // busybox's own web server, on the sandbox's loopback only.
    const server = env.spawn([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "/bin/busybox",
      "httpd",
      "-f",
      "-p",
      `127.0.0.1:${port}`,
      "-h",
      "/sandbox/www",
    ]);
    const forward = env.spawn(["forward", "start", String(port), name]);
    try {
      await waitForOutput(forward.stderr!, "Press Ctrl+C", "forward start listening");
      // Until the server listens, a connection through the forward is refused in the sandbox.
      const deadline = Date.now() + 20_000;
      let answer: { status: number; body: string } | undefined;
      while (answer?.status !== 200 && Date.now() < deadline) {
        answer = await httpGet(port, "/index.html").catch(() => undefined);
      }
      expect(answer).toEqual({ status: 200, body: "from-the-pod\n" });
    } finally {
      forward.kill("SIGINT");
      server.kill("SIGTERM");
    }
  });

  it("is deleted cleanly: the supervisor stops by itself, its pod's processes are gone, nothing of it is left", async () => {
    const id = identity.OPENSHELL_SANDBOX_ID!;
    const deleted = await env.run(["sandbox", "delete", name]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(await supervisor!.exited).toBe(0);
    expect(supervisor!.output).toContain("the gateway no longer has this sandbox");
    await waitFor("the pod's processes to end", 10_000, () =>
      processesMentioning(id).length === 0 && processesMentioning(pod!.root).length === 0 ? true : undefined,
    );
    expect(existsSync(join(stateDir(), "sandboxes", id))).toBe(false);
    const listed = await env.run(["sandbox", "list", "-o", "json"]);
    expect(listed.stdout).not.toContain(name);
    expect(network!.pids()).toEqual([]);
    network!.remove();
    expect(network!.exists()).toBe(false);
    network = undefined;
  });
});

describe("a pod's supervisor and a gateway that requires client certificates (mTLS)", () => {
  const env = new TestEnv("openshell-pod-mtls-");
  const name = uniqueName("pod-mtls");
  let pod: PodFiles | undefined;
  let certs: Record<string, string> = {};
  let identity: Record<string, string> = {};
  let creating: Promise<RunResult> | undefined;

  beforeAll(async () => {
    const clientsCa = await createCertificate({ commonName: "pods' CA", usage: "ca", validityDays: 1 });
    const podCert = await createCertificate(
      { commonName: "a pod", usage: "client", validityDays: 1 },
      clientsCa,
    );
    certs = { ca: join(env.root, "pods-ca.crt") };
    writeFileSync(certs.ca!, clientsCa.cert);
    const started = await env.run(["gateway", "start", "--port", "0", "--tls", "--client-ca", certs.ca!], {
      env: EXTERNAL,
      timeoutMs: 30_000,
    });
    expect(started.code, started.stderr).toBe(0);
    const gatewayCa = join(env.stateHome, "openshell", "gateways", "local", "tls", "ca.crt");
    pod = new PodFiles(makeBundle(join(env.root, "bundle")), gatewayCa);
    // The pod's client certificate, in its Secret beside the CA.
    writeFileSync(join(pod.secret, "tls.crt"), podCert.cert);
    writeFileSync(join(pod.secret, "tls.key"), podCert.key, { mode: 0o600 });
    ({ creating, identity } = await createExternal(env, name));
  });

  afterAll(async () => {
    pod?.remove();
    await env.dispose();
  });

  it("refuses a supervisor without a client certificate at the handshake, whatever its sandbox credential", async () => {
    const refused = new PodSupervisor(pod!, identity);
    expect(await refused.exited).toBe(1);
    expect(refused.output).toContain(
      `cannot reach the gateway at OPENSHELL_ENDPOINT=${identity.OPENSHELL_ENDPOINT}: tlsv13 alert certificate required; check`,
    );
    // One line, no stack.
    expect(refused.output).not.toMatch(/\n\s+at /);
    const got = json<{ phase: string }>(await env.run(["sandbox", "get", name, "-o", "json"]));
    expect(got.phase).toBe("Provisioning");
  });

  it("serves the sandbox through a supervisor presenting a client certificate its CA signed", async () => {
    const supervisor = new PodSupervisor(pod!, {
      ...identity,
      OPENSHELL_TLS_CERT: `${IN_POD.secret}/tls.crt`,
      OPENSHELL_TLS_KEY: `${IN_POD.secret}/tls.key`,
    });
    await readyOrExited(creating!, supervisor);
    const ran = await env.run(["sandbox", "exec", "-n", name, "--", "echo", "over-mtls"]);
    expect([ran.code, ran.stdout]).toEqual([0, "over-mtls\n"]);
    const deleted = await env.run(["sandbox", "delete", name]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(await supervisor.exited).toBe(0);
  });
});
