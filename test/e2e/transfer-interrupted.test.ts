// Uploads that do not complete leave nothing in the sandbox, through the real
// CLI, gateway, supervisor, bubblewrap and SSH: a CLI killed with SIGKILL in
// the middle of the archive, and an upload refused halfway by an injected
// read-only file after other entries were already placed. Afterwards the
// destination holds exactly what it held before, and no staging directory
// is left once the sandbox's extraction has ended.

import { randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { guestDiskMountPoint } from "../../src/runtime/guest-disk.js";
import { TestEnv, uniqueName, waitFor } from "../helpers/cli.js";
import { describeRun, entries, sandboxTree, writeFile } from "../helpers/tree.js";

const STAGING = ".openshell-upload.";
const BIG_BYTES = 96_000_000;

/** The host directory behind the sandbox's /sandbox (the environment has one sandbox). */
function workspaceOnHost(env: TestEnv): string {
  const sandboxes = join(env.stateHome, "openshell", "gateways", "local", "sandboxes");
  const [id, ...others] = readdirSync(sandboxes);
  expect(others, "one sandbox in this environment").toEqual([]);
  // On its own filesystem when the gateway is root (runtime/guest-disk.ts), else in its directory.
  const onDisk = join(guestDiskMountPoint(id!), "workspace");
  return existsSync(onDisk) ? onDisk : join(sandboxes, id!, "workspace");
}

function sizeIfExists(path: string): number | undefined {
  try {
    return lstatSync(path).size;
  } catch {
    return undefined;
  }
}

/** Polls `probe` every 20 ms until it returns a value, failing with `step` named after `timeoutMs`. */
describe("an upload that does not complete leaves nothing in the sandbox", () => {
  const env = new TestEnv("openshell-upload-interrupted-");
  const work = join(env.root, "work");
  const sandbox = uniqueName("partial");

  beforeAll(async () => {
    mkdirSync(work, { recursive: true });
    const fd = openSync(join(work, "big.bin"), "w");
    try {
      for (let written = 0; written < BIG_BYTES; written += 4_000_000) writeSync(fd, randomBytes(4_000_000));
    } finally {
      closeSync(fd);
    }
    writeFile(join(work, "locked.txt"), "injected, read-only\n");
    // What `app` will be uploaded over: a.txt replaced, kept.txt kept, and
    // conf/locked.txt the injected file that cannot be replaced.
    writeFile(join(work, "app", "a.txt"), "new a\n");
    writeFile(join(work, "app", "new.txt"), "brand new\n");
    writeFile(join(work, "app", "conf", "locked.txt"), "an attempt to replace it\n");
    writeFile(join(work, "app", "tools", "run.sh"), "#!/bin/sh\necho new\n", 0o755);
    writeFile(join(work, "app", "z.txt"), "new z\n");
    writeFile(join(work, "app", "ro", "f.txt"), "in a read-only directory\n");
    chmodSync(join(work, "app", "ro"), 0o555);

    await env.startGateway();
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        sandbox,
        "--file",
        "./locked.txt:/sandbox/app/conf/locked.txt",
        "--",
        "sleep",
        "infinity",
      ],
      { cwd: work, timeoutMs: 90_000 },
    );
    expect(created.code, describeRun(created)).toBe(0);
    const seeded = await env.run([
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "sh",
      "-c",
      "echo old a > /sandbox/app/a.txt && echo kept > /sandbox/app/kept.txt && echo old > /sandbox/old.txt",
    ]);
    expect(seeded.code, describeRun(seeded)).toBe(0);
  }, 180_000);

  afterAll(() => env.dispose(), 120_000);

  it(`a CLI killed with SIGKILL part way through a ${BIG_BYTES / 1_000_000} MB upload leaves no file and, once the sandbox's tar ended, no staging directory`, async () => {
    const workspace = workspaceOnHost(env);
    const before = await sandboxTree(env, sandbox, "/sandbox");
    const upload = env.spawn(["sandbox", "upload", sandbox, "big.bin", "/sandbox/"], { cwd: work });
    const exited = new Promise<NodeJS.Signals | null>((done) =>
      upload.once("exit", (_code, signal) => done(signal)),
    );
    try {
      // The event: bytes of the file have reached the sandbox's staging directory.
      const staged = await waitFor("bytes of big.bin in the sandbox's staging directory", 60_000, () => {
        for (const name of readdirSync(workspace)) {
          if (!name.startsWith(STAGING)) continue;
          const path = join(workspace, name, "t", "big.bin");
          if ((sizeIfExists(path) ?? 0) > 0) return path;
        }
        return undefined;
      });
      // Frozen, it sends nothing more: the upload is surely unfinished when it dies.
      upload.kill("SIGSTOP");
      expect(sizeIfExists(staged) ?? 0).toBeLessThan(BIG_BYTES);
      upload.kill("SIGKILL");
      expect(await exited).toBe("SIGKILL");
    } finally {
      upload.kill("SIGKILL");
    }

    const left = await waitFor("the sandbox to remove its staging directory", 30_000, () => {
      const staging = readdirSync(workspace).filter((name) => name.startsWith(STAGING));
      return staging.length === 0 ? staging : undefined;
    });
    expect(left).toEqual([]);
    expect(sizeIfExists(join(workspace, "big.bin"))).toBeUndefined();
    expect(entries(await sandboxTree(env, sandbox, "/sandbox"))).toEqual(entries(before));
  });

  it("an upload refused by an injected read-only file after 5 entries of app/ were placed (1 replacing a file, 1 a read-only directory) leaves /sandbox as it was, naming the file", async () => {
    const workspace = workspaceOnHost(env);
    const before = await sandboxTree(env, sandbox, "/sandbox");

    const refused = await env.run(["sandbox", "upload", sandbox, "app", "/sandbox"], {
      cwd: work,
      timeoutMs: 60_000,
    });
    expect(refused.code, describeRun(refused)).toBe(1);
    expect(refused.stdout).toBe("");
    expect(refused.stderr).toContain(
      "upload failed: /sandbox/app/conf/locked.txt: a read-only file is already there and cannot be replaced",
    );
    expect(refused.stderr).not.toContain("Uploaded");
    expect(entries(await sandboxTree(env, sandbox, "/sandbox"))).toEqual(entries(before));
    expect(readdirSync(workspace).filter((name) => name.startsWith(STAGING))).toEqual([]);
  });

  it("the same upload without the conflicting file merges: 1 file replaced, 1 kept, modes 755 and 555 kept, the injected file untouched", async () => {
    rmSync(join(work, "app", "conf", "locked.txt"));
    const result = await env.run(["sandbox", "upload", sandbox, "app", "/sandbox"], {
      cwd: work,
      timeoutMs: 60_000,
    });
    expect(result.code, describeRun(result)).toBe(0);
    const tree = await sandboxTree(env, sandbox, "/sandbox/app");
    const shown = await env.run([
      "sandbox",
      "exec",
      "-n",
      sandbox,
      "--",
      "cat",
      "/sandbox/app/a.txt",
      "/sandbox/app/kept.txt",
      "/sandbox/app/conf/locked.txt",
      "/sandbox/app/ro/f.txt",
    ]);
    expect(shown.stdout).toBe("new a\nkept\ninjected, read-only\nin a read-only directory\n");
    expect(tree.get("tools/run.sh")?.mode).toBe(0o755);
    expect(tree.get("ro")?.mode).toBe(0o555);
    expect(readdirSync(workspaceOnHost(env)).filter((name) => name.startsWith(STAGING))).toEqual([]);
  });
});
