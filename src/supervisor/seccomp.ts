// The default seccomp filter every sandboxed process runs under, and how it
// is built.
//
// The attack: the pod's user, mount, PID and network namespaces decide what a
// sandboxed process can *name*, but every system call still reaches the whole
// host kernel. Most kernel privilege escalations go through interfaces an
// ordinary program never needs (the keyring, bpf, perf events, userfaultfd,
// io_uring, module and kexec loading), and a few calls let one process reach
// into another of the same uid (ptrace, process_vm_readv/writev, kcmp,
// pidfd_getfd): the agent that serves the sandbox runs under that same uid.
//
// The defence, modelled on Docker's default profile: those calls fail with
// EPERM, as they would in a container without the capabilities they need,
// and clone3 fails with ENOSYS (its flags sit in memory a filter cannot read),
// so glibc falls back to clone, whose namespace flags the filter can see. The
// rules are data here; libseccomp, through its Python binding (Debian's
// `python3-seccomp`), compiles them for the host's architecture and the
// 32-bit ABIs it also runs (a denylist that forgot `int 0x80` would deny
// nothing), and bubblewrap loads the result (`--seccomp FD`) for the pod's
// first process and everything it starts. No BPF is written by hand.
//
// A filter that cannot be built stops the sandbox with `SeccompUnavailable`:
// a sandbox never starts unfiltered. The compiled program is cached by the
// digest of its rules and architecture, written under a temporary name and
// renamed, so supervisors starting side by side never read half a file.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { orElse } from "../host/fs.js";
import { SECCOMP_DENY_ENV } from "../runtime/contract.js";

/** A condition on one argument: the filter matches when `(arg & mask) == value`. */
export interface ArgumentMatch {
  arg: number;
  mask: number;
  value: number;
}

export interface SeccompRule {
  syscall: string;
  errno: "EPERM" | "ENOSYS";
  /** Absent: every call is refused. */
  when?: ArgumentMatch;
}

export interface SeccompSpec {
  /** libseccomp's names (`seccomp.Arch`) of the ABIs besides the native one. */
  extraArches: string[];
  rules: SeccompRule[];
}

/** What each group of refused calls would give a sandboxed process, for the README and for reviewers. */
export const DEFAULT_DENIED: { why: string; syscalls: string[] }[] = [
  {
    why: "the kernel keyring is not namespaced: keys and their quota are shared with the host user",
    syscalls: ["add_key", "keyctl", "request_key"],
  },
  {
    why: "reading or changing another process of the same uid (the agent runs under it)",
    syscalls: ["ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd"],
  },
  {
    why: "large kernel attack surface an ordinary program does not need",
    syscalls: [
      "bpf",
      "perf_event_open",
      "userfaultfd",
      "fanotify_init",
      "lookup_dcookie",
      "io_uring_setup",
      "io_uring_enter",
      "io_uring_register",
    ],
  },
  {
    why: "changing the filesystem view or entering and making namespaces",
    syscalls: [
      "mount",
      "umount2",
      "pivot_root",
      "chroot",
      "fsopen",
      "fsconfig",
      "fsmount",
      "fspick",
      "move_mount",
      "open_tree",
      "mount_setattr",
      "unshare",
      "setns",
    ],
  },
  {
    why: "the host's kernel, clock, swap and accounting",
    syscalls: [
      "kexec_load",
      "kexec_file_load",
      "init_module",
      "finit_module",
      "delete_module",
      "reboot",
      "swapon",
      "swapoff",
      "acct",
      "quotactl",
      "quotactl_fd",
      "settimeofday",
      "clock_settime",
      "clock_adjtime",
      "iopl",
      "ioperm",
      "syslog",
      "vhangup",
      "sethostname",
      "setdomainname",
    ],
  },
  {
    why: "opening files by handle sidesteps the mount table (the 'shocker' escape)",
    syscalls: ["open_by_handle_at", "name_to_handle_at"],
  },
  {
    why: "NUMA placement of memory the host shares (Docker allows it only with CAP_SYS_NICE)",
    syscalls: ["get_mempolicy", "set_mempolicy", "mbind", "move_pages"],
  },
];

/** ioctl requests refused: pushing input into a terminal, and the Linux console's own requests. */
const TIOCSTI = 0x5412;
const TIOCLINUX = 0x541c;
/** clone(2) flags that make a namespace; a clone with any of them is refused. */
const CLONE_NAMESPACE_FLAGS = [
  0x00020000, // CLONE_NEWNS
  0x02000000, // CLONE_NEWCGROUP
  0x04000000, // CLONE_NEWUTS
  0x08000000, // CLONE_NEWIPC
  0x10000000, // CLONE_NEWUSER
  0x20000000, // CLONE_NEWPID
  0x40000000, // CLONE_NEWNET
];
const AF_VSOCK = 40;
/**
 * personality(2) values Docker allows: PER_LINUX, PER_LINUX32 (8), UNAME26
 * (0x20000) and both, and 0xffffffff (a query that changes nothing). The rest
 * turn on compatibility behaviour exploits have used (READ_IMPLIES_EXEC,
 * MMAP_PAGE_ZERO, ADDR_NO_RANDOMIZE...).
 */
const PERSONALITY_ALLOWED = [0, 0x8, 0x20000, 0x20008, 0xffffffff];
/** The kernel reads ioctl requests, socket families and personalities as 32-bit ints: compare only those bits. */
const LOW_32 = 0xffffffff;

/**
 * The 32-bit values not in `allowed`, as aligned blocks `(x & mask) == value`
 * (a block of 2^k values sharing their top 32-k bits). libseccomp cannot put
 * two conditions on one argument in a rule, so "none of these values" is
 * written as the union of the blocks between them.
 */
export function complementBlocks(allowed: readonly number[]): { mask: number; value: number }[] {
  const points = [...new Set(allowed)].sort((a, b) => a - b);
  const blocks: { mask: number; value: number }[] = [];
  let from = 0;
  for (const point of [...points, 2 ** 32]) {
    let start = from;
    const end = point - 1; // inclusive
    while (start <= end) {
      // The largest aligned block starting at `start` that stays within `end`.
      let size = 1;
      while (start % (size * 2) === 0 && start + size * 2 - 1 <= end) size *= 2;
      blocks.push({ mask: (LOW_32 - (size - 1)) >>> 0, value: start >>> 0 });
      start += size;
    }
    from = point + 1;
  }
  return blocks;
}

/** The 32-bit ABIs a 64-bit process can also enter the kernel through, in libseccomp's names. */
function compatArches(arch: string): string[] {
  if (arch === "x64") return ["X86", "X32"];
  if (arch === "arm64") return ["ARM"];
  return [];
}

/** The rules of the default filter, plus `extraDeny` (each refused with EPERM). */
export function seccompSpec(extraDeny: readonly string[] = [], arch: string = process.arch): SeccompSpec {
  const rules: SeccompRule[] = [];
  const denied = new Set<string>();
  const deny = (syscall: string): void => {
    if (denied.has(syscall)) return;
    denied.add(syscall);
    rules.push({ syscall, errno: "EPERM" });
  };
  for (const group of DEFAULT_DENIED) for (const syscall of group.syscalls) deny(syscall);
  for (const syscall of extraDeny) deny(syscall);
  const conditional = (syscall: string, when: ArgumentMatch): void => {
    if (!denied.has(syscall)) rules.push({ syscall, errno: "EPERM", when });
  };
  for (const request of [TIOCSTI, TIOCLINUX]) conditional("ioctl", { arg: 1, mask: LOW_32, value: request });
  for (const flag of CLONE_NAMESPACE_FLAGS) conditional("clone", { arg: 0, mask: flag, value: flag });
  conditional("socket", { arg: 0, mask: LOW_32, value: AF_VSOCK });
  for (const block of complementBlocks(PERSONALITY_ALLOWED)) conditional("personality", { arg: 0, ...block });
  if (!denied.has("clone3")) rules.push({ syscall: "clone3", errno: "ENOSYS" });
  return { extraArches: compatArches(arch), rules };
}

/** Raised when the filter cannot be built; `reason` becomes the sandbox's condition reason. */
export class SeccompError extends Error {
  constructor(
    readonly reason: "SeccompUnavailable" | "SeccompFilterInvalid",
    message: string,
  ) {
    super(message);
  }
}

/** Debian's interpreter, the one its `python3-seccomp` package installs into (not whatever `python3` PATH finds). */
export const SECCOMP_PYTHON = "/usr/bin/python3";

/**
 * Reads the spec as JSON on stdin, writes the BPF program on stdout. Errors go
 * to stderr as one JSON line the supervisor turns into a reason.
 */
const GENERATOR = `
import errno, json, sys
try:
    import seccomp
except ImportError as e:
    sys.stderr.write(json.dumps({"kind": "unavailable", "message": str(e)}) + "\\n")
    sys.exit(3)
spec = json.load(sys.stdin)
f = seccomp.SyscallFilter(seccomp.ALLOW)
for name in spec["extraArches"]:
    arch = getattr(seccomp.Arch, name)
    if not f.exist_arch(arch):
        f.add_arch(arch)
for rule in spec["rules"]:
    action = seccomp.ERRNO(getattr(errno, rule["errno"]))
    when = rule.get("when")
    args = [seccomp.Arg(when["arg"], seccomp.MASKED_EQ, when["mask"], when["value"])] if when else []
    try:
        f.add_rule(action, rule["syscall"], *args)
    except Exception as e:
        sys.stderr.write(json.dumps({"kind": "invalid", "syscall": rule["syscall"], "message": str(e)}) + "\\n")
        sys.exit(4)
f.export_bpf(sys.stdout)
`;

/** A compiled program is a few KiB; anything larger is not ours. */
const MAX_PROGRAM_BYTES = 1 << 20;

function compile(spec: SeccompSpec, python: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      python,
      ["-I", "-c", GENERATOR],
      { encoding: "buffer", maxBuffer: MAX_PROGRAM_BYTES, timeout: 30_000, env: { LANG: "C.UTF-8" } },
      (error, stdout, stderr) => {
        if (!error) {
          if (stdout.length === 0 || stdout.length % 8 !== 0) {
            reject(
              new SeccompError(
                "SeccompUnavailable",
                `libseccomp wrote ${stdout.length} bytes, not a program`,
              ),
            );
          } else resolve(stdout);
          return;
        }
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOENT") {
          reject(new SeccompError("SeccompUnavailable", `${python} is missing; ${INSTALL_HINT}`));
          return;
        }
        // Not our report when it does not parse: the message below carries what there is.
        const report: { kind?: string; syscall?: string; message?: string } = orElse({}, () =>
          JSON.parse(stderr.toString("utf8").trim().split("\n").pop() ?? ""),
        );
        if (report.kind === "invalid") {
          reject(
            new SeccompError(
              "SeccompFilterInvalid",
              `cannot refuse '${report.syscall}': libseccomp does not know it on this architecture (${report.message}); check ${SECCOMP_DENY_ENV}`,
            ),
          );
        } else if (report.kind === "unavailable") {
          reject(
            new SeccompError("SeccompUnavailable", `libseccomp's Python binding is missing; ${INSTALL_HINT}`),
          );
        } else {
          const detail = stderr.toString("utf8").trim().split("\n").slice(-3).join(" ");
          reject(
            new SeccompError(
              "SeccompUnavailable",
              `cannot build the seccomp filter: ${detail || error.message}`,
            ),
          );
        }
      },
    );
    child.stdin?.on("error", () => {});
    child.stdin?.end(JSON.stringify(spec));
  });
}

const INSTALL_HINT =
  "sandboxes do not start without their seccomp filter: install it with `apt-get install python3-seccomp`";

/** The name the compiled filter for `spec` is kept under: the digest of its rules and architecture. */
export function seccompProgramName(spec: SeccompSpec, arch: string = process.arch): string {
  const digest = createHash("sha256").update(JSON.stringify({ arch, spec })).digest("hex").slice(0, 32);
  return `seccomp-${digest}.bpf`;
}

/** Whether `path` holds a program: a whole number of 8-byte instructions. */
function readProgram(path: string): Buffer | undefined {
  const program = orElse(undefined, () => readFileSync(path));
  return program && program.length > 0 && program.length % 8 === 0 ? program : undefined;
}

/**
 * The path of the compiled filter for `spec`: the one a supervisor bundle
 * ships in `prebuilt` (compiled when it was made: the filter depends on no
 * sandbox's policy, only on the deny list and the architecture), else one
 * under `dir`, built once, then found by its digest. Rejects with a
 * SeccompError when it cannot be built.
 */
export async function seccompProgram(
  dir: string,
  spec: SeccompSpec,
  options: { python?: string; prebuilt?: string | undefined } = {},
): Promise<string> {
  const name = seccompProgramName(spec);
  if (options.prebuilt !== undefined && readProgram(join(options.prebuilt, name))) {
    return join(options.prebuilt, name);
  }
  const path = join(dir, name);
  // Not built yet when it cannot be read.
  if (readProgram(path)) return path;
  const program = await compile(spec, options.python ?? SECCOMP_PYTHON);
  mkdirSync(dir, { recursive: true, mode: 0o711 });
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(temporary, program, { mode: 0o644 });
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
  return path;
}
