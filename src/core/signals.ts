// Exit statuses as shells report them: a death by signal N is 128 + N.

import { constants } from "node:os";

/** The status of a command `sandbox exec --timeout` killed (GNU timeout's). */
export const EXEC_TIMEOUT_EXIT = 124;

export function signalNumber(name: string): number | undefined {
  return (constants.signals as Record<string, number>)[`SIG${name.replace(/^SIG/, "")}`];
}

/** The name of signal `number` ("SIGTERM"), if there is one. */
export function signalName(number: number): NodeJS.Signals | undefined {
  const names = Object.entries(constants.signals) as [NodeJS.Signals, number][];
  return names.find(([, value]) => value === number)?.[0];
}

/**
 * The exit status of a process or SSH channel that ended with `code` or
 * `signal`. An SSH exit status is any uint32 the server chooses, and the
 * server is the sandbox's: a status no process can have (outside 0-255) is
 * reported as 255, where an unsigned 4294967295 would wrap to -1 on the wire.
 */
export function exitCodeOf(code: number | null | undefined, signal: string | null | undefined): number {
  if (typeof code === "number") return Number.isInteger(code) && code >= 0 && code <= 255 ? code : 255;
  if (signal) return 128 + (signalNumber(signal) ?? 0);
  return 1;
}
