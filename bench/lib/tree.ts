// Test data for the transfer and file-injection sections: a tree of random
// files, and a check that a copy of it is byte-identical on a sample.

import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface GeneratedTree {
  dir: string;
  totalBytes: number;
  fileCount: number;
  /** Relative paths checked after each copy: some large files and some small ones. */
  sample: string[];
}

/** `big` files of `bigBytes` random bytes plus `small` files of 64 B to 8 KiB in 20 folders. */
export function generateTree(dir: string, big: number, bigBytes: number, small: number): GeneratedTree {
  mkdirSync(join(dir, "big"), { recursive: true });
  let totalBytes = 0;
  const sample: string[] = [];
  for (let i = 0; i < big; i++) {
    const path = `big/blob-${String(i).padStart(2, "0")}.bin`;
    writeFileSync(join(dir, path), randomBytes(bigBytes));
    totalBytes += bigBytes;
    if (i % 8 === 0) sample.push(path);
  }
  for (let i = 0; i < small; i++) {
    const folder = `small/d${String(i % 20).padStart(2, "0")}`;
    if (i < 20) mkdirSync(join(dir, folder), { recursive: true });
    const path = `${folder}/f-${String(i).padStart(4, "0")}.txt`;
    const size = 64 + ((i * 7919) % 8129);
    writeFileSync(join(dir, path), randomBytes(size));
    totalBytes += size;
    if (i % 50 === 0) sample.push(path);
  }
  return { dir, totalBytes, fileCount: big + small, sample };
}

export function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Fails naming the first sampled file that differs or is missing in `copy`. */
export function verifySample(tree: GeneratedTree, copy: string, what: string): void {
  for (const path of tree.sample) {
    let digest: string;
    try {
      digest = sha256File(join(copy, path));
    } catch {
      throw new Error(`${what}: ${path} is missing from ${copy}`);
    }
    if (digest !== sha256File(join(tree.dir, path)))
      throw new Error(`${what}: ${path} differs from the original`);
  }
}
