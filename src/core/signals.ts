// Exit statuses as shells report them: a death by signal N is 128 + N.

import { constants } from "node:os";

export function signalNumber(name: string): number | undefined {
  return (constants.signals as Record<string, number>)[`SIG${name.replace(/^SIG/, "")}`];
}

/** The exit status of a process or SSH channel that ended with `code` or `signal`. */
export function exitCodeOf(code: number | null | undefined, signal: string | null | undefined): number {
  if (typeof code === "number") return code;
  if (signal) return 128 + (signalNumber(signal) ?? 0);
  return 1;
}
