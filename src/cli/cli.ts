// The `openshell` executable's entry point (dist/cli.mjs, run by bin/openshell):
// the one place that touches the process for the program as a whole. It runs
// the command line with the process's streams and environment, turns Ctrl-C
// and SIGTERM into a cancellation of the running command (a second one, or
// one before a command runs, exits 130 or 143 at once), treats a closed stdout as the end, waits
// for stdout and stderr to drain, and exits with the command line's code.

import { processIo } from "./output/ui.js";
import { Invocation } from "./program.js";

/** Waits until stdout and stderr have handed everything to the OS. */
function flushed(): Promise<void> {
  const drain = (stream: NodeJS.WriteStream): Promise<void> =>
    new Promise((resolve) => (stream.writableLength === 0 ? resolve() : stream.write("", () => resolve())));
  return Promise.all([drain(process.stdout), drain(process.stderr)]).then(() => undefined);
}

async function main(): Promise<never> {
  // grpc-js passes an IP endpoint's address as the TLS server name (the
  // certificate is still checked against it), for which node prints a
  // deprecation warning on every run; none of node's deprecation warnings is
  // something a user of the CLI can act on.
  process.noDeprecation = true;
  const invocation = new Invocation(processIo(), process.env);
  for (const [signal, status] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    process.on(signal, () => {
      if (!invocation.cancel(status)) process.exit(status);
    });
  }
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(invocation.exitCode ?? 0);
  });
  const code = await invocation.run(process.argv.slice(2));
  await flushed();
  process.exit(code);
}

void main();
