// Running an `openshell` command line in this process: the same program the
// binary runs (src/cli/program.ts), with stdin, stdout and stderr captured and
// the exit code returned, so flag parsing, validation messages and exit codes
// are checked without spawning, a gateway or bubblewrap. Tests that need the
// real thing spawn bin/openshell through TestEnv (helpers/cli.ts).
//
// The gateways' configuration and state directories follow XDG_CONFIG_HOME
// and XDG_STATE_HOME of this process (src/host/config.ts), not `env`: a test
// file that can reach them points both at a directory of its own.

import { Readable, Writable } from "node:stream";
import { Invocation } from "../../src/cli/program.js";

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** The environment the command sees (OPENSHELL_*, NO_COLOR, TERM ...); NO_COLOR=1 unless given. */
  env?: Record<string, string | undefined>;
  /** What the command reads on stdin; empty unless given. */
  stdin?: string | Buffer;
}

class Capture extends Writable {
  private readonly chunks: Buffer[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    this.chunks.push(chunk);
    done();
  }

  text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }
}

/** Runs `openshell ARGS...` in-process and resolves with its exit code and output. */
export async function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const stdin = Readable.from(options.stdin === undefined ? [] : [Buffer.from(options.stdin)]);
  const env: NodeJS.ProcessEnv = { NO_COLOR: "1", ...options.env };
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
  const exitCode = await new Invocation({ stdin, stdout, stderr }, env).run(args);
  return { exitCode, stdout: stdout.text(), stderr: stderr.text() };
}
