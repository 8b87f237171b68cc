// Terminal presentation: colour and spinners only on a live terminal (one
// with a usable width, outside CI), colour never with NO_COLOR, glyphs for
// status lines, and the streams a command writes to. Data goes to stdout;
// progress, warnings and hints go to stderr.

import type { Readable, Writable } from "node:stream";
import { Chalk, type ChalkInstance } from "chalk";

export interface Io {
  stdin: Readable & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
  stdout: Writable & { isTTY?: boolean; columns?: number; rows?: number };
  stderr: Writable & { isTTY?: boolean; columns?: number };
}

export function processIo(): Io {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr };
}

/**
 * A terminal that redrawn progress can be drawn on: a TTY that reports a
 * usable width (a pseudo-terminal of 0 columns, as `script -qc` and some CI
 * runners give, makes every redraw unbounded), not `TERM=dumb`, and not in CI,
 * whose logs keep every frame.
 */
export function isLiveTerminal(
  stream: { isTTY?: boolean; columns?: number },
  env: NodeJS.ProcessEnv,
): boolean {
  return (
    stream.isTTY === true &&
    (stream.columns ?? 0) > 0 &&
    env.TERM !== "dumb" &&
    (env.CI === undefined || env.CI === "" || env.CI === "false" || env.CI === "0")
  );
}

/** Colour on a live terminal, never with NO_COLOR (set to anything). */
export function colorFor(
  stream: { isTTY?: boolean; columns?: number },
  env: NodeJS.ProcessEnv,
): ChalkInstance {
  const enabled = isLiveTerminal(stream, env) && env.NO_COLOR === undefined;
  return new Chalk({ level: enabled ? 1 : 0 });
}

export class Ui {
  readonly err: ChalkInstance;
  readonly out: ChalkInstance;

  constructor(
    readonly io: Io,
    env: NodeJS.ProcessEnv,
  ) {
    this.err = colorFor(io.stderr, env);
    this.out = colorFor(io.stdout, env);
    this.interactive = isLiveTerminal(io.stderr, env);
  }

  /** Whether stderr may show redrawn progress (a spinner, a progress bar). */
  readonly interactive: boolean;

  /** Whether stderr shows colour. */
  get colored(): boolean {
    return this.err.level > 0;
  }

  /** One line of data on stdout. */
  data(line: string): void {
    this.io.stdout.write(`${line}\n`);
  }

  /** One line of chatter on stderr. */
  note(line: string): void {
    this.io.stderr.write(`${line}\n`);
  }

  success(message: string): void {
    this.note(`${this.err.green.bold("✓")} ${message}`);
  }

  warn(message: string): void {
    this.note(`${this.err.yellow("!")} ${message}`);
  }

  hint(message: string): void {
    this.note(`${this.err.dim("→")} ${message}`);
  }
}

/** Pads cells into aligned columns with two spaces between them. */
export function table(
  headers: string[],
  rows: string[][],
  style: (header: string) => string = (h) => h,
): string[] {
  const widths = headers.map((header, i) =>
    Math.max(header.length, ...rows.map((row) => (row[i] ?? "").length)),
  );
  const line = (cells: string[], styleCell?: (cell: string, i: number) => string): string =>
    cells
      .map((cell, i) => {
        const padded = i === cells.length - 1 ? cell : cell.padEnd(widths[i]!);
        return styleCell ? styleCell(padded, i) : padded;
      })
      .join("  ")
      .trimEnd();
  return [line(headers, (cell) => style(cell)), ...rows.map((row) => line(row))];
}
