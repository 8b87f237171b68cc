// Resource limits: the quantities the CLI and the gateway read, and the
// sandbox's control groups made on this host's real hierarchies (root only),
// including a root the runtime may not use, which must refuse, not ignore.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  describeLimits,
  effectiveLimits,
  limitsToResources,
  parseCpu,
  parsePids,
  parseQuantity,
  resourcesToLimits,
} from "../../src/core/limits.js";
import {
  CgroupError,
  cgroupUsage,
  createSandboxCgroups,
  destroySandboxCgroups,
  killGroup,
  procsFiles,
  sweepIdleCgroups,
} from "../../src/runtime/cgroups.js";
import { waitFor } from "../helpers/cli.js";

describe("limit quantities", () => {
  it("reads cpu as millicores: 500m, 1, 2.5, .5", () => {
    expect(parseCpu("500m")).toBe(500);
    expect(parseCpu("1")).toBe(1000);
    expect(parseCpu(" 2.5 ")).toBe(2500);
    expect(parseCpu(".5")).toBe(500);
  });

  it("refuses an empty, zero, negative or malformed cpu with upstream's messages", () => {
    expect(parseCpu("")).toBe("--cpu must not be empty");
    expect(parseCpu("0")).toBe("--cpu must be greater than zero");
    expect(parseCpu("0m")).toBe("--cpu must be greater than zero");
    for (const bad of ["-1", "1.5m", "abc", "1e3", "Infinity"]) {
      expect(parseCpu(bad)).toMatch(/^invalid --cpu value '.*': expected positive cores or millicores/);
    }
  });

  it("reads memory quantities in binary and decimal units", () => {
    expect(parseQuantity("512Mi")).toBe(512 * 2 ** 20);
    expect(parseQuantity("4Gi")).toBe(4 * 2 ** 30);
    expect(parseQuantity("8G")).toBe(8e9);
    expect(parseQuantity("1000")).toBe(1000);
    for (const bad of ["", "0", "1.5Gi", "4GB", "-1", "Mi"])
      expect(typeof parseQuantity(bad), bad).toBe("string");
  });

  it("reads pids as a positive count", () => {
    expect(parsePids("256")).toBe(256);
    expect(parsePids("0")).toBe("--pids must be greater than zero");
    expect(parsePids("ten")).toMatch(/^invalid --pids value 'ten'/);
  });

  it("round-trips limits through template.resources as upstream spells cpu and memory", () => {
    const limits = { cpuMillis: 500, memoryBytes: 2 * 2 ** 30, pids: 64, diskBytes: 100 * 2 ** 20 };
    const resources = limitsToResources(limits);
    expect(resources).toEqual({
      limits: { cpu: "500m", memory: "2Gi", pids: "64", "ephemeral-storage": "100Mi" },
    });
    expect(resourcesToLimits(resources)).toEqual(limits);
    expect(resourcesToLimits({ limits: { cpu: "2" } })).toEqual({ cpuMillis: 2000 });
    expect(resourcesToLimits({ limits: { gpu: "1" } })).toMatch(/limits\.gpu: unknown limit/);
    expect(resourcesToLimits({ limits: { memory: "lots" } })).toMatch(
      /invalid template\.resources\.limits\.memory/,
    );
  });

  it("applies defaults and refuses a limit above the maximum, naming it", () => {
    expect(effectiveLimits({ cpuMillis: 500 }, { pids: 512 }, {})).toEqual({ cpuMillis: 500, pids: 512 });
    expect(effectiveLimits({ memoryBytes: 8 * 2 ** 30 }, {}, { memoryBytes: 4 * 2 ** 30 })).toBe(
      "memory limit 8Gi exceeds this gateway's maximum 4Gi",
    );
    expect(describeLimits({ cpuMillis: 500, pids: 10 })).toBe("cpu 500m, pids 10");
  });
});

const root = process.getuid?.() === 0;

describe.skipIf(!root)("a sandbox's control groups", () => {
  it("writes each limit where the kernel enforces it, and counts a process started in them", async () => {
    const id = `test-${process.pid}-a`;
    const groups = createSandboxCgroups(id, { cpuMillis: 500, memoryBytes: 64 * 2 ** 20, pids: 7 });
    try {
      if (groups.version === 1) {
        expect(readFileSync(join(groups.dirs.cpu!, "cpu.cfs_quota_us"), "utf8").trim()).toBe("50000");
        expect(readFileSync(join(groups.dirs.memory!, "memory.limit_in_bytes"), "utf8").trim()).toBe(
          String(64 * 2 ** 20),
        );
      }
      expect(readFileSync(join(groups.dirs.pids!, "pids.max"), "utf8").trim()).toBe("7");
      // A shell joins the groups the way a pod does, then tries to fork past the limit.
      const joins = procsFiles(groups)
        .map((file) => `echo $$ > '${file}'`)
        .join("; ");
      const child = spawn(
        "/bin/sh",
        ["-c", `${joins}; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; wait`],
        {
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const exited = new Promise((resolve) => child.once("exit", resolve));
      // The shell gives up at its first failed fork; its six sleeps stay.
      await exited;
      expect(stderr).toMatch(/fork/i);
      expect(cgroupUsage(groups).pids).toBe(6);
      await killGroup(
        groups.dirs.unified ?? groups.dirs.pids!,
        groups.version === 1 ? groups.dirs.freezer : undefined,
      );
      // Killed; their zombies (reparented to this host's init) leave cgroup.procs at once.
      const procs = readFileSync(join(groups.dirs.unified ?? groups.dirs.pids!, "cgroup.procs"), "utf8");
      expect(procs.trim()).toBe("");
    } finally {
      await destroySandboxCgroups(groups);
    }
    expect(existsSync(groups.dirs.pids!)).toBe(false);
  });

  it("sweeps a sandbox's idle groups, never one holding a process", async () => {
    const idle = createSandboxCgroups(`test-${process.pid}-idle`, { pids: 5 });
    const busy = createSandboxCgroups(`test-${process.pid}-busy`, { pids: 5 });
    const child = spawn(
      "/bin/sh",
      ["-c", `echo $$ > '${join(busy.dirs.pids!, "cgroup.procs")}'; exec sleep 30`],
      {
        stdio: "ignore",
      },
    );
    try {
      const joined = await waitFor("the shell to join", 5000, () =>
        readFileSync(join(busy.dirs.pids!, "cgroup.procs"), "utf8").trim() !== "" ? true : undefined,
      );
      expect(joined).toBe(true);
      const mine = (id: string): boolean => id.startsWith(`test-${process.pid}-`);
      // Too young: a create's whose pod has not joined yet.
      expect(sweepIdleCgroups(60_000, undefined, mine)).toBe(0);
      sweepIdleCgroups(0, undefined, mine);
      expect(existsSync(idle.dirs.pids!)).toBe(false);
      expect(existsSync(busy.dirs.pids!)).toBe(true);
    } finally {
      child.kill("SIGKILL");
      await new Promise((resolve) => child.once("exit", resolve));
      await destroySandboxCgroups(busy);
      await destroySandboxCgroups(idle);
    }
  });

  it("refuses a limit under a root that is no cgroup hierarchy, naming the limit and why", () => {
    const fake = mkdtempSync(join(tmpdir(), "cgroup-root-"));
    try {
      let error: unknown;
      try {
        createSandboxCgroups(`test-${process.pid}-b`, { memoryBytes: 2 ** 26 }, fake);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(CgroupError);
      expect((error as CgroupError).limit).toBe("memory");
      expect((error as CgroupError).message).toContain(join(fake, "memory"));
      // No limit asked: nothing to refuse.
      expect(() => createSandboxCgroups(`test-${process.pid}-c`, {}, fake)).not.toThrow();
    } finally {
      rmSync(fake, { recursive: true, force: true });
    }
  });
});
