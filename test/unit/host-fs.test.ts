import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lstatIfExists } from "../../src/host/fs.js";

describe("lstatIfExists", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "host-fs-"));
    await writeFile(join(dir, "file"), "x");
    await symlink("missing-target", join(dir, "link"));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("stats the entry itself, a dangling symlink included", () => {
    expect(lstatIfExists(join(dir, "file"))?.isFile()).toBe(true);
    expect(lstatIfExists(join(dir, "link"))?.isSymbolicLink()).toBe(true);
  });

  it("reads a missing path, or one under a file, as undefined", () => {
    expect(lstatIfExists(join(dir, "nothing"))).toBeUndefined();
    expect(lstatIfExists(join(dir, "file", "below"))).toBeUndefined();
  });

  it("throws any other failure", () => {
    expect(() => lstatIfExists(`${dir}/${"n".repeat(300)}`)).toThrow(/ENAMETOOLONG/);
  });
});
