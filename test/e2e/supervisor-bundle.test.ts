// The supervisor image and the bundle it carries, in an image with neither
// node nor a C library: the static-busybox image the image tests build. The
// supervisor image is built by buildah from deploy/supervisor-image/Dockerfile
// and the bundle scripts/bundle.mjs made; as on Kubernetes, its command (the
// init container's, `openshell-install /opt/openshell`) copies the bundle
// into a folder that is then mounted read-only into the sandbox's image,
// where the supervisor and its bubblewrap start from it.

import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { containerEnv, makeBundle } from "../helpers/bundle.js";
import { ROOT } from "../helpers/cli.js";
import { busybox, TestImage } from "../helpers/registry.js";

/**
 * Runs `command` chrooted into `root`, in a mount namespace of its own where
 * `emptyDir` is mounted at `root/opt/openshell` (read-only when asked), as a
 * container runtime would mount a pod's volume.
 */
function inContainer(
  root: string,
  emptyDir: string,
  readOnly: boolean,
  command: string[],
  vars: Record<string, string> = {},
) {
  const mount = readOnly
    ? 'mount --bind "$1" "$2/opt/openshell" && mount -o remount,bind,ro "$2/opt/openshell"'
    : 'mount --bind "$1" "$2/opt/openshell"';
  return spawnSync(
    "unshare",
    [
      "--mount",
      "--",
      "/bin/sh",
      "-ec",
      `${mount}\nroot=$2\nshift 2\nexec chroot "$root" "$@"`,
      "container",
      emptyDir,
      root,
      ...containerEnv(vars),
      ...command,
    ],
    { encoding: "utf8", timeout: 60_000 },
  );
}

/** buildah, with its storage in `dir`: nothing of the machine's own images is touched. */
function buildahIn(dir: string): (...args: string[]) => string {
  const storage = ["--root", join(dir, "root"), "--runroot", join(dir, "run"), "--storage-driver", "vfs"];
  return (...args) =>
    execFileSync("buildah", [...storage, ...args], { encoding: "utf8", timeout: 120_000 }).trim();
}

describe("the supervisor image and its bundle in a static-busybox image", () => {
  const work = mkdtempSync(join(tmpdir(), "openshell-bundle-"));
  const bundle = join(work, "bundle");
  const buildah = buildahIn(join(work, "buildah"));
  /** The supervisor image's root, as buildah built it from deploy/supervisor-image/Dockerfile. */
  let supervisorImage = "";
  let container = "";
  /** The sandbox's image: the static busybox the image tests use, nothing else. */
  const sandboxImage = join(work, "sandbox-image");
  /** The pod's emptyDir. */
  const emptyDir = join(work, "empty-dir");

  beforeAll(() => {
    makeBundle(bundle);
    // The Dockerfile's base, busybox, made here: no registry is reachable from this machine.
    const base = new TestImage(work, "busybox").layer((root) => {
      busybox(root);
      for (const applet of ["cp", "chmod"]) symlinkSync("busybox", join(root, "bin", applet));
    });
    const archive = base.archive(join(work, "busybox.tar"));
    buildah(
      "bud",
      "--quiet",
      "--build-arg",
      `BASE=oci-archive:${archive}`,
      "-f",
      join(ROOT, "deploy", "supervisor-image", "Dockerfile"),
      "-t",
      "openshell-supervisor:test",
      bundle,
    );
    container = buildah("from", "--quiet", "openshell-supervisor:test");
    supervisorImage = buildah("mount", container);
    busybox(sandboxImage);
    for (const root of [supervisorImage, sandboxImage])
      mkdirSync(join(root, "opt", "openshell"), { recursive: true });
    mkdirSync(emptyDir);
  }, 180_000);
  afterAll(() => {
    if (container) {
      buildah("umount", container);
      buildah("rm", container);
    }
    rmSync(work, { recursive: true, force: true });
  });

  it("is busybox with the bundle at /openshell-bundle, whose install is its command", () => {
    expect(readdirSync(join(supervisorImage, "openshell-bundle")).sort()).toEqual(
      ["bin", "bundle.json", "dist", "lib", "libexec", "node_modules"].sort(),
    );
    const config = (
      JSON.parse(buildah("inspect", "--type", "image", "openshell-supervisor:test")) as {
        OCIv1: { config: { Entrypoint: string[]; Cmd: string[] } };
      }
    ).OCIv1.config;
    expect([config.Entrypoint, config.Cmd]).toEqual([
      ["/openshell-bundle/bin/openshell-install"],
      ["/opt/openshell"],
    ]);
  });

  it("holds no node and no C library in the sandbox's image: only busybox", () => {
    expect(readdirSync(sandboxImage).sort()).toEqual(["bin", "opt"]);
    expect(
      readFileSync(join(sandboxImage, "bin", "busybox"))
        .subarray(0, 4)
        .toString("latin1"),
    ).toBe("\x7fELF");
    // Static: no interpreter named in the binary.
    expect(execFileSync("file", ["-L", join(sandboxImage, "bin", "busybox")], { encoding: "utf8" })).toMatch(
      /statically linked/,
    );
  });

  it("installs with the init container's command, then starts node, the supervisor and bwrap from it", () => {
    const install = inContainer(supervisorImage, emptyDir, false, [
      "/openshell-bundle/bin/openshell-install",
      "/opt/openshell",
    ]);
    expect([install.status, install.stdout, install.stderr]).toEqual([
      0,
      "openshell-install: supervisor bundle installed in /opt/openshell\n",
      "",
    ]);
    expect(existsSync(join(emptyDir, "bin", "openshell-supervisor"))).toBe(true);

    const version = inContainer(sandboxImage, emptyDir, true, [
      "/opt/openshell/bin/openshell-supervisor",
      "--version",
    ]);
    expect(version.stderr).toBe("");
    expect(version.stdout).toMatch(/^openshell-supervisor \d+\.\d+\.\d+ \(node v\d+\.\d+\.\d+, x64\)\n$/);
    expect(version.status).toBe(0);

    const bwrap = inContainer(sandboxImage, emptyDir, true, ["/opt/openshell/bin/bwrap", "--version"]);
    expect([bwrap.status, bwrap.stdout]).toEqual([0, expect.stringMatching(/^bubblewrap \d/)]);
  });

  it("refuses to start without its gateway, naming the variable it lacks", () => {
    const started = inContainer(sandboxImage, emptyDir, true, ["/opt/openshell/bin/openshell-supervisor"], {
      OPENSHELL_SANDBOX_ID: "0b7c2c7e-9a43-4c1e-8d7e-3f3c1d2a9b10",
      OPENSHELL_SANDBOX_SECRET: "s3cret",
    });
    expect(started.status).toBe(1);
    expect(started.stderr).toContain(
      "OPENSHELL_ENDPOINT is not set: a supervisor needs OPENSHELL_SANDBOX_ID, OPENSHELL_ENDPOINT, OPENSHELL_SANDBOX_SECRET",
    );
  });

  it("refuses to install over a folder holding other files, and to run without a target, writing nothing", () => {
    const occupied = join(work, "occupied");
    mkdirSync(occupied);
    writeFileSync(join(occupied, "keep.txt"), "mine");
    const over = spawnSync(join(bundle, "bin", "openshell-install"), [occupied], { encoding: "utf8" });
    expect([over.status, over.stderr]).toEqual([
      1,
      `openshell-install: ${occupied} holds other files; name an empty folder or an earlier install\n`,
    ]);
    expect(readdirSync(occupied)).toEqual(["keep.txt"]);
    const bare = spawnSync(join(bundle, "bin", "openshell-install"), [], { encoding: "utf8" });
    expect([bare.status, bare.stderr]).toEqual([
      2,
      "usage: openshell-install TARGET (a folder, e.g. /opt/openshell)\n",
    ]);
  });

  it("is made only into an empty folder or over an earlier bundle", () => {
    const occupied = join(work, "occupied-too");
    mkdirSync(occupied);
    writeFileSync(join(occupied, "keep.txt"), "mine");
    const made = spawnSync(process.execPath, [join(ROOT, "scripts", "bundle.mjs"), occupied], {
      encoding: "utf8",
    });
    expect([made.status, made.stderr]).toEqual([
      1,
      `bundle: ${occupied} exists and is not a supervisor bundle; name an empty or new folder\n`,
    ]);
    expect(readdirSync(occupied)).toEqual(["keep.txt"]);
    // Over an earlier bundle it is made again.
    makeBundle(bundle);
    expect(JSON.parse(readFileSync(join(bundle, "bundle.json"), "utf8"))).toMatchObject({
      node: "bin/node",
      loader: expect.stringMatching(/^lib\/ld-linux/),
      seccomp: "lib/seccomp",
    });
    expect(readdirSync(join(bundle, "lib", "seccomp"))).toEqual([
      expect.stringMatching(/^seccomp-[0-9a-f]{32}\.bpf$/),
    ]);
  });
});
