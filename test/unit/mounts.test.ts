import { lstat, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { normalizeSandboxPath } from "../../src/core/files.js";
import type { FilesystemPolicy } from "../../src/gen/sandbox.js";
import {
  applyHostPrep,
  type HostEntry,
  type HostFs,
  type HostPrepStep,
  type MountPlanInput,
  planMounts,
} from "../../src/supervisor/mounts.js";
import { SandboxSetupError } from "../../src/supervisor/setup-errors.js";

const dir: HostEntry = { kind: "dir" };
const file: HostEntry = { kind: "file" };
const link = (target: string): HostEntry => ({ kind: "symlink", target });

/** A made-up merged-usr host. */
const HOST: Record<string, HostEntry> = {
  "/usr": dir,
  "/usr/bin": dir,
  "/usr/bin/sh": file,
  "/usr/lib": dir,
  "/usr/lib64": dir,
  "/usr/sbin": dir,
  "/bin": link("usr/bin"),
  "/sbin": link("usr/sbin"),
  "/lib": link("usr/lib"),
  "/lib64": link("usr/lib64"),
  "/etc": dir,
  "/etc/passwd": file,
  "/etc/group": file,
  "/etc/hosts": file,
  "/etc/resolv.conf": link("../run/resolv.conf"),
  "/etc/ssh": dir,
  "/etc/ssh/ssh_config": file,
  "/etc/ssh/moduli": file,
  "/etc/alt": link("ssh"),
  "/data": dir,
  "/data/ref": dir,
  "/srv/agent": dir,
  "/srv/run": dir,
};

function fakeHost(entries: Record<string, HostEntry>): HostFs {
  return {
    lstat: (path) => entries[path],
    isDirectory: (path) => (path in entries ? entries[path]!.kind === "dir" : undefined),
    readdir: (path) =>
      Object.keys(entries)
        .filter((p) => posix.dirname(p) === path && p !== path)
        .map((p) => posix.basename(p)),
  };
}

const DIRS = { workspace: "/S/ws", tmp: "/S/tmp", rwRoot: "/S/rw", files: "/S/files" };
const OWNER = { uid: 2000000007, gid: 2000000007 };

const DEFAULT_POLICY: FilesystemPolicy = {
  includeWorkdir: true,
  readOnly: ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/app", "/var/log", "/proc", "/dev/urandom"],
  readWrite: ["/tmp", "/dev/null"],
};

function input(overrides: Partial<MountPlanInput> = {}): MountPlanInput {
  return {
    policy: DEFAULT_POLICY,
    dirs: DIRS,
    injectedFiles: [],
    passwdFile: "/S/passwd",
    groupFile: "/S/group",
    controlBinds: [],
    uid: 1000,
    gid: 1000,
    hostOwner: OWNER,
    hostname: "sbx",
    fs: fakeHost(HOST),
    ...overrides,
  };
}

const ARITY: Record<string, number> = {
  "--bind": 2,
  "--ro-bind": 2,
  "--symlink": 2,
  "--dir": 1,
  "--tmpfs": 1,
  "--remount-ro": 1,
  "--proc": 1,
  "--dev": 1,
  "--chdir": 1,
};

/** The mount part of bwrap's arguments, one operation per line. */
function mountOps(args: string[]): string[] {
  const ops: string[] = [];
  const start = args.indexOf("--clearenv") + 1;
  for (let i = start; i < args.length; ) {
    const flag = args[i]!;
    const arity = ARITY[flag];
    if (arity === undefined) throw new Error(`unexpected argument ${flag}`);
    ops.push([flag, ...args.slice(i + 1, i + 1 + arity)].join(" "));
    i += 1 + arity;
  }
  return ops;
}

function expectParentsFirst(ops: string[]): void {
  const dests = ops.map((op) => op.split(" ").at(-1)!);
  dests.forEach((dest, i) => {
    for (const later of dests.slice(i + 1)) {
      if (dest === "/" || later === dest) continue;
      expect(dest.startsWith(`${later}/`), `${later} is mounted after ${dest} below it`).toBe(false);
    }
  });
}

function thrown(fn: () => unknown): SandboxSetupError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(SandboxSetupError);
    return error as SandboxSetupError;
  }
  throw new Error("expected a SandboxSetupError");
}

describe("planMounts", () => {
  it("builds the default-like pod: namespaces first, parents before children, root read-only last", () => {
    const plan = planMounts(
      input({
        injectedFiles: ["/sandbox/.agent/SOUL.md", "/opt/tools/tool.sh", "/etc/app/cfg.yaml", "/tmp/inj/x"],
        controlBinds: [
          { src: "/srv/agent", dest: "/opt/openshell", writable: false },
          { src: "/srv/run", dest: "/run/openshell", writable: true },
        ],
      }),
    );
    expect(plan.args.slice(0, plan.args.indexOf("--clearenv") + 1)).toEqual([
      "--unshare-user",
      "--uid",
      "1000",
      "--gid",
      "1000",
      "--unshare-ipc",
      "--unshare-pid",
      "--unshare-net",
      "--unshare-uts",
      "--unshare-cgroup-try",
      "--disable-userns",
      "--die-with-parent",
      "--new-session",
      "--cap-drop",
      "ALL",
      "--hostname",
      "sbx",
      "--clearenv",
    ]);
    const ops = mountOps(plan.args);
    expect(ops).toEqual([
      "--dev /dev",
      "--proc /proc",
      "--symlink usr/bin /bin",
      // /etc/app is missing on the host and /etc is read-only: /etc is exploded.
      "--tmpfs /etc",
      "--symlink usr/lib /lib",
      "--symlink usr/lib64 /lib64",
      "--dir /opt",
      "--dir /run",
      "--bind /S/ws /sandbox",
      "--symlink usr/sbin /sbin",
      "--bind /S/tmp /tmp",
      "--ro-bind /usr /usr",
      // Self-binds: the directories holding injected files in writable trees become mount points.
      "--bind /S/ws/.agent /sandbox/.agent",
      "--bind /S/tmp/inj /tmp/inj",
      // The exploded /etc shows the host's entries, except those the plan mounts over.
      "--symlink ssh /etc/alt",
      "--ro-bind /etc/hosts /etc/hosts",
      "--symlink ../run/resolv.conf /etc/resolv.conf",
      "--ro-bind /etc/ssh /etc/ssh",
      "--ro-bind /S/group /etc/group",
      "--ro-bind /S/passwd /etc/passwd",
      "--ro-bind /srv/agent /opt/openshell",
      "--bind /srv/run /run/openshell",
      // Directories that exist only for injected files are bound whole, read-only.
      "--ro-bind /S/files/etc/app /etc/app",
      "--ro-bind /S/files/opt/tools /opt/tools",
      "--ro-bind /S/files/sandbox/.agent/SOUL.md /sandbox/.agent/SOUL.md",
      "--ro-bind /S/files/tmp/inj/x /tmp/inj/x",
      "--remount-ro /etc",
      "--remount-ro /",
      "--chdir /sandbox",
    ]);
    expectParentsFirst(ops.slice(0, -3));
    expect(plan.missing).toEqual(["/app", "/var/log"]);
  });

  it("prepares the host dirs below writable roots, owned by the pod's host uid", () => {
    const plan = planMounts(input({ injectedFiles: ["/sandbox/.agent/deep/SOUL.md", "/tmp/inj/x"] }));
    const common = { owner: OWNER };
    expect(plan.prep).toEqual(
      expect.arrayContaining<HostPrepStep>([
        { kind: "root", hostPath: "/S/ws", mode: 0o755, ...common },
        { kind: "root", hostPath: "/S/tmp", mode: 0o1777, ...common },
        {
          kind: "dir",
          hostPath: "/S/ws/.agent",
          sandboxPath: "/sandbox/.agent",
          forPath: "/sandbox/.agent/deep/SOUL.md",
          reason: "FileInjectionFailed",
          mode: 0o755,
          ...common,
        },
        {
          kind: "dir",
          hostPath: "/S/ws/.agent/deep",
          sandboxPath: "/sandbox/.agent/deep",
          forPath: "/sandbox/.agent/deep/SOUL.md",
          reason: "FileInjectionFailed",
          mode: 0o755,
          ...common,
        },
        {
          kind: "file",
          hostPath: "/S/ws/.agent/deep/SOUL.md",
          sandboxPath: "/sandbox/.agent/deep/SOUL.md",
          forPath: "/sandbox/.agent/deep/SOUL.md",
          reason: "FileInjectionFailed",
          ...common,
        },
      ]),
    );
    expect(plan.prep).toHaveLength(7);
    // Every directory is prepared after its parent.
    const order = plan.prep.map((s) => s.hostPath);
    order.forEach((path, i) => {
      if (order.includes(posix.dirname(path))) expect(order.indexOf(posix.dirname(path))).toBeLessThan(i);
    });
    const ops = mountOps(plan.args);
    expect(ops).toContain("--bind /S/ws/.agent /sandbox/.agent");
    expect(ops).toContain("--bind /S/ws/.agent/deep /sandbox/.agent/deep");
    expect(ops.indexOf("--bind /S/ws/.agent /sandbox/.agent")).toBeLessThan(
      ops.indexOf("--bind /S/ws/.agent/deep /sandbox/.agent/deep"),
    );
  });

  it("binds the workspace read-only without include_workdir, and needs no self-binds there", () => {
    const plan = planMounts(
      input({
        policy: { ...DEFAULT_POLICY, includeWorkdir: false },
        injectedFiles: ["/sandbox/.agent/SOUL.md"],
      }),
    );
    const ops = mountOps(plan.args);
    expect(ops).toContain("--ro-bind /S/ws /sandbox");
    expect(ops).not.toContain("--bind /S/ws/.agent /sandbox/.agent");
    expect(plan.prep.map((s) => s.hostPath)).toContain("/S/ws/.agent");
  });

  it("backs read_write paths with private dirs, never the host's own", () => {
    const plan = planMounts(
      input({
        policy: { includeWorkdir: true, readOnly: ["/data/ref"], readWrite: ["/data", "/var/cache/app"] },
      }),
    );
    const ops = mountOps(plan.args);
    expect(ops).toContain("--bind /S/rw/data /data");
    expect(ops).toContain("--bind /S/rw/var/cache/app /var/cache/app");
    // A read_only path inside a read_write one: the mount point is made in the private dir.
    expect(ops).toContain("--ro-bind /data/ref /data/ref");
    expect(ops.indexOf("--bind /S/rw/data /data")).toBeLessThan(ops.indexOf("--ro-bind /data/ref /data/ref"));
    expect(ops).toContain("--dir /var");
    expect(ops).toContain("--dir /var/cache");
    const prep = new Map(plan.prep.map((s) => [s.hostPath, s]));
    expect(prep.get("/S/rw")).toMatchObject({ kind: "root", owner: null });
    // Above a read_write path the private tree is not in the pod: left to the supervisor.
    expect(prep.get("/S/rw/var")).toMatchObject({ kind: "dir", owner: null, sandboxPath: null });
    expect(prep.get("/S/rw/var/cache/app")).toMatchObject({ kind: "dir", owner: OWNER });
    expect(prep.get("/S/rw/data/ref")).toMatchObject({ kind: "dir", owner: OWNER, sandboxPath: "/data/ref" });
  });

  it("explodes a read-only host dir for a read_write path that does not exist in it", () => {
    const plan = planMounts(
      input({ policy: { includeWorkdir: true, readOnly: ["/etc"], readWrite: ["/etc/myapp"] } }),
    );
    const ops = mountOps(plan.args);
    expect(ops).toContain("--tmpfs /etc");
    expect(ops).toContain("--bind /S/rw/etc/myapp /etc/myapp");
    expect(ops).not.toContain("--ro-bind /etc /etc");
    expect(ops.slice(-3)).toEqual(["--remount-ro /etc", "--remount-ro /", "--chdir /sandbox"]);
  });

  it("mounts onto an existing host file without exploding", () => {
    const ops = mountOps(planMounts(input({ injectedFiles: ["/etc/hosts", "/etc/ssh/ssh_config"] })).args);
    expect(ops).toContain("--ro-bind /etc /etc");
    expect(ops).not.toContain("--tmpfs /etc");
    expect(ops).toContain("--ro-bind /S/files/etc/hosts /etc/hosts");
    expect(ops).toContain("--ro-bind /S/files/etc/ssh/ssh_config /etc/ssh/ssh_config");
  });

  it("explodes only the nearest existing dir, keeping the host's other entries", () => {
    const ops = mountOps(
      planMounts(input({ injectedFiles: ["/etc/app/cfg.yaml", "/etc/ssh/new.conf", "/etc/ssh/ssh_config"] }))
        .args,
    );
    expect(ops).toContain("--tmpfs /etc");
    expect(ops).toContain("--tmpfs /etc/ssh");
    // /etc/ssh is the exploded one, so it is not also bound whole inside /etc.
    expect(ops).not.toContain("--ro-bind /etc/ssh /etc/ssh");
    expect(ops).toContain("--ro-bind /etc/ssh/moduli /etc/ssh/moduli");
    // An entry the plan mounts over is left out: the injected file makes its own mount point.
    expect(ops).not.toContain("--ro-bind /etc/ssh/ssh_config /etc/ssh/ssh_config");
    expect(ops).toContain("--ro-bind /S/files/etc/ssh/ssh_config /etc/ssh/ssh_config");
    expect(ops.indexOf("--tmpfs /etc/ssh")).toBeLessThan(
      ops.indexOf("--ro-bind /etc/ssh/moduli /etc/ssh/moduli"),
    );
    expect(ops).toContain("--remount-ro /etc");
    expect(ops).toContain("--remount-ro /etc/ssh");
  });

  it("replaces a host symlink at the injected path instead of following it", () => {
    const ops = mountOps(planMounts(input({ injectedFiles: ["/etc/resolv.conf"] })).args);
    expect(ops).toContain("--tmpfs /etc");
    expect(ops).not.toContain("--symlink ../run/resolv.conf /etc/resolv.conf");
    expect(ops).toContain("--ro-bind /S/files/etc/resolv.conf /etc/resolv.conf");
  });

  it("plans a path below a recreated symlink where the symlink leads", () => {
    const plan = planMounts(input({ injectedFiles: ["/bin/tool"] }));
    const ops = mountOps(plan.args);
    expect(ops).toContain("--symlink usr/bin /bin");
    expect(ops).toContain("--tmpfs /usr/bin");
    expect(ops).toContain("--ro-bind /usr/bin/sh /usr/bin/sh");
    expect(ops).toContain("--ro-bind /S/files/bin/tool /usr/bin/tool");
    expect(ops).toContain("--remount-ro /usr/bin");
  });

  it("puts a file under nothing visible on the root tmpfs, which ends read-only", () => {
    const ops = mountOps(
      planMounts(
        input({ policy: { includeWorkdir: true, readOnly: [], readWrite: [] }, injectedFiles: ["/a/b/c"] }),
      ).args,
    );
    expect(ops).toEqual([
      "--dev /dev",
      "--proc /proc",
      "--dir /etc",
      "--bind /S/ws /sandbox",
      "--bind /S/tmp /tmp",
      "--ro-bind /S/files/a /a",
      "--ro-bind /S/group /etc/group",
      "--ro-bind /S/passwd /etc/passwd",
      "--remount-ro /",
      "--chdir /sandbox",
    ]);
  });

  it("binds a directory that holds only injected files as one mount, and files among other mounts one by one", () => {
    const many = Array.from({ length: 256 }, (_, i) => `/etc/bench/f${i}`);
    const plan = planMounts(
      input({
        policy: { includeWorkdir: true, readOnly: ["/etc", "/usr"], readWrite: ["/var/data"] },
        injectedFiles: [
          ...many,
          "/etc/bench/sub/deep",
          "/usr/local/x",
          "/var/data/cfg",
          "/sandbox/.agent/SOUL.md",
          "/tmp/t",
        ],
        fs: fakeHost({ ...HOST, "/usr/local": dir, "/usr/local/bin": dir }),
      }),
    );
    const injected = mountOps(plan.args).filter((op) => op.includes("/S/files"));
    expect(injected).toEqual([
      // /etc exists on the host, /etc/bench does not: one bind for 257 files.
      "--ro-bind /S/files/etc/bench /etc/bench",
      // Under writable mounts each file is its own bind and the directories stay writable.
      "--ro-bind /S/files/tmp/t /tmp/t",
      "--ro-bind /S/files/sandbox/.agent/SOUL.md /sandbox/.agent/SOUL.md",
      // /usr/local exists on the host (it has other entries): the file alone.
      "--ro-bind /S/files/usr/local/x /usr/local/x",
      "--ro-bind /S/files/var/data/cfg /var/data/cfg",
    ]);
    // The pod stages the files of these after bwrap starts; every other file before.
    expect(plan.injectedDirectories).toEqual(["/etc/bench"]);
  });

  it("reports read_only paths missing on the host and devices --dev does not make", () => {
    const plan = planMounts(
      input({
        policy: { includeWorkdir: true, readOnly: ["/nope", "/dev/nvidia0", "/proc/cpuinfo"], readWrite: [] },
      }),
    );
    expect(plan.missing).toEqual(["/dev/nvidia0", "/nope"]);
    expect(plan.args.join(" ")).not.toContain("/nope");
  });

  it("refuses an injected file that cannot be placed exactly at its path", () => {
    const cases: [string, string][] = [
      ["/etc/ssh", "/etc/ssh: /etc/ssh is a directory"],
      [
        "/sandbox",
        "/sandbox: /sandbox is the sandbox's workspace directory; name a file inside it (e.g. /sandbox/app.conf)",
      ],
      [
        "/tmp",
        "/tmp: /tmp is the sandbox's private /tmp directory; name a file inside it (e.g. /tmp/app.conf)",
      ],
      ["/etc/alt/x", "/etc/alt/x: /etc/alt is a symlink to ssh; use the path it leads to"],
      ["/etc/hosts/x", "/etc/hosts/x: /etc/hosts is a file, not a directory"],
      ["/proc/x", "/proc/x: /proc and /dev are the pod's own; nothing can be placed there"],
      [
        "/etc/passwd",
        "/etc/passwd: /etc/passwd is generated by the supervisor for the sandbox user; inject the file elsewhere",
      ],
      ["/run/openshell/sock", "/run/openshell/sock: /run/openshell is reserved for the supervisor"],
      ["relative/x", "relative/x: the path must be absolute, below /, without .."],
    ];
    for (const [path, message] of cases) {
      const error = thrown(() =>
        planMounts(
          input({
            injectedFiles: [path],
            controlBinds: [{ src: "/srv/run", dest: "/run/openshell", writable: true }],
          }),
        ),
      );
      expect(error.reason).toBe("FileInjectionFailed");
      expect(error.message).toBe(message);
      expect(String(error)).toBe(`FileInjectionFailed: ${message}`);
    }
  });

  it("refuses a policy that would expose the whole host", () => {
    const error = thrown(() =>
      planMounts(input({ policy: { includeWorkdir: true, readOnly: ["/"], readWrite: [] } })),
    );
    expect(error.reason).toBe("FilesystemSetupFailed");
  });
});

describe("normalizeSandboxPath", () => {
  it("normalizes lexically and rejects relative and climbing paths", () => {
    expect(normalizeSandboxPath("//etc/./app/")).toBe("/etc/app");
    expect(normalizeSandboxPath("/")).toBe("/");
    expect(normalizeSandboxPath("etc")).toBeUndefined();
    expect(normalizeSandboxPath("/etc/../root")).toBeUndefined();
  });
});

describe("applyHostPrep", () => {
  let root: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "openshell-prep-"));
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  function stepsFor(injectedFile: string): HostPrepStep[] {
    const dirs = {
      workspace: join(root, "ws"),
      tmp: join(root, "tmp"),
      rwRoot: join(root, "rw"),
      files: join(root, "files"),
    };
    return planMounts(input({ dirs, injectedFiles: [injectedFile], hostOwner: null, fs: fakeHost(HOST) }))
      .prep;
  }

  it("creates the roots, the directories down to an injected file and an empty mount point", async () => {
    await applyHostPrep(stepsFor("/sandbox/.agent/SOUL.md"));
    expect((await stat(join(root, "ws"))).mode & 0o7777).toBe(0o755);
    expect((await stat(join(root, "tmp"))).mode & 0o7777).toBe(0o1777);
    expect((await stat(join(root, "ws/.agent"))).mode & 0o7777).toBe(0o755);
    expect(await readFile(join(root, "ws/.agent/SOUL.md"), "utf8")).toBe("");
    // Idempotent: a restart finds everything in place.
    await applyHostPrep(stepsFor("/sandbox/.agent/SOUL.md"));
  });

  it("refuses a symlinked directory on the way, naming the sandbox path", async () => {
    await mkdir(join(root, "ws"), { recursive: true });
    await mkdir(join(root, "elsewhere"));
    await symlink(join(root, "elsewhere"), join(root, "ws/.agent"));
    const error = await applyHostPrep(stepsFor("/sandbox/.agent/SOUL.md")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SandboxSetupError);
    expect(String(error)).toBe(
      "FileInjectionFailed: /sandbox/.agent/SOUL.md: /sandbox/.agent is a symlink; refusing to mount through it",
    );
    expect((await lstat(join(root, "ws/.agent"))).isSymbolicLink()).toBe(true);
    await expect(stat(join(root, "elsewhere/SOUL.md"))).rejects.toThrow();
  });

  it("refuses a symlink or a directory where the injected file goes", async () => {
    await mkdir(join(root, "ws/.agent"), { recursive: true });
    await writeFile(join(root, "target"), "x");
    await symlink(join(root, "target"), join(root, "ws/.agent/SOUL.md"));
    await expect(applyHostPrep(stepsFor("/sandbox/.agent/SOUL.md"))).rejects.toThrow(
      "/sandbox/.agent/SOUL.md: /sandbox/.agent/SOUL.md is a symlink; refusing to mount through it",
    );
    await rm(join(root, "ws/.agent/SOUL.md"));
    await mkdir(join(root, "ws/.agent/SOUL.md"));
    await expect(applyHostPrep(stepsFor("/sandbox/.agent/SOUL.md"))).rejects.toThrow(
      "/sandbox/.agent/SOUL.md: /sandbox/.agent/SOUL.md is a directory",
    );
  });
});

describe("planMounts on an image's root", () => {
  /** An image unpacked at /IMG, with links that would lead out of it on the host. */
  const IMAGE: Record<string, HostEntry> = {
    "/IMG": dir,
    "/IMG/usr": dir,
    "/IMG/usr/bin": dir,
    "/IMG/usr/bin/sh": file,
    "/IMG/bin": link("usr/bin"),
    "/IMG/etc": dir,
    "/IMG/etc/passwd": file,
    "/IMG/etc/group": file,
    "/IMG/opt": link("/host/opt"),
    "/IMG/app": link("../../../../etc"),
    // The host's own, which no plan may bind.
    "/host/opt": dir,
    "/host/opt/secret": file,
    "/etc": dir,
    "/etc/shadow": file,
  };
  const policy: FilesystemPolicy = {
    includeWorkdir: true,
    readOnly: ["/usr", "/bin", "/etc", "/opt", "/app", "/opt/secret", "/app/shadow"],
    readWrite: ["/tmp"],
  };
  const plan = () =>
    planMounts(
      input({ policy, root: "/IMG", chdir: "/usr", fs: fakeHost(IMAGE), injectedFiles: ["/etc/app/cfg"] }),
    );

  it("binds read_only paths from under the image's root and recreates its links inside the pod", () => {
    const ops = mountOps(plan().args);
    expect(ops).toContain("--ro-bind /IMG/usr /usr");
    // The image's /etc lacks the injected file's directory: a tmpfs shows its entries around it.
    expect(ops).toContain("--tmpfs /etc");
    expect(ops).toContain("--ro-bind /S/files/etc/app /etc/app");
    expect(ops).toContain("--symlink usr/bin /bin");
    expect(ops).toContain("--symlink /host/opt /opt");
    expect(ops).toContain("--symlink ../../../../etc /app");
    expect(ops.at(-1)).toBe("--chdir /usr");
  });

  it("never binds a host path a link of the image's leads to", () => {
    const result = plan();
    const sources = mountOps(result.args)
      .filter((op) => op.startsWith("--ro-bind") || op.startsWith("--bind"))
      .map((op) => op.split(" ")[1]!);
    for (const source of sources) expect(source, source).toMatch(/^\/(IMG|S)\//);
    // Paths through the image's links are planned where the links lead, inside the pod, and are not there.
    expect(result.missing).toEqual(expect.arrayContaining(["/app/shadow", "/opt/secret"]));
  });
});
