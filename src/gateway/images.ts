// The gateway's image store: root filesystems for sandboxes made from OCI
// images (`sandbox create --from`), built on the field's own tools: skopeo
// copies an image from wherever it is (a registry, with the usual registry
// auth files; an OCI or docker archive; an OCI layout) into a private OCI
// layout, and umoci unpacks its layers, whiteouts applied, into a root
// filesystem. Roots are kept by manifest digest, one per image however many
// sandboxes use it, and are never written once unpacked.
//
// On disk, under the store's directory:
//   roots/<hex>/       the unpacked tree of the image whose manifest digest is sha256:<hex>
//   images/<hex>.json  what is known of it: digest, references, config, size
//   tmp/               pulls under way; a pull that fails or is interrupted leaves
//                      only this, removed when the store opens
// A root is renamed into place only once complete, and its record written
// after it, so nothing half-pulled ever looks usable.

import { spawn } from "node:child_process";
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { writeFile } from "node:fs/promises";
import { basename, dirname, isAbsolute, join } from "node:path";
import { formatBytes } from "../core/files.js";
import { DEFAULT_COMMUNITY_REGISTRY, imageReference } from "../core/names.js";
import { IMAGE_POLICY_PATHS } from "../core/policy.js";
import { lstatIfExists } from "../host/fs.js";
import { resolveInImage } from "../runtime/image-tree.js";

/** What an image says about how to run it (its config's `config` object). */
export interface ImageConfig {
  env: string[];
  workingDir: string;
  user: string;
  entrypoint: string[];
  cmd: string[];
}

export interface StoredImage {
  /** The manifest digest, `sha256:<hex>`. */
  digest: string;
  /** The sources this image was pulled as, most recent first. */
  references: string[];
  config: ImageConfig;
  /** Bytes the unpacked root takes. */
  sizeBytes: number;
  pulledAtMs: number;
}

export interface ImageStoreOptions {
  /** Registries (`host:port`) reached over plain HTTP or with unverified TLS. */
  insecureRegistries?: readonly string[];
  /** The prefix a community sandbox name (`base`) is resolved under (OPENSHELL_COMMUNITY_REGISTRY). */
  communityRegistry?: string;
}

/** A pull that failed: its message names the source and what went wrong. */
export class ImagePullError extends Error {}

/** The most a tool's stderr is kept of, for its error message. */
const TOOL_OUTPUT_MAX = 64 * 1024;
/** The largest manifest or config blob the store reads. */
const BLOB_MAX = 4 * 1024 * 1024;

const DIGEST = /^sha256:([0-9a-f]{64})$/;

/** The last `max` bytes a stream wrote. */
function tail(stream: NodeJS.ReadableStream, max: number): () => string {
  let kept = Buffer.alloc(0);
  stream.on("data", (chunk: Buffer) => {
    kept = Buffer.concat([kept, chunk]);
    if (kept.length > max) kept = kept.subarray(kept.length - max);
  });
  return () => kept.toString("utf8");
}

/**
 * Runs `tool` to completion: its output, of which only the last 64 KiB is
 * kept (a build's RUN steps may print without end); rejects with its last
 * line of stderr, or saying what to install.
 */
function run(
  tool: string,
  args: readonly string[],
  signal?: AbortSignal,
  env: Record<string, string> = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, {
      stdio: ["ignore", "pipe", "pipe"],
      signal,
      env: { ...process.env, LANG: "C.UTF-8", ...env },
    });
    const stdout = tail(child.stdout, TOOL_OUTPUT_MAX);
    const stderr = tail(child.stderr, TOOL_OUTPUT_MAX);
    child.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT")
        reject(new Error(`${tool} is not installed (Debian: apt-get install ${tool})`));
      else reject(error);
    });
    child.on("close", (code, signalName) => {
      if (code === 0) return resolve(stdout());
      const last =
        stderr().trim().split("\n").filter(Boolean).pop() ?? `${tool} ended with ${code ?? signalName}`;
      const message = last.replace(/^time="[^"]*" level=\w+ msg="(.*)"$/, "$1").replace(/^Error: /, "");
      reject(new Error(message.slice(0, 2048)));
    });
  });
}

function readJson(path: string): unknown {
  if (statSync(path).size > BLOB_MAX) throw new Error(`${path} exceeds ${BLOB_MAX} bytes`);
  return JSON.parse(readFileSync(path, "utf8"));
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

/** The blob `digest` of an OCI layout, as JSON. */
function layoutBlob(layout: string, digest: unknown): Record<string, unknown> {
  const match = typeof digest === "string" ? DIGEST.exec(digest) : null;
  if (!match) throw new Error(`not a sha256 digest: ${String(digest).slice(0, 100)}`);
  return readJson(join(layout, "blobs", "sha256", match[1]!)) as Record<string, unknown>;
}

/** The image in a one-image OCI layout: its manifest digest, config and architecture. */
function inspectLayout(layout: string): { digest: string; config: ImageConfig; architecture: string } {
  const index = readJson(join(layout, "index.json")) as { manifests?: { digest?: unknown }[] };
  const digest = index.manifests?.[0]?.digest;
  const manifest = layoutBlob(layout, digest) as { config?: { digest?: unknown } };
  const image = layoutBlob(layout, manifest.config?.digest) as {
    architecture?: unknown;
    config?: Record<string, unknown>;
  };
  const config = image.config ?? {};
  return {
    digest: digest as string,
    architecture: typeof image.architecture === "string" ? image.architecture : "",
    config: {
      env: strings(config.Env),
      workingDir: typeof config.WorkingDir === "string" ? config.WorkingDir : "",
      user: typeof config.User === "string" ? config.User : "",
      entrypoint: strings(config.Entrypoint),
      cmd: strings(config.Cmd),
    },
  };
}

/** Whether `tool` is an executable file in a directory of PATH. */
function onPath(tool: string): boolean {
  return (process.env.PATH ?? "")
    .split(":")
    .filter((dir) => isAbsolute(dir))
    .some((dir) => {
      try {
        accessSync(join(dir, tool), constants.X_OK);
        return statSync(join(dir, tool)).isFile();
      } catch {
        return false;
      }
    });
}

/** Whether a file is a Dockerfile by its name, as upstream tells (`Dockerfile`, `app.dockerfile`, `Dockerfile.dev`). */
function isDockerfileName(path: string): boolean {
  return basename(path).toLowerCase().includes("dockerfile");
}

/** The OCI architecture name of this host's. */
function hostArchitecture(): string {
  const names: Record<string, string> = {
    x64: "amd64",
    arm64: "arm64",
    arm: "arm",
    ppc64: "ppc64le",
    s390x: "s390x",
  };
  return names[process.arch] ?? process.arch;
}

/** The largest policy file an image may carry. */
const IMAGE_POLICY_MAX = 1024 * 1024;

/**
 * The policy file the image whose root is `root` carries (IMAGE_POLICY_PATHS,
 * the first there): its path in the image and its text; undefined when it
 * has none. Looked up inside the image, its links never followed to the
 * host; one that is there but is not a plain file of at most 1 MiB throws,
 * naming it.
 */
export function imagePolicyFile(root: string): { path: string; text: string } | undefined {
  for (const path of IMAGE_POLICY_PATHS) {
    const found = resolveInImage(root, path);
    if (found === undefined) continue;
    const entry = statSync(found);
    if (!entry.isFile()) throw new Error(`${path} is not a regular file`);
    if (entry.size > IMAGE_POLICY_MAX) throw new Error(`${path} exceeds ${IMAGE_POLICY_MAX} bytes`);
    return { path, text: readFileSync(found, "utf8") };
  }
  return undefined;
}

/** Bytes under `dir`, as `du` counts them (hard links once). */
async function diskUsage(dir: string): Promise<number> {
  const out = await run("du", ["-sb", dir]);
  return Number(out.split("\t")[0]) || 0;
}

export class ImageStore {
  private readonly pulls = new Map<string, Promise<StoredImage>>();
  /** Per manifest digest, the end of the last pull storing it (see `oneAtATime`). */
  private readonly storing = new Map<string, Promise<unknown>>();
  private readonly community: string;
  private readonly insecure: Set<string>;

  constructor(
    readonly dir: string,
    options: ImageStoreOptions = {},
  ) {
    this.community = options.communityRegistry ?? DEFAULT_COMMUNITY_REGISTRY;
    this.insecure = new Set(options.insecureRegistries ?? []);
    for (const sub of ["roots", "images"]) mkdirSync(join(dir, sub), { recursive: true, mode: 0o711 });
    // Pulls a stopped gateway left unfinished: its work, and a root whose record was never written.
    rmSync(join(dir, "tmp"), { recursive: true, force: true });
    for (const hex of readdirSync(join(dir, "roots"))) {
      if (!existsSync(join(dir, "images", `${hex}.json`)))
        rmSync(join(dir, "roots", hex), { recursive: true, force: true });
    }
    mkdirSync(join(dir, "tmp"), { mode: 0o700 });
  }

  /**
   * Where `source` is: an image reference (a community name under the
   * community registry), or, given as an absolute path, an archive (OCI, or
   * docker's), an OCI layout directory, or a plain root filesystem directory.
   */
  private locate(source: string): {
    kind: "registry" | "archive" | "layout" | "rootfs" | "dockerfile";
    from: string;
    args: string[];
  } {
    if (isAbsolute(source)) {
      let directory: boolean;
      try {
        directory = statSync(source).isDirectory();
      } catch {
        throw new ImagePullError(`image '${source}': no such file or directory`);
      }
      if (!directory) {
        // As upstream: a file whose name says Dockerfile is one (its directory the context).
        if (isDockerfileName(source)) return { kind: "dockerfile", from: source, args: [] };
        return { kind: "archive", from: `oci-archive:${source}`, args: [] };
      }
      if (existsSync(join(source, "oci-layout"))) return { kind: "layout", from: `oci:${source}`, args: [] };
      if (lstatIfExists(join(source, "Dockerfile"))?.isFile()) {
        return { kind: "dockerfile", from: join(source, "Dockerfile"), args: [] };
      }
      return { kind: "rootfs", from: source, args: [] };
    }
    const reference = this.reference(source);
    const registry = reference.split("/")[0]!;
    return {
      kind: "registry",
      from: `docker://${reference}`,
      args: this.insecure.has(registry) ? ["--src-tls-verify=false"] : [],
    };
  }

  /** The image reference `source` names: a community sandbox name under this store's community registry. */
  reference(source: string): string {
    return imageReference(source, this.community);
  }

  /**
   * Builds the Dockerfile `dockerfile` (its directory the context) with
   * buildah into the OCI layout `layout`: as root without a container
   * engine (vfs storage, chroot isolation for RUN), in storage of its own
   * under the pull's work directory, removed with it. Timestamps are zeroed,
   * so a build that yields the same files yields the same digest and reuses
   * its root. Base images in a registry named in OPENSHELL_INSECURE_REGISTRIES
   * are reached as skopeo reaches them.
   */
  private async build(dockerfile: string, layout: string, signal?: AbortSignal): Promise<void> {
    const work = join(layout, "..", "build");
    mkdirSync(work, { recursive: true, mode: 0o700 });
    const storage = ["--root", join(work, "root"), "--runroot", join(work, "run"), "--storage-driver", "vfs"];
    const env: Record<string, string> = {};
    if (this.insecure.size > 0) {
      const conf = join(work, "registries.conf");
      const entries = [...this.insecure].map(
        (host) => `[[registry]]\nlocation = "${host}"\ninsecure = true\n`,
      );
      writeFileSync(conf, ['unqualified-search-registries = ["docker.io"]', ...entries].join("\n"));
      env.CONTAINERS_REGISTRIES_CONF = conf;
    }
    const tag = "localhost/openshell-build:latest";
    if (!onPath("buildah")) {
      throw new Error(
        "a Dockerfile is built with buildah, which is not installed (Debian: apt-get install buildah)",
      );
    }
    try {
      await run(
        "unshare",
        [
          // RUN steps see only the build's own processes: none of the host's to signal.
          "--pid",
          "--fork",
          "--kill-child",
          "--mount",
          "--mount-proc",
          "--propagation",
          "private",
          "buildah",
          ...storage,
          "build",
          // The way out of a chroot.
          "--cap-drop",
          "SYS_CHROOT",
          "--quiet",
          "--isolation",
          "chroot",
          "--timestamp",
          "0",
          "--file",
          dockerfile,
          "--tag",
          tag,
          dirname(dockerfile),
        ],
        signal,
        env,
      );
      await run("buildah", [...storage, "push", "--quiet", tag, `oci:${layout}:image`], signal, env);
    } catch (error) {
      throw new Error(`building it with buildah: ${(error as Error).message}`);
    }
  }

  /** Brings `source` into the OCI layout `layout` as its one image, `layout:image`. */
  private async fetch(source: string, layout: string, signal?: AbortSignal): Promise<void> {
    const { kind, from, args } = this.locate(source);
    if (kind === "dockerfile") return this.build(from, layout, signal);
    if (kind === "rootfs") {
      // A plain tree becomes a one-layer image: stored, shared and digested as any other.
      await run("umoci", ["init", "--layout", layout], signal);
      await run("umoci", ["new", "--image", `${layout}:image`], signal);
      await run("umoci", ["insert", "--image", `${layout}:image`, source, "/"], signal);
      return;
    }
    try {
      await run("skopeo", ["copy", "--quiet", ...args, from, `oci:${layout}:image`], signal);
    } catch (error) {
      if (kind !== "archive") throw error;
      // Not an OCI archive: a docker archive (`docker save`) perhaps.
      rmSync(layout, { recursive: true, force: true });
      await run(
        "skopeo",
        ["copy", "--quiet", `docker-archive:${source}`, `oci:${layout}:image`],
        signal,
      ).catch(() => {
        throw error;
      });
    }
  }

  /**
   * The image already stored under the source `name` names, used as it is
   * without asking its source again (`image pull` refreshes a tag); never
   * for a Dockerfile, which is built again each time (an unchanged build
   * yields the same digest, and its root is reused).
   */
  stored(name: string): StoredImage | undefined {
    const source = this.reference(name);
    try {
      if (this.locate(source).kind === "dockerfile") return undefined;
    } catch {
      return undefined;
    }
    return this.list().find((image) => image.references.includes(source));
  }

  /** Whether a pull of the image `name` names is under way (a pull of it now would join that one). */
  pulling(name: string): boolean {
    return this.pulls.has(this.reference(name));
  }

  /**
   * The image `name` names (a community name resolved: `reference`), pulled
   * and unpacked unless already stored; concurrent pulls of one source share one.
   */

  pull(name: string, signal?: AbortSignal): Promise<StoredImage> {
    const source = this.reference(name);
    const running = this.pulls.get(source);
    if (running) return running;
    const pulling = this.pullOnce(source, signal).finally(() => this.pulls.delete(source));
    this.pulls.set(source, pulling);
    return pulling;
  }

  private async pullOnce(source: string, signal?: AbortSignal): Promise<StoredImage> {
    const work = mkdtempSync(join(this.dir, "tmp", "pull-"));
    try {
      const layout = join(work, "layout");
      await this.fetch(source, layout, signal);
      const { digest, config, architecture } = inspectLayout(layout);
      const hex = DIGEST.exec(digest)![1]!;
      if (architecture !== "" && architecture !== hostArchitecture()) {
        throw new Error(`it is built for ${architecture}; this host runs ${hostArchitecture()}`);
      }
      // Two sources of one image (a tag and its digest, an archive of it) pulled
      // at once: unpacked once, and their records written one after the other.
      const image = await this.oneAtATime(digest, async () => {
        const known = this.get(digest);
        if (!known) {
          const bundle = join(work, "bundle");
          const rootless = process.getuid?.() !== 0 ? ["--rootless"] : [];
          await run("umoci", ["unpack", ...rootless, "--image", `${layout}:image`, bundle], signal);
          rmSync(this.root(digest), { recursive: true, force: true });
          renameSync(join(bundle, "rootfs"), this.root(digest));
        }
        try {
          const stored: StoredImage = {
            digest,
            references: [source, ...(known?.references ?? []).filter((ref) => ref !== source)].slice(0, 16),
            config,
            sizeBytes: known?.sizeBytes ?? (await diskUsage(this.root(digest))),
            pulledAtMs: Date.now(),
          };
          const record = join(this.dir, "images", `${hex}.json`);
          await writeFile(`${record}.tmp`, JSON.stringify(stored));
          renameSync(`${record}.tmp`, record);
          return stored;
        } catch (error) {
          // A root without its record is never used: not kept to take space either.
          rmSync(join(this.dir, "images", `${hex}.json.tmp`), { force: true });
          if (!known) rmSync(this.root(digest), { recursive: true, force: true });
          throw error;
        }
      });
      return image;
    } catch (error) {
      if (error instanceof ImagePullError) throw error;
      rmSync(work, { recursive: true, force: true });
      throw new ImagePullError(`image '${source}': ${this.full(error) ?? (error as Error).message}`);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }

  /**
   * What to say when `error` is the store's filesystem filling up (ENOSPC from
   * node, "no space left on device" from skopeo or umoci): where it is and
   * what is free once the failed pull's files are gone. Undefined otherwise.
   */
  private full(error: unknown): string | undefined {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ENOSPC" && !/no space left on device/i.test((error as Error).message)) return undefined;
    let free = "";
    try {
      const fs = statfsSync(this.dir);
      free = `, ${formatBytes(fs.bavail * fs.bsize)} free of ${formatBytes(fs.blocks * fs.bsize)}`;
    } catch {
      // The figures are a courtesy.
    }
    return `no space left on the image store's disk (${this.dir}${free}) to store it; free space there or remove unused images (openshell image prune), then try again`;
  }

  /** Runs `step` once every step queued before it for `digest` has ended. */
  private oneAtATime<T>(digest: string, step: () => Promise<T>): Promise<T> {
    const queued = (this.storing.get(digest) ?? Promise.resolve()).catch(() => {}).then(step);
    const tail = queued.catch(() => {});
    this.storing.set(digest, tail);
    void tail.then(() => {
      if (this.storing.get(digest) === tail) this.storing.delete(digest);
    });
    return queued;
  }

  /** The unpacked root of the image with manifest digest `digest`. */
  root(digest: string): string {
    const match = DIGEST.exec(digest);
    if (!match) throw new Error(`not a sha256 digest: ${digest}`);
    return join(this.dir, "roots", match[1]!);
  }

  /** The stored image with manifest digest `digest`, if complete. */
  get(digest: string): StoredImage | undefined {
    const match = DIGEST.exec(digest);
    if (!match) return undefined;
    try {
      const image = readJson(join(this.dir, "images", `${match[1]}.json`)) as StoredImage;
      return existsSync(this.root(digest)) ? image : undefined;
    } catch {
      return undefined;
    }
  }

  /** Every stored image, most recently pulled first. */
  list(): StoredImage[] {
    return readdirSync(join(this.dir, "images"))
      .filter((name) => /^[0-9a-f]{64}\.json$/.test(name))
      .map((name) => this.get(`sha256:${name.slice(0, 64)}`))
      .filter((image): image is StoredImage => image !== undefined)
      .sort((a, b) => b.pulledAtMs - a.pulledAtMs);
  }

  /** Removes a stored image: its record first, so a half-removed root never looks usable. */
  remove(digest: string): void {
    const match = DIGEST.exec(digest);
    if (!match) throw new Error(`not a sha256 digest: ${digest}`);
    rmSync(join(this.dir, "images", `${match[1]}.json`), { force: true });
    rmSync(this.root(digest), { recursive: true, force: true });
  }
}
