// Tamper-proof files injected at create time (`--file LOCAL:REMOTE[:MODE]`),
// through the real CLI, gateway, supervisor and bubblewrap.

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { credentials, InterceptingCall, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ListSandboxesResponse, OpenShellClient, type SandboxFile } from "../../src/gen/openshell.js";
import {
  gatewayClient,
  gatewayTarget,
  json,
  TestEnv,
  uniqueName,
  waitForOutput,
  waitForPhase,
} from "../helpers/cli.js";
import { startStandIn } from "../helpers/stand-in.js";

const MiB = 1024 * 1024;
const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");

interface FileDoc {
  path: string;
  mode: string;
  size: number;
  sha256: string;
}

describe("injected files inside a sandbox", () => {
  const env = new TestEnv();
  const name = uniqueName("files");
  const soul = Buffer.from("# SOUL\nYou are careful.\n");
  const tool = Buffer.from('#!/bin/sh\necho tool-ran "$@"\n');
  const cfg = Buffer.from("key: value\n");
  const files = [
    { path: "/sandbox/.agent/SOUL.md", content: soul, mode: "444" },
    { path: "/opt/tools/tool.sh", content: tool, mode: "555" },
    { path: "/etc/app/cfg.yaml", content: cfg, mode: "444" },
  ];

  beforeAll(async () => {
    await env.startGateway();
    writeFileSync(join(env.root, "soul.md"), soul);
    writeFileSync(join(env.root, "tool.sh"), tool);
    writeFileSync(join(env.root, "cfg.yaml"), cfg);
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--detach",
        "--file",
        "./soul.md:/sandbox/.agent/SOUL.md",
        "--file",
        "./tool.sh:/opt/tools/tool.sh:0555",
        "--file",
        "./cfg.yaml:/etc/app/cfg.yaml:0444",
        "--",
        "sleep",
        "infinity",
      ],
      { cwd: env.root },
    );
    expect(created.code, created.stderr).toBe(0);
  });
  afterAll(() => env.dispose());

  const sh = (script: string) => env.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", script]);

  it("content is byte-identical, modes are as given, and the tool runs", async () => {
    for (const file of files) {
      const result = await sh(`sha256sum ${file.path} | cut -d' ' -f1; stat -c %a ${file.path}`);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toBe(`${sha256(file.content)}\n${file.mode}\n`);
    }
    const ran = await env.run(["sandbox", "exec", "-n", name, "--", "/opt/tools/tool.sh", "x"]);
    expect(ran.stdout).toBe("tool-ran x\n");
  });

  it("the main process finds every file complete at its first instruction", async () => {
    // Files in a directory bound whole are written while the pod boots; the
    // agent starts nothing until they are all there.
    const first = uniqueName("files-first");
    const paths = files.map((file) => file.path).join(" ");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        first,
        "--detach",
        ...["--file", "./soul.md:/sandbox/.agent/SOUL.md", "--file", "./tool.sh:/opt/tools/tool.sh:0555"],
        ...["--file", "./cfg.yaml:/etc/app/cfg.yaml"],
        "--",
        "sh",
        "-c",
        `sha256sum ${paths}; stat -c 'mode %a %n' ${paths}; echo checked; exec sleep infinity`,
      ],
      { cwd: env.root },
    );
    expect(created.code, created.stderr).toBe(0);
    const tail = env.spawn(["logs", first, "--tail"]);
    const seen = await waitForOutput(tail.stdout!, /\[stdout\] checked\n/, "the main process's file check");
    tail.kill("SIGINT");
    for (const file of files) {
      expect(seen).toContain(`${sha256(file.content)}  ${file.path}`);
      expect(seen).toContain(`mode ${file.mode} ${file.path}`);
    }
    // Staged on /dev/shm (a tmpfs here), in a directory that goes with the sandbox.
    const { id } = json<{ id: string }>(await env.run(["sandbox", "get", first, "-o", "json"]));
    const staged = () =>
      readdirSync("/dev/shm").filter((entry) => entry.startsWith(`openshell-files-${id}-`));
    expect(staged()).toHaveLength(1);
    const deleted = await env.run(["sandbox", "delete", first]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(staged()).toEqual([]);
  });

  it("sandbox get shows each file's path, mode, size and sha256, and no content", async () => {
    const result = await env.run(["sandbox", "get", name, "-o", "json"]);
    const doc = json<{ files: FileDoc[] }>(result);
    expect(doc.files).toEqual(
      files.map((f) => ({
        path: f.path,
        mode: `0${f.mode}`,
        size: f.content.length,
        sha256: sha256(f.content),
      })),
    );
    expect(result.stdout).not.toContain(soul.toString("base64"));
    expect(result.stdout).not.toContain("You are careful");
  });

  // Each route an agent could take to change a file, as the sandbox user.
  const attacks: [string, (p: string) => string][] = [
    ["write", (p) => `echo evil > ${p}`],
    ["append", (p) => `echo evil >> ${p}`],
    ["truncate", (p) => `truncate -s 0 ${p}`],
    ["chmod", (p) => `chmod 666 ${p}`],
    ["chown", (p) => `chown $(id -u) ${p}`],
    ["rm", (p) => `rm -f ${p}`],
    ["mv away", (p) => `mv -f ${p} /sandbox/moved-away`],
    ["mv over", (p) => `echo evil > /sandbox/evil && mv -f /sandbox/evil ${p}`],
    [
      "rename the parent directory",
      (p) => `d=$(dirname ${p}); mv "$d" "$d.moved" && mkdir -p "$d" && echo evil > ${p}`,
    ],
    [
      "remove the parent directory",
      (p) => `d=$(dirname ${p}); rm -rf "$d"; mkdir -p "$d" && echo evil > ${p}`,
    ],
    ["hard link then write", (p) => `ln -f ${p} /sandbox/hardlink && echo evil > /sandbox/hardlink`],
    // util-linux umount refuses non-root users before any syscall, so call umount2 (x86_64: 166) directly.
    ["umount", (p) => `perl -e 'my $p = shift; syscall(166, $p, 2) == 0 or exit 1' ${p} && echo evil > ${p}`],
    [
      "umount the parent directory",
      (p) =>
        `perl -e 'my $p = shift; syscall(166, $p, 2) == 0 or exit 1' $(dirname ${p}) && echo evil > ${p}`,
    ],
    ["a new file beside it, then mv over", (p) => `echo evil > ${p}.new && mv -f ${p}.new ${p}`],
  ];

  for (const [label, attack] of attacks) {
    it(`${label} fails and leaves every file unchanged`, async () => {
      for (const file of files) {
        const result = await sh(
          `(${attack(file.path)}) 2>/dev/null; echo "status=$?"; sha256sum ${file.path}`,
        );
        expect(result.stdout, `${label} on ${file.path}`).not.toContain("status=0");
        expect(result.stdout).toContain(`${sha256(file.content)}  ${file.path}`);
      }
      const modes = await sh(files.map((f) => `stat -c %a ${f.path}`).join("; "));
      expect(modes.stdout).toBe(`${files.map((f) => f.mode).join("\n")}\n`);
    });
  }

  it("the rest of the workspace, and of the file's own directory, stays writable", async () => {
    const result = await sh(
      "echo ok > /sandbox/free && mkdir -p /sandbox/d && mv /sandbox/d /sandbox/d2 && rm -r /sandbox/d2 && echo ok > /sandbox/.agent/notes.md && rm /sandbox/.agent/notes.md && echo done",
    );
    expect(result.stdout, result.stderr).toBe("done\n");
  });

  it("an upload over an injected file fails and names it", async () => {
    writeFileSync(join(env.root, "SOUL.md"), "evil\n");
    const result = await env.run(["sandbox", "upload", name, "./SOUL.md", "/sandbox/.agent/SOUL.md"], {
      cwd: env.root,
    });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain("/sandbox/.agent/SOUL.md");
    const check = await sh("sha256sum /sandbox/.agent/SOUL.md");
    expect(check.stdout).toContain(sha256(soul));
  });

  it("files survive gateway stop and start, and are still protected", async () => {
    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    await env.startGateway();
    await waitForPhase(env, name, "Ready");
    for (const file of files) {
      const result = await sh(
        `(echo evil > ${file.path}) 2>/dev/null; sha256sum ${file.path}; stat -c %a ${file.path}`,
      );
      expect(result.stdout).toBe(`${sha256(file.content)}  ${file.path}\n${file.mode}\n`);
    }
  });

  // Last in this group: it leaves the sandbox in Error.
  it("a sandbox whose stored content is gone goes to Error (FileInjectionFailed) at its next start, never runs without its files", async () => {
    // Running sandboxes outlive their gateway: this one is stopped first, so that it starts again.
    const stopped = await env.run(["sandbox", "stop", name], { timeoutMs: 60_000 });
    expect(stopped.code, stopped.stderr).toBe(0);
    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    const sandboxes = join(env.stateHome, "openshell", "gateways", "local", "sandboxes");
    const stored = readdirSync(sandboxes)
      .map((id) => join(sandboxes, id, "files.pb"))
      .filter((path) => existsSync(path));
    expect(stored).toHaveLength(1);
    rmSync(stored[0]!);
    await env.startGateway();
    const start = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(start.code).not.toBe(0);
    await waitForPhase(env, name, "Error");
    const got = await env.run(["sandbox", "get", name, "-o", "json"]);
    expect(got.stdout).toContain("FileInjectionFailed");
    const ran = await env.run(["sandbox", "exec", "-n", name, "--", "true"]);
    expect(ran.code).not.toBe(0);
  });
});

describe("--file limits and checks, before anything is created", () => {
  const env = new TestEnv();
  beforeAll(async () => {
    await env.startGateway();
    writeFileSync(join(env.root, "one-mib"), Buffer.alloc(MiB, 1));
    writeFileSync(join(env.root, "one-mib-plus"), Buffer.alloc(MiB + 1, 1));
    writeFileSync(join(env.root, "small"), "x");
    mkdirSync(join(env.root, "tree"));
    for (let i = 0; i < 256; i++)
      writeFileSync(join(env.root, "tree", `f${i}`), Buffer.alloc((10 * MiB) / 256, i));
    mkdirSync(join(env.root, "a-directory"));
  });
  afterAll(() => env.dispose());

  const create = (flags: string[]) =>
    env.run(["sandbox", "create", "--detach", ...flags, "--", "sleep", "infinity"], {
      cwd: env.root,
      timeoutMs: 120_000,
    });
  const listNames = async () =>
    json<{ name: string }[]>(await env.run(["sandbox", "list", "-o", "json"])).map((s) => s.name);

  it("accepts a file of exactly 1,048,576 bytes and refuses 1,048,577", async () => {
    const ok = await create(["--name", "max-file", "--file", "./one-mib:/sandbox/one"]);
    expect(ok.code, ok.stderr).toBe(0);
    const bad = await create(["--name", "over-file", "--file", "./one-mib-plus:/sandbox/one"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--file ./one-mib-plus:/sandbox/one");
    expect(bad.stderr).toContain("1 MiB per-file limit");
    expect(await listNames()).toEqual(["max-file"]);
  });

  it("accepts 256 files totalling exactly 10 MiB and refuses 10 MiB + 1 byte", async () => {
    const flags = Array.from({ length: 256 }, (_, i) => ["--file", `./tree/f${i}:/sandbox/t/f${i}`]).flat();
    const ok = await create(["--name", "max-total", ...flags]);
    expect(ok.code, ok.stderr).toBe(0);
    const check = await env.run([
      "sandbox",
      "exec",
      "-n",
      "max-total",
      "--",
      "sh",
      "-c",
      "cat /sandbox/t/* | wc -c",
    ]);
    expect(check.stdout.trim()).toBe(String(10 * MiB));
    const over = Array.from({ length: 10 }, (_, i) => ["--file", `./one-mib:/sandbox/m${i}`]).flat();
    const bad = await create(["--name", "over-total", ...over, "--file", "./small:/sandbox/extra"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/10 MiB limit/);
    expect((await listNames()).sort()).toEqual(["max-file", "max-total"]);
  });

  it.each([
    ["a relative REMOTE", "./small:sandbox/x", /REMOTE must be an absolute path/],
    ["a '..' component", "./small:/sandbox/../etc/x", /\.\./],
    ["/", "./small:/", /\//],
    ["a path under /proc", "./small:/proc/x", /\/proc/],
    ["mode 4755", "./small:/sandbox/x:4755", /setuid|setgid|sticky/],
    ["mode 999", "./small:/sandbox/x:999", /octal/],
    ["a missing LOCAL", "./nope:/sandbox/x", /nope/],
    ["a directory LOCAL", "./a-directory:/sandbox/x", /use --upload for directories/],
  ])("refuses %s with its own message, naming the flag", async (_label, flag, message) => {
    const result = await create(["--file", flag]);
    expect(result.code).toBe(1);
    const errors = result.stderr.split("\n").filter((line) => line.startsWith("error:"));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain(`--file ${flag}`);
    expect(errors[0]).toMatch(message);
    expect((await listNames()).sort()).toEqual(["max-file", "max-total"]);
  });

  it("the gateway applies the same checks (INVALID_ARGUMENT spec.files[i] ...)", async () => {
    const before = await listNames();
    const client = gatewayClient(env);
    const send = (file: SandboxFile) =>
      new Promise<{ code: number; details: string }>((resolve) => {
        client.createSandbox(
          {
            spec: {
              logLevel: "",
              environment: {},
              providers: [],
              command: ["sleep", "infinity"],
              tty: false,
              files: [file],
            },
            name: "",
            labels: {},
            annotations: {},
            workspace: "",
          },
          (error) => resolve({ code: error?.code ?? 0, details: error?.details ?? "" }),
        );
      });
    const base = { content: Buffer.from("x"), mode: 0o444, size: 0, sha256: "" };
    const relative = await send({ ...base, path: "etc/x" });
    expect(relative.code).toBe(status.INVALID_ARGUMENT);
    expect(relative.details).toMatch(/^spec\.files\[0\]/);
    const setuid = await send({ ...base, path: "/sandbox/x", mode: 0o4755 });
    expect(setuid.code).toBe(status.INVALID_ARGUMENT);
    expect(setuid.details).toMatch(/^spec\.files\[0\]/);
    const big = await send({ ...base, path: "/sandbox/x", content: Buffer.alloc(MiB + 1) });
    expect(big.code).toBe(status.INVALID_ARGUMENT);
    client.close();
    // A request beyond the gateway's raised receive limit is refused by its transport, with a clear reason.
    const raw = new OpenShellClient(new URL(gatewayTarget(env).endpoint).host, credentials.createInsecure(), {
      "grpc.max_send_message_length": -1,
      interceptors: [
        (options, next) =>
          new InterceptingCall(next(options), {
            start(metadata, listener, nextStart) {
              metadata.set("authorization", `Bearer ${gatewayTarget(env).token}`);
              nextStart(metadata, listener);
            },
          }),
      ],
    });
    const huge = await new Promise<{ code: number; details: string }>((resolve) => {
      raw.createSandbox(
        {
          spec: {
            logLevel: "",
            environment: {},
            providers: [],
            command: ["true"],
            tty: false,
            files: [{ ...base, path: "/sandbox/x", content: Buffer.alloc(12 * MiB) }],
          },
          name: "",
          labels: {},
          annotations: {},
          workspace: "",
        },
        (error) => resolve({ code: error?.code ?? 0, details: error?.details ?? "" }),
      );
    });
    raw.close();
    expect(huge.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(huge.details).toMatch(/larger than max/i);
    expect(await listNames()).toEqual(before);
  });
});

describe("many sandboxes with files stay small on the wire", () => {
  const env = new TestEnv();
  beforeAll(async () => {
    await env.startGateway();
    for (let i = 0; i < 10; i++) writeFileSync(join(env.root, `big${i}`), Buffer.alloc(MiB, i + 1));
  });
  afterAll(() => env.dispose());

  it("a list of 20 sandboxes with 10 MiB of files each is under 100 KB", { timeout: 300_000 }, async () => {
    const flags = Array.from({ length: 10 }, (_, i) => ["--file", `./big${i}:/sandbox/big${i}`]).flat();
    for (let i = 0; i < 20; i++) {
      const result = await env.run(
        ["sandbox", "create", "--name", `wire-${i}`, "--detach", ...flags, "--", "sleep", "infinity"],
        {
          cwd: env.root,
          timeoutMs: 120_000,
        },
      );
      expect(result.code, result.stderr).toBe(0);
    }
    const client = gatewayClient(env);
    const response = await new Promise<ListSandboxesResponse>((resolve, reject) => {
      client.listSandboxes(
        { limit: 100, offset: 0, labelSelector: "", workspace: "", allWorkspaces: false },
        (e, r) => (e ? reject(e) : resolve(r)),
      );
    });
    client.close();
    expect(response.sandboxes).toHaveLength(20);
    const bytes = ListSandboxesResponse.encode(response).finish().length;
    expect(bytes).toBeLessThan(100_000);
    for (const sandbox of response.sandboxes) {
      expect(sandbox.spec!.files).toHaveLength(10);
      for (const file of sandbox.spec!.files) {
        expect(file.content.length).toBe(0);
        expect(file.size).toBe(MiB);
      }
    }
  });
});

/**
 * An OpenShell gateway cannot run here (it needs Docker or Kubernetes): the
 * stand-in (test/helpers/stand-in.ts) answers GetGatewayInfo as one does, with
 * no capabilities, or, as one does for a caller who is not its admin,
 * PERMISSION_DENIED; and counts the creates it is asked for (none should come).
 */
async function upstreamStandIn(info: "no capabilities" | "admins only"): Promise<{
  endpoint: string;
  creates(): number;
  close(): void;
}> {
  let creates = 0;
  const standIn = await startStandIn({
    ...(info === "admins only"
      ? {
          getGatewayInfo: (_call: unknown, callback: (e: { code: number; details: string }) => void) =>
            callback({ code: status.PERMISSION_DENIED, details: "platform_admin role required" }),
        }
      : {}),
    createSandbox: (_call: unknown, callback: (e: { code: number; details: string }) => void) => {
      creates += 1;
      callback({ code: status.INTERNAL, details: "should not be called" });
    },
  });
  return { endpoint: standIn.endpoint, creates: () => creates, close: () => standIn.server.forceShutdown() };
}

describe("against a gateway that would drop the files, or start the command before the uploads", () => {
  let standIn: Awaited<ReturnType<typeof upstreamStandIn>>;
  const env = new TestEnv();

  beforeAll(async () => {
    standIn = await upstreamStandIn("no capabilities");
    writeFileSync(join(env.root, "cfg"), "x\n");
    mkdirSync(join(env.root, "src"));
    writeFileSync(join(env.root, "src", "main.py"), "print(1)\n");
  });
  afterAll(async () => {
    standIn.close();
    await env.dispose();
  });

  it("refuses --file before creating anything, and says why", async () => {
    const result = await env.run(
      [
        "--gateway-endpoint",
        standIn.endpoint,
        "sandbox",
        "create",
        "--detach",
        "--file",
        "./cfg:/etc/cfg",
        "--",
        "true",
      ],
      { cwd: env.root },
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("does not support --file");
    expect(standIn.creates()).toBe(0);
  });

  it("refuses --upload with a command before creating anything: the command would start before its files", async () => {
    const result = await env.run(
      [
        "--gateway-endpoint",
        standIn.endpoint,
        "sandbox",
        "create",
        "--upload",
        "./src:/sandbox/src",
        "--",
        "python3",
        "/sandbox/src/main.py",
      ],
      { cwd: env.root },
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("cannot hold the command until the uploads are in");
    expect(result.stderr).toContain("openshell sandbox exec -n NAME -- COMMAND");
    expect(standIn.creates()).toBe(0);
  });
});

describe("against a gateway that answers GetGatewayInfo to its admins only", () => {
  let standIn: Awaited<ReturnType<typeof upstreamStandIn>>;
  const env = new TestEnv();

  beforeAll(async () => {
    standIn = await upstreamStandIn("admins only");
    writeFileSync(join(env.root, "cfg"), "x\n");
    mkdirSync(join(env.root, "src"));
  });
  afterAll(async () => {
    standIn.close();
    await env.dispose();
  });

  it("says it cannot tell whether the gateway takes files, not that the token is wrong", async () => {
    const endpoint = standIn.endpoint;
    const files = await env.run(
      ["--gateway-endpoint", endpoint, "sandbox", "create", "--detach", "--file", "./cfg:/etc/cfg"],
      { cwd: env.root },
    );
    expect(files.code).toBe(1);
    expect(files.stderr).toContain(
      `cannot tell whether gateway '${endpoint}' takes files (--file): it answers GetGatewayInfo, where a gateway says what it supports, only to its admins`,
    );
    expect(files.stderr).not.toContain("not authorized");
    expect(files.stderr).not.toContain("token");
    const uploads = await env.run(
      ["--gateway-endpoint", endpoint, "sandbox", "create", "--upload", "./src", "--", "true"],
      { cwd: env.root },
    );
    expect(uploads.code).toBe(1);
    expect(uploads.stderr).toContain(
      "can hold the command until the uploads are in (--upload with a command)",
    );
    expect(standIn.creates()).toBe(0);
  });
});
