// `sandbox create` as a script or a CI job runs it: under `script -qc` on a
// pseudo-terminal that reports 0x0 (what several CI runners give), with
// NO_COLOR=1, and with CI=true. Each finishes, writes no escape sequence, and
// ends within 2 s of SIGTERM while it waits for the sandbox (the gateway held
// with SIGSTOP, so the wait is still on when the signal lands).

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, TestEnv, uniqueName } from "../helpers/cli.js";

const ESC = "\x1b";

interface Scripted {
  child: ChildProcess;
  output: () => string;
  /** Resolves once `text` appears on the terminal, failing with `step` after `timeoutMs`. */
  seen: (text: string, step: string, timeoutMs?: number) => Promise<void>;
  exited: Promise<number | null>;
}

describe("sandbox create in a script", () => {
  const env = new TestEnv("openshell-scripted-");
  const children: ChildProcess[] = [];
  let gatewayPid = 0;

  beforeAll(async () => {
    await env.startGateway();
    const stateDir = join(env.stateHome, "openshell", "gateways", "local");
    gatewayPid = Number(readFileSync(join(stateDir, "gateway.pid"), "utf8").trim());
  }, 60_000);

  afterAll(async () => {
    try {
      process.kill(gatewayPid, "SIGCONT");
    } catch {
      // Gone already.
    }
    for (const child of children) child.kill("SIGKILL");
    await env.run(["sandbox", "delete", "--all"], { timeoutMs: 60_000 }).catch(() => undefined);
    await env.dispose();
  }, 120_000);

  /**
   * Runs `openshell ARGS` under `script -qc` on a terminal of `cols`x`rows`;
   * the shell prints its pid first (`PID=N`), then execs the CLI.
   */
  const scripted = (
    args: string[],
    size: { cols: number; rows: number },
    extra: Record<string, string | undefined>,
  ): Scripted => {
    const quoted = args.map((arg) => `'${arg}'`).join(" ");
    const command = `stty cols ${size.cols} rows ${size.rows}; echo PID=$$; exec ${BIN} ${quoted}`;
    const child = spawn("script", ["-qec", command, "/dev/null"], {
      env: env.env({ NO_COLOR: undefined, CI: undefined, TERM: "xterm-256color", ...extra }),
      cwd: env.root,
      // stdin stays open: script ends its session when its input ends.
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.push(child);
    let text = "";
    const waiters = new Set<() => void>();
    const onData = (data: Buffer): void => {
      text += data.toString("utf8");
      for (const waiter of [...waiters]) waiter();
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    const seen = (wanted: string, step: string, timeoutMs = 30_000): Promise<void> =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          if (!text.includes(wanted)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(
              `${step}: no ${JSON.stringify(wanted)} within ${timeoutMs} ms; saw ${JSON.stringify(text.slice(-2000))}`,
            ),
          );
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    return { child, output: () => text, seen, exited };
  };

  /** The exit status, failing if it takes more than `timeoutMs`. */
  const within = (run: Scripted, timeoutMs: number, step: string): Promise<number | null> =>
    Promise.race([
      run.exited,
      new Promise<never>((_, reject) => {
        const timer = setTimeout(() => {
          run.child.kill("SIGKILL");
          reject(
            new Error(
              `${step}: no exit within ${timeoutMs} ms; saw ${JSON.stringify(run.output().slice(-2000))}`,
            ),
          );
        }, timeoutMs);
        void run.exited.then(() => clearTimeout(timer));
      }),
    ]);

  const cases: [string, { cols: number; rows: number }, Record<string, string>][] = [
    ["a 0x0 terminal", { cols: 0, rows: 0 }, {}],
    ["a 0x0 terminal with NO_COLOR=1", { cols: 0, rows: 0 }, { NO_COLOR: "1" }],
    ["a 100x30 terminal with CI=true", { cols: 100, rows: 30 }, { CI: "true" }],
  ];

  it.each(cases)(
    "on %s: create finishes, exit 0, plain progress lines and no escape sequence",
    async (_label, size, extra) => {
      const name = uniqueName("scr");
      const run = scripted(
        ["sandbox", "create", "--name", name, "--detach", "--", "sleep", "infinity"],
        size,
        extra,
      );
      const code = await within(run, 60_000, `create on ${_label}`);
      const output = run.output();
      expect(code, output).toBe(0);
      expect(output).toMatch(/\[\d+\.\ds\] Sandbox '[^']+' ready/);
      expect(output.includes(ESC), JSON.stringify(output)).toBe(false);
    },
    90_000,
  );

  it("with NO_COLOR=1 on a 100x30 terminal: no colour, whatever progress is drawn", async () => {
    const name = uniqueName("scr");
    const run = scripted(
      ["sandbox", "create", "--name", name, "--detach", "--", "sleep", "infinity"],
      { cols: 100, rows: 30 },
      { NO_COLOR: "1" },
    );
    const code = await within(run, 60_000, "create with NO_COLOR=1");
    expect(code, run.output()).toBe(0);
    expect(run.output()).toContain(`Sandbox '${name}' ready`);
    // Select Graphic Rendition (colour, bold, dim): none.
    expect(run.output()).not.toMatch(/\x1b\[[0-9;]*m/);
  }, 90_000);

  it("on a 0x0 terminal: ends within 2 s of SIGTERM while waiting for Ready, exit 143, no escape sequence", async () => {
    const name = uniqueName("term");
    const run = scripted(
      ["sandbox", "create", "--name", name, "--detach", "--", "sleep", "infinity"],
      { cols: 0, rows: 0 },
      {},
    );
    await run.seen("PID=", "the shell's pid");
    await run.seen("Created sandbox:", "the create returned");
    // Held: the sandbox cannot be reported Ready while the signal lands.
    process.kill(gatewayPid, "SIGSTOP");
    try {
      const pid = Number(/PID=(\d+)/.exec(run.output())![1]);
      expect(run.output()).not.toContain("ready");
      const sent = Date.now();
      process.kill(pid, "SIGTERM");
      const code = await within(run, 2_000, "exit after SIGTERM");
      expect(Date.now() - sent).toBeLessThan(2_000);
      expect(code, run.output()).toBe(143);
      expect(run.output()).toContain(`Sandbox ${name} was kept`);
      expect(run.output().includes(ESC), JSON.stringify(run.output())).toBe(false);
    } finally {
      process.kill(gatewayPid, "SIGCONT");
    }
  }, 90_000);
});
