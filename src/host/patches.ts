// The one module that reaches into dependencies' internals. Each patch buys
// something the dependency's public API cannot (`npm run bench` with and
// without OPENSHELL_NO_PATCHES=all measures it, sections 3 and 6), and each
// is installed explicitly by the entry points that want it
// (`installPatches`). A patch whose internal is missing or changed is not
// installed and is reported to the caller, never silently replaced by a
// fallback; test/unit/patches.test.ts fails loudly when any internal a patch
// relies on has changed in the installed version.
//
// - grpc-in-place-framing (grpc-js `CompressionFilter.prototype.sendMessage`,
//   a deep import of build/src/compression-filter.js): grpc-js frames every
//   message it sends by copying it behind a five-byte header. A buffer from
//   `framedInPlace` keeps those five bytes free in front and is sent where it
//   lies: one copy of a create's ten MiB of files fewer in the CLI (section 3):
//   0.5-2.7 ms of CPU and ten MiB of peak memory per such create, measured
//   alone. In the bench (2 CPUs shared at load 5-10, 2026-12-03) the CLI's
//   "added by the files" p50 was -2 to 385 ms with it (8 runs, median 183)
//   and 208-467 ms without it (4 runs): a spread far wider than the gain.
// - grpc-server-windows (grpc-js `Server` `commonServerOptions`,
//   `_sessionHandler`, `_channelzSessionHandler`): grpc-js clients take a
//   `grpc-node.flow_control_window`, its server has no such option and keeps
//   HTTP/2's 64 KiB windows, so a client sending bulk bytes waits for a window
//   update every 64 KiB. Sessions of a server bound after the install get
//   `BULK_WINDOW_BYTES` windows. Section 6's upload / tar|ssh ratio was
//   0.48-0.92 with it (8 runs, median 0.70), 0.55 without it (1 run) and
//   0.49-0.74 without either patch (3 runs), on that same loaded host: no
//   gain outside the spread was shown; a quiet host has to show it.
// - pty-input-queue (node-pty `_writeStream._writeQueue`): node-pty queues
//   whatever is written to a terminal without bound and has no 'drain'.
//   `ptyInputQueue` exposes the queue's length so a writer can wait; without
//   it, input sent faster than the child reads piles up in the agent's memory.
//   It is per terminal, so it is not in `installPatches`; the caller reports
//   an unavailable queue. It is in pty-patch.ts (re-exported here), so that
//   the agent in every pod does not load grpc-js with it.
// - pty-drain-on-close (node-pty `_socket` and its `_handle.fd`): node-pty
//   closes a terminal 200 ms after its child exits, whether or not its output
//   was read. Output the reader had paused for was always lost (every time,
//   in patches.test.ts without the patch), and on a loaded host the last line
//   a command printed just before exiting sometimes was (the kernel had not
//   yet passed it to the terminal's reader). `drainPtyOnClose` delivers what
//   is left before the close. A correctness fix, not a speed-up: nothing to
//   measure in the bench. Per terminal, like pty-input-queue, and also in
//   pty-patch.ts; the agent and the test terminal install it.

import type { Http2Session } from "node:http2";
import { Server } from "@grpc/grpc-js";
import * as compressionFilter from "@grpc/grpc-js/build/src/compression-filter.js";
import { PatchUnavailable } from "./pty-patch.js";

/** The HTTP/2 windows of the gateway's server and of every client channel (8 MiB). */
export const BULK_WINDOW_BYTES = 8 * 1024 * 1024;

export type PatchName = "grpc-in-place-framing" | "grpc-server-windows";
export const PATCH_NAMES: readonly PatchName[] = ["grpc-in-place-framing", "grpc-server-windows"];

export { drainPtyOnClose, PatchUnavailable, ptyInputQueue } from "./pty-patch.js";

// ---- grpc-in-place-framing ----

const GRPC_FRAME_HEADER = 5;
const FRAMED_IN_PLACE = new WeakSet<Uint8Array>();
let inPlaceFrames = 0;

/**
 * A buffer of `length` bytes that grpc-js frames without copying it once
 * grpc-in-place-framing is installed (and copies, as any other, when not).
 */
export function framedInPlace(length: number): Buffer {
  const buffer = Buffer.allocUnsafe(GRPC_FRAME_HEADER + length).subarray(GRPC_FRAME_HEADER);
  FRAMED_IN_PLACE.add(buffer);
  return buffer;
}

/** How many messages have been sent framed in place (a test's evidence that grpc-js still uses the patched step). */
export function inPlaceFrameCount(): number {
  return inPlaceFrames;
}

interface WriteObject {
  message: Buffer;
  flags?: number;
}

interface FilterInternals {
  sendCompression?: { constructor?: { name?: string } };
  maxSendMessageLength?: number;
}

type SendMessage = (
  this: FilterInternals,
  message: Promise<WriteObject> | WriteObject,
) => Promise<WriteObject>;

const PATCHED = Symbol("openshell.patched");

function installInPlaceFraming(): void {
  const name = "grpc-in-place-framing";
  const filter = (
    compressionFilter as unknown as { CompressionFilter?: { prototype?: Record<string | symbol, unknown> } }
  ).CompressionFilter;
  const proto = filter?.prototype;
  const original = proto?.sendMessage as SendMessage | undefined;
  if (!proto || typeof original !== "function") {
    throw new PatchUnavailable(name, "CompressionFilter.prototype.sendMessage is not a function");
  }
  if (proto[PATCHED]) return;
  proto[PATCHED] = true;
  proto.sendMessage = async function (this: FilterInternals, pending: Promise<WriteObject> | WriteObject) {
    const resolved = await pending;
    const bytes = resolved.message;
    const limit = this.maxSendMessageLength ?? -1;
    if (
      !FRAMED_IN_PLACE.has(bytes) ||
      this.sendCompression?.constructor?.name !== "IdentityHandler" ||
      (limit !== -1 && bytes.length > limit)
    ) {
      return original.call(this, resolved);
    }
    const framed = Buffer.from(
      bytes.buffer,
      bytes.byteOffset - GRPC_FRAME_HEADER,
      bytes.length + GRPC_FRAME_HEADER,
    );
    framed[0] = 0; // not compressed
    framed.writeUInt32BE(bytes.length, 1);
    inPlaceFrames++;
    return { message: framed, ...(resolved.flags === undefined ? {} : { flags: resolved.flags }) };
  } satisfies SendMessage;
}

// ---- grpc-server-windows ----

type SessionHandler = (this: unknown, http2Server: unknown) => (session: Http2Session) => void;
type BindAsync = (this: ServerInternals, ...args: unknown[]) => unknown;

interface ServerInternals {
  commonServerOptions?: { settings?: Record<string, unknown> };
}

function installServerWindows(): void {
  const name = "grpc-server-windows";
  const proto = Server.prototype as unknown as Record<string | symbol, unknown>;
  const handlers = ["_sessionHandler", "_channelzSessionHandler"] as const;
  for (const handler of handlers) {
    if (typeof proto[handler] !== "function")
      throw new PatchUnavailable(name, `Server.prototype.${handler} is not a function`);
  }
  const probe = new Server() as unknown as ServerInternals;
  if (typeof probe.commonServerOptions !== "object" || probe.commonServerOptions === null) {
    throw new PatchUnavailable(name, "a Server has no commonServerOptions");
  }
  if (proto[PATCHED]) return;
  proto[PATCHED] = true;
  for (const handler of handlers) {
    const original = proto[handler] as SessionHandler;
    proto[handler] = function (this: unknown, http2Server: unknown) {
      const inner = original.call(this, http2Server);
      return (session: Http2Session) => {
        session.setLocalWindowSize(BULK_WINDOW_BYTES);
        inner(session);
      };
    } satisfies SessionHandler;
  }
  const bindAsync = proto.bindAsync as BindAsync;
  proto.bindAsync = function (this: ServerInternals, ...args: unknown[]) {
    const options = this.commonServerOptions;
    if (options) options.settings = { ...options.settings, initialWindowSize: BULK_WINDOW_BYTES };
    return bindAsync.apply(this, args);
  } satisfies BindAsync;
}

const INSTALLERS: Record<PatchName, () => void> = {
  "grpc-in-place-framing": installInPlaceFraming,
  "grpc-server-windows": installServerWindows,
};

/**
 * Installs `names` (installing twice is harmless) and returns the ones that
 * could not be, each with why. `OPENSHELL_NO_PATCHES` (`all`, or names
 * separated by commas) leaves patches out, to measure what they buy.
 */
export function installPatches(
  names: readonly PatchName[],
  env: NodeJS.ProcessEnv = process.env,
): PatchUnavailable[] {
  const skipped = new Set((env.OPENSHELL_NO_PATCHES ?? "").split(",").map((entry) => entry.trim()));
  const failures: PatchUnavailable[] = [];
  for (const name of names) {
    if (skipped.has("all") || skipped.has(name)) continue;
    try {
      INSTALLERS[name]();
    } catch (error) {
      failures.push(error instanceof PatchUnavailable ? error : new PatchUnavailable(name, String(error)));
    }
  }
  return failures;
}
