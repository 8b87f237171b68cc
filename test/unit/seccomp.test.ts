// The default seccomp filter's rules: the blocks that refuse unusual
// personalities cover exactly what Docker does not allow, the deny list's
// grammar, and that a filter that cannot be built says which package to install.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseDenyList } from "../../src/runtime/contract.js";
import {
  complementBlocks,
  SeccompError,
  seccompProgram,
  seccompProgramName,
  seccompSpec,
} from "../../src/supervisor/seccomp.js";

const ALLOWED = [0, 0x8, 0x20000, 0x20008, 0xffffffff];

function refused(blocks: { mask: number; value: number }[], x: number): number {
  return blocks.filter((b) => (x & b.mask) >>> 0 === b.value).length;
}

describe("complementBlocks", () => {
  const blocks = complementBlocks(ALLOWED);

  it("refuses none of the 5 allowed personalities and exactly once each value around them", () => {
    for (const x of ALLOWED) expect(refused(blocks, x), `0x${x.toString(16)}`).toBe(0);
    const near = ALLOWED.flatMap((x) => [x - 2, x - 1, x + 1, x + 2]).filter(
      (x) => x >= 0 && x <= 0xffffffff && !ALLOWED.includes(x),
    );
    for (const x of near) expect(refused(blocks, x), `0x${x.toString(16)}`).toBe(1);
  });

  it("refuses each of 20,000 pseudo-random 32-bit values outside the set exactly once, in under 100 blocks", () => {
    expect(blocks.length).toBeLessThan(100);
    let seed = 12345;
    for (let i = 0; i < 20_000; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      const x = i % 2 === 0 ? seed : seed & 0x3ffff; // half of them small, where the allowed values are
      expect(refused(blocks, x)).toBe(ALLOWED.includes(x) ? 0 : 1);
    }
  });

  it("covers all 2^32 values with no allowed ones as the whole space", () => {
    expect(complementBlocks([])).toEqual([{ mask: 0, value: 0 }]);
  });
});

describe("seccompSpec", () => {
  it("adds the 32-bit ABIs a 64-bit process can enter through (x86 and x32 on x64, arm on arm64)", () => {
    expect(seccompSpec([], "x64").extraArches).toEqual(["X86", "X32"]);
    expect(seccompSpec([], "arm64").extraArches).toEqual(["ARM"]);
  });

  it("refuses TIOCSTI comparing only the request's low 32 bits, and clone3 with ENOSYS", () => {
    const { rules } = seccompSpec();
    expect(rules).toContainEqual({
      syscall: "ioctl",
      errno: "EPERM",
      when: { arg: 1, mask: 0xffffffff, value: 0x5412 },
    });
    expect(rules).toContainEqual({ syscall: "clone3", errno: "ENOSYS" });
  });

  it("adds a named call once, and drops the conditional rules of a call refused whole", () => {
    const { rules } = seccompSpec(["ioctl", "keyctl", "ioctl"]);
    expect(rules.filter((r) => r.syscall === "ioctl")).toEqual([{ syscall: "ioctl", errno: "EPERM" }]);
    expect(rules.filter((r) => r.syscall === "keyctl")).toHaveLength(1);
  });
});

describe("parseDenyList", () => {
  it("reads names separated by commas and spaces", () => {
    expect(parseDenyList(" io_setup, io_submit  mknodat,")).toEqual(["io_setup", "io_submit", "mknodat"]);
    expect(parseDenyList(undefined)).toEqual([]);
  });

  it("names the first entry that is not a system call name", () => {
    expect(() => parseDenyList("keyctl,../x")).toThrow(
      "OPENSHELL_SECCOMP_DENY: '../x' is not a system call name",
    );
  });
});

describe("seccompProgram", () => {
  it("fails with SeccompUnavailable naming python3-seccomp when the interpreter is missing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "openshell-seccomp-"));
    try {
      const error = await seccompProgram(dir, seccompSpec(), { python: "/nonexistent/python3" }).catch(
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(SeccompError);
      expect((error as SeccompError).reason).toBe("SeccompUnavailable");
      expect((error as SeccompError).message).toContain("apt-get install python3-seccomp");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("takes a bundle's precompiled filter of the same rules, without an interpreter", async () => {
    const dir = mkdtempSync(join(tmpdir(), "openshell-seccomp-"));
    try {
      const prebuilt = join(dir, "prebuilt");
      mkdirSync(prebuilt);
      writeFileSync(join(prebuilt, seccompProgramName(seccompSpec())), Buffer.alloc(64));
      const options = { python: "/nonexistent/python3", prebuilt };
      expect(await seccompProgram(join(dir, "support"), seccompSpec(), options)).toBe(
        join(prebuilt, seccompProgramName(seccompSpec())),
      );
      // Other rules (an operator's deny list) are not the bundle's: they are compiled, here in vain.
      const other = await seccompProgram(join(dir, "support"), seccompSpec(["io_setup"]), options).catch(
        (e: unknown) => e,
      );
      expect((other as SeccompError).reason).toBe("SeccompUnavailable");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
