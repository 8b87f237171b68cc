// A real pseudo-terminal for interactive end-to-end tests (node-pty): spawn
// a command on it, type into it, resize it, and wait for what appears on the
// screen, each wait with its own timeout naming the step.

import { type IPty, spawn } from "node-pty";
import { drainPtyOnClose } from "../../src/host/pty-patch.js";

export interface PtyExit {
  exitCode: number;
  signal?: number | undefined;
}

export class PtySession {
  private readonly pty: IPty;
  private screen = "";
  /** Where the next wait starts looking: each wait consumes what it matched. */
  private cursor = 0;
  private readonly listeners = new Set<() => void>();
  readonly exited: Promise<PtyExit>;

  constructor(
    file: string,
    args: string[],
    options: { env: NodeJS.ProcessEnv; cwd: string; cols: number; rows: number },
  ) {
    this.pty = spawn(file, args, {
      name: "xterm-256color",
      cols: options.cols,
      rows: options.rows,
      cwd: options.cwd,
      env: { ...options.env, TERM: "xterm-256color" } as Record<string, string>,
    });
    // What the command prints just before it exits reaches the screen (as in the agent).
    drainPtyOnClose(this.pty);
    this.pty.onData((data) => {
      this.screen += data;
      for (const listener of [...this.listeners]) listener();
    });
    this.exited = new Promise((resolveExit) => this.pty.onExit((exit) => resolveExit(exit)));
  }

  get pid(): number {
    return this.pty.pid;
  }

  /** Everything the terminal has shown so far. */
  get output(): string {
    return this.screen;
  }

  type(text: string): void {
    this.pty.write(text);
  }

  resize(cols: number, rows: number): void {
    this.pty.resize(cols, rows);
  }

  /**
   * Resolves with the match once `pattern` appears after the previous wait's
   * match (or anywhere, with `fromStart`).
   */
  waitFor(
    pattern: RegExp,
    step: string,
    timeoutMs = 20_000,
    options: { fromStart?: boolean } = {},
  ): Promise<RegExpExecArray> {
    return new Promise((resolveMatch, reject) => {
      const check = (): boolean => {
        const from = options.fromStart ? 0 : this.cursor;
        const match = pattern.exec(this.screen.slice(from));
        if (!match) return false;
        this.cursor = from + match.index + match[0].length;
        resolveMatch(match);
        return true;
      };
      if (check()) return;
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(
          new Error(
            `${step}: did not see ${pattern} within ${timeoutMs} ms; screen ends with: ${JSON.stringify(this.screen.slice(-1500))}`,
          ),
        );
      }, timeoutMs);
      const listener = (): void => {
        if (check()) {
          clearTimeout(timer);
          this.listeners.delete(listener);
        }
      };
      this.listeners.add(listener);
    });
  }

  /** The exit of the terminal's process, failing with the step named if it takes too long. */
  waitForExit(step: string, timeoutMs = 20_000): Promise<PtyExit> {
    return Promise.race([
      this.exited,
      new Promise<never>((_, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`${step}: no exit within ${timeoutMs} ms`)),
          timeoutMs,
        );
        void this.exited.then(() => clearTimeout(timer));
      }),
    ]);
  }

  kill(): void {
    try {
      this.pty.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }
}
