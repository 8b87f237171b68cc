// What a sandboxed process cannot do to the kernel or to the agent that runs
// it, proven from inside a real sandbox: the seccomp filter refuses each call
// it lists, and every route into the agent (ptrace, its memory, its
// descriptors, its environment) is closed. Each probe also runs where it must
// succeed (a bare bubblewrap pod without the filter, or a sandboxed process
// that is not the agent), so a probe that could never work fails the test.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, TestEnv, uniqueName } from "../helpers/cli.js";
import { createThrowawayPod, type ThrowawayPod } from "../helpers/pod.js";

const PROBE = join(ROOT, "test", "fixtures", "confinement-probe.py");
const PROBE_IN_SANDBOX = "/opt/probe/confinement-probe.py";

/** Calls the filter refuses, and what each answers inside a sandbox. */
const REFUSED: Record<string, string> = {
  keyctl: "EPERM",
  add_key: "EPERM",
  request_key: "EPERM",
  bpf: "EPERM",
  perf_event_open: "EPERM",
  userfaultfd: "EPERM",
  ptrace: "EPERM",
  process_vm_readv: "EPERM",
  kcmp: "EPERM",
  pidfd_getfd: "EPERM",
  unshare: "EPERM",
  clone_newuser: "EPERM",
  // ENOSYS, as Docker answers: glibc then falls back to clone, whose flags the filter sees.
  clone3: "ENOSYS",
  io_uring_setup: "EPERM",
  mount: "EPERM",
  open_by_handle_at: "EPERM",
  name_to_handle_at: "EPERM",
  personality_read_implies_exec: "EPERM",
  socket_vsock: "EPERM",
  tiocsti: "EPERM",
  tiocsti_high_bits: "EPERM",
  tioclinux: "EPERM",
};
/** Refused by the kernel as well without the filter (no capability in the pod), so no control can tell them apart. */
const KERNEL_REFUSES_TOO = new Set(["mount"]);

const onX64 = process.arch === "x64";

describe("a sandbox's confinement", () => {
  const env = new TestEnv("openshell-confine-");
  const name = uniqueName("confine");
  let control: ThrowawayPod | undefined;

  const exec = (script: string) =>
    env.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", script], { timeoutMs: 30_000 });

  beforeAll(async () => {
    await env.startGateway();
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--detach",
        "--file",
        `${PROBE}:${PROBE_IN_SANDBOX}:0444`,
        "--",
        "sleep",
        "infinity",
      ],
      { timeoutMs: 60_000 },
    );
    expect(created.code, created.stderr).toBe(0);
    control = await createThrowawayPod({
      files: [{ path: PROBE_IN_SANDBOX, content: readFileSync(PROBE), mode: 0o444 }],
    });
  }, 120_000);

  afterAll(async () => {
    await control?.dispose();
    await env.dispose();
  }, 120_000);

  it("runs every sandboxed process under a seccomp filter (Seccomp: 2, one filter)", async () => {
    const result = await exec("grep -E '^Seccomp(_filters)?:' /proc/self/status");
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.replace(/[ \t]+/g, " ")).toBe("Seccomp: 2\nSeccomp_filters: 1\n");
  });

  it.skipIf(!onX64)(
    `refuses the ${Object.keys(REFUSED).length} probed calls (keyring, bpf, perf, userfaultfd, ptrace, TIOCSTI...) that succeed or fail otherwise without the filter`,
    async () => {
      const inside = await exec(`python3 ${PROBE_IN_SANDBOX} syscalls`);
      expect(inside.code, inside.stderr).toBe(0);
      const results = JSON.parse(inside.stdout) as Record<string, string>;
      expect(results).toEqual({ ...REFUSED, personality_query: "ok" });

      const bare = await control!.run(`python3 ${PROBE_IN_SANDBOX} syscalls`, {
        step: "the same probe in a pod without the filter",
      });
      expect(bare.code, bare.stderr).toBe(0);
      const unfiltered = JSON.parse(bare.stdout) as Record<string, string>;
      for (const [call, refused] of Object.entries(REFUSED)) {
        if (KERNEL_REFUSES_TOO.has(call)) continue;
        // TIOCSTI is the kernel's to refuse when dev.tty.legacy_tiocsti is 0.
        if (call.startsWith("tiocsti") && unfiltered[call] !== "ok") continue;
        expect(unfiltered[call], `${call} without the filter`).not.toBe(refused);
      }
    },
  );

  it.skipIf(!onX64)(
    "closes all 8 routes into the agent (ptrace, /proc/<agent>/mem read and write, fd listing, its stdout, environ, pidfd_getfd, process_vm_readv), and hides the pod's PID 1",
    async () => {
      const script = [
        // The agent is the process started through the pod's loader (pgrep leaves itself out).
        "agent=$(pgrep -f '^/run/openshell/lib/ld-linux')",
        `python3 ${PROBE_IN_SANDBOX} reach "$agent" 1 "$(pgrep -x sleep | head -1)"`,
      ].join("\n");
      const result = await exec(script);
      expect(result.code, result.stderr).toBe(0);
      const [agent, pid1, sibling] = JSON.parse(result.stdout) as Record<string, string>[];
      expect(agent).toEqual({
        ptrace: "EPERM",
        mem_read: "EACCES",
        mem_write: "EACCES",
        fd_list: "EACCES",
        fd_open_stdout: "EACCES",
        environ: "EACCES",
        pidfd_getfd: "EPERM",
        process_vm_readv: "EPERM",
      });
      // bubblewrap's reaper holds the agent's channel too: its /proc entry is covered.
      expect(pid1).toMatchObject({ mem_write: "ENOENT", fd_list: "ENOENT", fd_open_stdout: "ENOENT" });
      expect(pid1).toMatchObject({ ptrace: "EPERM", pidfd_getfd: "EPERM", process_vm_readv: "EPERM" });
      // The same routes into an ordinary sandboxed process (the main command) open: the probe works.
      expect(sibling).toMatchObject({ mem_read: "ok", mem_write: "ok", fd_list: "ok", environ: "ok" });
    },
  );

  it("starts node under the filter (the agent itself runs under it) and runs execs", async () => {
    const result = await exec(
      'node -e \'require("fs").readFileSync("/etc/hostname"); console.log("node ok")\' && echo sh ok',
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe("node ok\nsh ok\n");
  });
});

describe("a gateway's extra seccomp denials (OPENSHELL_SECCOMP_DENY)", () => {
  const env = new TestEnv("openshell-deny-");

  afterAll(async () => {
    await env.dispose();
  }, 120_000);

  it("refuses a malformed list at gateway start, naming the entry", async () => {
    const started = await env.run(["gateway", "start", "--port", "0"], {
      timeoutMs: 30_000,
      env: { OPENSHELL_SECCOMP_DENY: "mknodat,rm -rf" },
    });
    expect(started.code).toBe(1);
    expect(started.stderr).toContain("OPENSHELL_SECCOMP_DENY: '-rf' is not a system call name");
  });

  it("refuses mknodat and mknod in its sandboxes when it names them, and fails a sandbox with SeccompFilterInvalid for a call libseccomp does not know", async () => {
    await env.startGateway({ OPENSHELL_SECCOMP_DENY: "mknodat, mknod" });
    const created = await env.run(
      ["sandbox", "create", "--name", "deny", "--no-keep", "--", "sh", "-c", "mkfifo /tmp/f; echo status $?"],
      { timeoutMs: 60_000 },
    );
    expect(created.stdout).toContain("status 1");
    expect(created.stderr).toContain("Operation not permitted");
    await env.run(["gateway", "stop"], { timeoutMs: 60_000 });

    await env.startGateway({ OPENSHELL_SECCOMP_DENY: "no_such_call" });
    const refused = await env.run(["sandbox", "create", "--name", "unknown", "--", "true"], {
      timeoutMs: 60_000,
    });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("SeccompFilterInvalid");
    expect(refused.stderr).toContain("no_such_call");
  });
});
