// Shell completion as a user meets it: an interactive bash on a real
// terminal, with bash-completion and `openshell completions bash` sourced,
// TAB pressed after partial words, and a sandbox name offered from the real
// gateway.

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, TestEnv, uniqueName } from "../helpers/cli.js";
import { PtySession } from "../helpers/pty.js";

const BASH_COMPLETION = "/usr/share/bash-completion/bash_completion";

describe("completions in bash", () => {
  const env = new TestEnv("openshell-completions-");
  const name = uniqueName("tab");
  let shell: PtySession | undefined;

  beforeAll(async () => {
    await env.startGateway();
    const created = await env.run(["sandbox", "create", "--name", name]);
    expect(created.code, created.stderr).toBe(0);
  }, 90_000);
  afterAll(async () => {
    shell?.kill();
    await env.dispose();
  });

  it("completes `openshell sandbox ex` to exec and offers the sandbox after -n", async () => {
    const rc = join(env.root, "bashrc");
    writeFileSync(
      rc,
      [
        `source ${BASH_COMPLETION}`,
        `openshell() { ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} "$@"; }`,
        "source <(openshell completions bash)",
        "PS1='READY> '",
      ].join("\n"),
    );
    shell = new PtySession("bash", ["--noprofile", "--rcfile", rc, "-i"], {
      env: env.env(),
      cwd: env.root,
      cols: 200,
      rows: 40,
    });
    await shell.waitFor(/READY> /, "the shell starts");
    shell.type("openshell sandbox ex\t");
    await shell.waitFor(/openshell sandbox exec /, "TAB completes the subcommand", 30_000);
    shell.type("-n \t");
    await shell.waitFor(new RegExp(`-n ${name} `), "TAB offers the gateway's only sandbox", 30_000);
    // Ctrl-U clears the line; the shell leaves.
    shell.type("\x15exit\r");
    expect((await shell.waitForExit("the shell exits")).exitCode).toBe(0);
  });
});
