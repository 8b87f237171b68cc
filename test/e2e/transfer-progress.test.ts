// What a person sees while files move, through the real CLI, gateway,
// supervisor, bubblewrap and SSH: on a terminal, progress (bytes, rate,
// files) and then one summary line; in a script, nothing on stdout and only
// the summary on stderr; and when the gateway dies mid-upload, a non-zero
// exit with a clear message, never a success line.

import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestEnv, uniqueName } from "../helpers/cli.js";
import { runOnTerminal } from "../helpers/terminal.js";
import { describeRun, entries, fileBytes, localTree, randomFiles, writeFile } from "../helpers/tree.js";

/** The lines a terminal ends up showing: `\r` returns overwrite, escape sequences are dropped. */
function visibleLines(output: string): string[] {
  return output
    .split(/\r?\n/)
    .map((line) => (line.split("\r").at(-1) ?? "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").trimEnd())
    .filter((line) => line !== "");
}

async function createSandbox(env: TestEnv, name: string): Promise<void> {
  const created = await env.run(["sandbox", "create", "--name", name, "--", "sleep", "infinity"], {
    timeoutMs: 90_000,
  });
  expect(created.code, describeRun(created)).toBe(0);
}

describe("transfer progress", () => {
  const env = new TestEnv("openshell-progress-");
  const work = join(env.root, "work");
  const sandbox = uniqueName("progress");

  beforeAll(async () => {
    // 312 files, 31.4 MB: 311 small random files and one large one.
    randomFiles(join(work, "src", "lib"), 311);
    const smallBytes = fileBytes(join(work, "src"), localTree(join(work, "src")));
    writeFile(join(work, "src", "data.bin"), randomBytes(31_400_000 - smallBytes));
    await env.startGateway();
    await createSandbox(env, sandbox);
  }, 180_000);

  afterAll(() => env.dispose(), 120_000);

  it("on a terminal: bytes, total, file count and rate while uploading, then one summary line", async () => {
    const upload = runOnTerminal(env, ["sandbox", "upload", sandbox, "src", "/sandbox"], { cwd: work });
    try {
      await upload.waitFor(
        /Uploading \d+\.\d MB \/ 31\.4 MB, \d+\/312 files, \d+\.\d MB\/s/,
        "a progress line with bytes, total, files and rate",
      );
      const code = await upload.exited("the upload on a terminal", 120_000);
      expect(code, upload.output()).toBe(0);
      expect(visibleLines(upload.output())).toEqual(["✓ Uploaded 312 files, 31.4 MB to /sandbox/src"]);
    } finally {
      upload.kill();
    }

    const dest = join(env.root, "download");
    const download = runOnTerminal(env, ["sandbox", "download", sandbox, "/sandbox/src", dest]);
    try {
      await download.waitFor(
        /Downloading \d+\.\d MB, \d+\.\d MB\/s/,
        "a download progress line with bytes and rate",
      );
      const code = await download.exited("the download on a terminal", 120_000);
      expect(code, download.output()).toBe(0);
      expect(visibleLines(download.output())).toEqual([`✓ Downloaded 312 files, 31.4 MB to ${dest}`]);
    } finally {
      download.kill();
    }
    expect(entries(localTree(dest))).toEqual(entries(localTree(join(work, "src"))));
  });

  it("not on a terminal: stdout stays empty, stderr has only the summary", async () => {
    const upload = await env.run(["sandbox", "upload", sandbox, "src", "/sandbox/again"], {
      cwd: work,
      timeoutMs: 120_000,
    });
    expect(upload.code, describeRun(upload)).toBe(0);
    expect(upload.stdout).toBe("");
    expect(upload.stderr).toBe("✓ Uploaded 312 files, 31.4 MB to /sandbox/again/src\n");

    const dest = join(env.root, "download-plain");
    const download = await env.run(["sandbox", "download", sandbox, "/sandbox/again/src", dest], {
      timeoutMs: 120_000,
    });
    expect(download.code, describeRun(download)).toBe(0);
    expect(download.stdout).toBe("");
    expect(download.stderr).toBe(`✓ Downloaded 312 files, 31.4 MB to ${dest}\n`);
  });
});

describe("the gateway killed in the middle of an upload", () => {
  const env = new TestEnv("openshell-upload-kill-");
  const sandbox = uniqueName("kill");
  const big = join(env.root, "big.bin");

  beforeAll(async () => {
    const fd = openSync(big, "w");
    try {
      for (let written = 0; written < 200_000_000; written += 4_000_000)
        writeSync(fd, randomBytes(4_000_000));
    } finally {
      closeSync(fd);
    }
    await env.startGateway();
    await createSandbox(env, sandbox);
  }, 180_000);

  afterAll(() => env.dispose(), 120_000);

  it("exits non-zero with a clear message and never reports success", async () => {
    const upload = runOnTerminal(env, ["sandbox", "upload", sandbox, big, "/sandbox/"]);
    try {
      // The event: progress shows at least 20 MB of the 200 MB on its way.
      await upload.waitFor(/Uploading ([2-9]\d|\d{3})\.\d MB \/ 200\.0 MB/, "20 MB of the upload on its way");
      const gateway = JSON.parse(
        readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.json"), "utf8"),
      ) as { pid: number };
      process.kill(gateway.pid, "SIGKILL");

      const code = await upload.exited("the upload after the gateway was killed", 60_000);
      const lines = visibleLines(upload.output());
      expect(code, lines.join("\n")).toBe(1);
      expect(lines[0]).toMatch(
        /^error: upload of \S+big\.bin to \/sandbox\/big\.bin failed: the connection to the sandbox was lost before the transfer completed \(.+\)$/,
      );
      expect(lines.join("\n")).toContain("Nothing was confirmed as transferred");
      expect(upload.output()).not.toContain("✓");
      expect(upload.output()).not.toContain("Uploaded");
    } finally {
      upload.kill();
    }
  });
});
