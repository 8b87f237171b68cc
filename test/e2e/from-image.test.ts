// `sandbox create --from` with real parts: Debian's reference registry on
// 127.0.0.1, a static-busybox image built here with umoci (no node, no
// glibc: the agent comes from the runtime's control path), pulled by the
// gateway with skopeo and unpacked with umoci. The sandbox sees the image's
// tree, not the host's, runs with the image's Env, WorkingDir, User and
// Entrypoint/Cmd, has its workspace seeded from the image's /sandbox, and
// takes injected files as on the host root. Links in an image lead nowhere
// on the host. An archive and a plain directory serve as sources too; a
// source that cannot be had is refused naming it, leaving no sandbox.

import {
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
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { json, type RunResult, TestEnv, uniqueName, waitFor } from "../helpers/cli.js";
import { busybox, TestImage, TestRegistry, writeTree } from "../helpers/registry.js";
import { type StandIn, startStandIn } from "../helpers/stand-in.js";

describe("sandbox create --from", () => {
  const registry = new TestRegistry();
  const env = new TestEnv();
  const work = mkdtempSync(join(tmpdir(), "openshell-from-"));
  /** A host directory no sandbox may see, which the hostile image's links point at. */
  const hostSecret = join(work, "host-secret");
  let reference = "";
  let hostile = "";
  let withPolicy = "";
  let brokenPolicy = "";
  /** A policy file to give with --policy. */
  const given = join(work, "given.yaml");
  let image: TestImage;

  beforeAll(async () => {
    await registry.start();
    writeTree(hostSecret, {
      "secret.txt": "host only\n",
      "etc/app/.keep": "",
      // A policy on the host where the hostile image's /etc link points: never the sandbox's.
      "etc/openshell/policy.yaml":
        "version: 1\nfilesystem_policy:\n  read_only: [/bin]\n  read_write: [/tmp, /host-policy]\n",
    });
    image = new TestImage(work, "bb")
      .layer((root) => {
        busybox(root);
        writeTree(root, {
          "only-in-image": "from the image\n",
          "sandbox/seed/file": "seeded\n",
          "etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/app:/bin/sh\n",
        });
        mkdirSync(join(root, "app"));
      })
      .config(
        "--config.env",
        "GREETING=hello",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/app",
        "--config.user",
        "app",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        'echo "main-ran in $(pwd)" > /sandbox/main; exec sleep 100000',
      );
    reference = image.push(registry, "bb:1");
    hostile = new TestImage(work, "hostile")
      .layer((root) => {
        busybox(root);
        symlinkSync(hostSecret, join(root, "leak"));
        symlinkSync(`../../../../../../../..${hostSecret}`, join(root, "climb"));
        // A policy path and an injected file's parent, each through a link to the host.
        symlinkSync(join(hostSecret, "etc"), join(root, "etc"));
      })
      .push(registry, "hostile:1");
    // Images that carry a policy: a usable one at upstream's path, a broken one at its legacy path.
    const carried = (path: string, policy: string) =>
      new TestImage(work, path.split("/")[2]!).layer((root) => {
        busybox(root);
        writeTree(root, { [path]: policy });
      });
    withPolicy = carried(
      "/etc/openshell/policy.yaml",
      "version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_only: [/bin]\n  read_write: [/tmp, /dev/null, /scratch]\n",
    ).push(registry, "with-policy:1");
    brokenPolicy = carried(
      "/etc/navigator/policy.yaml",
      "version: 1\nfilesystem_policy:\n  bogus: true\n",
    ).push(registry, "broken-policy:1");
    writeFileSync(
      given,
      "version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_only: [/bin]\n  read_write: [/tmp, /dev/null, /given]\n",
    );
    // A community sandbox, where OPENSHELL_COMMUNITY_REGISTRY (the gateway's) sends a plain name.
    image.push(registry, "community/sandboxes/tiny:latest");
    await env.startGateway({
      OPENSHELL_INSECURE_REGISTRIES: registry.host,
      OPENSHELL_COMMUNITY_REGISTRY: `${registry.host}/community/sandboxes/`,
    });
  }, 120_000);

  afterAll(async () => {
    await env.dispose();
    registry.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const exec = (name: string, script: string) => env.sh(name, script);
  /** `sandbox create --name NAME --from SOURCE [FLAGS] --detach -- sleep 100000`. */
  const createFrom = (name: string, source: string, ...flags: string[]) =>
    env.run(
      ["sandbox", "create", "--name", name, "--from", source, ...flags, "--detach", "--", "sleep", "100000"],
      {
        timeoutMs: 120_000,
      },
    );

  it("runs the image's tree with its Env, WorkingDir, User and Entrypoint/Cmd, its workspace seeded; injected files as on the host root", async () => {
    const name = uniqueName("from");
    writeFileSync(join(work, "cfg.yaml"), "key: value\n");
    const created = await env.run(
      [
        "sandbox",
        "create",
        "--name",
        name,
        "--from",
        reference,
        "--file",
        `${join(work, "cfg.yaml")}:/etc/app/cfg.yaml`,
        "--detach",
      ],
      { timeoutMs: 120_000 },
    );
    expect(created.code, created.stderr).toBe(0);
    const seen = await exec(
      name,
      "id -u; pwd; echo $GREETING; cat /only-in-image; cat /sandbox/seed/file; cat /etc/app/cfg.yaml; " +
        "test -e /etc/debian_version && echo host-file-visible; test -e /usr/bin/node && echo host-node-visible; " +
        "until [ -e /sandbox/main ]; do sleep 0.1; done; cat /sandbox/main; " +
        "echo tampered >> /etc/app/cfg.yaml 2>/dev/null || echo refused",
    );
    expect(seen.code, seen.stderr).toBe(0);
    // The main command starts in the image's WorkingDir; exec, as on the host root, in the workspace.
    expect(seen.stdout).toBe(
      "1234\n/sandbox\nhello\nfrom the image\nseeded\nkey: value\nmain-ran in /app\nrefused\n",
    );
    // Upload and download with the runtime's own tar and realpath: busybox has neither GNU one.
    writeTree(join(work, "up"), { "a.txt": "uploaded\n" });
    const up = await env.run(["sandbox", "upload", name, join(work, "up"), "/sandbox/up"]);
    expect(up.code, up.stderr).toBe(0);
    expect((await exec(name, "cat /sandbox/up/a.txt")).stdout).toBe("uploaded\n");
    const down = await env.run(["sandbox", "download", name, "/sandbox/seed", join(work, "down")]);
    expect(down.code, down.stderr).toBe(0);
    expect(readFileSync(join(work, "down", "file"), "utf8")).toBe("seeded\n");
    const doc = json<{ annotations?: Record<string, string> }>(
      await env.run(["sandbox", "get", name, "-o", "json"]),
    );
    expect(JSON.stringify(doc)).toMatch(/sha256:[0-9a-f]{64}/);
  });

  it("keeps one root for every sandbox of an image", async () => {
    const names = [uniqueName("one"), uniqueName("two")];
    for (const name of names) {
      const created = await env.run(["sandbox", "create", "--name", name, "--from", reference, "--detach"]);
      expect(created.code, created.stderr).toBe(0);
    }
    const roots = readdirSync(join(env.stateHome, "openshell", "gateways", "local", "images", "roots"));
    expect(roots).toHaveLength(1);
  });

  it("pulls an image not yet stored once for two creates that ask for it at the same time", async () => {
    const shared = new TestImage(work, "shared")
      .layer((root) => {
        busybox(root);
        writeTree(root, { "shared-marker": "shared\n" });
      })
      .push(registry, "shared:1");
    const log = join(env.stateHome, "openshell", "gateways", "local", "gateway.log");
    const lines = (text: string) =>
      readFileSync(log, "utf8")
        .split("\n")
        .filter((line) => line.includes(text));
    const before = {
      manifests: registry.requests("GET", "/v2/shared/manifests/1"),
      blobs: registry.requests("GET", "/v2/shared/blobs/"),
    };
    const names = [uniqueName("first"), uniqueName("second")];
    // The registry holds the first pull until the second create has joined it (or started its own).
    registry.pause();
    let creates: Promise<RunResult[]>;
    try {
      const first = createFrom(names[0]!, shared);
      await waitFor("the first create's pull", 30_000, () =>
        lines(`image '${shared}': pulling`).length === 1 ? true : undefined,
      );
      const second = createFrom(names[1]!, shared);
      await waitFor("the second create to join the pull", 30_000, () =>
        lines(`image '${shared}':`).length >= 2 ? true : undefined,
      );
      creates = Promise.all([first, second]);
    } finally {
      registry.resume();
    }
    for (const created of await creates) expect(created.code, created.stderr).toBe(0);
    expect(lines(`image '${shared}': waiting for its pull under way`)).toHaveLength(1);
    expect(lines(`image '${shared}': pulling`)).toHaveLength(1);
    // One manifest read by tag, and each blob fetched once (skopeo reads the config and the one layer).
    expect(registry.requests("GET", "/v2/shared/manifests/1") - before.manifests).toBe(1);
    expect(registry.requests("GET", "/v2/shared/blobs/") - before.blobs).toBe(2);
    const digests = await Promise.all(
      names.map(
        async (name) =>
          json<{ image_digest: string }>(await env.run(["sandbox", "get", name, "-o", "json"])).image_digest,
      ),
    );
    expect(digests[0]).toMatch(/^sha256:/);
    expect(digests[1]).toBe(digests[0]);
  });

  it("lets no link in an image reach the host: absolute, climbing, or on an injected file's way", async () => {
    const name = uniqueName("hostile");
    writeFileSync(join(work, "inj"), "injected\n");
    const created = await createFrom(name, hostile, "--file", `${join(work, "inj")}:/etc/app/injected`);
    if (created.code === 0) {
      const seen = await exec(name, "cat /leak/secret.txt /climb/secret.txt /etc/../secret.txt 2>&1; true");
      expect(seen.stdout).not.toContain("host only");
    } else {
      // Refused, naming the injected file whose way passes through the link.
      expect(created.stderr).toContain("/etc/app/injected");
    }
    // The host's policy file the link leads to is not the image's: a create without a policy gets the default.
    const plain = uniqueName("hostile");
    const idle = await createFrom(plain, hostile);
    expect(idle.code, idle.stderr).toBe(0);
    const got = await env.run(["sandbox", "get", plain, "-o", "json"]);
    expect(got.stdout).toContain("/dev/urandom");
    expect(got.stdout).not.toContain("/host-policy");
    // Nothing was written into the host directory the image's /etc points at.
    expect(readdirSync(join(hostSecret, "etc", "app"))).toEqual([".keep"]);
  });

  it("uses the policy an image carries at /etc/openshell/policy.yaml when none is given; a given policy wins", async () => {
    const scratch =
      "touch /scratch/f 2>/dev/null && echo scratch-writable || echo scratch-refused; " +
      "touch /given/f 2>/dev/null && echo given-writable || echo given-refused";
    const carried = uniqueName("carried");
    const created = await createFrom(carried, withPolicy);
    expect(created.code, created.stderr).toBe(0);
    expect((await exec(carried, scratch)).stdout).toBe("scratch-writable\ngiven-refused\n");
    const got = await env.run(["sandbox", "get", carried, "-o", "json"]);
    expect(got.stdout).toContain("/scratch");
    const overridden = uniqueName("given");
    const second = await createFrom(overridden, withPolicy, "--policy", given);
    expect(second.code, second.stderr).toBe(0);
    expect((await exec(overridden, scratch)).stdout).toBe("scratch-refused\ngiven-writable\n");
  });

  it("refuses an image whose carried policy is broken (at the legacy /etc/navigator path), naming both, and leaves no sandbox", async () => {
    const before = json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"])).length;
    const created = await env.run(["sandbox", "create", "--from", brokenPolicy, "--detach"]);
    expect(created.code).toBe(1);
    expect(created.stderr).toContain(`image '${brokenPolicy}': /etc/navigator/policy.yaml`);
    expect(created.stderr).toContain("bogus");
    expect(created.stderr).toContain("--policy");
    // A given policy is the way past it.
    const passed = await createFrom(uniqueName("given"), brokenPolicy, "--policy", given);
    expect(passed.code, passed.stderr).toBe(0);
    expect(json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"]))).toHaveLength(before + 1);
  });

  it("resolves a community name under the gateway's OPENSHELL_COMMUNITY_REGISTRY; get shows the full reference and digest", async () => {
    const name = uniqueName("community");
    const created = await env.run(["sandbox", "create", "--name", name, "--from", "tiny", "--detach"]);
    expect(created.code, created.stderr).toBe(0);
    expect((await exec(name, "cat /only-in-image")).stdout).toBe("from the image\n");
    const full = `${registry.host}/community/sandboxes/tiny:latest`;
    const doc = json<{ image: string; image_digest: string }>(
      await env.run(["sandbox", "get", name, "-o", "json"]),
    );
    expect(doc.image).toBe(full);
    expect(doc.image_digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const table = await env.run(["sandbox", "get", name]);
    expect(table.stdout).toContain(`Image: ${full} (${doc.image_digest})`);
    // Stored under the reference it resolved to.
    const listed = json<{ digest: string; references: string[] }[]>(
      await env.run(["image", "list", "-o", "json"]),
    );
    expect(listed.find((stored) => stored.digest === doc.image_digest)?.references).toContain(full);
  });

  it("takes an OCI archive and a plain root filesystem directory", async () => {
    const archive = image.archive(join(work, "bb.tar"));
    const tree = join(work, "tree");
    busybox(tree);
    writeTree(tree, { marker: "plain tree\n" });
    for (const [source, expected] of [
      [archive, "from the image\n"],
      [tree, "plain tree\n"],
    ] as const) {
      const name = uniqueName("src");
      const created = await createFrom(name, source);
      expect(created.code, created.stderr).toBe(0);
      const seen = await exec(name, "cat /only-in-image /marker 2>/dev/null; true");
      expect(seen.stdout).toBe(expected);
    }
  });

  it("image list, pull, rm and prune: each image with the sandboxes that run it; one in use is not removed", async () => {
    const listed = json<{ digest: string; references: string[]; sandboxes: string[]; size_bytes: number }[]>(
      await env.run(["image", "list", "-o", "json"]),
    );
    const ours = listed.find((image) => image.references.includes(reference));
    expect(ours?.sandboxes.length).toBeGreaterThan(0);
    expect(ours?.size_bytes).toBeGreaterThan(0);
    const refused = await env.run(["image", "rm", reference]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`image '${reference}' is used by sandbox(es) ${ours!.sandboxes[0]}`);
    const pulled = await env.run(["image", "pull", reference, "-o", "json"]);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(json<{ digest: string }>(pulled).digest).toBe(ours!.digest);
    // Once nothing runs it, prune removes it and nothing else is left that no sandbox runs.
    for (const name of ours!.sandboxes) expect((await env.run(["sandbox", "delete", name])).code).toBe(0);
    const pruned = json<{ removed: string[] }>(await env.run(["image", "prune", "-o", "json"]));
    expect(pruned.removed).toContain(ours!.digest);
    const after = json<{ digest: string; sandboxes: string[] }[]>(
      await env.run(["image", "list", "-o", "json"]),
    );
    expect(after.every((image) => image.sandboxes.length > 0)).toBe(true);
    expect((await env.run(["image", "rm", reference])).stderr).toContain(`image '${reference}' not found`);
  });

  it("refuses a source it cannot have, naming it, and leaves no sandbox", async () => {
    const before = json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"])).length;
    for (const source of [`${registry.host}/nope:1`, join(work, "missing.tar")]) {
      const created = await env.run(["sandbox", "create", "--from", source, "--detach"]);
      expect(created.code).not.toBe(0);
      expect(created.stderr).toContain(`image '${source}'`);
    }
    expect(json<unknown[]>(await env.run(["sandbox", "list", "-o", "json"]))).toHaveLength(before);
  });
});

describe("--from a community name against a gateway that keeps no images", () => {
  // An OpenShell gateway's stand-in that records what a create asked for.
  let standIn: StandIn;
  const asked: string[] = [];
  const env = new TestEnv();

  beforeAll(async () => {
    standIn = await startStandIn({
      createSandbox: (
        call: { request: { spec?: { template?: { image: string } } } },
        callback: (error: { code: number; details: string }) => void,
      ) => {
        asked.push(call.request.spec?.template?.image ?? "");
        callback({ code: status.UNAVAILABLE, details: "stand-in" });
      },
    });
  });
  afterAll(async () => {
    standIn.server.forceShutdown();
    await env.dispose();
  });

  it("sends the name resolved as upstream's CLI does, under the CLI's OPENSHELL_COMMUNITY_REGISTRY", async () => {
    const create = (extra: Record<string, string> = {}) =>
      env.run(["--gateway-endpoint", standIn.endpoint, "sandbox", "create", "--from", "base", "--detach"], {
        env: extra,
      });
    expect((await create()).code).not.toBe(0);
    expect((await create({ OPENSHELL_COMMUNITY_REGISTRY: "registry.example.com/mine/" })).code).not.toBe(0);
    expect(asked).toEqual([
      "ghcr.io/nvidia/openshell-community/sandboxes/base:latest",
      "registry.example.com/mine/base:latest",
    ]);
  });
});
