// `sandbox upload` and `sandbox download` through the real CLI, gateway,
// supervisor, bubblewrap and SSH: a git work tree of 300 random files, a
// 30 MB file, an executable and symlinks goes in byte-identical (checked
// with the sandbox's own sha256sum), comes back out byte-identical, and
// every refusal (read-only destinations, paths outside the workspace) exits
// non-zero with the path named and nothing reported as transferred.

import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestEnv, uniqueName } from "../helpers/cli.js";
import {
  describeRun,
  entries,
  fileBytes,
  fileCount,
  git,
  localTree,
  megabytes,
  randomFiles,
  sandboxTree,
  symlink,
  type Tree,
  writeFile,
} from "../helpers/tree.js";

/** Paths the project's .gitignore leaves out (and their contents). */
const IGNORED = ["debug.log", "data/d2/trace.log", "build", "secret.env"];

function isIgnored(rel: string): boolean {
  return IGNORED.some((p) => rel === p || rel.startsWith(`${p}/`));
}

function isGitDir(rel: string): boolean {
  return rel === ".git" || rel.startsWith(".git/");
}

describe("sandbox upload and download", () => {
  const env = new TestEnv("openshell-transfer-");
  const work = join(env.root, "work");
  const proj = join(work, "proj");
  const sandbox = uniqueName("xfer");
  /** What a .gitignore-filtered upload of proj must produce. */
  let filtered: Tree;
  /** Everything under proj, .git and ignored files included. */
  let everything: Tree;

  beforeAll(async () => {
    // A real git repository: tracked files, an untracked file, ignored files.
    writeFile(join(proj, ".gitignore"), "*.log\nbuild/\nsecret.env\n");
    randomFiles(join(proj, "data"), 300);
    writeFile(join(proj, "big", "blob.bin"), randomBytes(30_000_000));
    writeFile(join(proj, "bin", "run.sh"), "#!/bin/sh\necho run-ok\n", 0o755);
    writeFile(join(proj, "docs", "read me.txt"), "spaces in the name\n");
    writeFile(join(proj, "docs", "ünïcödé.txt"), "non-ASCII name\n");
    writeFile(join(proj, "private", "key"), randomBytes(64), 0o600);
    symlink("data/d1/f001.bin", join(proj, "latest"));
    // Leads outside LOCAL: uploaded as a symlink, never followed.
    writeFile(join(work, "outside-secret", "secret.txt"), "must not be uploaded\n");
    symlink("../outside-secret", join(proj, "outside"));
    for (const path of ["debug.log", "data/d2/trace.log", "build/out.bin", "secret.env"]) {
      writeFile(join(proj, path), `ignored ${path}\n`);
    }
    git(proj, "init", "-q");
    git(proj, "add", "-A");
    git(proj, "commit", "-q", "-m", "initial");
    writeFile(join(proj, "notes.txt"), "untracked but not ignored\n");
    filtered = localTree(proj, { skip: (rel) => isGitDir(rel) || isIgnored(rel) });
    everything = localTree(proj);

    writeFile(join(work, "locked.txt"), "injected, read-only\n");
    writeFile(join(work, "other", "locked.txt"), "an attempt to replace it\n");
    writeFile(join(work, "small", "a.txt"), "a\n");

    await env.startGateway();
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        sandbox,
        "--file",
        "./locked.txt:/sandbox/locked.txt",
        "--",
        "sleep",
        "infinity",
      ],
      { cwd: work, timeoutMs: 90_000 },
    );
    expect(created.code, describeRun(created)).toBe(0);
  }, 180_000);

  afterAll(() => env.dispose(), 120_000);

  it("uploads a git work tree byte-identical, modes and symlinks kept, .gitignore'd files left out", async () => {
    // The tree is what the test meant to build: 300 random files and the rest.
    expect(fileCount(filtered)).toBe(300 + 7);
    expect(filtered.get("bin/run.sh")?.mode).toBe(0o755);
    expect(filtered.get("latest")).toEqual({ type: "l", mode: undefined, content: "data/d1/f001.bin" });

    const result = await env.run(["sandbox", "upload", sandbox, "proj", "/sandbox"], {
      cwd: work,
      timeoutMs: 120_000,
    });
    expect(result.code, describeRun(result)).toBe(0);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(
      `✓ Uploaded ${fileCount(filtered)} files, ${megabytes(fileBytes(proj, filtered))} to /sandbox/proj`,
    );

    const remote = await sandboxTree(env, sandbox, "/sandbox/proj");
    expect(entries(remote)).toEqual(entries(filtered));
    for (const path of IGNORED) expect(remote.has(path), `${path} is .gitignore'd`).toBe(false);
    expect(remote.has(".git")).toBe(false);
    expect(remote.get("notes.txt")?.type).toBe("f");
    // The symlink out of LOCAL arrived as a symlink; what it points at did not.
    expect(remote.get("outside")).toEqual({ type: "l", mode: undefined, content: "../outside-secret" });
    const secret = await env.run([
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "sh",
      "-c",
      "grep -rl 'must not be uploaded' /sandbox || true",
    ]);
    expect(secret.stdout).toBe("");

    const run = await env.run(["sandbox", "exec", "-n", sandbox, "--", "/sandbox/proj/bin/run.sh"]);
    expect(run.code, describeRun(run)).toBe(0);
    expect(run.stdout).toBe("run-ok\n");
  });

  it("uploads the ignored files and .git too with --no-git-ignore", async () => {
    const result = await env.run(["sandbox", "upload", sandbox, "proj", "/sandbox/all/", "--no-git-ignore"], {
      cwd: work,
      timeoutMs: 120_000,
    });
    expect(result.code, describeRun(result)).toBe(0);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(
      `✓ Uploaded ${fileCount(everything)} files, ${megabytes(fileBytes(proj, everything))} to /sandbox/all/proj`,
    );
    const remote = await sandboxTree(env, sandbox, "/sandbox/all/proj");
    expect(entries(remote)).toEqual(entries(everything));
    for (const path of ["debug.log", "data/d2/trace.log", "build/out.bin", "secret.env", ".git/HEAD"]) {
      expect(remote.get(path)?.type, path).toBe("f");
    }
  });

  it("lands a directory under its own name once, and renames a file", async () => {
    const dir = await env.run(["sandbox", "upload", sandbox, "small", "/sandbox/small"], { cwd: work });
    expect(dir.code, describeRun(dir)).toBe(0);
    expect(dir.stderr).toContain("✓ Uploaded 1 file, 0.0 MB to /sandbox/small");
    const file = await env.run(["sandbox", "upload", sandbox, "proj/bin/run.sh", "/sandbox/tools/go"], {
      cwd: work,
    });
    expect(file.code, describeRun(file)).toBe(0);
    expect(file.stderr).toContain("to /sandbox/tools/go");
    const check = await env.run([
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "sh",
      "-c",
      "cat /sandbox/small/a.txt; test -e /sandbox/small/small && echo nested; /sandbox/tools/go",
    ]);
    expect(check.stdout).toBe("a\nrun-ok\n");
  });

  it("downloads the uploaded tree byte-identical, refusing a symlink that leads out of DEST", async () => {
    // The tree holds `outside -> ../outside-secret`: extracted here it would
    // lead out of DEST, so the download is refused with the entry named.
    const refusedDest = join(env.root, "download", "refused");
    const refused = await env.run(["sandbox", "download", sandbox, "/sandbox/proj", refusedDest], {
      timeoutMs: 120_000,
    });
    expect(refused.code, describeRun(refused)).toBe(1);
    expect(refused.stdout).toBe("");
    expect(refused.stderr).toContain(
      "refusing downloaded archive entry 'proj/outside': symlink to '../outside-secret' leads outside the destination",
    );
    expect(refused.stderr).not.toContain("✓");
    expect(existsSync(join(env.root, "download", "outside-secret"))).toBe(false);

    const rm = await env.run(["sandbox", "exec", "-n", sandbox, "--", "rm", "/sandbox/proj/outside"]);
    expect(rm.code, describeRun(rm)).toBe(0);
    const expected = new Map(filtered);
    expected.delete("outside");
    const out = join(env.root, "download", "tree");
    const result = await env.run(["sandbox", "download", sandbox, "/sandbox/proj", out], {
      timeoutMs: 120_000,
    });
    expect(result.code, describeRun(result)).toBe(0);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(
      `✓ Downloaded ${fileCount(expected)} files, ${megabytes(fileBytes(proj, expected))} to ${out}`,
    );
    expect(entries(localTree(out))).toEqual(entries(expected));

    // One file, into an existing directory, relative to the workspace.
    const files = join(env.root, "download", "files");
    mkdirSync(files, { recursive: true });
    const one = await env.run(["sandbox", "download", sandbox, "proj/big/blob.bin", files]);
    expect(one.code, describeRun(one)).toBe(0);
    expect(one.stdout).toBe("");
    expect(localTree(files).get("blob.bin")).toEqual(filtered.get("big/blob.bin"));
  });

  it("refuses to download a path outside the workspace", async () => {
    const dest = join(env.root, "download", "passwd");
    const result = await env.run(["sandbox", "download", sandbox, "/etc/passwd", dest]);
    expect(result.code, describeRun(result)).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(
      "sandbox source path '/etc/passwd' is outside the sandbox workspace (/sandbox)",
    );
    expect(result.stderr).not.toContain("✓");
    expect(existsSync(dest)).toBe(false);
  });

  it("refuses to download through a symlink that leads out of the workspace", async () => {
    const link = await env.run([
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "ln",
      "-s",
      "/etc",
      "/sandbox/etc-link",
    ]);
    expect(link.code, describeRun(link)).toBe(0);
    const dest = join(env.root, "download", "via-link");

    const file = await env.run(["sandbox", "download", sandbox, "/sandbox/etc-link/passwd", dest]);
    expect(file.code, describeRun(file)).toBe(1);
    expect(file.stderr).toContain(
      "sandbox source path '/sandbox/etc-link/passwd' resolves to '/etc/passwd', outside the sandbox workspace (/sandbox)",
    );
    const dir = await env.run(["sandbox", "download", sandbox, "etc-link", dest]);
    expect(dir.code, describeRun(dir)).toBe(1);
    expect(dir.stderr).toContain(
      "sandbox source path 'etc-link' resolves to '/etc', outside the sandbox workspace",
    );
    for (const result of [file, dir]) {
      expect(result.stdout).toBe("");
      expect(result.stderr).not.toContain("✓");
    }
    expect(existsSync(dest)).toBe(false);
  });

  it("fails to upload into /usr/bin, naming the path, with nothing reported as uploaded", async () => {
    const file = await env.run(["sandbox", "upload", sandbox, "proj/bin/run.sh", "/usr/bin/"], { cwd: work });
    expect(file.code, describeRun(file)).toBe(1);
    expect(file.stderr).toContain("upload failed: /usr/bin/run.sh: read-only file system");
    const dir = await env.run(["sandbox", "upload", sandbox, "small", "/usr/bin"], { cwd: work });
    expect(dir.code, describeRun(dir)).toBe(1);
    expect(dir.stderr).toMatch(/upload failed: \/usr\/bin\/small(\/a\.txt)?: read-only file system/);
    for (const result of [file, dir]) {
      expect(result.stdout).toBe("");
      expect(result.stderr).not.toContain("Uploaded");
      expect(result.stderr).not.toContain("✓");
    }
    const landed = await env.run([
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "ls",
      "/usr/bin/run.sh",
      "/usr/bin/small",
    ]);
    expect(landed.code).not.toBe(0);
  });

  it("fails to upload over an injected file, naming it, and leaves it as it was", async () => {
    const result = await env.run(["sandbox", "upload", sandbox, "other/locked.txt", "/sandbox/"], {
      cwd: work,
    });
    expect(result.code, describeRun(result)).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain("upload failed: /sandbox/locked.txt: a read-only file is already there");
    expect(result.stderr).not.toContain("Uploaded");
    const content = await env.run(["sandbox", "exec", "-n", sandbox, "--", "cat", "/sandbox/locked.txt"]);
    expect(content.stdout).toBe(readFileSync(join(work, "locked.txt"), "utf8"));
  });
});
