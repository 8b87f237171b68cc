import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type InjectedFile, prepareStaging, stageFiles } from "../../src/supervisor/inject.js";
import { stagedPath } from "../../src/supervisor/mounts.js";
import { SandboxSetupError } from "../../src/supervisor/setup-errors.js";

const isRoot = process.getuid?.() === 0;
// As root, stage for someone else to see that ownership is set, not inherited.
const OWNER = isRoot ? { uid: 4321, gid: 4321 } : { uid: process.getuid!(), gid: process.getgid!() };

describe("stageFiles", () => {
  let root: string;
  let staging: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "openshell-stage-"));
    staging = join(root, "files");
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const files: InjectedFile[] = [
    { path: "/etc/app/cfg.yaml", content: Buffer.from("a: 1\n"), mode: 0 },
    { path: "/opt/tools/tool.sh", content: Buffer.from("#!/bin/sh\necho hi\n"), mode: 0o555 },
    { path: "/sandbox/.agent/SOUL.md", content: Buffer.from([0, 1, 2, 255]), mode: 0o440 },
  ];

  it("writes each file at <root><path> with its mode (0 means 0444), owned as asked", async () => {
    await stageFiles(files, staging, OWNER);
    for (const file of files) {
      const path = stagedPath(staging, file.path);
      expect(await readFile(path)).toEqual(file.content);
      const st = await stat(path);
      expect(st.mode & 0o7777).toBe(file.mode || 0o444);
      expect([st.uid, st.gid]).toEqual([OWNER.uid, OWNER.gid]);
    }
    for (const dir of [
      staging,
      join(staging, "etc"),
      join(staging, "etc/app"),
      join(staging, "sandbox/.agent"),
    ]) {
      const st = await stat(dir);
      expect(st.mode & 0o7777).toBe(0o755);
      expect([st.uid, st.gid]).toEqual([OWNER.uid, OWNER.gid]);
    }
    // Nothing but the files themselves is left in their directory.
    expect(await readdir(join(staging, "etc/app"))).toEqual(["cfg.yaml"]);
  });

  it("rebuilds the tree from nothing on every start", async () => {
    await mkdir(join(staging, "stale"), { recursive: true });
    await writeFile(join(staging, "stale/old"), "left from a previous run");
    await symlink("/", join(staging, "etc"));
    await stageFiles(files, staging, OWNER);
    expect((await readdir(staging)).sort()).toEqual(["etc", "opt", "sandbox"]);
    expect((await stat(join(staging, "etc"))).isDirectory()).toBe(true);
    await stageFiles(files.slice(1), staging, OWNER);
    expect((await readdir(staging)).sort()).toEqual(["opt", "sandbox"]);
  });

  it("stages in passes: the picked files first, a directory on its own, the rest later", async () => {
    const tree = prepareStaging(staging, OWNER);
    tree.directory("/etc/app");
    tree.add(files);
    tree.write((path) => path.startsWith("/sandbox/"));
    expect(await readdir(join(staging, "etc/app"))).toEqual([]);
    expect(await readFile(stagedPath(staging, "/sandbox/.agent/SOUL.md"))).toEqual(files[2]!.content);
    tree.write();
    for (const file of files) expect(await readFile(stagedPath(staging, file.path))).toEqual(file.content);
    // Each file is written once: a further pass has nothing left to do.
    tree.write();
    expect(await readdir(join(staging, "etc/app"))).toEqual(["cfg.yaml"]);
  });

  it("a later pass refuses a staging directory replaced by a symlink, naming the file", async () => {
    const tree = prepareStaging(staging, OWNER);
    tree.add(files);
    tree.write((path) => path.startsWith("/sandbox/"));
    await symlink("/", join(staging, "etc"));
    const error = (() => {
      try {
        tree.write();
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(SandboxSetupError);
    expect((error as SandboxSetupError).message).toMatch(
      /^\/etc\/app\/cfg\.yaml: staging directory .*\/etc is a symlink/,
    );
  });

  it("refuses files that cannot all be staged, naming the file", async () => {
    const cases: [InjectedFile[], string][] = [
      [
        [{ path: "etc/x", content: Buffer.from(""), mode: 0 }],
        "etc/x: the path must be absolute, below /, without ..",
      ],
      [
        [{ path: "/a/../b", content: Buffer.from(""), mode: 0 }],
        "/a/../b: the path must be absolute, below /, without ..",
      ],
      [[{ path: "/x", content: Buffer.from(""), mode: 0o4755 }], "/x: mode 4755 is not within 0777"],
      [
        [
          { path: "/x", content: Buffer.from("1"), mode: 0 },
          { path: "//x", content: Buffer.from("2"), mode: 0 },
        ],
        "//x: another injected file has the same path",
      ],
      // The same rules as the gateway's, not looser ones.
      [
        [{ path: "/proc/x", content: Buffer.from(""), mode: 0 }],
        "/proc/x: the path must not be under /proc, which is reserved",
      ],
      [
        [{ path: "/etc/x\0y", content: Buffer.from(""), mode: 0 }],
        "/etc/x\0y: the path must be absolute, below /, without ..",
      ],
      [
        [{ path: "/etc/x/", content: Buffer.from(""), mode: 0 }],
        "/etc/x/: the path must name a file, not end with '/'",
      ],
      [
        [{ path: "/sandbox", content: Buffer.from(""), mode: 0 }],
        "/sandbox: the path is the sandbox's workspace directory; name a file inside it (e.g. /sandbox/app.conf)",
      ],
      [[{ path: "/x", content: Buffer.from(""), mode: 0o1000 }], "/x: mode 1000 is not within 0777"],
      [[{ path: "/x", content: Buffer.from(""), mode: -1 }], "/x: mode -1 is not within 0777"],
      [
        [
          { path: "/a/b/c", content: Buffer.from("1"), mode: 0 },
          { path: "/a/b", content: Buffer.from("2"), mode: 0 },
        ],
        "/a/b/c: /a/b is itself an injected file",
      ],
    ];
    for (const [input, message] of cases) {
      const error = await stageFiles(input, staging, OWNER).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SandboxSetupError);
      expect((error as SandboxSetupError).reason).toBe("FileInjectionFailed");
      expect((error as SandboxSetupError).message).toBe(message);
    }
  });
});
