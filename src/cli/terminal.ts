// The local terminal during an interactive session (`sandbox connect`,
// attached `sandbox create`, `sandbox exec --tty`). A terminal left in raw
// mode is unusable, so every way out restores it: the normal end and errors
// (the caller's finally), and SIGTERM or SIGHUP, whose default action would
// end the process with the terminal still raw.

import type { Io } from "./output/ui.js";

const ENDING_SIGNALS = { SIGHUP: 1, SIGTERM: 15 } as const;

/** Puts stdin in raw mode if it is a terminal; returns the undo (safe to call twice). */
export function enterRawMode(io: Io): () => void {
  const { stdin } = io;
  if (stdin.isTTY !== true || typeof stdin.setRawMode !== "function") return () => {};
  stdin.setRawMode(true);
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    try {
      stdin.setRawMode!(false);
    } catch {
      // The terminal is gone (SIGHUP after a hang-up): nothing left to restore.
    }
  };
}

/**
 * Until the returned function is called, SIGTERM and SIGHUP call `stop` with
 * the status a shell reports for them (128+N) so the session can wind down and
 * the caller's cleanup runs; a second such signal restores the terminal and
 * exits at once.
 */
export function onEndingSignal(stop: (status: number) => void, restore: () => void): () => void {
  let stopping = false;
  const handlers = Object.entries(ENDING_SIGNALS).map(([signal, number]) => {
    const handler = (): void => {
      if (stopping) {
        restore();
        process.exit(128 + number);
      }
      stopping = true;
      stop(128 + number);
    };
    process.on(signal as NodeJS.Signals, handler);
    return () => process.off(signal as NodeJS.Signals, handler);
  });
  return () => {
    for (const remove of handlers) remove();
  };
}
