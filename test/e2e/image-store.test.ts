// The gateway's image store with real parts: Debian's reference registry on
// 127.0.0.1, images built here with umoci and pushed with skopeo, pulled by
// the store with skopeo and unpacked with umoci. One root per image however
// often it is pulled; concurrent pulls share one; whiteouts across layers
// delete what they should; symlinks stay links inside the root; a pull that
// fails (unknown image, unreachable registry, corrupt archive, another
// architecture) names its source and leaves nothing that looks usable.

import {
  existsSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ImagePullError, ImageStore } from "../../src/gateway/images.js";
import { TestImage, TestRegistry, writeTree } from "../helpers/registry.js";

describe("the image store", () => {
  const registry = new TestRegistry();
  const work = mkdtempSync(join(tmpdir(), "openshell-images-"));
  let store: ImageStore;
  let base: TestImage;
  let reference = "";

  beforeAll(async () => {
    await registry.start();
    store = new ImageStore(join(work, "store"), { insecureRegistries: [registry.host] });
    base = new TestImage(work, "base")
      .layer((root) =>
        writeTree(root, {
          "only-in-image": "from the image\n",
          "doomed/a": "a\n",
          "doomed/b": "b\n",
          "kept/x": "x\n",
          "gone-file": "soon gone\n",
        }),
      )
      .layer((root) => {
        // Whiteouts: a file and a directory deleted, a directory replaced whole.
        rmSync(join(root, "gone-file"));
        rmSync(join(root, "doomed"), { recursive: true });
        rmSync(join(root, "kept"), { recursive: true });
        writeTree(root, { "kept/y": "y\n" });
        // Hostile links: they must stay links inside the root, never followed out.
        symlinkSync("/host/etc", join(root, "etc-link"));
        symlinkSync("../../../../../../etc/passwd", join(root, "climb"));
      })
      .config(
        "--config.env",
        "GREETING=hello",
        "--config.workingdir",
        "/sandbox",
        "--config.user",
        "1000:1000",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hi",
      );
    reference = base.push(registry, "test:1");
  }, 120_000);

  afterAll(() => {
    registry.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it("pulls an image into one read-only root keyed by its manifest digest, with its config", async () => {
    const image = await store.pull(reference);
    expect(image.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const root = store.root(image.digest);
    expect(readFileSync(join(root, "only-in-image"), "utf8")).toBe("from the image\n");
    expect(image.config).toEqual({
      env: expect.arrayContaining(["GREETING=hello"]),
      workingDir: "/sandbox",
      user: "1000:1000",
      entrypoint: ["/bin/sh"],
      cmd: ["-c", "echo hi"],
    });
    expect(image.sizeBytes).toBeGreaterThan(0);
    expect(store.list().map((i) => i.digest)).toEqual([image.digest]);
  });

  it("applies whiteouts across layers: deleted files and directories are gone, a replaced directory holds only its new content", async () => {
    const root = store.root((await store.pull(reference)).digest);
    expect(existsSync(join(root, "gone-file"))).toBe(false);
    expect(existsSync(join(root, "doomed"))).toBe(false);
    expect(readdirSync(join(root, "kept"))).toEqual(["y"]);
  });

  it("keeps an image's symlinks as links inside its root, pointing where they said, never followed to the host", async () => {
    const root = store.root((await store.pull(reference)).digest);
    expect(lstatSync(join(root, "etc-link")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(root, "etc-link"))).toBe("/host/etc");
    expect(lstatSync(join(root, "climb")).isSymbolicLink()).toBe(true);
  });

  it("pulls an image once however many ask at the same time, and keeps one root for it", async () => {
    const again = new TestImage(work, "again").layer((root) => writeTree(root, { marker: "again\n" }));
    const ref = again.push(registry, "again:1");
    const before = registry.requests("GET", "/v2/again/manifests/1");
    const pulls = await Promise.all([store.pull(ref), store.pull(ref), store.pull(ref)]);
    expect(new Set(pulls.map((p) => p.digest)).size).toBe(1);
    // skopeo reads a manifest by tag once per copy.
    expect(registry.requests("GET", "/v2/again/manifests/1") - before).toBe(1);
    await store.pull(ref);
    const roots = readdirSync(join(store.dir, "roots"));
    expect(roots.filter((hex) => `sha256:${hex}` === pulls[0]!.digest)).toHaveLength(1);
  });

  it("stores one image pulled at once from two sources (a registry and an archive of it) once, both pulls succeeding", async () => {
    const twin = new TestImage(work, "twin").layer((root) => writeTree(root, { twin: "twin\n" }));
    const sources = [twin.push(registry, "twin:1"), twin.archive(join(work, "twin.tar"))];
    const pulls = await Promise.all(sources.map((source) => store.pull(source)));
    expect(pulls[1]!.digest).toBe(pulls[0]!.digest);
    expect(store.get(pulls[0]!.digest)?.references.sort()).toEqual([...sources].sort());
    expect(readFileSync(join(store.root(pulls[0]!.digest), "twin"), "utf8")).toBe("twin\n");
    expect(readdirSync(join(store.dir, "tmp"))).toEqual([]);
  });

  it("takes an OCI archive file and a plain root filesystem directory as sources", async () => {
    const archive = base.archive(join(work, "base.tar"));
    const fromArchive = await store.pull(archive);
    expect(readFileSync(join(store.root(fromArchive.digest), "only-in-image"), "utf8")).toBe(
      "from the image\n",
    );
    const tree = join(work, "tree");
    writeTree(tree, { "etc/hello": "plain tree\n" });
    const fromTree = await store.pull(tree);
    expect(readFileSync(join(store.root(fromTree.digest), "etc", "hello"), "utf8")).toBe("plain tree\n");
  });

  it.each([
    ["an unknown image", () => `${registry.host}/nope:1`],
    ["an unreachable registry", () => "127.0.0.1:1/test:1"],
    [
      "a corrupt archive",
      () => {
        const path = join(work, "corrupt.tar");
        writeFileSync(path, Buffer.alloc(4096, 7));
        return path;
      },
    ],
    ["a missing file", () => join(work, "missing.tar")],
  ])("refuses %s naming the source, leaving nothing behind", async (_what, source) => {
    const ref = source();
    const images = store.list().length;
    const failure = await store.pull(ref).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ImagePullError);
    expect((failure as Error).message.startsWith(`image '${ref}': `)).toBe(true);
    expect(store.list()).toHaveLength(images);
    expect(readdirSync(join(store.dir, "tmp"))).toEqual([]);
  });

  it("refuses an image built for another architecture", async () => {
    const other = new TestImage(work, "other")
      .layer((root) => writeTree(root, { f: "f\n" }))
      .config("--architecture", process.arch === "arm64" ? "amd64" : "arm64");
    const ref = other.push(registry, "other:1");
    const images = store.list().length;
    await expect(store.pull(ref)).rejects.toThrow(/is built for (arm64|amd64); this host runs/);
    expect(store.list()).toHaveLength(images);
  });

  it("on opening, removes what an interrupted pull left (its work, a root whose record was never written) and keeps every stored image", async () => {
    const kept = store.list().map((image) => image.digest);
    const orphan = join(store.dir, "roots", "0".repeat(64));
    writeTree(orphan, { "half-written": "x\n" });
    writeTree(join(store.dir, "tmp", "pull-x"), { layout: "x\n" });
    const reopened = new ImageStore(store.dir, { insecureRegistries: [registry.host] });
    expect(existsSync(orphan)).toBe(false);
    expect(readdirSync(join(store.dir, "tmp"))).toEqual([]);
    expect(reopened.list().map((image) => image.digest)).toEqual(kept);
    for (const digest of kept) expect(existsSync(reopened.root(digest))).toBe(true);
  });

  it("removes an image: record and root", async () => {
    const gone = new TestImage(work, "gone").layer((root) => writeTree(root, { g: "g\n" }));
    const image = await store.pull(gone.push(registry, "gone:1"));
    store.remove(image.digest);
    expect(store.get(image.digest)).toBeUndefined();
    expect(existsSync(store.root(image.digest))).toBe(false);
  });
});
