// Bench section: sandboxes from images (own gateway, own registry). A ~100 MB
// image (a static busybox and 100 MB of incompressible files in 4 layers)
// built with umoci and pushed to Debian's reference registry on 127.0.0.1.
// Figures, same run:
// - the image store's first pull and unpack beside `skopeo copy` + `umoci
//   unpack` of the same image alone (target: within 1.2×);
// - create→Ready (`sandbox create --detach`) from the now cached image beside
//   create on the host root, interleaved (target: p50 within 50 ms);
// - the disk 20 sandboxes of the image add: one root on disk, each sandbox
//   only its own directories.

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ImageStore } from "../src/gateway/images.js";
import { busybox, TestImage, TestRegistry } from "../test/helpers/registry.js";
import { BenchEnv } from "./lib/gateway.js";
import { progress, type Section } from "./lib/report.js";
import { formatMiB, formatMs, round, summarize } from "./lib/stats.js";

const LAYERS = 4;
const LAYER_BYTES = 25 * 1024 * 1024;
const CREATE_RUNS = 10;
const SANDBOXES = 20;

/** Bytes a directory takes on disk (`du`: blocks in use, so a sparse image counts what it holds; hard links once). */
function diskBytes(path: string): number {
  return Number(execFileSync("du", ["-s", "--block-size=1", path], { encoding: "utf8" }).split("\t")[0]);
}

function timed(run: () => void): number {
  const started = process.hrtime.bigint();
  run();
  return Number(process.hrtime.bigint() - started) / 1e6;
}

export async function imageSandboxes(s: Section): Promise<void> {
  const registry = new TestRegistry();
  const env = new BenchEnv();
  try {
    await registry.start();
    progress("building a ~100 MB image");
    const image = new TestImage(env.root, "big").layer(busybox);
    for (let layer = 0; layer < LAYERS; layer++) {
      image.layer((root) => {
        mkdirSync(join(root, "data"), { recursive: true });
        writeFileSync(join(root, "data", `layer-${layer}`), randomBytes(LAYER_BYTES));
      });
    }
    const reference = image.push(registry, "big:1");

    // Pull and unpack: the store, then the two tools alone, the same image from the same registry.
    const store = new ImageStore(join(env.root, "store"), { insecureRegistries: [registry.host] });
    const started = process.hrtime.bigint();
    const pulled = await store.pull(reference);
    const storeMs = Number(process.hrtime.bigint() - started) / 1e6;
    const alone = join(env.root, "alone");
    mkdirSync(alone);
    const toolsMs = timed(() => {
      execFileSync("skopeo", [
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        `docker://${reference}`,
        `oci:${join(alone, "layout")}:image`,
      ]);
      execFileSync("umoci", ["unpack", "--image", `${join(alone, "layout")}:image`, join(alone, "bundle")]);
    });
    rmSync(alone, { recursive: true, force: true });
    s.figure("image_bytes", "image unpacked", pulled.sizeBytes, "bytes", formatMiB(pulled.sizeBytes));
    s.figure("pull_unpack_ms", "first pull + unpack (image store)", round(storeMs), "ms", formatMs(storeMs));
    s.figure("tools_alone_ms", "skopeo copy + umoci unpack alone", round(toolsMs), "ms", formatMs(toolsMs));
    const pullRatio = storeMs / toolsMs;
    s.figure(
      "pull_ratio",
      "  store / tools alone",
      round(pullRatio, 2),
      "ratio",
      `${pullRatio.toFixed(2)} ×`,
      {
        text: "≤ 1.2 ×",
        met: pullRatio <= 1.2,
      },
    );

    await env.startGateway({ OPENSHELL_INSECURE_REGISTRIES: registry.host });
    const create = async (name: string, from?: string): Promise<number> =>
      (
        await env.cliOk(
          [
            "sandbox",
            "create",
            "--name",
            name,
            ...(from ? ["--from", from] : []),
            "--detach",
            "--",
            "sleep",
            "1000000",
          ],
          { timeoutMs: 300_000 },
        )
      ).ms;
    progress("pulling it into the gateway (first create), warming up");
    const names: string[] = [];
    await s.attempt("first create from the image", async () => {
      names.push("warm-image");
      return create("warm-image", reference);
    });
    await s.attempt("warm-up", async () => {
      names.push("warm-host");
      return create("warm-host");
    });
    const fromImage: number[] = [];
    const onHost: number[] = [];
    for (let i = 0; i < CREATE_RUNS; i++) {
      fromImage.push(await s.attempt("create from the image", () => create(`img-${i}`, reference)));
      names.push(`img-${i}`);
      onHost.push(await s.attempt("create on the host root", () => create(`host-${i}`)));
      names.push(`host-${i}`);
    }
    s.samples("from_image_ms", fromImage);
    s.samples("host_root_ms", onHost);
    const imageP50 = summarize(fromImage).p50;
    const hostP50 = summarize(onHost).p50;
    s.figure(
      "create_image_p50_ms",
      "create→Ready from the cached image, p50",
      round(imageP50),
      "ms",
      formatMs(imageP50),
    );
    s.figure(
      "create_host_p50_ms",
      "create→Ready on the host root, p50",
      round(hostP50),
      "ms",
      formatMs(hostP50),
    );
    const extra = imageP50 - hostP50;
    s.figure("create_extra_ms", "  image − host root", round(extra), "ms", formatMs(extra), {
      text: "≤ 50 ms",
      met: extra <= 50,
    });

    // Disk: the image's roots and the sandboxes' directories, before and after 20 more sandboxes.
    const state = join(env.stateHome, "openshell", "gateways", "local");
    const before = {
      images: diskBytes(join(state, "images")),
      sandboxes: diskBytes(join(state, "sandboxes")),
    };
    for (let i = 0; i < SANDBOXES; i++) {
      await s.attempt("create from the image", () => create(`disk-${i}`, reference));
      names.push(`disk-${i}`);
    }
    const after = {
      images: diskBytes(join(state, "images")),
      sandboxes: diskBytes(join(state, "sandboxes")),
    };
    const roots = readdirSync(join(state, "images", "roots")).length;
    s.figure("image_roots", "unpacked roots on disk", roots, "count", String(roots), {
      text: "1",
      met: roots === 1,
    });
    const imagesGrowth = after.images - before.images;
    s.figure(
      "images_growth_bytes",
      `image store growth for ${SANDBOXES} sandboxes`,
      imagesGrowth,
      "bytes",
      formatMiB(imagesGrowth),
      {
        text: "0",
        met: imagesGrowth <= 64 * 1024,
      },
    );
    const perSandbox = (after.sandboxes - before.sandboxes) / SANDBOXES;
    s.figure(
      "per_sandbox_bytes",
      "  each sandbox's own directories",
      round(perSandbox),
      "bytes",
      formatMiB(perSandbox),
    );
    await Promise.all(names.map((name) => env.cli(["sandbox", "delete", name], { timeoutMs: 60_000 })));
  } finally {
    registry.stop();
    await env.dispose();
  }
}
