import { randomUUID } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, rmSync, statfsSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  removeSharedMemoryStaging,
  SHARED_MEMORY_DIR,
  sharedMemoryStaging,
} from "../../src/runtime/staging.js";

const isRoot = process.getuid?.() === 0;
// The machine the tests run on has a tmpfs /dev/shm (Debian mounts one); the staging falls back without it.
const hasShm = (() => {
  try {
    return statfsSync(SHARED_MEMORY_DIR).type === 0x01021994;
  } catch {
    return false;
  }
})();

describe("staging injected files on /dev/shm", () => {
  const id = randomUUID();
  const ours = () => readdirSync(SHARED_MEMORY_DIR).filter((name) => name.includes(id));
  afterEach(() => {
    for (const name of ours()) rmSync(join(SHARED_MEMORY_DIR, name), { recursive: true, force: true });
  });

  it.runIf(hasShm)("makes a fresh private directory per start, reachable only by the pod's group", () => {
    const first = sharedMemoryStaging(id, isRoot ? 4321 : null)!;
    const second = sharedMemoryStaging(id, isRoot ? 4321 : null)!;
    expect(first.dir).not.toBe(second.dir);
    expect(first.root).toBe(join(first.dir, "files"));
    const st = lstatSync(first.dir);
    expect(st.mode & 0o777).toBe(isRoot ? 0o710 : 0o700);
    expect([st.uid, st.gid]).toEqual([process.getuid!(), isRoot ? 4321 : process.getgid!()]);
    expect(lstatSync(first.root).isDirectory()).toBe(true);
  });

  it.runIf(hasShm)("removes this sandbox's directories, never another's, a symlink or a plain file", () => {
    const other = randomUUID();
    const kept = sharedMemoryStaging(other, null)!;
    sharedMemoryStaging(id, null);
    const link = join(SHARED_MEMORY_DIR, `openshell-files-${id}-link`);
    const target = join(SHARED_MEMORY_DIR, `openshell-target-${id}`);
    mkdirSync(target);
    symlinkSync(target, link);
    removeSharedMemoryStaging(id);
    expect(ours().sort()).toEqual([`openshell-files-${id}-link`, `openshell-target-${id}`].sort());
    expect(existsSync(target)).toBe(true);
    expect(existsSync(kept.root)).toBe(true);
    removeSharedMemoryStaging(other);
    expect(existsSync(kept.dir)).toBe(false);
  });

  it("falls back (undefined) where the directory is not a tmpfs", () => {
    expect(sharedMemoryStaging(id, null, "/proc")).toBeUndefined();
  });
});
