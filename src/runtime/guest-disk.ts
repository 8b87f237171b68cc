// A sandbox's own size-bounded filesystem: every path a pod may write (the
// workspace, /tmp, the policy's read_write paths, the agent's run directory)
// lives on it, never on the filesystem that holds the gateway's store.
//
// The attack: a sandbox writes until its space is full. When its writable
// paths were directories beside the gateway's SQLite store, that filled the
// store's filesystem too, and then every create, the delete of that very
// sandbox and the next gateway start failed with "database or disk is full".
//
// The design: each sandbox gets a sparse image file in its state directory,
// formatted ext4 on first start and loop-mounted (nodev, nosuid) by its root
// supervisor; the kernel refuses writes past its size with ENOSPC inside the
// sandbox, and nothing outside it notices. The image keeps the workspace
// across stops, restarts and gateway restarts, and goes with the sandbox's
// directory on delete. Formatting takes ~10 ms (the inode tables and the
// journal are initialised lazily, in the background, by the kernel), so no
// image is prepared ahead of need.
//
// Where the image is mounted matters. Every mount namespace created while a
// mount exists (each root pod starts from one, see launchPod) gets its own
// copy of it, and a copy keeps the loop device and the image's blocks alive
// after the host unmounts its own: deleting one sandbox would not free its
// space while any pod started after it still ran. So images are mounted
// under one shared tmpfs, DISKS_ROOT, and pods' namespaces are made its
// slaves: an unmount there reaches every copy. DISKS_ROOT is 0700 root, so a
// pod that is shown the host's /run still cannot reach another's disk; the
// pod's own disk is re-exposed to its uid like its state directory.
//
// A supervisor killed without its stop leaves its disk mounted; the next
// launch of that sandbox unmounts it first (lazily, should a leftover process
// still hold it), the gateway does on delete, and on start for sandboxes it
// no longer has (sweepGuestDisks).
//
// Only root can mount: a gateway run by an ordinary user keeps the
// sandboxes' directories on its own filesystem (see the README).

import { execFile } from "node:child_process";
import {
  closeSync,
  constants,
  existsSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { orElse } from "../host/fs.js";

const run = promisify(execFile);

/** Where root supervisors mount sandboxes' images, one directory per sandbox id. */
export const DISKS_ROOT = "/run/openshell/disks";

/** The image's name in the sandbox's state directory. */
export const GUEST_DISK_IMAGE = "disk.img";

/** The default size of a sandbox's filesystem. */
export const DEFAULT_GUEST_DISK_BYTES = 4 * 1024 ** 3;

/** The smallest image mkfs.ext4 makes with a journal and room to spare. */
export const MIN_GUEST_DISK_BYTES = 16 * 1024 ** 2;

const UNITS: Record<string, number> = {
  "": 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

/**
 * A size in bytes from `<digits>[unit]`, units binary and case-insensitive:
 * `4GiB`, `4g` and `4294967296` are the same size; `64MiB` or `64M` is
 * 67,108,864 bytes; `1.5G`, `-1` and `4GB` are refused (undefined).
 */
export function parseDiskSize(text: string): number | undefined {
  const match = /^(\d{1,16})\s*([a-z]*)$/i.exec(text.trim());
  if (!match) return undefined;
  const unit = UNITS[match[2]!.toLowerCase()];
  if (unit === undefined) return undefined;
  const bytes = Number(match[1]) * unit;
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

export function guestDiskMountPoint(sandboxId: string): string {
  return join(DISKS_ROOT, sandboxId);
}

interface MountEntry {
  id: number;
  target: string;
  source: string;
}

/** The mounts of this process's namespace; octal escapes in targets decoded. */
function mounts(): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-");
    if (fields.length < 10 || dash < 6) continue;
    entries.push({
      id: Number(fields[0]),
      target: fields[4]!.replace(/\\([0-7]{3})/g, (_, code: string) =>
        String.fromCharCode(parseInt(code, 8)),
      ),
      source: fields[dash + 2] ?? "",
    });
  }
  return entries;
}

/** The topmost mount at `path`, if any. */
function mountAt(path: string): MountEntry | undefined {
  return mounts()
    .filter((entry) => entry.target === path)
    .at(-1);
}

async function command(file: string, args: string[]): Promise<void> {
  try {
    await run(file, args, { encoding: "utf8" });
  } catch (error) {
    const stderr = String((error as { stderr?: string }).stderr ?? "").trim();
    throw new Error(`${file} ${args.join(" ")}: ${stderr || (error as Error).message}`);
  }
}

/** Mounts the shared tmpfs that holds every disk's mount point, once per boot. */
async function ensureDisksRoot(): Promise<void> {
  mkdirSync(DISKS_ROOT, { recursive: true, mode: 0o700 });
  if (mountAt(DISKS_ROOT)) return;
  await command("mount", [
    "-t",
    "tmpfs",
    "-o",
    "mode=0700,size=1m,nodev,nosuid,noexec",
    "openshell-disks",
    DISKS_ROOT,
  ]);
  await command("mount", ["--make-shared", DISKS_ROOT]);
}

/** Unmounts whatever is mounted at `path` (lazily when busy) and removes the directory. */
async function release(path: string): Promise<void> {
  while (mountAt(path)) {
    try {
      await command("umount", [path]);
    } catch {
      await command("umount", ["--lazy", path]);
    }
  }
  // Gone already, or not empty because it was never a mount point: left for delete.
  orElse(undefined, () => rmdirSync(path));
}

export interface GuestDisk {
  /** The filesystem's root on the host, where the pod's writable directories go. */
  root: string;
  /** Unmounts it, unless something has replaced it at its mount point since. */
  unmount(): Promise<void>;
}

/**
 * Mounts the sandbox's image (made and formatted first when it does not
 * exist yet) at its mount point, after unmounting a stale one.
 */
export async function mountGuestDisk(options: {
  sandboxId: string;
  sandboxDir: string;
  bytes: number;
}): Promise<GuestDisk> {
  const image = join(options.sandboxDir, GUEST_DISK_IMAGE);
  const root = guestDiskMountPoint(options.sandboxId);
  await ensureDisksRoot();
  await release(root);
  let fresh = false;
  try {
    // Sparse: the host's blocks are taken only as the sandbox writes.
    const fd = openSync(
      image,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      ftruncateSync(fd, Math.max(options.bytes, MIN_GUEST_DISK_BYTES));
    } finally {
      closeSync(fd);
    }
    fresh = true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    if (!statSync(image).isFile()) throw new Error(`${image} is not a regular file`);
  }
  if (fresh) {
    await command("mkfs.ext4", [
      "-q",
      "-F",
      // Nothing in the pod is root on the host: a root reserve would be space no one may use.
      "-m",
      "0",
      "-E",
      "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
      image,
    ]).catch((error: unknown) => {
      // An unformatted image would fail every later start too.
      orElse(undefined, () => closeSync(openSync(image, constants.O_WRONLY | constants.O_TRUNC)));
      throw error;
    });
  }
  mkdirSync(root, { recursive: true, mode: 0o700 });
  // The type named: the image is never probed as anything but what was made.
  await command("mount", ["-t", "ext4", "-o", "loop,nodev,nosuid,noatime", image, root]);
  if (fresh) {
    try {
      await adoptDirectories(options.sandboxDir, root);
    } catch (error) {
      // Left as they were, to be adopted at the next start, by an image made afresh then.
      await release(root).catch(() => {});
      rmSync(image, { force: true });
      throw error;
    }
  }
  const mounted = mountAt(root);
  return {
    root,
    unmount: async () => {
      const current = mountAt(root);
      // A later launch of the same sandbox may have mounted it again meanwhile.
      if (current && mounted && current.id !== mounted.id) return;
      await release(root);
    },
  };
}

/** The directories a pod writes, which sandboxes made before their own filesystems kept in their state directory. */
const WRITABLE_DIRECTORIES = ["workspace", "tmp", "rw"];

/**
 * A sandbox made before it had a filesystem of its own gets one at its next
 * start, with what it had written: its directories are copied onto the new
 * filesystem (`cp -a` keeps owners and modes, and copies symlinks as
 * symlinks, never what they point to), then removed from the state directory.
 */
async function adoptDirectories(sandboxDir: string, root: string): Promise<void> {
  for (const name of WRITABLE_DIRECTORIES) {
    const old = join(sandboxDir, name);
    if (!existsSync(old)) continue;
    try {
      await command("cp", ["-a", "--", old, join(root, name)]);
    } catch (error) {
      throw new Error(`cannot move the sandbox's ${name} onto its filesystem: ${(error as Error).message}`);
    }
    rmSync(old, { recursive: true, force: true });
  }
}

/** Unmounts a sandbox's disk if it is mounted (a supervisor killed before its stop). */
export async function unmountGuestDisk(sandboxId: string): Promise<void> {
  if (process.getuid?.() !== 0) return;
  await release(guestDiskMountPoint(sandboxId));
}

/**
 * On gateway start: unmounts the disks of sandboxes whose images were under
 * `sandboxesDir` and which `keep` does not name (deleted while the gateway
 * was down, or left by a crash mid-delete), and any disk whose image has
 * been removed (its gateway's state directory deleted under it): no one can
 * start that sandbox again. Other gateways' live disks are not touched.
 */
export async function sweepGuestDisks(
  sandboxesDir: string,
  keep: (sandboxId: string) => boolean,
): Promise<void> {
  if (process.getuid?.() !== 0) return;
  for (const id of orElse([], () => readdirSync(DISKS_ROOT))) {
    const entry = mountAt(guestDiskMountPoint(id));
    if (!entry) continue;
    const backing = loopBackingFile(entry.source);
    if (backing === undefined) continue;
    const removed = backing.endsWith(" (deleted)");
    if (!removed && (keep(id) || !backing.startsWith(`${sandboxesDir}/`))) continue;
    await release(guestDiskMountPoint(id)).catch(() => {});
  }
}

/** The file behind a loop device (`/dev/loop3`), with " (deleted)" when it was removed. */
function loopBackingFile(device: string): string | undefined {
  const name = /^\/dev\/(loop\d+)$/.exec(device)?.[1];
  if (!name) return undefined;
  return orElse(undefined, () => readFileSync(`/sys/block/${name}/loop/backing_file`, "utf8").trim());
}
