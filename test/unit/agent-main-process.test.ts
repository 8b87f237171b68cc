// The sandbox's main process on its own: argv run exactly, exit statuses
// (including failures to start), line events for the logs, the replay buffer,
// the pty, the stdin lease and the gated start.

import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  type MainExitStatus,
  type MainOutputChunk,
  type MainOutputLine,
  MainProcess,
  type MainProcessOptions,
} from "../../src/supervisor/agent/main-process.js";

const STEP_TIMEOUT_MS = 15_000;

async function within<T>(promise: Promise<T>, step: string, ms = STEP_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`timed out after ${ms} ms: ${step}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const dirs: string[] = [];
const running: MainProcess[] = [];
afterEach(async () => {
  for (const main of running.splice(0)) await main.stop(500);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function workdir(): string {
  const dir = mkdtempSync(join(tmpdir(), "agent-main-"));
  dirs.push(dir);
  return dir;
}

interface Observed {
  main: MainProcess;
  chunks: MainOutputChunk[];
  lines: MainOutputLine[];
  /** Resolves with the exit and the number of line events seen before it. */
  exit: Promise<{ status: MainExitStatus; linesBeforeExit: number }>;
  text(stream?: "stdout" | "stderr"): string;
}

function observe(options: Partial<MainProcessOptions> & Pick<MainProcessOptions, "command">): Observed {
  const cwd = options.cwd ?? workdir();
  const main = new MainProcess({
    cwd,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    tty: false,
    ...options,
  });
  running.push(main);
  const chunks: MainOutputChunk[] = [];
  const lines: MainOutputLine[] = [];
  main.on("output", (chunk) => chunks.push(chunk));
  main.on("line", (line) => lines.push(line));
  const exit = new Promise<{ status: MainExitStatus; linesBeforeExit: number }>((done) =>
    main.once("exit", (status) => done({ status, linesBeforeExit: lines.length })),
  );
  const text = (stream?: "stdout" | "stderr") =>
    Buffer.concat(
      chunks.filter((chunk) => !stream || chunk.stream === stream).map((chunk) => chunk.data),
    ).toString();
  return { main, chunks, lines, exit, text };
}

describe("MainProcess", () => {
  it("runs argv exactly, with no shell in between", async () => {
    const run = observe({ command: ["printf", "%s|", "a b", "$HOME", "*"] });
    run.main.start();
    const { status } = await within(run.exit, "printf exit");
    expect(status).toEqual({ code: 0, signal: null });
    expect(run.text("stdout")).toBe("a b|$HOME|*|");
  });

  it("emits lines per stream, flushing the unterminated last line before the exit", async () => {
    const run = observe({
      command: ["sh", "-c", "printf 'one\\ntwo\\r\\n'; printf 'err\\n' >&2; printf 'tail'"],
    });
    run.main.start();
    const { linesBeforeExit } = await within(run.exit, "exit");
    expect(linesBeforeExit).toBe(4);
    expect(run.lines.filter((line) => line.stream === "stdout").map((line) => line.text)).toEqual([
      "one",
      "two",
      "tail",
    ]);
    expect(run.lines.filter((line) => line.stream === "stderr")).toEqual([{ stream: "stderr", text: "err" }]);
  });

  it("normalizes a death by signal to 128+N", async () => {
    const run = observe({ command: ["sh", "-c", "kill -TERM $$"] });
    run.main.start();
    expect((await within(run.exit, "exit")).status).toEqual({ code: 143, signal: "SIGTERM" });
  });

  it("signals the process group on request", async () => {
    const run = observe({ command: ["sh", "-c", "echo ready; exec sleep 300"] });
    const ready = new Promise<void>((done) => run.main.on("line", (line) => line.text === "ready" && done()));
    run.main.start();
    await within(ready, "process started");
    expect(run.main.signal("INT")).toBe(true);
    const { status } = await within(run.exit, "exit after SIGINT");
    expect(status.code).toBe(130);
  });

  it("reports a missing command as exit 127 with a message line", async () => {
    const run = observe({ command: ["no-such-command-here", "arg"] });
    run.main.start();
    const { status } = await within(run.exit, "exit");
    expect(status.code).toBe(127);
    expect(run.lines).toEqual([
      {
        stream: "stderr",
        text: "openshell: cannot start the main process: no-such-command-here: command not found",
      },
    ]);
    expect(run.main.replay().map((chunk) => chunk.stream)).toEqual(["stderr"]);
  });

  it("reports a command that is not executable as exit 126", async () => {
    const cwd = workdir();
    writeFileSync(join(cwd, "script.sh"), "#!/bin/sh\necho hi\n");
    chmodSync(join(cwd, "script.sh"), 0o644);
    const run = observe({ command: ["./script.sh"], cwd });
    run.main.start();
    const { status } = await within(run.exit, "exit");
    expect(status.code).toBe(126);
    expect(run.text("stderr")).toContain("./script.sh: Permission denied");
  });

  it("keeps only the last replayBytes of output for attachers", async () => {
    const run = observe({
      command: ["sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done"],
      replayBytes: 1000,
    });
    run.main.start();
    await within(run.exit, "exit");
    const replay = Buffer.concat(run.main.replay().map((chunk) => chunk.data)).toString();
    expect(replay.length).toBe(1000);
    expect(run.text().endsWith(replay)).toBe(true);
    expect(replay.endsWith("line-499\n")).toBe(true);
  });

  it("runs on an 80x24 pty with output merged when tty is set", async () => {
    const run = observe({ command: ["sh", "-c", "stty size; echo to-err >&2"], tty: true });
    run.main.start();
    const { status } = await within(run.exit, "exit");
    expect(status.code).toBe(0);
    expect(run.text("stdout")).toBe("24 80\r\nto-err\r\n");
    expect(run.lines.map((line) => line.text)).toEqual(["24 80", "to-err"]);
  });

  it("gives the stdin lease to the first attacher only", async () => {
    const run = observe({ command: ["cat"] });
    run.main.start();
    const seen: string[] = [];
    const holder = run.main.attach({ output: (chunk) => seen.push(chunk.data.toString()), exit() {} });
    const watcher = run.main.attach({ output() {}, exit() {} });
    expect(holder.holdsStdin).toBe(true);
    expect(watcher.holdsStdin).toBe(false);
    watcher.write(Buffer.from("ignored\n"));
    holder.write(Buffer.from("accepted\n"));
    watcher.endStdin();
    holder.endStdin();
    const { status } = await within(run.exit, "cat exits after the holder's EOF");
    expect(status.code).toBe(0);
    expect(run.text()).toBe("accepted\n");
  });

  it("starts a gated process on the first attach, replaying nothing before it", async () => {
    const run = observe({ command: ["echo", "started"], startOnAttach: true });
    expect(run.main.state).toBe("pending");
    const exitSeen = new Promise<MainExitStatus>((done) => {
      run.main.attach({ output() {}, exit: done });
    });
    expect(run.main.state).toBe("running");
    expect((await within(exitSeen, "attacher sees the exit")).code).toBe(0);
    expect(run.text()).toBe("started\n");
  });

  it("cancels a gated process that is stopped before anyone attached", async () => {
    const run = observe({ command: ["echo", "never"], startOnAttach: true });
    expect(await run.main.stop()).toBeUndefined();
    run.main.attach({ output() {}, exit() {} });
    expect(run.main.state).toBe("pending");
    expect(run.chunks).toEqual([]);
  });

  it("delivers the exit to an attacher that arrives after it", async () => {
    const run = observe({ command: ["sh", "-c", "echo bye; exit 9"] });
    run.main.start();
    await within(run.exit, "exit");
    const replayed: string[] = [];
    const late = await within(
      new Promise<MainExitStatus>((done) => {
        run.main.attach({ output: (chunk) => replayed.push(chunk.data.toString()), exit: done });
      }),
      "late attacher's exit",
    );
    expect(late.code).toBe(9);
    expect(replayed.join("")).toBe("bye\n");
  });
});
