import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MALLOC_TUNABLES, mallocTunables } from "../../src/host/process.js";

describe("malloc tunables", () => {
  it("the CLI's #! line sets the same ones as the gateway and supervisors get, the user's after", () => {
    const bin = readFileSync(join(import.meta.dirname, "../../bin/openshell"), "utf8");
    expect(bin.split("\n")[0]).toBe(
      `#!/usr/bin/env -S GLIBC_TUNABLES=${MALLOC_TUNABLES}:\${GLIBC_TUNABLES} node`,
    );
  });

  it("the bench runs its own gRPC client with them too, as the CLI runs", () => {
    const pkg = JSON.parse(readFileSync(join(import.meta.dirname, "../../package.json"), "utf8"));
    expect(pkg.scripts.bench).toContain(`GLIBC_TUNABLES=${MALLOC_TUNABLES} node`);
  });

  it("come first, a value of the user's after them, and are not added twice", () => {
    expect(mallocTunables({})).toEqual({ GLIBC_TUNABLES: MALLOC_TUNABLES });
    expect(mallocTunables({ GLIBC_TUNABLES: "glibc.malloc.hugetlb=0" })).toEqual({
      GLIBC_TUNABLES: `${MALLOC_TUNABLES}:glibc.malloc.hugetlb=0`,
    });
    // From the CLI, whose #! line already put them first.
    const fromCli = `${MALLOC_TUNABLES}:glibc.malloc.check=0`;
    expect(mallocTunables({ GLIBC_TUNABLES: fromCli })).toEqual({ GLIBC_TUNABLES: fromCli });
  });
});
