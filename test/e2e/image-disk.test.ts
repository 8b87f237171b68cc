// The image store's disk filling up while an image is unpacked, with real
// parts: the gateway's image store on a small tmpfs of its own, mounted under
// the test's directory, and an image whose one large file compresses to
// almost nothing, so its archive fits and its unpacked root does not. The
// create is refused naming the image and the disk; nothing that looks usable
// is left; once space is freed, the same create works.

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { json, TestEnv, uniqueName } from "../helpers/cli.js";
import { busybox, TestImage } from "../helpers/registry.js";

const MiB = 1024 * 1024;
const root = process.getuid?.() === 0;

describe.skipIf(!root)("an image store whose disk fills up during unpack", () => {
  const env = new TestEnv();
  const work = mkdtempSync(join(tmpdir(), "openshell-image-disk-"));
  /** The gateway's image store, on a 40 MiB tmpfs. */
  const store = join(env.stateHome, "openshell", "gateways", "local", "images");
  /** Taking 30 MiB of it, until the test frees it. */
  const ballast = join(store, "ballast");
  let archive = "";
  let mounted = false;

  beforeAll(async () => {
    // 24 MiB of zeros: a few KiB in the archive, 24 MiB unpacked.
    archive = new TestImage(work, "big")
      .layer((tree) => {
        busybox(tree);
        writeFileSync(join(tree, "zeros"), Buffer.alloc(24 * MiB));
      })
      .archive(join(work, "big.tar"));
    mkdirSync(store, { recursive: true });
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=40m,mode=0711", "tmpfs", store]);
    mounted = true;
    writeFileSync(ballast, Buffer.alloc(30 * MiB, 1));
    await env.startGateway();
  }, 120_000);

  afterAll(async () => {
    await env.run(["gateway", "stop"], { timeoutMs: 60_000 }).catch(() => undefined);
    if (mounted) execFileSync("umount", ["--lazy", store]);
    await env.dispose();
    rmSync(work, { recursive: true, force: true });
  });

  it("refuses the create naming the image and the disk, leaves nothing usable, and works once space is freed", async () => {
    const name = uniqueName("big");
    const create = () =>
      env.run(["sandbox", "create", "--name", name, "--from", archive, "--detach", "--", "sleep", "100000"], {
        timeoutMs: 120_000,
      });
    const refused = await create();
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(
      `image '${archive}': no space left on the image store's disk (${store}, `,
    );
    expect(refused.stderr).toContain("openshell image prune");
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    // Nothing that looks usable: no record, no root, no pull's leftovers, no sandbox.
    for (const sub of ["images", "roots", "tmp"]) expect(readdirSync(join(store, sub))).toEqual([]);
    expect(json<unknown[]>(await env.run(["image", "list", "-o", "json"]))).toEqual([]);
    expect(json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"]))).toEqual([]);

    rmSync(ballast);
    const created = await create();
    expect(created.code, created.stderr).toBe(0);
    const seen = await env.sh(name, "test -s /zeros && echo unpacked");
    expect(seen.stdout).toBe("unpacked\n");
    expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
  });
});
