// What a sandbox names and prints reaches the user's terminal escaped: a
// sandbox makes an entry whose name sets the terminal's title and clears its
// screen, a download refused for that entry prints the name with its control
// characters shown (and leaves nothing behind), and its main command's
// output does the same in `logs` while `logs --raw` gives it back as sent.

import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import { describeRun } from "../helpers/tree.js";

const HOSTILE = "\x1b]0;pwned\x07\x1b[2J";
const SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J";
// Any C0 control but the newline that ends each line, DEL, C1.
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;

describe("sandbox-controlled text on the terminal", () => {
  const env = new TestEnv("openshell-hostile-text-");
  const sandbox = uniqueName("hostile");

  beforeAll(async () => {
    await env.startGateway();
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        sandbox,
        "--detach",
        "--",
        "sh",
        "-c",
        `printf 'title ${HOSTILE} end\\n'; exec sleep infinity`,
      ],
      { timeoutMs: 90_000 },
    );
    expect(created.code, describeRun(created)).toBe(0);
    // 40 ordinary files (some archived before the hostile entry, whatever the
    // directory order) and a symlink named with escape sequences, leading out.
    const made = await env.run(
      [
        "sandbox",
        "exec",
        "-n",
        sandbox,
        "--",
        "sh",
        "-c",
        `mkdir /sandbox/out && for i in $(seq 1 40); do echo $i > /sandbox/out/f$i.txt; done && ln -s /etc/passwd "/sandbox/out/$(printf '${HOSTILE}')"`,
      ],
      { timeoutMs: 60_000 },
    );
    expect(made.code, describeRun(made)).toBe(0);
  }, 180_000);

  afterAll(() => env.dispose(), 120_000);

  it("prints the refused entry's name escaped, with no control character, and creates no DEST", async () => {
    const dest = join(env.root, "download", "new");
    const result = await env.run(["sandbox", "download", sandbox, "/sandbox/out", dest], {
      timeoutMs: 60_000,
    });
    expect(result.code, describeRun(result)).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(
      `refusing downloaded archive entry 'out/${SHOWN}': symlink to '/etc/passwd' leads outside the destination`,
    );
    expect(result.stderr).not.toMatch(CONTROL);
    expect(existsSync(join(env.root, "download"))).toBe(false);
  });

  it("leaves an existing DEST with its 1 file as it was when the download into it is refused", async () => {
    const dest = join(env.root, "existing");
    mkdirSync(dest);
    writeFileSync(join(dest, "f1.txt"), "the user's\n");
    const result = await env.run(["sandbox", "download", sandbox, "out", dest], { timeoutMs: 60_000 });
    expect(result.code, describeRun(result)).toBe(1);
    expect(result.stderr).toContain(`'out/${SHOWN}'`);
    expect(result.stderr).not.toMatch(CONTROL);
    expect(readdirSync(dest)).toEqual(["f1.txt"]);
  });

  it("shows the main command's escape sequences escaped in logs, and as sent with logs --raw", async () => {
    // Wait for the line to be logged, on the followed stream.
    const follow = env.spawn(["logs", sandbox, "--tail", "--raw"]);
    try {
      await waitForOutput(follow.stdout!, "end\n", "the main command's line in logs --tail --raw");
    } finally {
      follow.kill("SIGTERM");
    }
    const human = await env.run(["logs", sandbox, "--source", "sandbox"]);
    expect(human.code, describeRun(human)).toBe(0);
    expect(human.stdout).toContain(`title ${SHOWN} end`);
    expect(human.stdout).not.toMatch(CONTROL);

    const raw = await env.run(["logs", sandbox, "--source", "sandbox", "--raw"]);
    expect(raw.code, describeRun(raw)).toBe(0);
    expect(raw.stdout).toBe(`title ${HOSTILE} end\n`);
  });
});
