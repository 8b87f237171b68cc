// The pty-input-queue patch of patches.ts (see its header), in a module of
// its own: the sandbox agent needs only this one, and importing patches.ts
// would load grpc-js into every pod's agent before it reads its
// configuration, about 30 ms of each create→Ready.

/** A patch that could not be installed because the internal it relies on is not what it expects. */
export class PatchUnavailable extends Error {
  constructor(
    readonly patch: string,
    what: string,
  ) {
    super(`${patch}: ${what}; the installed dependency's internals changed, so this patch is not applied`);
    this.name = "PatchUnavailable";
  }
}

/** The queue of writes node-pty has not yet handed to the terminal, or PatchUnavailable. */
export function ptyInputQueue(terminal: object): { readonly length: number } {
  const queue = (terminal as { _writeStream?: { _writeQueue?: unknown } })._writeStream?._writeQueue;
  if (!Array.isArray(queue))
    throw new PatchUnavailable("pty-input-queue", "a terminal has no _writeStream._writeQueue array");
  return queue;
}
