// File trees for transfer tests: build a project of random files on this
// machine, and describe a tree (type, mode, sha256 or link target of every
// entry) either here or inside a sandbox, so the two can be compared whole.

import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { expect } from "vitest";
import type { RunResult, TestEnv } from "./cli.js";

export interface TreeEntry {
  type: "f" | "d" | "l";
  /** Permission bits; undefined for symlinks. */
  mode: number | undefined;
  /** sha256 of a file's content, a symlink's target; "" for directories. */
  content: string;
}

export type Tree = Map<string, TreeEntry>;

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

export function writeFile(path: string, data: Buffer | string, mode = 0o644): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, data);
  chmodSync(path, mode);
}

/** Every entry under `root` (not `root` itself), by `/`-separated relative path. */
export function localTree(root: string, options: { skip?: (rel: string) => boolean } = {}): Tree {
  const tree: Tree = new Map();
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel))) {
      const childRel = rel === "" ? name : `${rel}/${name}`;
      if (options.skip?.(childRel)) continue;
      const path = join(root, childRel);
      const stat = lstatSync(path);
      if (stat.isSymbolicLink()) {
        tree.set(childRel, { type: "l", mode: undefined, content: readlinkSync(path) });
      } else if (stat.isDirectory()) {
        tree.set(childRel, { type: "d", mode: stat.mode & 0o7777, content: "" });
        walk(childRel);
      } else {
        tree.set(childRel, { type: "f", mode: stat.mode & 0o7777, content: sha256(readFileSync(path)) });
      }
    }
  };
  walk("");
  return tree;
}

/**
 * The same description computed inside the sandbox, with its own tools
 * (`find`, `sha256sum`, `readlink`) through `sandbox exec`. Names are
 * NUL-separated so spaces and non-ASCII names come back exactly.
 */
export async function sandboxTree(env: TestEnv, sandbox: string, root: string): Promise<Tree> {
  const script = [
    'cd "$1" || exit 1',
    // type, mode and name of every entry
    "find . -mindepth 1 -printf '%y %m %P\\0'",
    "printf '\\0--sums--\\0'",
    // sha256 and name of every regular file, NUL-terminated lines (-z)
    "find . -mindepth 1 -type f -print0 | xargs -0 -r sha256sum -z",
    "printf '\\0--links--\\0'",
    "find . -mindepth 1 -type l -printf '%P\\0%l\\0'",
  ].join("; ");
  const result = await env.run(["sandbox", "exec", "-n", sandbox, "--", "sh", "-c", script, "sh", root], {
    timeoutMs: 60_000,
  });
  expect(result.code, `describing ${root} in the sandbox: ${result.stderr}`).toBe(0);
  const [listing = "", sums = "", links = ""] = result.stdout.split(/\0--(?:sums|links)--\0/);
  const tree: Tree = new Map();
  for (const record of listing.split("\0").filter((r) => r !== "")) {
    const match = /^(\S) (\d+) (.*)$/s.exec(record);
    if (!match) throw new Error(`unexpected find output: ${JSON.stringify(record)}`);
    const type = match[1] === "d" ? "d" : match[1] === "l" ? "l" : "f";
    tree.set(match[3]!, {
      type,
      mode: type === "l" ? undefined : Number.parseInt(match[2]!, 8),
      content: "",
    });
  }
  for (const record of sums.split("\0").filter((r) => r !== "")) {
    const match = /^([0-9a-f]{64}) {2}\.\/(.*)$/s.exec(record);
    if (!match) throw new Error(`unexpected sha256sum output: ${JSON.stringify(record)}`);
    const entry = tree.get(match[2]!);
    if (entry) entry.content = match[1]!;
  }
  const parts = links.split("\0");
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const entry = tree.get(parts[i]!);
    if (entry) entry.content = parts[i + 1]!;
  }
  return tree;
}

/** Sorted `[path, entry]` pairs, for readable diffs in assertions. */
export function entries(tree: Tree): Array<[string, TreeEntry]> {
  return [...tree].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

export function fileCount(tree: Tree): number {
  return [...tree.values()].filter((e) => e.type === "f").length;
}

export function fileBytes(root: string, tree: Tree): number {
  let total = 0;
  for (const [rel, entry] of tree) if (entry.type === "f") total += lstatSync(join(root, rel)).size;
  return total;
}

export function megabytes(bytes: number): string {
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

/** Random file contents of random sizes, deterministic in count: `count` files under `dir`. */
export function randomFiles(dir: string, count: number, maxBytes = 48 * 1024): void {
  for (let i = 0; i < count; i++) {
    const sub = `d${i % 7}${i % 3 === 0 ? `/deep${i % 4}` : ""}`;
    const size = randomBytes(2).readUInt16BE() % maxBytes;
    writeFile(
      join(dir, sub, `f${String(i).padStart(3, "0")}.bin`),
      randomBytes(size),
      i % 10 === 0 ? 0o600 : 0o644,
    );
  }
}

export function git(cwd: string, ...args: string[]): string {
  return execFileSync(
    "git",
    [
      "-c",
      "user.name=openshell-test",
      "-c",
      "user.email=test@openshell.invalid",
      "-c",
      "init.defaultBranch=main",
      ...args,
    ],
    { cwd, encoding: "utf8", env: { PATH: process.env.PATH, HOME: cwd, GIT_CONFIG_NOSYSTEM: "1" } },
  );
}

export function symlink(target: string, path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  symlinkSync(target, path);
}

/** One-line summary of a failed CLI run, for assertion messages. */
export function describeRun(result: RunResult): string {
  return `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;
}
