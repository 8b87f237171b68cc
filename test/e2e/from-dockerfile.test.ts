// `sandbox create --from DOCKERFILE` with real parts: Debian's buildah builds
// it in the gateway (vfs storage, chroot isolation: as root, no container
// engine), FROM an OCI archive and FROM the test registry, with COPY, ENV,
// RUN and CMD; the result goes into the image store like any other image,
// kept by digest (a build that yields the same files is stored once). A
// build that fails is refused naming the Dockerfile and the step; without
// buildah the create is refused saying what to install.

import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { json, TestEnv, uniqueName } from "../helpers/cli.js";
import { busybox, TestImage, TestRegistry, writeTree } from "../helpers/registry.js";

// buildah builds as root here (vfs storage, chroot isolation); .ci/run installs it.
const root = process.getuid?.() === 0;

describe("sandbox create --from a Dockerfile", () => {
  const registry = new TestRegistry();
  const env = new TestEnv();
  const work = mkdtempSync(join(tmpdir(), "openshell-dockerfile-"));
  const context = join(work, "context");
  let base = "";

  beforeAll(async () => {
    await registry.start();
    const image = new TestImage(work, "base").layer((tree) => busybox(tree));
    const archive = image.archive(join(work, "base.tar"));
    base = image.push(registry, "base:1");
    writeTree(context, {
      Dockerfile: [
        `FROM oci-archive:${archive}`,
        "COPY hello.txt /hello.txt",
        "ENV GREETING=built",
        "RUN echo ran-at-build > /ran.txt",
        'CMD ["/bin/sh", "-c", "exec sleep 100000"]',
        "",
      ].join("\n"),
      "hello.txt": "copied\n",
    });
    await env.startGateway({ OPENSHELL_INSECURE_REGISTRIES: registry.host });
  }, 120_000);

  afterAll(async () => {
    await env.dispose();
    registry.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const create = (name: string, source: string) =>
    env.run(["sandbox", "create", "--name", name, "--from", source, "--detach"], { timeoutMs: 180_000 });
  const digestOf = async (name: string) =>
    json<{ image_digest: string }>(await env.run(["sandbox", "get", name, "-o", "json"])).image_digest;

  it.skipIf(!root)(
    "builds it (FROM an OCI archive; COPY, ENV, RUN, CMD) and stores the result by digest: built again, it is one image",
    async () => {
      const first = uniqueName("built");
      const created = await create(first, join(context, "Dockerfile"));
      expect(created.code, created.stderr).toBe(0);
      const seen = await env.sh(first, "cat /hello.txt /ran.txt; echo $GREETING");
      expect(seen.stdout).toBe("copied\nran-at-build\nbuilt\n");
      // The directory that holds a Dockerfile names it too; the same build yields the same digest.
      const second = uniqueName("again");
      const again = await create(second, context);
      expect(again.code, again.stderr).toBe(0);
      const digest = await digestOf(first);
      expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(await digestOf(second)).toBe(digest);
      const stored = json<{ digest: string; sandboxes: string[] }[]>(
        await env.run(["image", "list", "-o", "json"]),
      ).filter((image) => image.digest === digest);
      expect(stored).toHaveLength(1);
      expect(stored[0]!.sandboxes.sort()).toEqual([first, second].sort());
    },
  );

  it.skipIf(!root)(
    "builds FROM an image in the test registry (an insecure one the gateway names); RUN sees none of the host's processes and cannot chroot",
    async () => {
      const dir = join(work, "from-registry");
      writeTree(dir, {
        "app.dockerfile": [
          `FROM ${base}`,
          "RUN echo from-registry > /marker",
          // What a RUN step could reach: the processes it sees (the host has scores), a way out of its chroot.
          "RUN ls /proc | busybox grep -c '^[0-9]' > /processes; " +
            "if busybox chroot / true 2>/dev/null; then echo chroot-allowed; else echo chroot-refused; fi > /chroot",
          'CMD ["/bin/sh", "-c", "exec sleep 100000"]',
          "",
        ].join("\n"),
      });
      const name = uniqueName("registry");
      const created = await create(name, join(dir, "app.dockerfile"));
      expect(created.code, created.stderr).toBe(0);
      const seen = await env.sh(name, "cat /marker /chroot /processes");
      const [marker, chroot, processes] = seen.stdout.trim().split("\n");
      expect([marker, chroot]).toEqual(["from-registry", "chroot-refused"]);
      expect(Number(processes)).toBeLessThan(10);
    },
  );

  it.skipIf(!root)(
    "refuses a Dockerfile whose build fails, naming it and the step, and leaves no sandbox and no image",
    async () => {
      const dir = join(work, "failing");
      const dockerfile = join(dir, "Dockerfile");
      writeTree(dir, { Dockerfile: `FROM ${base}\nRUN exit 3\n` });
      const images = json<unknown[]>(await env.run(["image", "list", "-o", "json"])).length;
      const sandboxes = json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"])).length;
      const refused = await create(uniqueName("failing"), dockerfile);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(`image '${dockerfile}': building it with buildah: `);
      expect(refused.stderr).toContain("RUN exit 3");
      expect(refused.stderr.trim().split("\n")).toHaveLength(1);
      expect(json<unknown[]>(await env.run(["image", "list", "-o", "json"]))).toHaveLength(images);
      expect(json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"]))).toHaveLength(sandboxes);
      const tmp = join(env.stateHome, "openshell", "gateways", "local", "images", "tmp");
      expect(readdirSync(tmp)).toEqual([]);
    },
  );
});

describe("sandbox create --from a Dockerfile on a gateway without buildah", () => {
  const env = new TestEnv();
  const work = mkdtempSync(join(tmpdir(), "openshell-no-buildah-"));
  /** Every program on this host's PATH but buildah. */
  const bin = join(work, "bin");

  beforeAll(async () => {
    mkdirSync(bin);
    const seen = new Set<string>();
    for (const dir of (process.env.PATH ?? "").split(":").filter(Boolean)) {
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        continue;
      }
      for (const name of names) {
        if (name === "buildah" || seen.has(name)) continue;
        seen.add(name);
        symlinkSync(join(dir, name), join(bin, name));
      }
    }
    await env.startGateway({ PATH: bin });
  }, 60_000);

  afterAll(async () => {
    await env.dispose();
    rmSync(work, { recursive: true, force: true });
  });

  it("refuses the create in one line that says what to install, and leaves no sandbox", async () => {
    const dockerfile = join(work, "Dockerfile");
    writeFileSync(dockerfile, "FROM scratch\n");
    const refused = await env.run(["sandbox", "create", "--from", dockerfile, "--detach"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toContain(
      `image '${dockerfile}': a Dockerfile is built with buildah, which is not installed (Debian: apt-get install buildah)`,
    );
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"]))).toEqual([]);
  });
});
