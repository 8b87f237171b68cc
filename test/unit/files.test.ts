import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OpenShellError } from "../../src/core/errors.js";
import {
  DEFAULT_FILE_MODE,
  describeFile,
  effectiveMode,
  FILE_LIMITS,
  type FileSpec,
  formatBytes,
  modeWarnings,
  normalizeSandboxPath,
  parseFileFlag,
  RESERVED_ROOTS,
  sha256Hex,
  sha256HexEach,
  validateMode,
  validateSandboxFiles,
  validateSandboxPath,
} from "../../src/core/files.js";
import type { SandboxFile } from "../../src/gen/openshell.js";
import { checkFileSpecs, readFileContents } from "../../src/host/local-files.js";

/** What `sandbox create` does with its `--file` specs: check them, read each into a buffer, hash it. */
async function readFileSpecs(specs: readonly FileSpec[]): Promise<SandboxFile[]> {
  const sizes = checkFileSpecs(specs);
  const contents = sizes.map((size) => Buffer.allocUnsafe(size));
  await readFileContents(specs, contents);
  const digests = await sha256HexEach(contents);
  return specs.map((spec, i) => ({
    path: normalizeSandboxPath(spec.remote) ?? spec.remote,
    content: contents[i]!,
    mode: spec.mode,
    size: sizes[i]!,
    sha256: digests[i]!,
  }));
}

function parseError(raw: string): OpenShellError {
  try {
    parseFileFlag(raw);
  } catch (error) {
    expect(error).toBeInstanceOf(OpenShellError);
    expect((error as OpenShellError).code).toBe("invalid_input");
    return error as OpenShellError;
  }
  throw new Error(`expected --file ${raw} to be refused`);
}

async function readError(specs: FileSpec[]): Promise<string> {
  const error = await readFileSpecs(specs).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OpenShellError);
  expect((error as OpenShellError).code).toBe("invalid_input");
  return (error as OpenShellError).message;
}

function wireFile(path: string, content: Buffer | string = "x", mode = 0): SandboxFile {
  return { path, content: Buffer.from(content), mode, size: 0, sha256: "" };
}

describe("parseFileFlag", () => {
  it("reads LOCAL:REMOTE with the default mode 0444", () => {
    expect(parseFileFlag("./cfg.yaml:/etc/app/cfg.yaml")).toEqual({
      raw: "./cfg.yaml:/etc/app/cfg.yaml",
      local: "./cfg.yaml",
      remote: "/etc/app/cfg.yaml",
      mode: 0o444,
    });
    expect(DEFAULT_FILE_MODE).toBe(0o444);
  });

  it("reads a wire mode of 0 as 0444 and keeps any other mode", () => {
    expect(effectiveMode(0)).toBe(0o444);
    expect(effectiveMode(0o555)).toBe(0o555);
    expect(effectiveMode(0o400)).toBe(0o400);
  });

  it("lets LOCAL contain ':' by splitting at the last ':/'", () => {
    expect(parseFileFlag("./a:b.txt:/etc/x")).toMatchObject({
      local: "./a:b.txt",
      remote: "/etc/x",
      mode: 0o444,
    });
    expect(parseFileFlag("./d:/x/f:/etc/y")).toMatchObject({ local: "./d:/x/f", remote: "/etc/y" });
  });

  it("takes a trailing :<digits> as the octal mode", () => {
    expect(parseFileFlag("./x:/etc/y:0555")).toMatchObject({ local: "./x", remote: "/etc/y", mode: 0o555 });
    expect(parseFileFlag("./x:/etc/y:444")).toMatchObject({ mode: 0o444 });
    expect(parseFileFlag("./a:b:/etc/y:0440")).toMatchObject({
      local: "./a:b",
      remote: "/etc/y",
      mode: 0o440,
    });
  });

  it("lets REMOTE contain ':' when no '/' follows it", () => {
    expect(parseFileFlag("./x:/etc/a:b")).toMatchObject({ local: "./x", remote: "/etc/a:b", mode: 0o444 });
  });

  it("refuses a relative or missing REMOTE", () => {
    const relative = parseError("./a:etc/x");
    expect(relative.message).toBe("--file ./a:etc/x: REMOTE must be an absolute path");
    expect(relative.hint).toMatch(/LOCAL:REMOTE\[:MODE\]/);
    expect(parseError("./a.txt").message).toBe("--file ./a.txt: REMOTE must be an absolute path");
    expect(parseError("./a.txt:0444").message).toBe("--file ./a.txt:0444: REMOTE must be an absolute path");
  });

  it("refuses an empty LOCAL", () => {
    expect(parseError(":/etc/x").message).toBe("--file :/etc/x: LOCAL is empty");
  });

  it("refuses a mode that is not octal", () => {
    expect(parseError("./a:/etc/x:999").message).toBe(
      "--file ./a:/etc/x:999: mode 999 is not octal (digits 0-7 only, e.g. 0444)",
    );
  });

  it("refuses setuid, setgid and sticky modes", () => {
    expect(parseError("./a:/etc/x:4755").message).toBe(
      "--file ./a:/etc/x:4755: mode must not set setuid, setgid or sticky bits (got 04755)",
    );
    expect(parseError("./a:/etc/x:2755").message).toMatch(/setgid/);
    expect(parseError("./a:/etc/x:1444").message).toMatch(/sticky/);
    expect(parseError("./a:/etc/x:77777").message).toBe(
      "--file ./a:/etc/x:77777: mode must be permission bits between 0 and 0777 (got 077777)",
    );
  });

  it("refuses an explicit mode 0, which the wire would read as 0444", () => {
    expect(parseError("./a:/etc/x:000").message).toBe(
      "--file ./a:/etc/x:000: mode 000 grants no access; use 0444 for read-only",
    );
  });

  it("refuses bad destinations, naming the flag", () => {
    expect(parseError("./a:/proc/self/x").message).toBe(
      "--file ./a:/proc/self/x: REMOTE must not be under /proc, which is reserved",
    );
    expect(parseError("./a:/etc/").message).toBe(
      "--file ./a:/etc/: REMOTE must name a file, not end with '/'",
    );
    expect(parseError("./a:/etc/../x").message).toBe(
      "--file ./a:/etc/../x: REMOTE must not contain '..' components",
    );
  });

  it("refuses the workspace root, the private /tmp root and the generated /etc/passwd and /etc/group, naming the fix", () => {
    expect(parseError("./a:/sandbox").message).toBe(
      "--file ./a:/sandbox: REMOTE is the sandbox's workspace directory; name a file inside it (e.g. /sandbox/app.conf)",
    );
    expect(parseError("./a://tmp").message).toBe(
      "--file ./a://tmp: REMOTE is the sandbox's private /tmp directory; name a file inside it (e.g. /tmp/app.conf)",
    );
    for (const generated of ["/etc/passwd", "/etc//group"]) {
      expect(parseError(`./a:${generated}`).message).toBe(
        `--file ./a:${generated}: REMOTE is generated by the supervisor for the sandbox user; inject the file elsewhere`,
      );
    }
    expect(validateSandboxPath("/sandbox/app.conf")).toBeUndefined();
    expect(validateSandboxPath("/tmp/x")).toBeUndefined();
    expect(validateSandboxPath("/etc/passwd.d")).toBeUndefined();
  });
});

describe("validateSandboxPath", () => {
  it("accepts ordinary absolute file paths", () => {
    for (const path of [
      "/etc/app/cfg.yaml",
      "/sandbox/a",
      "/a",
      "/etc//a",
      "/etc/./a",
      "/etc/a:b",
      "/procfs/x",
    ]) {
      expect(validateSandboxPath(path), path).toBeUndefined();
    }
  });

  it("refuses what the supervisor must never write", () => {
    expect(validateSandboxPath("etc/a")).toBe("must be absolute");
    expect(validateSandboxPath("")).toBe("must be absolute");
    expect(validateSandboxPath("/etc/../a")).toBe("must not contain '..' components");
    expect(validateSandboxPath("/etc/a\0")).toBe("must not contain NUL bytes");
    expect(validateSandboxPath("/")).toBe("must not be /");
    expect(validateSandboxPath("//")).toBe("must not be /");
    expect(validateSandboxPath("/.")).toBe("must not be /");
    expect(validateSandboxPath("/etc/a/")).toBe("must name a file, not end with '/'");
    expect(validateSandboxPath("/etc/a/.")).toBe("must name a file, not end with '/'");
    expect(validateSandboxPath(`/${"c".repeat(256)}`)).toBe("has a component longer than 255 bytes");
  });

  it("allows 4096 bytes and refuses 4097", () => {
    const at = `/${Array(16).fill("d".repeat(255)).join("/")}`.slice(0, 4096);
    expect(Buffer.byteLength(at)).toBe(4096);
    expect(validateSandboxPath(at)).toBeUndefined();
    expect(validateSandboxPath(`${at}x`)).toBe("exceeds 4096 bytes (4097)");
  });

  it("refuses every reserved root and anything under it, but not look-alikes", () => {
    expect(RESERVED_ROOTS).toEqual(
      expect.arrayContaining([
        "/proc",
        "/sys",
        "/dev",
        "/run/openshell",
        "/opt/openshell",
        "/etc/openshell",
        "/etc/openshell-tls",
        "/run/openshell-sidecar",
        "/run/netns",
        "/var/run/netns",
      ]),
    );
    for (const root of RESERVED_ROOTS) {
      expect(validateSandboxPath(root)).toBe(`must not be under ${root}, which is reserved`);
      expect(validateSandboxPath(`${root}/x`)).toBe(`must not be under ${root}, which is reserved`);
      expect(validateSandboxPath(`/${root}//./x`)).toBe(`must not be under ${root}, which is reserved`);
    }
    expect(validateSandboxPath("/etc/openshell.conf")).toBeUndefined();
    expect(validateSandboxPath("/device")).toBeUndefined();
  });
});

describe("normalizeSandboxPath", () => {
  it("collapses '//' and drops '.'", () => {
    expect(normalizeSandboxPath("/etc//a")).toBe("/etc/a");
    expect(normalizeSandboxPath("/etc/./a/")).toBe("/etc/a");
    expect(normalizeSandboxPath("//")).toBe("/");
  });

  // Paths made of the components that matter to the contract: empty ones
  // (`//`), `.`, `..`, NUL, and ordinary names, with or without a leading `/`.
  const component = fc.constantFrom("", ".", "..", "a", "b c", "...", ".x", "x.", "\0", "é", "..a");
  const anyPath = fc
    .tuple(fc.boolean(), fc.array(component, { maxLength: 8 }))
    .map(([absolute, parts]) => (absolute ? "/" : "") + parts.join("/"));

  it("returns an absolute normal path, or undefined exactly for relative, NUL or '..' paths", () => {
    fc.assert(
      fc.property(anyPath, (path) => {
        const normal = normalizeSandboxPath(path);
        const refused = !path.startsWith("/") || path.includes("\0") || path.split("/").includes("..");
        expect(normal === undefined).toBe(refused);
        if (normal === undefined) return;
        expect(normal.startsWith("/")).toBe(true);
        expect(normal === "/" || !normal.endsWith("/")).toBe(true);
        expect(normal.includes("//")).toBe(false);
        expect(normal.split("/").slice(1)).not.toContain(".");
        expect(normal.split("/").slice(1)).not.toContain("..");
        // The same components, in the same order, as the path given.
        expect(normal.split("/").filter(Boolean)).toEqual(
          path.split("/").filter((p) => p !== "" && p !== "."),
        );
      }),
      { numRuns: 2000 },
    );
  });

  it("is idempotent and agrees with posix.normalize on the paths it accepts", () => {
    fc.assert(
      fc.property(anyPath, (path) => {
        const normal = normalizeSandboxPath(path);
        if (normal === undefined) return;
        expect(normalizeSandboxPath(normal)).toBe(normal);
        const posixNormal = posix.normalize(path);
        expect(normal).toBe(posixNormal.length > 1 ? posixNormal.replace(/\/$/, "") : posixNormal);
      }),
      { numRuns: 2000 },
    );
  });

  it("accepts as a destination only paths that normalize, and keeps them valid once normalized", () => {
    fc.assert(
      fc.property(anyPath, (path) => {
        if (validateSandboxPath(path) !== undefined) return;
        const normal = normalizeSandboxPath(path);
        expect(normal).toBeDefined();
        expect(normal).not.toBe("/");
        expect(validateSandboxPath(normal!)).toBeUndefined();
      }),
      { numRuns: 2000 },
    );
  });
});

describe("validateMode and modeWarnings", () => {
  it("accepts plain permission bits", () => {
    for (const mode of [0o444, 0o400, 0o555, 0o644, 0o777, 0]) expect(validateMode(mode)).toBeUndefined();
  });

  it("refuses special bits and out-of-range values", () => {
    expect(validateMode(0o4755)).toBe("must not set setuid, setgid or sticky bits (got 04755)");
    expect(validateMode(0o2444)).toBe("must not set setuid, setgid or sticky bits (got 02444)");
    expect(validateMode(0o1444)).toBe("must not set setuid, setgid or sticky bits (got 01444)");
    expect(validateMode(0o10000)).toMatch(/^must be permission bits between 0 and 0777/);
    expect(validateMode(-1)).toMatch(/^must be permission bits/);
  });

  it("warns when the sandbox user cannot read the file", () => {
    const warnings = modeWarnings(0o440);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      /^mode 0440 leaves the sandbox user unable to read the file: it is owned by root/,
    );
  });

  it("warns that write bits have no effect", () => {
    expect(modeWarnings(0o644)).toEqual([
      "mode 0644 has write bits, which have no effect: injected files are read-only",
    ]);
    expect(modeWarnings(0o600)).toHaveLength(2);
  });

  it("has nothing to say about read-only modes", () => {
    expect(modeWarnings(0o444)).toEqual([]);
    expect(modeWarnings(0o555)).toEqual([]);
    expect(modeWarnings(0)).toEqual([]);
  });
});

describe("formatBytes", () => {
  it("uses binary units with one decimal", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1024)).toBe("1 KiB");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(1_048_576)).toBe("1 MiB");
    expect(formatBytes(1_363_149)).toBe("1.3 MiB");
    expect(formatBytes(1_048_575)).toBe("1 MiB");
    expect(formatBytes(10_485_760)).toBe("10 MiB");
  });
});

describe("readFileSpecs", () => {
  let dir: string;
  const spec = (local: string, remote: string, mode = ""): FileSpec =>
    parseFileFlag(`${join(dir, local)}:${remote}${mode}`);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "openshell-files-"));
    await writeFile(join(dir, "cfg.yaml"), "key: value\n");
    await writeFile(join(dir, "at-limit"), Buffer.alloc(FILE_LIMITS.perFile, 1));
    await writeFile(join(dir, "over-limit"), Buffer.alloc(FILE_LIMITS.perFile + 1, 1));
    await writeFile(join(dir, "big"), Buffer.alloc(1_363_149, 1));
    await writeFile(join(dir, "a:b.txt"), "colon");
    await mkdir(join(dir, "subdir"));
    await symlink(join(dir, "cfg.yaml"), join(dir, "link"));
    await symlink(join(dir, "nowhere"), join(dir, "dangling"));
    await mkdir(join(dir, "many"));
    const each = FILE_LIMITS.total / FILE_LIMITS.count;
    for (let i = 0; i < FILE_LIMITS.count; i++) {
      await writeFile(join(dir, "many", String(i)), Buffer.alloc(each, i % 251));
    }
    await writeFile(join(dir, "many", "plus-one"), Buffer.alloc(each + 1, 7));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads content, mode, size and digest", async () => {
    const [file] = await readFileSpecs([spec("cfg.yaml", "/etc/app//cfg.yaml", ":0440")]);
    expect(file).toEqual({
      path: "/etc/app/cfg.yaml",
      content: Buffer.from("key: value\n"),
      mode: 0o440,
      size: 11,
      // `printf 'key: value\n' | sha256sum`
      sha256: "0ddd3d77338ca222ab064e214bbec3a4547e9d33801912eaacc7b4b4e27e1a91",
    });
    expect(describeFile(file!)).toBe("/etc/app/cfg.yaml (0440, 11 B, sha256 0ddd3d77338c…)");
  });

  it("reads into the slots it is given, and refuses a file that grew or shrank since its check", async () => {
    const path = join(dir, "changing");
    await writeFile(path, "12345");
    const specs = [spec("changing", "/etc/x"), spec("cfg.yaml", "/etc/y")];
    const sizes = checkFileSpecs(specs);
    expect(sizes).toEqual([5, 11]);
    const slots = sizes.map((size) => Buffer.alloc(size));
    await readFileContents(specs, slots);
    expect(slots.map((slot) => slot.toString())).toEqual(["12345", "key: value\n"]);
    expect(await sha256HexEach(slots)).toEqual([
      sha256Hex(Buffer.from("12345")),
      sha256Hex(Buffer.from("key: value\n")),
    ]);
    for (const content of ["123456", "1234"]) {
      await writeFile(path, content);
      const error = await readFileContents(specs, slots).catch((e: unknown) => e);
      expect((error as OpenShellError).message).toBe(
        `--file ${specs[0]!.raw}: ${path} changed while it was being read`,
      );
    }
  });

  it("reads a LOCAL whose name contains ':'", async () => {
    const [file] = await readFileSpecs([spec("a:b.txt", "/etc/x")]);
    expect(file!.content.toString()).toBe("colon");
  });

  it("follows a symlinked LOCAL", async () => {
    const [file] = await readFileSpecs([spec("link", "/etc/x")]);
    expect(file!.content.toString()).toBe("key: value\n");
  });

  it("accepts a file of exactly 1 MiB and refuses one byte more", async () => {
    const [file] = await readFileSpecs([spec("at-limit", "/etc/x")]);
    expect(file!.size).toBe(1_048_576);
    const over = spec("over-limit", "/etc/x");
    expect(await readError([over])).toBe(
      `--file ${over.raw}: 1048577 bytes exceeds the 1 MiB per-file limit`,
    );
  });

  it("words a larger file in MiB", async () => {
    const big = spec("big", "/etc/a");
    expect(await readError([big])).toBe(`--file ${big.raw}: 1.3 MiB exceeds the 1 MiB per-file limit`);
  });

  it("accepts 256 files totalling exactly 10 MiB and refuses 10 MiB + 1", async () => {
    const specs = Array.from({ length: 256 }, (_, i) => spec(join("many", String(i)), `/etc/f${i}`));
    const files = await readFileSpecs(specs);
    expect(files).toHaveLength(256);
    expect(files.reduce((sum, f) => sum + f.size, 0)).toBe(10_485_760);

    specs[255] = spec(join("many", "plus-one"), "/etc/f255");
    expect(await readError(specs)).toBe(
      "--file: all files together total 10485761 bytes, over the 10 MiB limit",
    );
  });

  it("refuses a 257th file", async () => {
    const specs = Array.from({ length: 257 }, (_, i) => spec("cfg.yaml", `/etc/f${i}`));
    expect(await readError(specs)).toBe("--file: at most 256 files can be injected (got 257)");
  });

  it("refuses a directory, pointing to --upload", async () => {
    const s = spec("subdir", "/etc/x");
    expect(await readError([s])).toBe(
      `--file ${s.raw}: ${join(dir, "subdir")} is a directory; use --upload for directories`,
    );
  });

  it("refuses a missing LOCAL, naming it", async () => {
    const s = spec("missing.txt", "/etc/x");
    expect(await readError([s])).toBe(`--file ${s.raw}: ${join(dir, "missing.txt")} does not exist`);
  });

  it("says when a symlinked LOCAL points nowhere", async () => {
    const s = spec("dangling", "/etc/x");
    expect(await readError([s])).toBe(
      `--file ${s.raw}: ${join(dir, "dangling")} is a symlink to a missing file`,
    );
  });

  it("refuses something that is not a regular file", async () => {
    const s = parseFileFlag("/dev/null:/etc/x");
    expect(await readError([s])).toBe("--file /dev/null:/etc/x: /dev/null is not a regular file");
  });

  it("refuses two files with the same destination after normalization", async () => {
    const first = spec("cfg.yaml", "/etc/a");
    const second = spec("link", "/etc//a");
    expect(await readError([first, second])).toBe(
      `--file ${second.raw}: REMOTE /etc/a is already the destination of --file ${first.raw}`,
    );
  });

  it("re-checks specs built without parseFileFlag", async () => {
    const local = join(dir, "cfg.yaml");
    expect(await readError([{ raw: "x", local, remote: "etc/a", mode: 0o444 }])).toBe(
      "--file x: REMOTE must be absolute",
    );
    expect(await readError([{ raw: "x", local, remote: "/etc/a", mode: 0o4444 }])).toBe(
      "--file x: mode must not set setuid, setgid or sticky bits (got 04444)",
    );
  });
});

describe("validateSandboxFiles", () => {
  it("accepts what readFileSpecs produces and mode 0 as 0444", () => {
    const content = Buffer.from("hello");
    expect(
      validateSandboxFiles([
        { path: "/etc/a", content, mode: 0o444, size: 5, sha256: sha256Hex(content) },
        wireFile("/etc/b", "x", 0),
        wireFile("/etc/c", Buffer.alloc(0)),
      ]),
    ).toBeUndefined();
  });

  it("names the index of a bad path or mode", () => {
    expect(validateSandboxFiles([wireFile("/a"), wireFile("/b"), wireFile("etc/x")])).toBe(
      "spec.files[2].path must be absolute",
    );
    expect(validateSandboxFiles([wireFile("/sys/x")])).toBe(
      "spec.files[0].path must not be under /sys, which is reserved",
    );
    expect(validateSandboxFiles([wireFile("/etc/x", "x", 0o4755)])).toBe(
      "spec.files[0].mode must not set setuid, setgid or sticky bits (got 04755)",
    );
  });

  it("enforces the per-file limit at exactly 1 MiB", () => {
    expect(validateSandboxFiles([wireFile("/a", Buffer.alloc(FILE_LIMITS.perFile))])).toBeUndefined();
    expect(validateSandboxFiles([wireFile("/a", Buffer.alloc(FILE_LIMITS.perFile + 1))])).toBe(
      "spec.files[0] exceeds the 1048576-byte per-file limit",
    );
  });

  it("enforces the total and the count", () => {
    const each = Buffer.alloc(FILE_LIMITS.total / FILE_LIMITS.count);
    const files = Array.from({ length: 256 }, (_, i) => wireFile(`/f${i}`, each));
    expect(validateSandboxFiles(files)).toBeUndefined();
    files[0] = wireFile("/f0", Buffer.alloc(each.length + 1));
    expect(validateSandboxFiles(files)).toBe(
      "spec.files: total size 10485761 exceeds the 10485760-byte limit",
    );
    expect(validateSandboxFiles(Array.from({ length: 257 }, (_, i) => wireFile(`/f${i}`)))).toBe(
      "spec.files: at most 256 files (got 257)",
    );
  });

  it("refuses duplicates after normalization", () => {
    expect(validateSandboxFiles([wireFile("/etc/a"), wireFile("/etc/b"), wireFile("/etc//./a")])).toBe(
      "spec.files[2].path /etc/a duplicates spec.files[0].path",
    );
  });

  it("refuses a size or digest that does not match the content", () => {
    expect(validateSandboxFiles([{ ...wireFile("/a", "abc"), size: 4 }])).toBe(
      "spec.files[0].size 4 does not match its content (3 bytes)",
    );
    expect(validateSandboxFiles([{ ...wireFile("/a", "abc"), sha256: sha256Hex(Buffer.from("abd")) }])).toBe(
      "spec.files[0].sha256 does not match its content",
    );
    expect(
      validateSandboxFiles([
        { ...wireFile("/a", "abc"), sha256: sha256Hex(Buffer.from("abc")).toUpperCase() },
      ]),
    ).toBeUndefined();
  });
});
