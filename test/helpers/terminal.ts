// Running the CLI on a real pseudo-terminal (node-pty), for output that only
// appears on a terminal (progress lines, spinners): wait for text on the
// screen, then for the exit code, each wait naming its step.

import { BIN, type TestEnv } from "./cli.js";
import { PtySession } from "./pty.js";

export interface TerminalRun {
  /** Resolves once `pattern` has appeared anywhere on the screen. */
  waitFor(pattern: RegExp, step: string, timeoutMs?: number): Promise<RegExpExecArray>;
  /** The CLI's exit code. */
  exited(step: string, timeoutMs?: number): Promise<number>;
  /** Everything the terminal has shown so far, escape sequences included. */
  output(): string;
  kill(): void;
}

export function runOnTerminal(
  env: TestEnv,
  args: string[],
  options: { cwd?: string; cols?: number; rows?: number } = {},
): TerminalRun {
  const session = new PtySession(BIN, args, {
    env: env.env(),
    cwd: options.cwd ?? env.root,
    cols: options.cols ?? 120,
    rows: options.rows ?? 40,
  });
  return {
    waitFor: (pattern, step, timeoutMs) => session.waitFor(pattern, step, timeoutMs, { fromStart: true }),
    exited: async (step, timeoutMs) => (await session.waitForExit(step, timeoutMs)).exitCode,
    output: () => session.output,
    kill: () => session.kill(),
  };
}
