// The last line of containment for the long-lived processes (the gateway and
// each supervisor). Every path fed by a sandbox's bytes has its own bounds
// and error handlers, and a failure there ends that one session with a
// reason. Should one be missed anyway (an 'error' event nobody listens to, a
// throw in a callback, a promise nobody awaits), node's default is to exit:
// for the gateway that ends every sandbox, since each supervisor stops when
// its gateway's pipe closes, and for a supervisor it ends its sandbox. A
// process in a sandbox could then take down the control plane at will.
//
// So once a process has started (start-up errors still fail the start), an
// uncaught error is logged with its stack, as an error to be fixed, and the
// process keeps serving. The state an error leaves behind is one session's:
// every stream and connection is owned by one session and torn down by its
// own timers and close events, so nothing shared is left half-changed.

import { orElse } from "./fs.js";

/** How an uncaught error is written to the process's log: one entry, with its stack. */
export function describeUncaught(error: unknown, origin: string, what: string): string {
  const detail =
    error instanceof Error
      ? (error.stack ?? `${error.name}: ${error.message}`)
      : `non-error value thrown: ${safeString(error)}`;
  const how = origin === "unhandledRejection" ? "unhandled promise rejection" : "uncaught exception";
  return `${how} (${what} keeps serving): ${detail}`;
}

function safeString(value: unknown): string {
  return orElse("(unprintable)", () => String(value).slice(0, 1000));
}

/**
 * Keeps the process running past an uncaught error, logging each one with
 * `log`. Unhandled rejections reach the same handler (node raises them as
 * uncaught exceptions when no 'unhandledRejection' listener exists).
 * Returns a function that removes the handler.
 */
export function containUncaughtErrors(what: string, log: (entry: string) => void): () => void {
  const handler = (error: unknown, origin: string): void => {
    // A log that cannot be written (its disk full, its pipe gone) must not turn into a second uncaught error.
    orElse(undefined, () => log(describeUncaught(error, origin, what)));
  };
  // Its log may be its stderr: once that pipe is gone (the gateway that read
  // it died), each failed write would be one more uncaught error, logged
  // with one more failed write, for ever. A closed stdio stream is dropped.
  const ignore = (): void => {};
  for (const stream of [process.stdout, process.stderr]) stream.on("error", ignore);
  process.on("uncaughtException", handler);
  return () => {
    process.off("uncaughtException", handler);
    for (const stream of [process.stdout, process.stderr]) stream.off("error", ignore);
  };
}
