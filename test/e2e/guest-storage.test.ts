// A sandbox's storage apart from the gateway's, and its host uid apart from
// every other sandbox's on the host: a sandbox fills its own filesystem
// while others are created, run and deleted, and the gateway restarts; two
// gateways on one host create sandboxes side by side under distinct uids.
// Both need a root gateway (loop mounts, pods under uids of their own).

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HOST_UID_LEASES, POD_UID_BASE } from "../../src/gateway/uid-lease.js";
import { DISKS_ROOT, GUEST_DISK_IMAGE } from "../../src/runtime/guest-disk.js";
import { json, TestEnv, uniqueName, waitForPhase } from "../helpers/cli.js";

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;

function sandboxDir(env: TestEnv, id: string): string {
  return join(env.stateHome, "openshell", "gateways", "local", "sandboxes", id);
}

async function sandboxId(env: TestEnv, name: string): Promise<string> {
  const get = await env.run(["sandbox", "get", name, "-o", "json"]);
  expect(get.code, get.stderr).toBe(0);
  return json<{ id: string }>(get).id;
}

function mounted(path: string): boolean {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .some((line) => line.split(" ")[4] === path);
}

describe.skipIf(!isRoot)("a sandbox that fills its 64 MiB filesystem (root gateway)", () => {
  const env = new TestEnv();
  const disk = { OPENSHELL_SANDBOX_DISK: "64MiB" };
  const filler = uniqueName("filler");
  const other = uniqueName("other");
  beforeAll(async () => {
    await env.startGateway(disk);
    const created = await Promise.all([env.createIdle(filler), env.createIdle(other)]);
    for (const result of created) expect(result.code, result.stderr).toBe(0);
  });
  afterAll(() => env.dispose());

  it("gets ENOSPC at 64 MiB in /sandbox and /tmp; others create and exec, its delete frees it, the gateway restarts", async () => {
    const id = await sandboxId(env, filler);
    const keep = await env.run([
      "sandbox",
      "exec",
      "-n",
      other,
      "--",
      "sh",
      "-c",
      "echo kept > /sandbox/kept",
    ]);
    expect(keep.code, keep.stderr).toBe(0);

    // dd runs until the kernel refuses; the outer timeout bounds the step should it hang.
    const fill = await env.run(
      [
        "sandbox",
        "exec",
        "-n",
        filler,
        "--",
        "sh",
        "-c",
        // count=128: were the disk not bounded, the test fails without filling the host.
        "dd if=/dev/zero of=/sandbox/fill bs=1M count=128; dd if=/dev/zero of=/tmp/fill bs=1M count=128; stat -c %s /sandbox/fill",
      ],
      { timeoutMs: 60_000 },
    );
    expect(fill.stderr).toContain("No space left on device");
    const filled = Number(fill.stdout.trim().split("\n").pop());
    expect(filled).toBeGreaterThan(40 * MiB);
    expect(filled).toBeLessThanOrEqual(64 * MiB);
    // On the host the image holds no more than its size, however much was written.
    const image = join(sandboxDir(env, id), GUEST_DISK_IMAGE);
    expect(statSync(image).blocks * 512).toBeLessThanOrEqual(64 * MiB);

    const third = uniqueName("third");
    const created = await env.createIdle(third);
    expect(created.code, created.stderr).toBe(0);
    for (const name of [third, other]) {
      const exec = await env.run([
        "sandbox",
        "exec",
        "-n",
        name,
        "--",
        "sh",
        "-c",
        "echo fine > /sandbox/f && cat /sandbox/f",
      ]);
      expect(exec.code, exec.stderr).toBe(0);
      expect(exec.stdout).toBe("fine\n");
    }

    const deleted = await env.run(["sandbox", "delete", filler]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(existsSync(image)).toBe(false);
    expect(mounted(join(DISKS_ROOT, id))).toBe(false);

    const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
    expect(stop.code, stop.stderr).toBe(0);
    const start = await env.run(["gateway", "start", "--port", "0"], { timeoutMs: 30_000, env: disk });
    expect(start.code, start.stderr).toBe(0);
    await waitForPhase(env, other, "Ready", 30_000);
    // The workspace is the same filesystem as before the restart.
    const kept = await env.run(["sandbox", "exec", "-n", other, "--", "cat", "/sandbox/kept"]);
    expect(kept.code, kept.stderr).toBe(0);
    expect(kept.stdout).toBe("kept\n");
  });

  it("keeps the disk mounted only while the pod runs, nodev and nosuid", async () => {
    const name = uniqueName("mounts");
    expect((await env.createIdle(name)).code).toBe(0);
    const id = await sandboxId(env, name);
    const options = execFileSync("findmnt", ["-n", "-o", "OPTIONS", join(DISKS_ROOT, id)], {
      encoding: "utf8",
    });
    expect(options).toMatch(/\bnodev\b/);
    expect(options).toMatch(/\bnosuid\b/);
    const inside = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "ls -a /sandbox; df -k /sandbox | tail -1",
    ]);
    expect(inside.code, inside.stderr).toBe(0);
    // The filesystem's own lost+found stays outside the pod.
    expect(inside.stdout).not.toContain("lost+found");
    const dfLine = inside.stdout.trim().split("\n").pop()!;
    expect(Number(dfLine.split(/\s+/)[1])).toBeLessThanOrEqual(64 * 1024);
    expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
    expect(mounted(join(DISKS_ROOT, id))).toBe(false);
  });

  it("after the gateway and its supervisors are killed with SIGKILL, the sandbox is SupervisorLost and its start mounts the disk afresh with the workspace intact", async () => {
    const name = uniqueName("crash");
    expect((await env.createIdle(name)).code).toBe(0);
    const id = await sandboxId(env, name);
    const wrote = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "echo before > /sandbox/mark",
    ]);
    expect(wrote.code, wrote.stderr).toBe(0);
    const pidFile = join(env.stateHome, "openshell", "gateways", "local", "gateway.pid");
    const gateway = Number(readFileSync(pidFile, "utf8").trim());
    const supervisors = execFileSync("pgrep", ["-P", String(gateway), "-f", "supervisor.mjs"], {
      encoding: "utf8",
    })
      .split("\n")
      .filter(Boolean)
      .map(Number);
    for (const pid of [gateway, ...supervisors]) process.kill(pid, "SIGKILL");
    // Until the gateway is gone, `gateway start` would find it running.
    execFileSync("tail", [`--pid=${gateway}`, "-f", "/dev/null"], { timeout: 10_000 });
    // Nobody was left to unmount it.
    expect(mounted(join(DISKS_ROOT, id))).toBe(true);

    const start = await env.run(["gateway", "start", "--port", "0"], { timeoutMs: 30_000, env: disk });
    expect(start.code, start.stderr).toBe(0);
    // Its processes are gone: it says so, and runs again when asked.
    await waitForPhase(env, name, "Error", 30_000);
    const lost = await env.run(["sandbox", "get", name, "-o", "json"]);
    expect(lost.stdout).toContain("SupervisorLost");
    const started = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(started.code, started.stderr).toBe(0);
    await waitForPhase(env, name, "Ready", 30_000);
    const read = await env.run(["sandbox", "exec", "-n", name, "--", "cat", "/sandbox/mark"]);
    expect(read.code, read.stderr).toBe(0);
    expect(read.stdout).toBe("before\n");
    // One mount, not the stale one with a new one on top.
    const stacked = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .filter((line) => line.split(" ")[4] === join(DISKS_ROOT, id));
    expect(stacked).toHaveLength(1);
    expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
    expect(mounted(join(DISKS_ROOT, id))).toBe(false);
  });

  it("a disk left mounted after its gateway's state directory was removed is unmounted by the next gateway that starts", async () => {
    const lost = new TestEnv();
    try {
      await lost.startGateway(disk);
      const name = uniqueName("lost");
      expect((await lost.createIdle(name)).code).toBe(0);
      const id = await sandboxId(lost, name);
      const gateway = Number(
        readFileSync(join(lost.stateHome, "openshell", "gateways", "local", "gateway.pid"), "utf8").trim(),
      );
      const supervisors = execFileSync("pgrep", ["-P", String(gateway), "-f", "supervisor.mjs"], {
        encoding: "utf8",
      })
        .split("\n")
        .filter(Boolean)
        .map(Number);
      for (const pid of [gateway, ...supervisors]) process.kill(pid, "SIGKILL");
      execFileSync("tail", [`--pid=${gateway}`, "-f", "/dev/null"], { timeout: 10_000 });
      rmSync(lost.stateHome, { recursive: true, force: true });
      expect(mounted(join(DISKS_ROOT, id))).toBe(true);

      expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
      await env.startGateway(disk);
      expect(mounted(join(DISKS_ROOT, id))).toBe(false);
    } finally {
      await lost.dispose();
    }
  });

  it("moves what a sandbox made before it had a filesystem of its own wrote onto a new one at its next start", async () => {
    const name = uniqueName("upgrade");
    expect((await env.createIdle(name)).code).toBe(0);
    const id = await sandboxId(env, name);
    // Stopped, so that its next start lays out its storage.
    expect((await env.run(["sandbox", "stop", name], { timeoutMs: 60_000 })).code).toBe(0);
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    // The layout before: the workspace a directory in the sandbox's state directory, no image.
    const dir = sandboxDir(env, id);
    rmSync(join(dir, GUEST_DISK_IMAGE));
    mkdirSync(join(dir, "workspace", "project"), { recursive: true, mode: 0o755 });
    writeFileSync(join(dir, "workspace", "project", "notes.txt"), "written before\n", { mode: 0o644 });
    await env.startGateway(disk);
    const started = await env.run(["sandbox", "start", name], { timeoutMs: 60_000 });
    expect(started.code, started.stderr).toBe(0);
    await waitForPhase(env, name, "Ready", 30_000);
    const read = await env.run([
      "sandbox",
      "exec",
      "-n",
      name,
      "--",
      "sh",
      "-c",
      "cat /sandbox/project/notes.txt; df -k /sandbox | tail -1",
    ]);
    expect(read.code, read.stderr).toBe(0);
    expect(read.stdout.startsWith("written before\n")).toBe(true);
    expect(Number(read.stdout.trim().split("\n").pop()!.split(/\s+/)[1])).toBeLessThanOrEqual(64 * 1024);
    expect(existsSync(join(dir, "workspace"))).toBe(false);
    expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
  });
});

/** The host uid a sandbox's pod runs as: the owner of its workspace on its disk. */
function hostUidOf(id: string): number {
  return statSync(join(DISKS_ROOT, id, "workspace")).uid;
}

function runningUids(): Set<number> {
  const out = execFileSync("ps", ["-e", "-o", "uid="], { encoding: "utf8" });
  return new Set(out.split("\n").filter(Boolean).map(Number));
}

describe.skipIf(!isRoot)("two root gateways on one host", () => {
  const first = new TestEnv();
  const second = new TestEnv();
  beforeAll(() => Promise.all([first.startGateway(), second.startGateway()]));
  afterAll(() => Promise.all([first.dispose(), second.dispose()]));

  it("give 3 + 3 sandboxes created side by side 6 distinct host uids, and a delete releases its uid", async () => {
    const names = [0, 1, 2].map(() => uniqueName("uid"));
    const results = await Promise.all(
      [first, second].flatMap((env) => names.map((name) => env.createIdle(name, { timeoutMs: 90_000 }))),
    );
    for (const result of results) expect(result.code, result.stderr).toBe(0);
    const sandboxes: { env: TestEnv; name: string; id: string; uid: number }[] = [];
    for (const env of [first, second]) {
      for (const name of names) {
        const id = await sandboxId(env, name);
        sandboxes.push({ env, name, id, uid: hostUidOf(id) });
      }
    }
    const uids = sandboxes.map((s) => s.uid);
    expect(new Set(uids).size).toBe(6);
    for (const uid of uids) expect(uid).toBeGreaterThanOrEqual(POD_UID_BASE);
    // Each runs: a process of the host has its uid.
    const running = runningUids();
    for (const uid of uids) expect(running.has(uid)).toBe(true);

    const gone = sandboxes[0]!;
    const ledger = new Database(HOST_UID_LEASES, { readonly: true });
    const holderOf = (uid: number) =>
      (
        ledger.prepare("SELECT sandbox_id FROM leases WHERE uid = ?").get(uid) as
          | { sandbox_id: string }
          | undefined
      )?.sandbox_id;
    try {
      expect(holderOf(gone.uid)).toBe(gone.id);
      const deleted = await gone.env.run(["sandbox", "delete", gone.name]);
      expect(deleted.code, deleted.stderr).toBe(0);
      expect(holderOf(gone.uid)).not.toBe(gone.id);
      for (const s of sandboxes.slice(1)) expect(holderOf(s.uid)).toBe(s.id);
    } finally {
      ledger.close();
    }
    // A restarted gateway's sandboxes keep their uids.
    expect((await second.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    await second.startGateway();
    for (const s of sandboxes.filter((s) => s.env === second)) {
      await waitForPhase(second, s.name, "Ready", 30_000);
      expect(hostUidOf(s.id)).toBe(s.uid);
    }
  });
});

describe("a gateway whose filesystem is below its free-space margin (OPENSHELL_GATEWAY_MIN_FREE=8000T)", () => {
  const env = new TestEnv();
  afterAll(() => env.dispose());

  it("refuses creates with the margin named, and still resumes, runs, deletes and restarts", async () => {
    await env.startGateway();
    const name = uniqueName("short");
    expect((await env.createIdle(name)).code).toBe(0);
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    const short = { OPENSHELL_GATEWAY_MIN_FREE: "8000T" };
    await env.startGateway(short);
    await waitForPhase(env, name, "Ready", 30_000);

    const refused = await env.createIdle(uniqueName("refused"));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /the gateway's filesystem has \d+ MiB free, below its 8388608000 MiB margin/,
    );
    const exec = await env.run(["sandbox", "exec", "-n", name, "--", "echo", "runs"]);
    expect(exec.code, exec.stderr).toBe(0);
    expect(exec.stdout).toBe("runs\n");
    const deleted = await env.run(["sandbox", "delete", name]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect((await env.run(["gateway", "stop"], { timeoutMs: 60_000 })).code).toBe(0);
    await env.startGateway(short);
    const list = await env.run(["sandbox", "list", "-o", "json"]);
    expect(list.code, list.stderr).toBe(0);
    expect(json(list)).toEqual([]);
  });
});
