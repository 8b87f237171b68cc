// A real registry for tests: Debian's `docker-registry` (the reference
// registry, distribution) on 127.0.0.1, storing in a temporary directory,
// and test images built from files on this machine with umoci and pushed
// with skopeo.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./net.js";

export class TestRegistry {
  private child: ChildProcess | undefined;
  /** What the registry printed: its access log among it. */
  private readonly output: Buffer[] = [];
  readonly dir = mkdtempSync(join(tmpdir(), "openshell-registry-"));
  /** `127.0.0.1:PORT` once started. */
  host = "";

  async start(): Promise<void> {
    const port = await freePort();
    this.host = `127.0.0.1:${port}`;
    const config = join(this.dir, "config.yml");
    writeFileSync(
      config,
      [
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        `    rootdirectory: ${join(this.dir, "data")}`,
        "http:",
        `  addr: ${this.host}`,
        "",
      ].join("\n"),
    );
    this.child = spawn("docker-registry", ["serve", config], { stdio: ["ignore", "pipe", "pipe"] });
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      stream.on("data", (chunk: Buffer) => this.output.push(chunk));
    }
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const response = await fetch(`http://${this.host}/v2/`);
        if (response.status === 200) return;
      } catch {
        // Not listening yet.
      }
      if (this.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`docker-registry did not start: ${this.logText().slice(-2000)}`);
      }
      await new Promise((done) => setTimeout(done, 50));
    }
  }

  /**
   * Requests for `path` the registry has logged so far (e.g. `/v2/test/manifests/1`); a path
   * ending in `/` counts every request under it (`/v2/test/blobs/`).
   */
  requests(method: string, path: string): number {
    const request = path.endsWith("/") ? `"${method} ${path}` : `"${method} ${path} `;
    return this.logText()
      .split("\n")
      .filter((line) => line.includes(request)).length;
  }

  /** Stops the registry answering (SIGSTOP): connections are accepted and wait, until `resume`. */
  pause(): void {
    this.child?.kill("SIGSTOP");
  }

  resume(): void {
    this.child?.kill("SIGCONT");
  }

  private logText(): string {
    return Buffer.concat(this.output).toString("utf8");
  }

  stop(): void {
    this.child?.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A test image, built layer by layer in an OCI layout with umoci. */
export class TestImage {
  readonly layout: string;
  private readonly bundle: string;

  constructor(
    readonly workDir: string,
    readonly name = "image",
  ) {
    this.layout = join(workDir, `${name}-layout`);
    this.bundle = join(workDir, `${name}-bundle`);
    execFileSync("umoci", ["init", "--layout", this.layout]);
    execFileSync("umoci", ["new", "--image", `${this.layout}:${name}`]);
  }

  /** Adds a layer: `change` edits the root filesystem, and what it changed (deletions too) becomes the layer. */
  layer(change: (root: string) => void): this {
    rmSync(this.bundle, { recursive: true, force: true });
    execFileSync("umoci", ["unpack", "--image", `${this.layout}:${this.name}`, this.bundle]);
    change(join(this.bundle, "rootfs"));
    execFileSync("umoci", ["repack", "--image", `${this.layout}:${this.name}`, this.bundle]);
    rmSync(this.bundle, { recursive: true, force: true });
    return this;
  }

  /** Sets the image config (`umoci config` flags, e.g. `--config.env`, `A=1`). */
  config(...flags: string[]): this {
    execFileSync("umoci", ["config", "--image", `${this.layout}:${this.name}`, ...flags]);
    return this;
  }

  /** Pushes it to `registry` as `repository:tag`. */
  push(registry: TestRegistry, reference: string): string {
    execFileSync("skopeo", [
      "copy",
      "--quiet",
      "--dest-tls-verify=false",
      `oci:${this.layout}:${this.name}`,
      `docker://${registry.host}/${reference}`,
    ]);
    return `${registry.host}/${reference}`;
  }

  /** Writes it as an OCI archive file. */
  archive(path: string): string {
    execFileSync("skopeo", ["copy", "--quiet", `oci:${this.layout}:${this.name}`, `oci-archive:${path}`]);
    return path;
  }
}

/** Writes `files` (path → content) under `root`, making parents. */
export function writeTree(root: string, files: Record<string, string>): void {
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, ".."), { recursive: true });
    writeFileSync(join(root, path), content);
  }
}

/** busybox applets the test images link to, enough for the tests' and the bench's commands. */
const APPLETS = ["sh", "cat", "ls", "echo", "env", "pwd", "id", "sleep", "true", "test", "touch", "mkdir"];

/** A static busybox and its applets under `root`'s /bin: a shell and tools with no library at all. */
export function busybox(root: string): void {
  mkdirSync(join(root, "bin"), { recursive: true });
  writeFileSync(join(root, "bin", "busybox"), readFileSync("/bin/busybox"));
  chmodSync(join(root, "bin", "busybox"), 0o755);
  for (const applet of APPLETS) symlinkSync("busybox", join(root, "bin", applet));
}
