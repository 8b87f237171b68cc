import { execFileSync, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { link, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import tarStream from "tar-stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { remoteTool } from "../../src/core/protocol.js";
import {
  checkResolvedPath,
  checkSourcePath,
  checkWorkspaceRoot,
  cleanSandboxPath,
  decodeProbe,
  decodeProbeOutput,
  decodeTypeProbe,
  downloadTarCommand,
  extractDownload,
  fileDownloadTarget,
  probeCommand,
  resolveDownloadSource,
  typeProbeCommand,
} from "../../src/transport/tar/download.js";
import { shellEscape } from "../../src/transport/tar/upload.js";

let work: string;

beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), "openshell-download-"));
});

afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("cleanSandboxPath", () => {
  it.each([
    ["/sandbox/./a", "/sandbox/a"],
    ["/sandbox/sub/../a", "/sandbox/a"],
    ["/sandbox/../etc/passwd", "/etc/passwd"],
    ["//sandbox///foo//", "/sandbox/foo"],
    ["/", "/"],
    ["/..", "/"],
    ["", undefined],
    ["sandbox/a", undefined],
    ["./a", undefined],
  ])("%j -> %j", (input, expected) => {
    expect(cleanSandboxPath(input)).toBe(expected);
  });
});

describe("checkWorkspaceRoot", () => {
  it("accepts a canonical absolute root", () => {
    expect(checkWorkspaceRoot("/workspace/project")).toBe("/workspace/project");
  });

  it.each([
    ["", "remote workspace must be an absolute path"],
    ["workspace", "remote workspace must be an absolute path"],
    ["/", "remote workspace resolved to the container root"],
    ["/workspace/../etc", "remote workspace '/workspace/../etc' is not a canonical absolute path"],
    ["/workspace/", "remote workspace '/workspace/' is not a canonical absolute path"],
  ])("rejects %j", (root, message) => {
    expect(() => checkWorkspaceRoot(root)).toThrow(message);
  });
});

describe("checkSourcePath", () => {
  const root = "/workspace/project";

  it.each([
    ["/workspace/project/file.txt", "/workspace/project/file.txt"],
    ["/workspace/project/.agent/workspace/hello.txt", "/workspace/project/.agent/workspace/hello.txt"],
    ["/workspace/project", "/workspace/project"],
    ["/workspace/project/", "/workspace/project"],
    ["/workspace/project/sub/../file", "/workspace/project/file"],
    ["output/file.txt", "/workspace/project/output/file.txt"],
    ["./output/../file.txt", "/workspace/project/file.txt"],
  ])("accepts %j", (requested, expected) => {
    expect(checkSourcePath(requested, root)).toBe(expected);
  });

  it.each([
    [
      "/etc/passwd",
      "sandbox source path '/etc/passwd' is outside the sandbox workspace (/workspace/project)",
    ],
    [
      "/workspace/project/../../etc/passwd",
      "sandbox source path '/workspace/project/../../etc/passwd' is outside the sandbox workspace (/workspace/project)",
    ],
    [
      "/workspace/projected/secrets",
      "sandbox source path '/workspace/projected/secrets' is outside the sandbox workspace (/workspace/project)",
    ],
    [
      "../../etc/passwd",
      "sandbox source path '../../etc/passwd' is outside the sandbox workspace (/workspace/project)",
    ],
    ["", "sandbox source path is empty"],
  ])("rejects %j", (requested, message) => {
    expect(() => checkSourcePath(requested, root)).toThrow(message);
  });
});

describe("checkResolvedPath", () => {
  const root = "/workspace/project";

  it("accepts a resolved path in the workspace", () => {
    expect(checkResolvedPath("link", "/workspace/project/real", root)).toBe("/workspace/project/real");
  });

  it.each([
    ["", "sandbox source path 'x' does not exist"],
    [
      "/etc/passwd",
      "sandbox source path 'x' resolves to '/etc/passwd', outside the sandbox workspace (/workspace/project)",
    ],
    [
      "/workspace/projected",
      "sandbox source path 'x' resolves to '/workspace/projected', outside the sandbox workspace (/workspace/project)",
    ],
  ])("rejects %j", (resolved, message) => {
    expect(() => checkResolvedPath("x", resolved, root)).toThrow(message);
  });
});

describe("probe output", () => {
  it("strips only the protocol line ending", () => {
    expect(decodeProbeOutput(Buffer.from("/workspace/project \n"))).toBe("/workspace/project ");
    expect(decodeProbeOutput(Buffer.from("/workspace/project\r\n"))).toBe("/workspace/project");
    expect(decodeProbeOutput("/workspace/project\n\n")).toBe("/workspace/project\n");
    expect(() => decodeProbeOutput(Buffer.from([0xff]))).toThrow("ssh probe returned non-UTF-8 output");
  });

  it("needs exactly two lines", () => {
    expect(decodeProbe("/w\n/w/a\n", "a")).toEqual({ root: "/w", resolved: "/w/a" });
    expect(decodeProbe("/w\n\n", "a")).toEqual({ root: "/w", resolved: "" });
    for (const bad of ["/w\n", "/w\n/w/a\n/w/b\n", ""]) {
      expect(() => decodeProbe(bad, "a")).toThrow(
        "unexpected response while resolving sandbox source path 'a'",
      );
    }
  });

  it("decodes the type probe", () => {
    expect(decodeTypeProbe("dir", "p")).toBe("dir");
    expect(decodeTypeProbe("file", "p")).toBe("file");
    expect(() => decodeTypeProbe("missing", "p")).toThrow("sandbox source path 'p' does not exist");
    expect(() => decodeTypeProbe("what", "p")).toThrow(
      "unexpected probe output for sandbox source path 'p': 'what'",
    );
  });
});

describe("probes run by a real shell", () => {
  function sh(cwd: string, command: string) {
    const result = spawnSync("sh", ["-c", command], { cwd });
    return { stdout: result.stdout, status: result.status };
  }

  it("resolves a path in the workspace and refuses a symlink out of it", async () => {
    const root = path.join(work, "workspace");
    await mkdir(path.join(root, "sub"), { recursive: true });
    await writeFile(path.join(root, "sub", "a b.txt"), "a");
    await symlink("/etc", path.join(root, "etc-link"));
    await symlink("sub", path.join(root, "sub-link"));

    const inside = sh(root, probeCommand("sub-link/a b.txt"));
    expect(inside.status).toBe(0);
    expect(resolveDownloadSource(inside.stdout, "sub-link/a b.txt")).toBe(path.join(root, "sub", "a b.txt"));

    const escaping = sh(root, probeCommand("etc-link/passwd"));
    expect(escaping.status).toBe(0);
    expect(() => resolveDownloadSource(escaping.stdout, "etc-link/passwd")).toThrow(
      `sandbox source path 'etc-link/passwd' resolves to '/etc/passwd', outside the sandbox workspace (${root})`,
    );

    expect(sh(root, probeCommand("missing")).status).not.toBe(0);
    expect(sh(root, probeCommand("-n")).status).not.toBe(0);
  });

  it("tells a directory from a file from nothing", async () => {
    const root = path.join(work, "workspace");
    await mkdir(path.join(root, "d"), { recursive: true });
    await writeFile(path.join(root, "f"), "");
    expect(decodeTypeProbe(sh(root, typeProbeCommand(path.join(root, "d"))).stdout, "d")).toBe("dir");
    expect(decodeTypeProbe(sh(root, typeProbeCommand(path.join(root, "f"))).stdout, "f")).toBe("file");
    expect(() => decodeTypeProbe(sh(root, typeProbeCommand(path.join(root, "n"))).stdout, "n")).toThrow(
      "does not exist",
    );
  });

  it("puts `--` before the archived name", () => {
    const cmd = downloadTarCommand("/sandbox/--checkpoint-action=exec=id");
    expect(cmd).toContain(" -- ");
    expect(cmd.endsWith(shellEscape("--checkpoint-action=exec=id"))).toBe(true);
    expect(downloadTarCommand("/sandbox/with space/name with space")).toBe(
      `${remoteTool("tar")} -c -f - -C '/sandbox/with space' -- 'name with space'`,
    );
  });
});

describe("fileDownloadTarget", () => {
  it.each([
    ["/tmp/out.txt", false, "/tmp/out.txt"],
    ["/tmp", true, "/tmp/hello.txt"],
    ["/tmp/newdir/", false, "/tmp/newdir/hello.txt"],
  ])("%s (dir: %s)", (dest, isDir, expected) => {
    expect(fileDownloadTarget(dest, "hello.txt", isDir)).toBe(expected);
  });
});

/** Run the download's tar command in a "sandbox" directory and hand its stdout to extractDownload. */
async function download(resolved: string, dest: string, kind: "file" | "dir") {
  const child = spawn("sh", ["-c", downloadTarCommand(resolved)], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  try {
    const result = await extractDownload(child.stdout, dest, {
      kind,
      name: path.basename(resolved),
      source: resolved,
    });
    expect({ status: await exited, stderr }).toEqual({ status: 0, stderr: "" });
    return result;
  } finally {
    // A refused download closes tar's stdout; let it exit before the temp dir goes.
    await exited;
  }
}

describe("extractDownload from GNU tar", () => {
  let sandbox: string;

  beforeEach(async () => {
    sandbox = path.join(work, "sandbox");
    await mkdir(path.join(sandbox, "project", "sub", "deep"), { recursive: true });
    await writeFile(path.join(sandbox, "project", "run.sh"), "#!/bin/sh\n");
    chmodSync(path.join(sandbox, "project", "run.sh"), 0o755);
    await writeFile(path.join(sandbox, "project", "setuid"), "x");
    chmodSync(path.join(sandbox, "project", "setuid"), 0o4755);
    await writeFile(path.join(sandbox, "project", "sub", "deep", "a.txt"), "deep");
    await link(path.join(sandbox, "project", "sub", "deep", "a.txt"), path.join(sandbox, "project", "hard"));
    await symlink("sub/deep/a.txt", path.join(sandbox, "project", "link"));
    await symlink("nowhere", path.join(sandbox, "project", "dangling"));
    chmodSync(path.join(sandbox, "project", "sub"), 0o750);
    await utimes(path.join(sandbox, "project", "run.sh"), new Date("2002-01-01Z"), new Date("2002-01-01Z"));
    await writeFile(path.join(sandbox, "hello.txt"), "hello");
  });

  it("merges a directory's contents into DEST, keeping modes (minus setuid), mtimes, links", async () => {
    const dest = path.join(work, "dest");
    await mkdir(dest);
    await writeFile(path.join(dest, "mine.txt"), "kept");
    const result = await download(path.join(sandbox, "project"), dest, "dir");
    expect(result).toEqual({ files: 4, bytes: 10 + 1 + 4, path: dest });
    expect(readdirSync(dest).sort()).toEqual([
      "dangling",
      "hard",
      "link",
      "mine.txt",
      "run.sh",
      "setuid",
      "sub",
    ]);
    expect(readFileSync(path.join(dest, "sub", "deep", "a.txt"), "utf8")).toBe("deep");
    expect(statSync(path.join(dest, "run.sh")).mode & 0o7777).toBe(0o755);
    expect(statSync(path.join(dest, "setuid")).mode & 0o7777).toBe(0o755);
    expect(statSync(path.join(dest, "sub")).mode & 0o7777).toBe(0o750);
    expect(statSync(path.join(dest, "run.sh")).mtime.toISOString()).toBe("2002-01-01T00:00:00.000Z");
    expect(readlinkSync(path.join(dest, "link"))).toBe("sub/deep/a.txt");
    expect(readlinkSync(path.join(dest, "dangling"))).toBe("nowhere");
    expect(statSync(path.join(dest, "hard")).ino).toBe(statSync(path.join(dest, "sub", "deep", "a.txt")).ino);
  });

  it("creates a missing DEST and refuses a DEST that is a file", async () => {
    const dest = path.join(work, "new", "dest");
    await download(path.join(sandbox, "project"), dest, "dir");
    expect(existsSync(path.join(dest, "run.sh"))).toBe(true);

    const file = path.join(work, "plain-file");
    await writeFile(file, "x");
    const project = path.join(sandbox, "project");
    await expect(download(project, file, "dir")).rejects.toThrow(
      `cannot extract directory '${project}' over non-directory destination '${file}'`,
    );
  });

  it("places a file per upstream's target rules, atomically", async () => {
    const source = path.join(sandbox, "hello.txt");
    const dir = path.join(work, "out");
    await mkdir(dir);

    expect((await download(source, dir, "file")).path).toBe(path.join(dir, "hello.txt"));
    expect(readFileSync(path.join(dir, "hello.txt"), "utf8")).toBe("hello");

    await download(source, path.join(work, "fresh") + "/", "file");
    expect(readFileSync(path.join(work, "fresh", "hello.txt"), "utf8")).toBe("hello");

    writeFileSync(path.join(dir, "renamed.txt"), "old contents");
    await download(source, path.join(dir, "renamed.txt"), "file");
    expect(readFileSync(path.join(dir, "renamed.txt"), "utf8")).toBe("hello");

    expect(readdirSync(dir).filter((n) => n.startsWith(".openshell-download-"))).toEqual([]);
  });

  it("never replaces a directory with a downloaded file", async () => {
    const source = path.join(sandbox, "hello.txt");
    const dir = path.join(work, "out");
    await mkdir(path.join(dir, "hello.txt"), { recursive: true });
    await expect(download(source, `${dir}/`, "file")).rejects.toThrow(
      `cannot overwrite directory '${path.join(dir, "hello.txt")}' with downloaded file`,
    );
    expect(lstatSync(path.join(dir, "hello.txt")).isDirectory()).toBe(true);
  });
});

type CraftedEntry = {
  name: string;
  type?: "file" | "directory" | "symlink" | "link" | "fifo" | "character-device";
  linkname?: string;
  body?: string;
  mode?: number;
};

/** A hostile archive, built entry by entry. */
async function crafted(entries: CraftedEntry[]): Promise<Readable> {
  const pack = tarStream.pack();
  for (const e of entries) {
    const type = e.type ?? "file";
    const header = {
      name: e.name,
      type,
      mode: e.mode ?? 0o644,
      ...(e.linkname === undefined ? {} : { linkname: e.linkname }),
    };
    if (type === "file") pack.entry(header, e.body ?? "evil");
    else pack.entry(header);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack as AsyncIterable<Buffer>) chunks.push(chunk);
  return Readable.from([Buffer.concat(chunks)]);
}

describe("extractDownload refuses a hostile archive", () => {
  let outside: string;
  let dest: string;

  beforeEach(async () => {
    // DEST sits two levels down so `../evil` and `../../etc` would land in `outside`.
    outside = path.join(work, "outside");
    dest = path.join(outside, "inner", "dest");
    await mkdir(dest, { recursive: true });
  });

  function everythingUnder(dir: string): string[] {
    return execFileSync("find", [dir], { encoding: "utf8" }).trim().split("\n").sort();
  }

  it.each<[string, CraftedEntry[], string]>([
    [
      "a `..` component",
      [{ name: "p/../../evil" }],
      "refusing downloaded archive entry 'p/../../evil': path contains '..'",
    ],
    [
      "a bare `..` name",
      [{ name: "../evil" }],
      "refusing downloaded archive entry '../evil': path contains '..'",
    ],
    ["an absolute name", [{ name: "/abs" }], "refusing downloaded archive entry '/abs': absolute path"],
    [
      "a name outside the download",
      [{ name: "other/x" }],
      "refusing downloaded archive entry 'other/x': not inside 'p'",
    ],
    [
      "a symlink out, then a write through it",
      [
        { name: "p/link", type: "symlink", linkname: "../../etc" },
        { name: "p/link/x", body: "through the link" },
      ],
      "refusing downloaded archive entry 'p/link': symlink to '../../etc' leads outside the destination",
    ],
    [
      "an absolute symlink",
      [{ name: "p/link", type: "symlink", linkname: "/etc" }],
      "refusing downloaded archive entry 'p/link': symlink to '/etc' leads outside the destination",
    ],
    [
      "a symlink chain that escapes through another symlink",
      [
        { name: "p/d", type: "directory" },
        { name: "p/d/b", type: "symlink", linkname: ".." },
        { name: "p/a", type: "symlink", linkname: "d/b/.." },
      ],
      "refusing downloaded archive entry 'p/a': symlink to 'd/b/..' leads outside the destination",
    ],
    [
      "a write through a symlink that stays inside",
      [
        { name: "p/sub", type: "directory" },
        { name: "p/inner", type: "symlink", linkname: "sub" },
        { name: "p/inner/x" },
      ],
      "refusing downloaded archive entry 'p/inner/x': it would be written through the symlink 'inner'",
    ],
    [
      "a hard link to /etc/passwd",
      [{ name: "p/pw", type: "link", linkname: "/etc/passwd" }],
      "refusing downloaded archive entry 'p/pw': hard link to '/etc/passwd' outside the destination",
    ],
    [
      "a hard link to a symlink",
      [
        { name: "p/s", type: "symlink", linkname: "x" },
        { name: "p/h", type: "link", linkname: "p/s" },
      ],
      "refusing downloaded archive entry 'p/h': hard link to 'p/s' is not to a regular file extracted before it",
    ],
    [
      "a FIFO",
      [{ name: "p/fifo", type: "fifo" }],
      "refusing downloaded archive entry 'p/fifo': fifo entries are not extracted",
    ],
    [
      "a device",
      [{ name: "p/dev", type: "character-device" }],
      "refusing downloaded archive entry 'p/dev': character-device entries are not extracted",
    ],
  ])("%s", async (_, entries, message) => {
    const before = everythingUnder(work);
    await expect(extractDownload(await crafted(entries), dest, { kind: "dir", name: "p" })).rejects.toThrow(
      message,
    );
    const after = everythingUnder(work).filter((p) => !p.startsWith(`${dest}/`));
    expect(after).toEqual(before);
    expect(existsSync(path.join(dest, "link"))).toBe(false);
  });

  it("writes nothing at all for the combined attack, not even the entry accepted before the refused one", async () => {
    const archive = await crafted([
      { name: "p/ok.txt", body: "fine" },
      { name: "p/link", type: "symlink", linkname: "../../etc" },
      { name: "p/link/x" },
      { name: "../evil" },
      { name: "/abs" },
      { name: "p/pw", type: "link", linkname: "/etc/passwd" },
    ]);
    const before = everythingUnder(work);
    await expect(extractDownload(archive, dest, { kind: "dir", name: "p" })).rejects.toThrow(
      /refusing downloaded archive entry/,
    );
    expect(everythingUnder(work).filter((p) => !p.startsWith(`${dest}/`))).toEqual(before);
    expect(existsSync(path.join(outside, "evil"))).toBe(false);
    expect(readdirSync(dest)).toEqual([]);
  });

  it("leaves an existing DEST exactly as it was when the third of 3 entries is refused", async () => {
    await writeFile(path.join(dest, "mine.txt"), "the user's file");
    await mkdir(path.join(dest, "sub"));
    const before = everythingUnder(work);
    const archive = await crafted([
      { name: "p/mine.txt", body: "would replace the user's file" },
      { name: "p/sub/new.txt", body: "would be added" },
      { name: "p/\x1b]0;pwned\x07", type: "symlink", linkname: "/etc/passwd" },
    ]);
    await expect(extractDownload(archive, dest, { kind: "dir", name: "p" })).rejects.toThrow(
      "refusing downloaded archive entry 'p/\\x1b]0;pwned\\x07': symlink to '/etc/passwd' leads outside the destination",
    );
    expect(everythingUnder(work)).toEqual(before);
    expect(readFileSync(path.join(dest, "mine.txt"), "utf8")).toBe("the user's file");
  });

  it("creates neither DEST nor its missing parents when a download into them is refused", async () => {
    const fresh = path.join(outside, "new-parent", "deeper", "dest");
    const before = everythingUnder(work);
    const archive = await crafted([
      { name: "p/ok.txt", body: "fine" },
      { name: "p/link", type: "symlink", linkname: "../../../etc" },
    ]);
    await expect(extractDownload(archive, fresh, { kind: "dir", name: "p" })).rejects.toThrow(
      "refusing downloaded archive entry 'p/link'",
    );
    expect(everythingUnder(work)).toEqual(before);
  });

  it("merges into an existing DEST: keeps its other files, replaces a file, fills an existing subdirectory, applies a read-only directory's mode last", async () => {
    await writeFile(path.join(dest, "keep.txt"), "kept");
    await writeFile(path.join(dest, "f.txt"), "old");
    await mkdir(path.join(dest, "sub"));
    await writeFile(path.join(dest, "sub", "old.txt"), "old sub");
    const archive = await crafted([
      { name: "p/f.txt", body: "new" },
      { name: "p/sub/new.txt", body: "new sub" },
      // The read-only mode arrives with the directory's entry, before its child.
      { name: "p/ro/", type: "directory", mode: 0o555 },
      { name: "p/ro/inside.txt", body: "in a read-only dir" },
    ]);
    const result = await extractDownload(archive, dest, { kind: "dir", name: "p" });
    expect(result.files).toBe(3);
    expect(readdirSync(dest).sort()).toEqual(["f.txt", "keep.txt", "ro", "sub"]);
    expect(readFileSync(path.join(dest, "keep.txt"), "utf8")).toBe("kept");
    expect(readFileSync(path.join(dest, "f.txt"), "utf8")).toBe("new");
    expect(readdirSync(path.join(dest, "sub")).sort()).toEqual(["new.txt", "old.txt"]);
    expect(readFileSync(path.join(dest, "ro", "inside.txt"), "utf8")).toBe("in a read-only dir");
    expect(statSync(path.join(dest, "ro")).mode & 0o777).toBe(0o555);
  });

  it("does not follow a symlink already in DEST", async () => {
    const elsewhere = path.join(work, "elsewhere");
    await mkdir(elsewhere);
    symlinkSync(elsewhere, path.join(dest, "pre"));
    const archive = await crafted([{ name: "p/pre/x", body: "through the user's link" }]);
    await expect(extractDownload(archive, dest, { kind: "dir", name: "p" })).rejects.toThrow(
      "refusing downloaded archive entry 'p/pre/x': 'pre' is a symlink in the destination",
    );
    expect(readdirSync(elsewhere)).toEqual([]);
  });

  it("replaces, never writes into, an existing symlink at a file's path", async () => {
    const victim = path.join(work, "victim.txt");
    await writeFile(victim, "untouched");
    symlinkSync(victim, path.join(dest, "f"));
    await extractDownload(await crafted([{ name: "p/f", body: "new" }]), dest, { kind: "dir", name: "p" });
    expect(readFileSync(victim, "utf8")).toBe("untouched");
    expect(lstatSync(path.join(dest, "f")).isFile()).toBe(true);
    expect(readFileSync(path.join(dest, "f"), "utf8")).toBe("new");
  });

  it("refuses a hard link to a file that was in DEST before", async () => {
    await writeFile(path.join(dest, "mine"), "the user's file");
    const archive = await crafted([{ name: "p/h", type: "link", linkname: "p/mine" }]);
    await expect(extractDownload(archive, dest, { kind: "dir", name: "p" })).rejects.toThrow(
      "refusing downloaded archive entry 'p/h': hard link to 'p/mine' is not to a regular file extracted before it",
    );
    expect(readdirSync(dest)).toEqual(["mine"]);
  });

  it("accepts a hard link and a symlink that stay inside", async () => {
    const archive = await crafted([
      { name: "p/", type: "directory" },
      { name: "p/a", body: "aaa" },
      { name: "p/h", type: "link", linkname: "p/a" },
      { name: "p/s", type: "symlink", linkname: "a" },
    ]);
    const result = await extractDownload(archive, dest, { kind: "dir", name: "p" });
    expect(result.files).toBe(2);
    expect(statSync(path.join(dest, "h")).ino).toBe(statSync(path.join(dest, "a")).ino);
    expect(readlinkSync(path.join(dest, "s"))).toBe("a");
  });

  it("refuses a single-file download that is not a regular file, leaving no staging behind", async () => {
    const out = path.join(work, "out");
    await mkdir(out);
    const archive = await crafted([{ name: "hello.txt", type: "symlink", linkname: "/etc/passwd" }]);
    await expect(extractDownload(archive, `${out}/`, { kind: "file", name: "hello.txt" })).rejects.toThrow(
      "downloaded entry 'hello.txt' is not a regular file",
    );
    expect(readdirSync(out)).toEqual([]);

    const extra = await crafted([{ name: "hello.txt" }, { name: "hello.txt/../../x" }]);
    await expect(extractDownload(extra, `${out}/`, { kind: "file", name: "hello.txt" })).rejects.toThrow(
      "path contains '..'",
    );
    expect(readdirSync(out)).toEqual([]);
    expect(existsSync(path.join(work, "x"))).toBe(false);
  });
});
