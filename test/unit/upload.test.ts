import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
} from "node:fs";
import { mkdir, mkdtemp, rm, symlink, truncate, utimes, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { constants as osConstants, tmpdir } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { remoteTool } from "../../src/core/protocol.js";
import {
  packUpload,
  parseUploadFlag,
  placeUpload,
  planUpload,
  remoteExtractCommand,
  shellEscape,
  type UploadPlan,
  unescapeTarName,
  verifyExtraction,
} from "../../src/transport/tar/upload.js";

let work: string;

beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), "openshell-upload-"));
});

afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

function names(plan: UploadPlan): string[] {
  return plan.entries.map((e) => (e.type === "dir" ? `${e.name}/` : e.name));
}

/** A sink that keeps a copy of every chunk (packUpload reuses its read buffers), or calls `each`. */
function collector(each?: (chunk: Buffer) => void): { sink: Writable; chunks: Buffer[] } {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (each) each(chunk);
      else chunks.push(Buffer.from(chunk));
      callback();
    },
  });
  return { sink, chunks };
}

async function packToBuffer(plan: UploadPlan): Promise<Buffer> {
  const { sink, chunks } = collector();
  const result = await packUpload(plan, sink);
  const archive = Buffer.concat(chunks);
  expect(result.archiveBytes).toBe(archive.length);
  expect(archive.length).toBe(plan.archiveBytes);
  return archive;
}

/** Run the sandbox-side command here, as the sandbox would, with the archive on stdin. */
function runRemote(
  plan: UploadPlan,
  archive: Buffer,
  wrap: (cmd: string) => string[] = (cmd) => ["sh", "-c", cmd],
) {
  const [file, ...args] = wrap(remoteExtractCommand(plan));
  const result = spawnSync(file!, args, { input: archive });
  return { stdout: result.stdout, stderr: result.stderr, status: result.status };
}

function git(cwd: string, ...args: string[]): void {
  execFileSync("git", ["-c", "user.email=t@example.com", "-c", "user.name=t", ...args], {
    cwd,
    stdio: "ignore",
  });
}

function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

/** Every path under dir (relative), with what a user would compare: type, content digest or target, mode. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const childRel = rel === "" ? name : `${rel}/${name}`;
      const p = path.join(dir, childRel);
      const st = lstatSync(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) out[childRel] = `symlink -> ${readlinkSync(p)}`;
      else if (st.isDirectory()) {
        out[childRel] = `dir ${mode}`;
        walk(childRel);
      } else out[childRel] = `file ${mode} ${sha256(p)} ${Math.floor(st.mtimeMs / 1000)}`;
    }
  };
  walk("");
  return out;
}

describe("parseUploadFlag", () => {
  it.each([
    ["./src", { local: "./src", dest: undefined }],
    ["./src:/sandbox/src", { local: "./src", dest: "/sandbox/src" }],
    ["./src:", { local: "./src", dest: undefined }],
    ["a.txt:/x/b:c.txt", { local: "a.txt", dest: "/x/b:c.txt" }],
  ])("%s", (spec, expected) => {
    expect(parseUploadFlag(spec)).toEqual(expected);
  });

  it("rejects an empty local path", () => {
    expect(() => parseUploadFlag(":/sandbox")).toThrow("--upload ':/sandbox': the local path is empty");
  });
});

describe("placeUpload", () => {
  it.each([
    // directory: cp -r, except when DEST already names it
    ["./src", undefined, "dir", ".", "src", "~/src"],
    ["./src", "/sandbox", "dir", "/sandbox", "src", "/sandbox/src"],
    ["./src", "/sandbox/src", "dir", "/sandbox/src", "", "/sandbox/src"],
    ["src/", "/sandbox/src", "dir", "/sandbox/src", "", "/sandbox/src"],
    ["./src", "/sandbox/src/", "dir", "/sandbox/src", "src", "/sandbox/src/src"],
    ["./src", "/sandbox/source", "dir", "/sandbox/source", "src", "/sandbox/source/src"],
    ["./src", "src", "dir", "src", "", "~/src"],
    ["./src", "work", "dir", "work", "src", "~/work/src"],
    ["./src", "/", "dir", "/", "src", "/src"],
    // no name of its own: contents flat
    [".", undefined, "dir", ".", "", "~"],
    [".", "/sandbox", "dir", "/sandbox", "", "/sandbox"],
    ["..", "/sandbox/", "dir", "/sandbox", "", "/sandbox"],
    ["/", "/sandbox", "dir", "/sandbox", "", "/sandbox"],
    ["src/.", "/d", "dir", "/d", "", "/d"],
    // file: cp semantics, renames allowed
    ["a.txt", undefined, "file", ".", "a.txt", "~/a.txt"],
    ["dir/a.txt", "/x/", "file", "/x", "a.txt", "/x/a.txt"],
    ["a.txt", "/x/b.txt", "file", "/x", "b.txt", "/x/b.txt"],
    ["a.txt", "b.txt", "file", ".", "b.txt", "~/b.txt"],
    ["a.txt", "sub/b.txt", "file", "sub", "b.txt", "~/sub/b.txt"],
    ["a.txt", "//x//b.txt", "file", "/x", "b.txt", "/x/b.txt"],
    // a top-level name, `.` or `..` is a directory
    ["a.txt", "/x", "file", "/x", "a.txt", "/x/a.txt"],
    ["a.txt", "/x/.", "file", "/x/.", "a.txt", "/x/a.txt"],
    ["a.txt", ".", "file", ".", "a.txt", "~/a.txt"],
  ] as const)("%s : %s (%s)", (local, dest, kind, extractDir, rootName, remotePath) => {
    expect(placeUpload(local, dest, kind)).toEqual({ extractDir, rootName, remotePath });
  });
});

describe("planUpload", () => {
  it("reports a missing local path", async () => {
    const missing = path.join(work, "nope");
    await expect(planUpload(missing, undefined, { gitIgnore: true })).rejects.toThrow(
      `local path does not exist: ${missing}`,
    );
  });

  it("lands a directory under its name, or at DEST when DEST already names it", async () => {
    const src = path.join(work, "src");
    await mkdir(path.join(src, "sub"), { recursive: true });
    await writeFile(path.join(src, "b.txt"), "b");
    await writeFile(path.join(src, "a.txt"), "a");
    await writeFile(path.join(src, "sub", "c.txt"), "c");

    const nested = await planUpload(src, "/sandbox", { gitIgnore: false });
    expect(nested.extractDir).toBe("/sandbox");
    expect(nested.remotePath).toBe("/sandbox/src");
    expect(names(nested)).toEqual(["src/", "src/a.txt", "src/b.txt", "src/sub/", "src/sub/c.txt"]);
    expect(nested.totals).toEqual({ entries: 5, files: 3, bytes: 3 });

    const same = await planUpload(src, "/sandbox/src", { gitIgnore: false });
    expect(same.extractDir).toBe("/sandbox/src");
    expect(names(same)).toEqual(["a.txt", "b.txt", "sub/", "sub/c.txt"]);

    const into = await planUpload(`${src}/`, "/sandbox/src/", { gitIgnore: false });
    expect(into.remotePath).toBe("/sandbox/src/src");
    expect(names(into)[0]).toBe("src/");

    const flat = await planUpload(`${src}/.`, "/d", { gitIgnore: false });
    expect(names(flat)).toEqual(["a.txt", "b.txt", "sub/", "sub/c.txt"]);
  });

  it("renames a file, keeps its name for a trailing `/` or no DEST", async () => {
    const file = path.join(work, "a.txt");
    await writeFile(file, "hello");
    const renamed = await planUpload(file, "/x/b.txt", { gitIgnore: true });
    expect(renamed.extractDir).toBe("/x");
    expect(names(renamed)).toEqual(["b.txt"]);
    expect(renamed.remotePath).toBe("/x/b.txt");
    expect((await planUpload(file, "/x/", { gitIgnore: true })).remotePath).toBe("/x/a.txt");
    const bare = await planUpload(file, undefined, { gitIgnore: true });
    expect(bare.extractDir).toBe(".");
    expect(bare.remotePath).toBe("~/a.txt");
  });

  it("sorts entries per directory, a directory before its contents", async () => {
    const src = path.join(work, "s");
    for (const d of ["b", "a-c", "a"]) await mkdir(path.join(src, d), { recursive: true });
    await writeFile(path.join(src, "a", "z"), "");
    await writeFile(path.join(src, "Z"), "");
    const plan = await planUpload(src, "/d/", { gitIgnore: false });
    expect(names(plan)).toEqual(["s/", "s/Z", "s/a/", "s/a/z", "s/a-c/", "s/b/"]);
  });

  it("refuses sockets, FIFOs and devices", async () => {
    const src = path.join(work, "src");
    await mkdir(src);
    execFileSync("mkfifo", [path.join(src, "pipe")]);
    await expect(planUpload(src, "/d", { gitIgnore: false })).rejects.toThrow(
      `unsupported file type for upload: ${path.join(src, "pipe")}`,
    );
  });
});

describe("symlinks", () => {
  it("are stored as symlinks with their target verbatim, dangling or pointing out, never followed", async () => {
    const outside = path.join(work, "outside");
    await mkdir(outside);
    await writeFile(path.join(outside, "secret"), "do not read");
    const src = path.join(work, "src");
    await mkdir(src);
    await symlink("../outside", path.join(src, "out"));
    await symlink("../../etc", path.join(src, "etc"));
    await symlink("nowhere", path.join(src, "dangling"));

    const plan = await planUpload(src, "/d", { gitIgnore: false });
    expect(plan.entries.map((e) => [e.name, e.type, e.linkTarget])).toEqual([
      ["src", "dir", undefined],
      ["src/dangling", "symlink", "nowhere"],
      ["src/etc", "symlink", "../../etc"],
      ["src/out", "symlink", "../outside"],
    ]);
    expect(plan.entries.some((e) => e.localPath.startsWith(outside))).toBe(false);

    const dest = path.join(work, "dest");
    const archive = await packToBuffer({ ...plan, extractDir: dest });
    expect(archive.includes(Buffer.from("do not read"))).toBe(false);
    const result = runRemote({ ...plan, extractDir: dest }, archive);
    expect(result.status).toBe(0);
    expect(readlinkSync(path.join(dest, "src", "dangling"))).toBe("nowhere");
    expect(readlinkSync(path.join(dest, "src", "etc"))).toBe("../../etc");
  });

  it("uploads a symlink source as a symlink, renamed like a file, without asking git", async () => {
    const repo = path.join(work, "repo");
    await mkdir(path.join(repo, "sub"), { recursive: true });
    git(repo, "init", "-q");
    await symlink("sub", path.join(repo, "link"));
    const plan = await planUpload(path.join(repo, "link"), "/x/renamed", { gitIgnore: true });
    expect(plan.filter).toBe("none");
    expect(plan.entries.map((e) => [e.name, e.type, e.linkTarget])).toEqual([["renamed", "symlink", "sub"]]);

    const dangling = path.join(work, "dangling");
    await symlink("missing-target", dangling);
    const danglingPlan = await planUpload(dangling, undefined, { gitIgnore: true });
    expect(danglingPlan.entries.map((e) => e.name)).toEqual(["dangling"]);
  });
});

describe(".gitignore filtering", () => {
  let repo: string;

  beforeEach(async () => {
    repo = path.join(work, "repo");
    await mkdir(path.join(repo, "sub"), { recursive: true });
    await mkdir(path.join(repo, "build"), { recursive: true });
    await mkdir(path.join(repo, "logs"), { recursive: true });
    git(repo, "init", "-q");
    await writeFile(path.join(repo, ".gitignore"), "*.log\nbuild/\n");
    await writeFile(path.join(repo, "a.txt"), "a");
    await writeFile(path.join(repo, "debug.log"), "noise");
    await writeFile(path.join(repo, "build", "out.bin"), "bin");
    await writeFile(path.join(repo, "sub", "b.txt"), "b");
    await writeFile(path.join(repo, "logs", "x.log"), "x");
    await writeFile(path.join(repo, "tracked-then-deleted.txt"), "gone");
    git(repo, "add", ".gitignore", "a.txt", "sub/b.txt", "tracked-then-deleted.txt");
    git(repo, "commit", "-q", "-m", "init");
    await rm(path.join(repo, "tracked-then-deleted.txt"));
    await writeFile(path.join(repo, "untracked.txt"), "u");
  });

  it("leaves out ignored files and skips tracked files deleted from the work tree", async () => {
    const plan = await planUpload(repo, "/sandbox", { gitIgnore: true });
    expect(plan.filter).toBe("gitignore");
    expect(plan.warning).toBeUndefined();
    expect(names(plan)).toEqual([
      "repo/",
      "repo/.gitignore",
      "repo/a.txt",
      "repo/sub/",
      "repo/sub/b.txt",
      "repo/untracked.txt",
    ]);
  });

  it("uploads everything, .git included, with filtering off", async () => {
    const plan = await planUpload(repo, "/sandbox", { gitIgnore: false });
    expect(plan.filter).toBe("none");
    const listed = names(plan);
    expect(listed).toContain("repo/debug.log");
    expect(listed).toContain("repo/build/out.bin");
    expect(listed).toContain("repo/.git/HEAD");
  });

  it("with git: true, adds the repository's .git to the filtered files, and git works on the copy", async () => {
    const plan = await planUpload(repo, "/sandbox", { gitIgnore: true, git: true });
    expect(plan.filter).toBe("gitignore");
    expect(plan.warning).toBeUndefined();
    const listed = names(plan);
    expect(listed).toContain("repo/.git/");
    expect(listed).toContain("repo/.git/HEAD");
    expect(listed).not.toContain("repo/debug.log");
    const dest = path.join(work, "dest");
    const archive = await packToBuffer({ ...plan, extractDir: dest });
    expect(runRemote({ ...plan, extractDir: dest }, archive).status).toBe(0);
    const status = spawnSync("git", ["status", "--porcelain"], {
      cwd: path.join(dest, "repo"),
      encoding: "utf8",
    });
    expect(status.status, status.stderr).toBe(0);
    // The copy agrees with the original: the deleted file is missing, the untracked one is new.
    expect(status.stdout).toBe(" D tracked-then-deleted.txt\n?? untracked.txt\n");
  });

  it("with git: true, leaves out a socket a running git keeps in .git", async () => {
    const server = createServer();
    const socketPath = path.join(repo, ".git", "fsmonitor--daemon.ipc");
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const plan = await planUpload(repo, "/sandbox", { gitIgnore: true, git: true });
      expect(names(plan)).toContain("repo/.git/HEAD");
      expect(names(plan)).not.toContain("repo/.git/fsmonitor--daemon.ipc");
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("with git: true, warns when the directory holds no .git", async () => {
    const plan = await planUpload(path.join(repo, "sub"), "/sandbox", { gitIgnore: true, git: true });
    expect(plan.warning).toBe(
      `${path.join(repo, "sub")} has no .git to include; upload the repository's top-level directory`,
    );
    expect(names(plan)).toEqual(["sub/", "sub/b.txt"]);
  });

  it("scopes the listing to a subdirectory", async () => {
    const plan = await planUpload(path.join(repo, "sub"), "/sandbox", { gitIgnore: true });
    expect(names(plan)).toEqual(["sub/", "sub/b.txt"]);
  });

  it("falls back to an unfiltered upload, with a warning, when everything is ignored", async () => {
    const logs = path.join(repo, "logs");
    const plan = await planUpload(logs, "/sandbox", { gitIgnore: true });
    expect(plan.filter).toBe("none");
    expect(plan.warning).toBe(`.gitignore filtering excluded all files in ${logs}; uploading unfiltered`);
    expect(names(plan)).toEqual(["logs/", "logs/x.log"]);

    const ignoredFile = path.join(repo, "debug.log");
    const single = await planUpload(ignoredFile, "/x/kept.log", { gitIgnore: true });
    expect(single.warning).toContain("excluded all files");
    expect(names(single)).toEqual(["kept.log"]);
  });

  it("renames a single file in git-aware mode (upstream would make /x/b.txt/a.txt)", async () => {
    const plan = await planUpload(path.join(repo, "a.txt"), "/x/b.txt", { gitIgnore: true });
    expect(plan.filter).toBe("gitignore");
    expect(plan.extractDir).toBe("/x");
    expect(names(plan)).toEqual(["b.txt"]);
  });

  it("ignores an inherited GIT_DIR", async () => {
    const saved = process.env.GIT_DIR;
    process.env.GIT_DIR = path.join(work, "not-a-repo");
    try {
      const plan = await planUpload(repo, "/sandbox", { gitIgnore: true });
      expect(plan.filter).toBe("gitignore");
      expect(names(plan)).not.toContain("repo/debug.log");
    } finally {
      if (saved === undefined) delete process.env.GIT_DIR;
      else process.env.GIT_DIR = saved;
    }
  });

  it("treats a path outside any repository as plain, silently", async () => {
    const plain = path.join(work, "plain");
    await mkdir(plain);
    await writeFile(path.join(plain, "x.log"), "x");
    const plan = await planUpload(plain, "/sandbox", { gitIgnore: true });
    expect(plan.filter).toBe("none");
    expect(plan.warning).toBeUndefined();
    expect(names(plan)).toEqual(["plain/", "plain/x.log"]);
  });
});

describe("pack and extract with GNU tar", () => {
  async function buildTree(root: string): Promise<void> {
    await mkdir(path.join(root, "sub", "deeper"), { recursive: true });
    await mkdir(path.join(root, "empty"));
    await writeFile(path.join(root, "big.bin"), randomBytes(3 * 1024 * 1024 + 123));
    await writeFile(path.join(root, "empty.txt"), "");
    await writeFile(path.join(root, "run.sh"), "#!/bin/sh\necho hi\n");
    chmodSync(path.join(root, "run.sh"), 0o755);
    await writeFile(path.join(root, "secret"), "s");
    chmodSync(path.join(root, "secret"), 0o600);
    await writeFile(path.join(root, "héllo wörld.txt"), "utf-8 name");
    await writeFile(path.join(root, "new\nline"), "newline in name");
    await writeFile(path.join(root, "back\\slash 'quote' \"dq\" $HOME"), "shell characters");
    await writeFile(path.join(root, "-dash"), "option-like");
    const longDir = path.join(root, "sub", "d".repeat(90), "e".repeat(90));
    await mkdir(longDir, { recursive: true });
    await writeFile(path.join(longDir, "f".repeat(120)), "long path");
    await writeFile(path.join(root, "sub", "deeper", "c.txt"), "c");
    await symlink(`${"t".repeat(150)}/target`, path.join(root, "long-link"));
    await symlink("sub/deeper/c.txt", path.join(root, "link"));
    chmodSync(path.join(root, "sub", "deeper"), 0o750);
    await utimes(
      path.join(root, "big.bin"),
      new Date("2001-02-03T04:05:06Z"),
      new Date("2001-02-03T04:05:06Z"),
    );
  }

  it("round-trips byte-identical: contents, modes, symlinks, mtimes", async () => {
    const src = path.join(work, "src");
    await buildTree(src);
    const dest = path.join(work, "sandbox dir 'with' quotes");
    const plan = await planUpload(src, dest, { gitIgnore: false });
    expect(plan.entries.find((e) => e.name === "src/run.sh")?.mode).toBe(0o755);

    const archive = await packToBuffer(plan);
    const result = runRemote(plan, archive);
    expect(result.stderr.toString()).toMatch(/Total bytes read: \d+/);
    expect(result.status).toBe(0);
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).not.toThrow();

    const uploaded = snapshot(path.join(dest, "src"));
    expect(uploaded).toEqual(snapshot(src));
    expect(uploaded["run.sh"]).toMatch(/^file 755 /);
    expect(uploaded.secret).toMatch(/^file 600 /);
    expect(uploaded["sub/deeper"]).toBe("dir 750");
    expect(statSync(path.join(dest, "src", "big.bin")).mtime.toISOString()).toBe("2001-02-03T04:05:06.000Z");
  });

  it("verifies an upload with no entries at all", async () => {
    const empty = path.join(work, "empty");
    await mkdir(empty);
    const dest = path.join(work, "dest");
    const plan = await planUpload(`${empty}/.`, dest, { gitIgnore: false });
    expect(plan.entries).toEqual([]);
    const result = runRemote(plan, await packToBuffer(plan));
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).not.toThrow();
  });

  it("streams a 200 MB file without holding it in memory, reporting progress", async () => {
    const src = path.join(work, "src");
    await mkdir(src);
    const size = 200 * 1024 * 1024;
    await writeFile(path.join(src, "huge.bin"), "");
    await truncate(path.join(src, "huge.bin"), size);
    const plan = await planUpload(src, "/d", { gitIgnore: false });

    const seen: number[] = [];
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = 0;
    let total = 0;
    const { sink } = collector((chunk) => {
      total += chunk.length;
      peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline);
    });
    const result = await packUpload(plan, sink, (p) => seen.push(p.bytes));
    expect(total).toBe(plan.archiveBytes);
    expect(result).toEqual({ entries: 2, bytes: size, archiveBytes: plan.archiveBytes });
    expect(peak).toBeLessThan(64 * 1024 * 1024);
    expect(seen.at(-1)).toBe(size);
    expect(seen.length).toBeGreaterThan(100);
  });

  it("rejects `done` when the consumer stops reading early", async () => {
    const src = path.join(work, "src");
    await mkdir(src);
    await writeFile(path.join(src, "big.bin"), randomBytes(4 * 1024 * 1024));
    const plan = await planUpload(src, "/d", { gitIgnore: false });
    const { sink } = collector(() => sink.destroy());
    await expect(packUpload(plan, sink)).rejects.toThrow();
  });

  it("fails loudly when a file changed size after planning", async () => {
    const src = path.join(work, "src");
    await mkdir(src);
    await writeFile(path.join(src, "a.txt"), "12345");
    const plan = await planUpload(src, "/d", { gitIgnore: false });
    appendFileSync(path.join(src, "a.txt"), "678");
    await expect(packUpload(plan, collector().sink)).rejects.toThrow(
      /upload aborted: .*a\.txt changed while uploading \(it was 5 bytes/,
    );
  });

  it("fails loudly when a file grows while it is being read", async () => {
    const src = path.join(work, "src");
    await mkdir(src);
    const file = path.join(src, "grows.bin");
    await writeFile(file, Buffer.alloc(1024 * 1024));
    const plan = await planUpload(src, "/d", { gitIgnore: false });
    let appended = false;
    const { sink, chunks } = collector();
    const done = packUpload(plan, sink, (p) => {
      if (!appended && p.bytes > 0) {
        appended = true;
        appendFileSync(file, "more");
      }
    });
    await expect(done).rejects.toThrow(/grew from 1048576 to 1048580 bytes while being read/);
    // The sink is not ended: what reached it is never taken for a whole archive.
    expect(sink.writableEnded).toBe(false);
    expect(Buffer.concat(chunks).length).toBeLessThan(plan.archiveBytes);
  });
});

describe("verifyExtraction", () => {
  async function planned(): Promise<{ plan: UploadPlan; archive: Buffer; dest: string }> {
    const src = path.join(work, "src");
    await mkdir(path.join(src, "bin"), { recursive: true });
    await writeFile(path.join(src, "bin", "x"), "#!/bin/sh\n");
    await writeFile(path.join(src, "readme"), "r");
    const dest = path.join(work, "ro");
    await mkdir(dest);
    const plan = await planUpload(src, dest, { gitIgnore: false });
    return { plan, archive: await packToBuffer(plan), dest };
  }

  /** Run the command where `dir` is read-only: a read-only bind mount when we may make one, else mode 0555. */
  function inReadOnlyDir(dir: string): (cmd: string) => string[] {
    const probe = spawnSync("unshare", ["-rm", "true"]);
    if (probe.status === 0) {
      return (cmd) => [
        "unshare",
        "-rm",
        "sh",
        "-c",
        `mount --bind -o ro ${shellEscape(dir)} ${shellEscape(dir)} && ${cmd}`,
      ];
    }
    chmodSync(dir, 0o555);
    return (cmd) => ["sh", "-c", cmd];
  }

  it("passes a complete extraction", async () => {
    const { plan, archive } = await planned();
    const result = runRemote(plan, archive);
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).not.toThrow();
  });

  it("names the sandbox path GNU tar could not write", async () => {
    const { plan, archive, dest } = await planned();
    const result = runRemote(plan, archive, inReadOnlyDir(dest));
    expect(result.status).not.toBe(0);
    expect(result.stderr.toString()).toMatch(/^tar: src: Cannot mkdir: /m);
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).toThrow(
      new RegExp(`^upload failed: ${dest}/src: (read-only file system|permission denied)$`),
    );
  });

  it("names the directory mkdir could not create", async () => {
    const { plan, archive, dest } = await planned();
    const nested = { ...plan, extractDir: path.join(dest, "new") };
    const result = runRemote(nested, archive, inReadOnlyDir(dest));
    expect(result.stderr.toString()).toMatch(/^mkdir: cannot create directory/m);
    expect(() => verifyExtraction(nested, result.stdout, result.stderr, result.status)).toThrow(
      new RegExp(`^upload failed: ${dest}/new: (read-only file system|permission denied)$`),
    );
  });

  it("explains a file tar could not replace (an injected, read-only file)", () => {
    const plan = {
      extractDir: "/sandbox",
      remotePath: "/sandbox/locked.txt",
      entries: [],
      archiveBytes: 10240,
    } as unknown as UploadPlan;
    const stderr =
      "tar: locked.txt: Cannot open: File exists\nTotal bytes read: 10240 (10KiB, 3.0MiB/s)\ntar: Exiting with failure status due to previous errors\n";
    expect(() => verifyExtraction(plan, "locked.txt\n", stderr, 2)).toThrow(
      "upload failed: /sandbox/locked.txt: a read-only file is already there and cannot be replaced",
    );
  });

  it("maps a relative extraction directory to ~", () => {
    const plan = {
      extractDir: ".",
      remotePath: "~",
      entries: [],
      archiveBytes: 10240,
    } as unknown as UploadPlan;
    const stderr =
      "tar: usr/bin/x: Cannot open: Read-only file system\ntar: Exiting with failure status due to previous errors\n";
    expect(() => verifyExtraction(plan, "", stderr, 2)).toThrow(
      "upload failed: ~/usr/bin/x: read-only file system",
    );
    const absolute = { ...plan, extractDir: "/" };
    expect(() => verifyExtraction(absolute, "", stderr, 2)).toThrow(
      "upload failed: /usr/bin/x: read-only file system",
    );
  });

  it("catches entries the sandbox did not list", async () => {
    const { plan, archive } = await planned();
    const result = runRemote(plan, archive);
    const lines = result.stdout.toString().split("\n");
    const short = lines.filter((l) => l !== "src/readme").join("\n");
    expect(() => verifyExtraction(plan, short, result.stderr, 0)).toThrow(
      `upload incomplete: the sandbox extracted 3 of 4 entries; ${plan.extractDir}/src/readme is missing`,
    );
  });

  it("catches a byte count that differs from the archive sent", async () => {
    const { plan, archive } = await planned();
    const result = runRemote(plan, archive);
    const stderr = result.stderr.toString().replace(/Total bytes read: \d+/, "Total bytes read: 0");
    expect(() => verifyExtraction(plan, result.stdout, stderr, 0)).toThrow(
      `upload incomplete: sent ${plan.archiveBytes} archive bytes to ${plan.remotePath}, the sandbox's tar read 0`,
    );
    expect(() => verifyExtraction(plan, result.stdout, "", 0)).toThrow("did not report the bytes it read");
  });

  it("explains a missing tar and an unknown failure", async () => {
    const { plan } = await planned();
    expect(() => verifyExtraction(plan, "", "sh: 1: tar: not found\n", 127)).toThrow(
      "upload failed: tar is not installed in the sandbox",
    );
    expect(() => verifyExtraction(plan, "", "tar: This does not look like a tar archive\n", 2)).toThrow(
      `upload failed: extracting into ${plan.remotePath}: tar exited with status 2: tar: This does not look like a tar archive`,
    );
    expect(() => verifyExtraction(plan, "", "", null)).toThrow("tar was killed");
  });

  it("decodes GNU tar's escaped member names", () => {
    expect(unescapeTarName("h\\303\\251llo w\\303\\266rld.txt")).toBe("héllo wörld.txt");
    expect(unescapeTarName("new\\nline")).toBe("new\nline");
    expect(unescapeTarName("back\\\\slash")).toBe("back\\slash");
    expect(unescapeTarName("plain/name")).toBe("plain/name");
  });
});

describe("shellEscape", () => {
  it.each([
    ["abc", "abc"],
    ["/sandbox/x_y-z.1", "/sandbox/x_y-z.1"],
    ["", "''"],
    ["a b", "'a b'"],
    ["it's", `'it'"'"'s'`],
    ["$HOME", "'$HOME'"],
    ["--checkpoint-action=exec=id", "'--checkpoint-action=exec=id'"],
  ])("%j -> %s", (input, expected) => {
    expect(shellEscape(input)).toBe(expected);
  });

  it("survives a real shell unchanged", () => {
    for (const input of ["it's", "a\nb", "$(id) `id` ;|&", "'", '"\\', "é"]) {
      const out = execFileSync("sh", ["-c", `printf %s ${shellEscape(input)}`]).toString();
      expect(out).toBe(input);
    }
  });

  it("puts `--` before the paths in the remote command", async () => {
    const file = path.join(work, "a.txt");
    await writeFile(file, "a");
    const plan = await planUpload(file, "-odd dir/", { gitIgnore: false });
    const command = remoteExtractCommand(plan);
    expect(command).toMatch(/^D='-odd dir' /);
    expect(command).toContain('mkdir -p -- "$D"');
    expect(command).toContain(
      `exec ${remoteTool("tar")} -x -v --totals -b 20 -p --no-same-owner --keep-directory-symlink --warning=no-timestamp --quoting-style=escape -f - --exclude="$E" -C "$D"`,
    );
    // Run where `-odd dir` is relative: it is taken for a directory, never an option.
    const result = spawnSync("sh", ["-c", command], { cwd: work, input: await packToBuffer(plan) });
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).not.toThrow();
    expect(readFileSync(path.join(work, "-odd dir", "a.txt"), "utf8")).toBe("a");
  });
});

describe("staged extraction: an upload lands whole or leaves DIR as it was", () => {
  /** Run the command inside a private mount namespace, after `setup` (a shell snippet) prepared it. */
  function inMountNamespace(setup: string): ((cmd: string) => string[]) | undefined {
    if (spawnSync("unshare", ["-rm", "true"]).status !== 0) return undefined;
    return (cmd) => ["unshare", "-rm", "sh", "-c", `${setup} && ${cmd}`];
  }

  /** Staging directories left in `dir`. */
  function staging(dir: string): string[] {
    return readdirSync(dir).filter((name) => name.startsWith(".openshell-upload."));
  }

  async function existingDestination(): Promise<{
    src: string;
    dest: string;
    before: Record<string, string>;
  }> {
    const src = path.join(work, "app");
    await mkdir(path.join(src, "conf"), { recursive: true });
    await mkdir(path.join(src, "lib"), { recursive: true });
    await writeFile(path.join(src, "a.txt"), "new a");
    await writeFile(path.join(src, "new.txt"), "brand new");
    await writeFile(path.join(src, "conf", "locked.txt"), "new locked");
    await writeFile(path.join(src, "lib", "l.txt"), "new l");
    await writeFile(path.join(src, "z.txt"), "new z");
    chmodSync(path.join(src, "conf"), 0o750);

    const dest = path.join(work, "dest");
    await mkdir(path.join(dest, "app", "conf"), { recursive: true });
    await mkdir(path.join(dest, "real-lib"), { recursive: true });
    await writeFile(path.join(dest, "app", "a.txt"), "old a");
    await writeFile(path.join(dest, "app", "kept.txt"), "kept");
    await writeFile(path.join(dest, "app", "conf", "locked.txt"), "injected");
    await writeFile(path.join(dest, "real-lib", "other.txt"), "other");
    await symlink("../real-lib", path.join(dest, "app", "lib"));
    return { src, dest, before: snapshot(dest) };
  }

  it("merges into existing directories: 2 files replaced, 1 kept, a symlinked directory kept, the archived mode 750 applied", async () => {
    const { src, dest } = await existingDestination();
    const plan = await planUpload(src, dest, { gitIgnore: false });
    const result = runRemote(plan, await packToBuffer(plan));
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).not.toThrow();
    const after = snapshot(dest);
    expect(readFileSync(path.join(dest, "app", "a.txt"), "utf8")).toBe("new a");
    expect(readFileSync(path.join(dest, "app", "conf", "locked.txt"), "utf8")).toBe("new locked");
    expect(readFileSync(path.join(dest, "app", "kept.txt"), "utf8")).toBe("kept");
    expect(after["app/lib"]).toBe("symlink -> ../real-lib");
    expect(readFileSync(path.join(dest, "real-lib", "l.txt"), "utf8")).toBe("new l");
    expect(readFileSync(path.join(dest, "real-lib", "other.txt"), "utf8")).toBe("other");
    expect(after["app/conf"]).toBe("dir 750");
    expect(staging(dest)).toEqual([]);
  });

  it("an entry that cannot be replaced (a read-only bind, EBUSY) after 3 were placed leaves DIR as it was, naming the entry", async () => {
    const { src, dest, before } = await existingDestination();
    const locked = shellEscape(path.join(dest, "app", "conf", "locked.txt"));
    const wrap = inMountNamespace(`mount --bind -o ro ${locked} ${locked}`);
    if (!wrap) return;
    const plan = await planUpload(src, dest, { gitIgnore: false });
    const result = runRemote(plan, await packToBuffer(plan), wrap);
    expect(result.status).toBe(1);
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).toThrow(
      `upload failed: ${dest}/app/conf/locked.txt: a read-only file is already there and cannot be replaced`,
    );
    expect(snapshot(dest)).toEqual(before);
    expect(staging(dest)).toEqual([]);
  });

  it("a disk that fills up halfway (a 1 MiB filesystem, a 3 MB upload) leaves DIR as it was and names the file", async () => {
    const src = path.join(work, "big");
    await mkdir(src);
    await writeFile(path.join(src, "a.txt"), "a");
    await writeFile(path.join(src, "b.bin"), randomBytes(3_000_000));
    const dest = path.join(work, "small-disk");
    await mkdir(dest);
    const wrap = inMountNamespace(
      `mount -t tmpfs -o size=1m tmpfs ${shellEscape(dest)} && echo kept > ${shellEscape(dest)}/kept.txt`,
    );
    if (!wrap) return;
    const plan = await planUpload(src, dest, { gitIgnore: false });
    // The tmpfs lives only as long as the namespace: list it before leaving.
    const result = runRemote(plan, await packToBuffer(plan), (cmd) =>
      wrap(`( ${cmd}\n); s=$?; ls -A ${shellEscape(dest)}; exit $s`),
    );
    expect(result.status, result.stderr.toString()).not.toBe(0);
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).toThrow(
      `upload failed: ${dest}/big/b.bin: no space left on device`,
    );
    // What the filesystem held when the command ended: only what was there before.
    expect(result.stdout.toString().trim().split("\n").at(-1)).toBe("kept.txt");
  });

  it("an archive cut at an entry boundary (GNU tar exits 0) places nothing and is reported incomplete", async () => {
    const src = path.join(work, "cut");
    await mkdir(src);
    await writeFile(path.join(src, "first.txt"), "1");
    await writeFile(path.join(src, "second.txt"), "2");
    const dest = path.join(work, "dest");
    const plan = await planUpload(src, dest, { gitIgnore: false });
    const archive = await packToBuffer(plan);
    // Directory header, then first.txt's header and one block of content.
    const result = runRemote(plan, archive.subarray(0, 3 * 512));
    expect(result.status).toBe(3);
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).toThrow(
      `upload incomplete: the sandbox extracted 2 of 3 entries; ${dest}/cut/second.txt is missing`,
    );
    // DIR did not exist before: the upload made it and removed it again.
    expect(() => lstatSync(dest)).toThrow(/ENOENT/);
  });

  it.each(["SIGHUP", "SIGTERM", "SIGINT", "SIGPIPE"] as const)(
    "%s to the extraction's process group in the middle of a 4 MB archive leaves DIR as it was and no staging directory",
    async (signal) => {
      const src = path.join(work, "slow");
      await mkdir(src);
      await writeFile(path.join(src, "big.bin"), randomBytes(4 * 1024 * 1024));
      const dest = path.join(work, "dest");
      await mkdir(dest);
      await writeFile(path.join(dest, "kept.txt"), "kept");
      const plan = await planUpload(src, dest, { gitIgnore: false });
      const archive = await packToBuffer(plan);
      const child = spawn("sh", ["-c", remoteExtractCommand(plan)], {
        detached: true,
        stdio: ["pipe", "ignore", "ignore"],
      });
      const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
      child.stdin.on("error", () => {});
      child.stdin.write(archive.subarray(0, 1024 * 1024));
      // Bounded poll: the first megabyte has reached the staged file.
      const staged = await waitFor("the staged file to hold bytes", 10_000, () => {
        const [dir] = staging(dest);
        if (!dir) return undefined;
        const file = path.join(dest, dir, "t", "slow", "big.bin");
        return lstatIfExistsSync(file)?.size ? file : undefined;
      });
      expect(staged).toContain(".openshell-upload.");
      process.kill(-child.pid!, signal);
      const code = await exited;
      expect(code).toBe(128 + osConstants.signals[signal]);
      expect(readdirSync(dest)).toEqual(["kept.txt"]);
    },
  );

  it("the next upload into the same directory removes a staging directory whose shell is gone, and keeps one whose shell lives", async () => {
    const file = path.join(work, "a.txt");
    await writeFile(file, "a");
    const dest = path.join(work, "dest");
    const dead = spawnSync("true").pid;
    const abandoned = path.join(dest, `.openshell-upload.${dead}.0123456789abcdef`);
    const live = path.join(dest, `.openshell-upload.${process.pid}.0123456789abcdef`);
    await mkdir(path.join(abandoned, "t", "half"), { recursive: true });
    await writeFile(path.join(abandoned, "t", "half", "written"), "partial");
    chmodSync(path.join(abandoned, "t", "half"), 0o555);
    await mkdir(live, { recursive: true });
    const plan = await planUpload(file, `${dest}/`, { gitIgnore: false });
    const result = runRemote(plan, await packToBuffer(plan));
    expect(() => verifyExtraction(plan, result.stdout, result.stderr, result.status)).not.toThrow();
    expect(readdirSync(dest).sort()).toEqual([path.basename(live), "a.txt"]);
  });
});

function lstatIfExistsSync(p: string): ReturnType<typeof lstatSync> | undefined {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
}

/** Polls `probe` every 10 ms until it returns a value, failing with `step` named after `timeoutMs`. */
async function waitFor<T>(step: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`waiting for ${step}: not within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 10));
  }
}
