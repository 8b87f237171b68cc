// `sandbox create --upload` with a trailing command, through the real CLI,
// gateway, supervisor, bubblewrap and SSH: the command starts only once the
// files are in place, and its output and exit code are the user's.

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { json, TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import {
  describeRun,
  fileBytes,
  fileCount,
  git,
  localTree,
  megabytes,
  randomFiles,
  writeFile,
} from "../helpers/tree.js";

describe("sandbox create --upload -- CMD", () => {
  const env = new TestEnv("openshell-create-upload-");
  const work = join(env.root, "work");
  const proj = join(work, "proj");
  /** What `ls proj` shows in the sandbox: the top-level names git does not ignore. */
  const TOP_LEVEL = ["README.md", "run.sh", "src", "tests", "vendor.txt"];
  let uploadedFiles = 0;
  let uploadedBytes = "";

  beforeAll(async () => {
    writeFile(join(proj, ".gitignore"), "node_modules/\n*.log\n");
    writeFile(join(proj, "README.md"), "# proj\n");
    writeFile(join(proj, "run.sh"), "#!/bin/sh\necho ok\n", 0o755);
    randomFiles(join(proj, "src"), 40);
    randomFiles(join(proj, "tests"), 10);
    writeFile(join(proj, "vendor.txt"), "v\n");
    writeFile(join(proj, "node_modules", "dep", "index.js"), "ignored\n");
    writeFile(join(proj, "build.log"), "ignored\n");
    git(proj, "init", "-q");
    git(proj, "add", "-A");
    git(proj, "commit", "-q", "-m", "initial");
    const uploaded = localTree(proj, {
      skip: (rel) =>
        rel === ".git" || rel.startsWith(".git/") || rel.startsWith("node_modules") || rel === "build.log",
    });
    uploadedFiles = fileCount(uploaded);
    uploadedBytes = megabytes(fileBytes(proj, uploaded));
    await env.startGateway();
  }, 120_000);

  afterAll(() => env.dispose(), 120_000);

  it("--no-keep: the command sees the uploaded tree, its output and exit code are the user's", async () => {
    const result = await env.run(
      ["sandbox", "create", "--upload", "./proj", "--no-keep", "--", "sh", "-c", "ls proj | wc -l; exit 3"],
      { cwd: work, timeoutMs: 120_000 },
    );
    expect(result.code, describeRun(result)).toBe(3);
    expect(result.stdout).toBe(`${TOP_LEVEL.length}\n`);
    expect(result.stderr).toContain(`✓ Uploaded ${uploadedFiles} files, ${uploadedBytes} to ~/proj`);
    expect(result.stderr).toContain("(--no-keep)");
    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(json(list)).toEqual([]);
  });

  it("--upload-git: the repository arrives with its .git, and git in the sandbox sees a clean tree", async () => {
    const result = await env.run(
      [
        "sandbox",
        "create",
        "--upload",
        "./proj",
        "--upload-git",
        "--no-keep",
        "--",
        "sh",
        "-c",
        "cd proj && git status --porcelain && git log --format=%s",
      ],
      { cwd: work, timeoutMs: 120_000 },
    );
    expect(result.code, describeRun(result)).toBe(0);
    // Ignored files stay behind and are ignored there too; nothing tracked differs.
    expect(result.stdout).toBe("initial\n");
  });

  it("without --upload-git, .git stays behind (the default)", async () => {
    const result = await env.run(
      [
        "sandbox",
        "create",
        "--upload",
        "./proj",
        "--no-keep",
        "--",
        "sh",
        "-c",
        "ls -a proj | grep -c '^.git$'",
      ],
      { cwd: work, timeoutMs: 120_000 },
    );
    expect(result.stdout).toBe("0\n");
  });

  it("without --no-keep or --attach: returns once Ready, and the command's output is in `openshell logs`", async () => {
    const name = uniqueName("upl-bg");
    const result = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--upload",
        "./proj",
        "--",
        "sh",
        "-c",
        "ls proj | wc -l; ls proj",
      ],
      { cwd: work, timeoutMs: 120_000 },
    );
    expect(result.code, describeRun(result)).toBe(0);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(`✓ Uploaded ${uploadedFiles} files, ${uploadedBytes} to ~/proj`);
    expect(result.stderr).toContain(`openshell logs ${name}`);

    const tail = env.spawn(["logs", name, "--tail"]);
    try {
      const seen = await waitForOutput(
        tail.stdout!,
        "[stdout] vendor.txt",
        "the command's output in the logs",
      );
      expect(seen).toContain(`[stdout] ${TOP_LEVEL.length}\n`);
      for (const entry of TOP_LEVEL) expect(seen).toContain(`[stdout] ${entry}\n`);
      expect(seen).not.toContain("node_modules");
    } finally {
      tail.kill("SIGINT");
    }
  });

  it("--attach with several uploads: a directory named by DEST is not nested, a file lands where DEST says", async () => {
    const name = uniqueName("upl-att");
    writeFile(join(work, "notes.txt"), "notes\n");
    const result = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--attach",
        "--upload",
        "./proj:/sandbox/proj",
        "--upload",
        "./notes.txt:/tmp/in/",
        "--",
        "sh",
        "-c",
        "ls /sandbox/proj | wc -l; test -e /sandbox/proj/proj && echo nested; cat /tmp/in/notes.txt",
      ],
      { cwd: work, timeoutMs: 120_000 },
    );
    expect(result.code, describeRun(result)).toBe(0);
    expect(result.stdout).toBe(`${TOP_LEVEL.length}\nnotes\n`);
    expect(result.stderr).toContain("to /sandbox/proj\n");
    expect(result.stderr).toContain("✓ Uploaded 1 file, 0.0 MB to /tmp/in/notes.txt");
  });

  it("a failed upload fails the create, names the path, and the command never runs", async () => {
    const result = await env.run(
      [
        "sandbox",
        "create",
        "--upload",
        "./proj:/usr/bin/",
        "--no-keep",
        "--",
        "sh",
        "-c",
        "echo the-command-ran",
      ],
      { cwd: work, timeoutMs: 120_000 },
    );
    expect(result.code, describeRun(result)).not.toBe(0);
    expect(result.stdout).not.toContain("the-command-ran");
    expect(result.stderr).toMatch(/upload failed: \/usr\/bin\/proj\S*: read-only file system/);
    expect(result.stderr).not.toContain("Uploaded");
    // --no-keep: the sandbox whose upload failed is gone.
    const created = /Created sandbox: (\S+)/.exec(result.stderr)?.[1];
    expect(created, result.stderr).toBeDefined();
    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(json<Array<{ name: string }>>(list).map((s) => s.name)).not.toContain(created);
  });
});
