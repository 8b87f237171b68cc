// The pure parts of exec's time bound and of the last-resort containment:
// one deadline shared by every step of an exec, and a process that logs an
// uncaught error with its stack and keeps serving.

import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Deadline } from "../../src/core/deadline.js";
import { exitCodeOf } from "../../src/core/signals.js";
import { describeUncaught } from "../../src/host/last-resort.js";

describe("Deadline", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  const clock = (): number => Date.now();
  const expiry = (expired: "deadline" | "cap"): Error => new Error(`expired: ${expired}`);

  it("a 3000 ms deadline has 3000 ms left, 1200 after 1800 ms, and 0 (expired) after 3000", () => {
    const deadline = new Deadline(3000, clock);
    expect(deadline.remaining()).toBe(3000);
    vi.advanceTimersByTime(1800);
    expect([deadline.remaining(), deadline.expired()]).toEqual([1200, false]);
    vi.advanceTimersByTime(1200);
    expect([deadline.remaining(), deadline.expired()]).toEqual([0, true]);
    vi.advanceTimersByTime(5000);
    expect(deadline.remaining()).toBe(0);
  });

  it("0 ms means none: nothing is left to count and a step is never cut short", async () => {
    const deadline = new Deadline(0, clock);
    expect([deadline.remaining(), deadline.expired()]).toEqual([undefined, false]);
    const step = new Promise<string>((resolve) => setTimeout(() => resolve("done"), 60_000));
    const raced = deadline.race(step, expiry);
    vi.advanceTimersByTime(60_000);
    await expect(raced).resolves.toBe("done");
  });

  it("steps share one deadline: 2000 ms spent on the first leaves the second 1000 of 3000", async () => {
    const deadline = new Deadline(3000, clock);
    const first = deadline.race(new Promise((resolve) => setTimeout(resolve, 2000)), expiry);
    vi.advanceTimersByTime(2000);
    await first;
    const second = deadline.race(new Promise(() => {}), expiry);
    const outcome = second.catch((error: Error) => error.message);
    vi.advanceTimersByTime(999);
    await Promise.resolve();
    vi.advanceTimersByTime(1);
    await expect(outcome).resolves.toBe("expired: deadline");
  });

  it("a step's own cap (10 s) applies when it comes before the deadline (30 s), and says so", async () => {
    const deadline = new Deadline(30_000, clock);
    const raced = deadline.race(new Promise(() => {}), expiry, 10_000).catch((error: Error) => error.message);
    vi.advanceTimersByTime(10_000);
    await expect(raced).resolves.toBe("expired: cap");
    // And the deadline wins when it is nearer than the cap.
    const near = new Deadline(2000, clock).race(new Promise(() => {}), expiry, 10_000);
    const message = near.catch((error: Error) => error.message);
    vi.advanceTimersByTime(2000);
    await expect(message).resolves.toBe("expired: deadline");
  });

  it("a step that fails before the deadline fails with its own error", async () => {
    const deadline = new Deadline(3000, clock);
    await expect(deadline.race(Promise.reject(new Error("refused")), expiry)).rejects.toThrow("refused");
  });
});

describe("last-resort containment", () => {
  it("describes an error with its stack, and a thrown non-error by its value", () => {
    const error = new Error("boom");
    expect(describeUncaught(error, "uncaughtException", "the gateway")).toBe(
      `uncaught exception (the gateway keeps serving): ${error.stack}`,
    );
    expect(describeUncaught("text", "unhandledRejection", "the supervisor")).toBe(
      "unhandled promise rejection (the supervisor keeps serving): non-error value thrown: text",
    );
  });

  it("a process survives a throw in a callback, an unhandled rejection and an 'error' nobody listens to", () => {
    const script = `
      import { EventEmitter } from "node:events";
      import { containUncaughtErrors } from "./src/host/last-resort.ts";
      containUncaughtErrors("the test process", (entry) => process.stderr.write(entry + "\\n"));
      setTimeout(() => { throw new Error("thrown in a session's callback"); });
      Promise.reject(new Error("rejected and never awaited"));
      setTimeout(() => new EventEmitter().emit("error", new Error("Connection lost before handshake")), 10);
      setTimeout(() => process.stdout.write("still serving\\n"), 100);
    `;
    const result = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: join(import.meta.dirname, "../.."),
      encoding: "utf8",
      timeout: 20_000,
    });
    expect([result.status, result.stdout]).toEqual([0, "still serving\n"]);
    expect(result.stderr).toMatch(
      /uncaught exception \(the test process keeps serving\): Error: thrown in a session's callback\n {4}at /,
    );
    expect(result.stderr).toContain(
      "unhandled promise rejection (the test process keeps serving): Error: rejected and never awaited",
    );
    expect(result.stderr).toContain(
      "uncaught exception (the test process keeps serving): Error: Connection lost before handshake",
    );
  });

  it("a log written to a stderr whose reader is gone does not turn into errors without end", () => {
    // stderr is a pipe whose reader has exited: every write fails with EPIPE.
    const script = `
      import { containUncaughtErrors } from "./src/host/last-resort.ts";
      let logged = 0;
      containUncaughtErrors("the test process", (entry) => { logged++; process.stderr.write(entry + "\\n"); });
      setTimeout(() => { throw new Error("after the reader left"); }, 50);
      setTimeout(() => { process.stdout.write("logged " + logged + "\\n"); process.exit(0); }, 300);
    `;
    const result = spawnSync(
      "bash",
      ["-c", `exec "$0" --import tsx --input-type=module -e "$1" 2> >(true)`, process.execPath, script],
      { cwd: join(import.meta.dirname, "../.."), encoding: "utf8", timeout: 20_000 },
    );
    // The one error, logged once: not a failed write logged with another failed write.
    expect([result.status, result.stdout]).toEqual([0, "logged 1\n"]);
  });
});

describe("exit statuses from a sandbox's SSH server", () => {
  it("0 and 255 pass through; 256, 4294967295, -1 and 1.5 are reported as 255; an unknown signal as 128", () => {
    expect([0, 255].map((code) => exitCodeOf(code, null))).toEqual([0, 255]);
    expect([256, 4294967295, -1, 1.5].map((code) => exitCodeOf(code, null))).toEqual([255, 255, 255, 255]);
    expect(exitCodeOf(null, "NOSUCHSIGNAL")).toBe(128);
  });
});
