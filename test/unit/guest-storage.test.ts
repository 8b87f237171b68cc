// The pure and local parts of sandboxes' storage and identities: disk sizes,
// the host uid ledger (on a private database file), and the store's reserve
// on a filesystem that fills up (a small tmpfs; root only).

import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { newSandboxStatus } from "../../src/core/phases.js";
import { Store } from "../../src/gateway/store.js";
import { POD_UID_BASE, UidLeases } from "../../src/gateway/uid-lease.js";
import type { Sandbox } from "../../src/gen/openshell.js";
import { parseDiskSize } from "../../src/runtime/guest-disk.js";

describe("disk sizes", () => {
  it("reads 4GiB, 4g and 4294967296 as 4,294,967,296 bytes and 64M as 67,108,864", () => {
    expect(parseDiskSize("4GiB")).toBe(4_294_967_296);
    expect(parseDiskSize("4g")).toBe(4_294_967_296);
    expect(parseDiskSize("4294967296")).toBe(4_294_967_296);
    expect(parseDiskSize(" 64M ")).toBe(67_108_864);
    expect(parseDiskSize("512 KiB")).toBe(524_288);
  });

  it("refuses 1.5G, -1, 4GB, an empty size and one past 2^53", () => {
    for (const text of ["1.5G", "-1", "4GB", "", "G", "9007199254740993", "99999999T"]) {
      expect(parseDiskSize(text), text).toBeUndefined();
    }
  });
});

describe("the host uid ledger", () => {
  let dir: string;
  let leases: UidLeases | undefined;
  afterEach(() => {
    leases?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function setUp(): { holder: (name: string) => { sandboxDir: string; sandboxId: string } } {
    dir = mkdtempSync(join(tmpdir(), "openshell-uids-"));
    leases = new UidLeases(join(dir, "ledger", "uid-leases.db"));
    return {
      holder: (name) => {
        const sandboxDir = join(dir, name);
        mkdirSync(sandboxDir, { recursive: true });
        return { sandboxDir, sandboxId: name };
      },
    };
  }

  it("leases 2,100,000,000 upward, one uid per holder, and two ledgers on one file never give one uid twice", () => {
    const { holder } = setUp();
    const other = new UidLeases(join(dir, "ledger", "uid-leases.db"));
    try {
      const uids = [];
      for (let i = 0; i < 20; i++) uids.push((i % 2 === 0 ? leases! : other).take(holder(`s${i}`)));
      expect(new Set(uids).size).toBe(20);
      expect(Math.min(...uids)).toBe(POD_UID_BASE);
      expect(Math.max(...uids)).toBe(POD_UID_BASE + 19);
    } finally {
      other.close();
    }
  });

  it("gives a released uid, and one whose sandbox directory is gone, to the next holder", () => {
    const { holder } = setUp();
    const a = holder("a");
    const b = holder("b");
    const c = holder("c");
    expect(leases!.take(a)).toBe(POD_UID_BASE);
    expect(leases!.take(b)).toBe(POD_UID_BASE + 1);
    expect(leases!.take(c)).toBe(POD_UID_BASE + 2);
    leases!.release(POD_UID_BASE + 1, b);
    expect(leases!.take(holder("d"))).toBe(POD_UID_BASE + 1);
    rmSync(a.sandboxDir, { recursive: true });
    expect(leases!.take(holder("e"))).toBe(POD_UID_BASE);
    expect(leases!.holder(POD_UID_BASE)?.sandboxId).toBe("e");
  });

  it("releases only the holder's own lease, and retakes a uid only when it is free, stale or already the holder's", () => {
    const { holder } = setUp();
    const a = holder("a");
    const b = holder("b");
    const uid = leases!.take(a);
    leases!.release(uid, b);
    expect(leases!.holder(uid)?.sandboxId).toBe("a");
    expect(leases!.retake(uid, b)).toBe(false);
    expect(leases!.retake(uid, a)).toBe(true);
    expect(leases!.retake(POD_UID_BASE + 7, b)).toBe(true);
    expect(leases!.holder(POD_UID_BASE + 7)?.sandboxId).toBe("b");
    rmSync(a.sandboxDir, { recursive: true });
    expect(leases!.retake(uid, holder("c"))).toBe(true);
  });
});

function sandbox(name: string): Sandbox {
  return {
    metadata: {
      id: `id-${name}`,
      name,
      createdAtMs: Date.now(),
      labels: {},
      resourceVersion: 1,
      annotations: {},
      workspace: "default",
      deletionTimestampMs: 0,
    },
    spec: undefined,
    status: newSandboxStatus(name),
  };
}

/** Writes zeros to `path` until the filesystem refuses. */
function fill(path: string): void {
  const fd = openSync(path, "w");
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error;
  } finally {
    closeSync(fd);
  }
}

describe.skipIf(process.getuid?.() !== 0)("the store on a filesystem that fills up (a 24 MiB tmpfs)", () => {
  let dir: string | undefined;
  afterEach(() => {
    if (!dir) return;
    execFileSync("umount", ["--lazy", dir]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("still deletes and updates sandboxes, and opens again, once something else has filled it", () => {
    dir = mkdtempSync(join(tmpdir(), "openshell-full-"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=24m", "openshell-test-full", dir]);
    const path = join(dir, "openshell.db");
    let store = new Store(path);
    expect(existsSync(`${path}.reserve`)).toBe(true);
    for (let i = 0; i < 50; i++) {
      const s = sandbox(`s${i}`);
      // Large enough records that the deletes below need pages of their own in the journal.
      s.metadata!.labels = { pad: "x".repeat(60) };
      store.createSandbox(s, {
        sandboxId: `id-s${i}`,
        hostUid: i,
        hostGid: i,
        supervisorSecret: "x".repeat(4000),
      });
    }
    fill(join(dir, "guest"));
    const first = store.getSandbox("id-s0")!;
    first.status!.phase = 5;
    store.updateSandbox(first);
    for (let i = 0; i < 50; i++) store.deleteSandbox(`id-s${i}`);
    expect(store.allSandboxes()).toEqual([]);
    store.close();
    store = new Store(path);
    expect(store.allSandboxes()).toEqual([]);
    store.close();
  });
});
