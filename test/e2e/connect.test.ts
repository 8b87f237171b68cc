// Interactive use on a real pseudo-terminal (node-pty): `sandbox connect`
// (a shell that sees resizes and exits with its status, leaving the local
// terminal as it found it, even when the CLI is killed), `sandbox create --
// CMD` attached to its command (with --no-keep deleting the sandbox), and
// `sandbox exec` on a terminal.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import { PtySession } from "../helpers/pty.js";
import { exitOf } from "../helpers/ssh.js";

const COLS = 100;
const ROWS = 30;
/** The remote shell's prompt: whatever it says, it ends in `$ ` once it waits for input. */
const PROMPT = /\$ (\x1b\[[0-9;?]*[A-Za-z])*$/;

describe("on a terminal", () => {
  const env = new TestEnv("openshell-connect-");
  const name = uniqueName("conn");
  const sessions: PtySession[] = [];

  /**
   * Runs `command` (shell syntax, `openshell` is this CLI) on a fresh
   * terminal inside a local shell that records the terminal's settings before
   * and after, and prints `CLI-EXIT=<status>` when the command ends.
   */
  const onTerminal = (label: string, command: string) => {
    const before = join(env.root, `${label}.stty-before`);
    const after = join(env.root, `${label}.stty-after`);
    const script = [
      `openshell() { ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} "$@"; }`,
      `stty -g > ${before}`,
      command,
      'echo "CLI-EXIT=$?"',
      `stty -g > ${after}`,
      'echo "SETTINGS: $(stty -a | tr "\\n" " ")"',
    ].join("\n");
    const session = new PtySession("bash", ["--norc", "--noprofile", "-c", script], {
      env: env.env(),
      cwd: env.root,
      cols: COLS,
      rows: ROWS,
    });
    sessions.push(session);
    return {
      session,
      /** Waits for the local shell's report and checks the terminal is as it was. */
      async finished(step: string): Promise<number> {
        const [, code] = await session.waitFor(/CLI-EXIT=(\d+)/, step, 30_000);
        const [settings] = await session.waitFor(/SETTINGS: [^\r\n]*/, `${step}: stty -a afterwards`);
        await session.waitForExit(`${step}: the local shell exits`);
        expect(readFileSync(after, "utf8")).toBe(readFileSync(before, "utf8"));
        // Cooked mode again: line editing and echo on.
        expect(settings).toMatch(/ icanon /);
        expect(settings).toMatch(/ echo /);
        return Number(code);
      },
    };
  };

  beforeAll(async () => {
    await env.startGateway();
    const created = await env.run(["sandbox", "create", "--name", name, "--", "sleep", "infinity"], {
      timeoutMs: 60_000,
    });
    expect(created.code, created.stderr).toBe(0);
  });

  afterAll(async () => {
    for (const session of sessions) session.kill();
    await env.run(["sandbox", "delete", "--all"], { timeoutMs: 60_000 }).catch(() => undefined);
    await env.dispose();
  });

  it("sandbox connect: runs a command, sees a resize, exits with the shell's status, terminal restored", async () => {
    const { session, finished } = onTerminal("connect", `openshell sandbox connect ${name}`);
    await session.waitFor(PROMPT, "the sandbox shell's first prompt");
    session.type('echo "WHO=$(id -un) SIZE=$(stty size)"\r');
    const [, who, rows, cols] = await session.waitFor(
      /WHO=(\S+) SIZE=(\d+) (\d+)/,
      "the shell reports its user and terminal size",
    );
    expect({ who, rows: Number(rows), cols: Number(cols) }).toEqual({
      who: "sandbox",
      rows: ROWS,
      cols: COLS,
    });

    session.resize(120, 40);
    // The resize travels as an SSH window-change beside the typed line; the
    // shell waits (bounded) until its terminal has the new size, then reports it.
    session.type(
      'for i in $(seq 100); do s=$(stty size); [ "$s" = "40 120" ] && break; sleep 0.05; done; echo "RESIZED=$s."\r',
    );
    const [, resized] = await session.waitFor(/RESIZED=([\d ]+)\./, "the shell sees the new size");
    expect(resized).toBe("40 120");

    session.type("exit 3\r");
    expect(await finished("connect ends after `exit 3`")).toBe(3);
  });

  it("sandbox connect killed with SIGTERM restores the terminal, exits 143 and ends the remote shell", async () => {
    const { session, finished } = onTerminal("connect-term", `openshell sandbox connect ${name}`);
    await session.waitFor(PROMPT, "the sandbox shell's first prompt");
    session.type('echo "STARTED-$((40 + 2))"; exec sleep 1234\r');
    await session.waitFor(/STARTED-42/, "the remote command has started");
    const cliPid = Number(execFileSync("pgrep", ["-P", String(session.pid)], { encoding: "utf8" }).trim());
    expect(cliPid).toBeGreaterThan(0);
    process.kill(cliPid, "SIGTERM");
    expect(await finished("connect after SIGTERM")).toBe(143);

    const gone = await env.run(
      [
        "sandbox",
        "exec",
        "-n",
        name,
        "--timeout",
        "10",
        "--",
        "sh",
        "-c",
        "while ps -eo args | grep -qx 'sleep 1234'; do sleep 0.05; done; echo gone",
      ],
      { timeoutMs: 20_000 },
    );
    expect(gone.stdout, "waiting for the remote shell's command to end").toBe("gone\n");
  });

  // These two read the line a command prints on a pty just before it exits:
  // node-pty closes a terminal 200 ms after its child exits, read or not, so
  // the agent (and this test's own terminal) drain it first (pty-drain-on-close).
  it("sandbox exec on a terminal runs on a pty with the terminal's size and restores it", async () => {
    const { session, finished } = onTerminal(
      "exec",
      `openshell sandbox exec -n ${name} -- sh -c 'echo "SIZE=$(stty size)"; read line; echo "GOT=$line"; exit 6'`,
    );
    const [, size] = await session.waitFor(/SIZE=(\d+ \d+)/, "exec reports the terminal size");
    expect(size).toBe(`${ROWS} ${COLS}`);
    session.type("typed line\r");
    await session.waitFor(/GOT=typed line/, "exec reads the typed line");
    expect(await finished("exec on a terminal")).toBe(6);
  });

  it("sandbox create -- CMD attaches to the command; --no-keep deletes the sandbox and exits with its code", async () => {
    const attached = uniqueName("attach");
    const { session, finished } = onTerminal(
      "create",
      `openshell sandbox create --name ${attached} --no-keep -- sh -c 'echo "TTY=$(tty) SIZE=$(stty size)"; read line; echo "GOT=$line"; exit 7'`,
    );
    // The command starts at the size of the terminal it is attached to.
    const [, rows, cols] = await session.waitFor(
      /TTY=\/dev\/pts\/\d+ SIZE=(\d+) (\d+)/,
      "the attached command runs on a terminal of the local size",
    );
    expect({ rows: Number(rows), cols: Number(cols) }).toEqual({ rows: ROWS, cols: COLS });
    session.type("hello\r");
    await session.waitFor(/GOT=hello/, "the attached command reads what is typed");
    expect(await finished("create --no-keep after the command exits")).toBe(7);
    expect(session.output).toContain(`Deleted sandbox ${attached}`);
    const lookup = await env.run(["sandbox", "get", attached]);
    expect(lookup.code).not.toBe(0);
    expect(lookup.stderr).toMatch(/not found/i);
  });

  it("a session whose sandbox is deleted under it ends at once with 244 and says why", async () => {
    const doomed = uniqueName("doomed");
    const created = await env.run(["sandbox", "create", "--name", doomed, "--", "sleep", "infinity"], {
      timeoutMs: 60_000,
    });
    expect(created.code, created.stderr).toBe(0);
    const child = env.spawn(["sandbox", "connect", doomed]);
    let stderr = "";
    child.stderr!.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    try {
      child.stdin!.write("echo connected\n");
      await waitForOutput(child.stdout!, "connected\n", "the shell answers", 20_000);
      const deleted = await env.run(["sandbox", "delete", doomed], { timeoutMs: 60_000 });
      expect(deleted.code, deleted.stderr).toBe(0);
      // stdin stays open: only the lost connection can end the CLI.
      expect(await exitOf(child, "connect after its sandbox was deleted", 20_000)).toBe(244);
      expect(stderr).toMatch(/connection closed before the command reported an exit status/);
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("without a terminal: create --no-keep -- CMD passes streams and status; connect reads commands from stdin", async () => {
    const attached = uniqueName("piped");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        attached,
        "--no-keep",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
      ],
      { timeoutMs: 60_000 },
    );
    expect(created.code, created.stderr).toBe(5);
    expect(created.stdout).toBe("out\n");
    expect(created.stderr).toContain("err\n");
    expect((await env.run(["sandbox", "get", attached])).code).not.toBe(0);

    const piped = await env.run(["sandbox", "connect", name], {
      input: "echo from-stdin; id -un\nexit 4\n",
      timeoutMs: 30_000,
    });
    expect(piped).toMatchObject({ code: 4, stdout: "from-stdin\nsandbox\n" });
  });
});
