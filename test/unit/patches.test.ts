// Each patch in src/host/patches.ts relies on a dependency's internals. These
// tests install every patch against the installed versions and check the
// effect through public means, so an update that moves or changes an internal
// fails here, loudly, instead of quietly losing what the patch buys.

import { readFileSync } from "node:fs";
import { connect } from "node:http2";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { spawn } from "node-pty";
import { describe, expect, it, vi } from "vitest";
import {
  BULK_WINDOW_BYTES,
  drainPtyOnClose,
  installPatches,
  PATCH_NAMES,
  PatchUnavailable,
  ptyInputQueue,
} from "../../src/host/patches.js";

describe("the patches module", () => {
  it("installs every patch against the installed dependencies (twice is harmless)", () => {
    expect(installPatches(PATCH_NAMES, {})).toEqual([]);
    expect(installPatches(PATCH_NAMES, {})).toEqual([]);
  });

  it("leaves out what OPENSHELL_NO_PATCHES names", () => {
    // Already installed above or not, a skipped patch is neither tried nor reported.
    expect(installPatches(PATCH_NAMES, { OPENSHELL_NO_PATCHES: "all" })).toEqual([]);
    expect(installPatches(["grpc-server-windows"], { OPENSHELL_NO_PATCHES: "grpc-server-windows" })).toEqual(
      [],
    );
  });

  it("grpc-server-windows: a server's sessions offer BULK_WINDOW_BYTES windows", async () => {
    expect(installPatches(["grpc-server-windows"], {})).toEqual([]);
    const server = new Server();
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      const settings = await new Promise<{ initialWindowSize?: number }>((resolve, reject) => {
        session.once("remoteSettings", resolve);
        session.once("error", reject);
      });
      // Each stream's window, from the server's SETTINGS.
      expect(settings.initialWindowSize).toBe(BULK_WINDOW_BYTES);
      // The connection's window, from the server's WINDOW_UPDATE.
      await vi.waitFor(() => expect(session.state.remoteWindowSize).toBe(BULK_WINDOW_BYTES), {
        timeout: 5000,
      });
    } finally {
      session.destroy();
      server.forceShutdown();
    }
  });

  it("pty-drain-on-close: what a child prints before it exits arrives before the exit, also on a paused terminal", async () => {
    // Paused, nothing is read until node-pty closes the terminal after the exit:
    // without the patch every byte is lost (node-pty's own behaviour).
    for (const encoding of [null, "utf8"] as const) {
      const term = spawn("/bin/sh", ["-c", "head -c 2000 /dev/zero | tr '\\0' x; printf 'last line\\n'"], {
        encoding,
      });
      drainPtyOnClose(term);
      let output = "";
      term.onData((data: string | Buffer) => {
        output += data.toString();
      });
      term.pause();
      const exit = await new Promise<{ exitCode: number }>((resolve) => term.onExit(resolve));
      expect(exit.exitCode).toBe(0);
      expect(output).toBe(`${"x".repeat(2000)}last line\r\n`);
    }
    expect(() => drainPtyOnClose({})).toThrow(/pty-drain-on-close: a terminal has no _socket stream/);
    expect(() => drainPtyOnClose({ _socket: { destroy() {}, read() {}, _handle: {} } })).toThrow(
      /pty-drain-on-close: a terminal's _socket has no _handle\.fd/,
    );
  });

  it("pty-input-queue: node-pty's queue holds what a child has not read yet, and drains", async () => {
    // The shell stops itself before reading; once continued, cat reads everything.
    const term = spawn("/bin/sh", ["-c", "kill -STOP $$; exec cat >/dev/null"], { encoding: null });
    try {
      const queue = ptyInputQueue(term);
      await vi.waitFor(
        () => expect(readFileSync(`/proc/${term.pid}/stat`, "utf8")).toMatch(/^\d+ \(sh\) T /),
        {
          timeout: 5000,
        },
      );
      const chunk = Buffer.alloc(32 * 1024, "x");
      for (let i = 0; i < 64; i++) term.write(chunk);
      // Far more than the terminal's buffer: node-pty holds it, where a writer can see it.
      await vi.waitFor(() => expect(queue.length).toBeGreaterThan(8), { timeout: 5000 });
      process.kill(term.pid, "SIGCONT");
      await vi.waitFor(() => expect(queue.length).toBe(0), { timeout: 10_000 });
    } finally {
      term.kill("SIGKILL");
    }
  });

  it("says which internal is missing instead of falling back", () => {
    expect(() => ptyInputQueue({})).toThrow(PatchUnavailable);
    expect(() => ptyInputQueue({})).toThrow(/pty-input-queue: a terminal has no _writeStream\._writeQueue/);
  });
});
