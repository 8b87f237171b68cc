// What a sandboxed process sees, proven with real bubblewrap: injected files
// are exact, cannot be changed or displaced by any route the sandbox user has,
// and the rest of the filesystem is as the policy says.

import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { InjectedFile } from "../../src/supervisor/inject.js";
import { createThrowawayPod, SANDBOX_UID, type ThrowawayPod } from "../helpers/pod.js";

const FILES: InjectedFile[] = [
  { path: "/sandbox/.agent/SOUL.md", content: Buffer.from("# Soul\n\nBe exact.\n"), mode: 0o444 },
  { path: "/opt/tools/tool.sh", content: Buffer.from('#!/bin/sh\necho "tool ran: $1"\n'), mode: 0o555 },
  { path: "/etc/app/cfg.yaml", content: Buffer.from("listen: 127.0.0.1:8080\nlevel: debug\n"), mode: 0o444 },
  // Mode 0 means 0444; the content is binary so "byte-identical" means something.
  { path: "/tmp/inj/x", content: randomBytes(3000), mode: 0 },
];
const TARGETS = FILES.map((f) => f.path);
const EXPECTED_MODE: Record<string, string> = {
  "/sandbox/.agent/SOUL.md": "444",
  "/opt/tools/tool.sh": "555",
  "/etc/app/cfg.yaml": "444",
  "/tmp/inj/x": "444",
};

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}
const EXPECTED_SHA = new Map(FILES.map((f) => [f.path, sha256(f.content)]));

/** umount2(2)'s number, to ask the kernel directly: util-linux's umount refuses non-root users by itself. */
const UMOUNT2 = process.arch === "x64" ? 166 : process.arch === "arm64" ? 39 : undefined;

/**
 * Tamper attempts, each a shell fragment run once per injected file with `$t`
 * the file and `$d` its directory. A fragment's exit status is 0 only if the
 * attack got through; where a fragment tries several routes, any success is 0.
 */
const TAMPERS: [string, string][] = [
  ["write", `printf evil > "$t"`],
  ["append", `printf evil >> "$t"`],
  ["truncate", `truncate -s 0 "$t"`],
  ["chmod", `chmod 0666 "$t" || chmod u+w "$t"`],
  ["chown", `chown ${SANDBOX_UID}:${SANDBOX_UID} "$t" || chown 0:0 "$t"`],
  ["rm", `rm -f "$t"`],
  ["mv away", `mv -f "$t" "$d/.moved"`],
  [
    "mv over",
    `{ printf evil > "$d/.evil" && mv -f "$d/.evil" "$t"; } || { printf evil > /sandbox/.evil && mv -f /sandbox/.evil "$t"; }`,
  ],
  ["rename the parent directory", `mv "$d" "$d.old" && mkdir "$d" && printf evil > "$t"`],
  ["remove the parent directory", `rm -rf "$d" && mkdir "$d" && printf evil > "$t"`],
  [
    "hard link then write",
    `{ ln "$t" "$d/.hl" && printf evil > "$d/.hl"; } || { ln "$t" /sandbox/.hl && printf evil > /sandbox/.hl; }`,
  ],
  [
    "umount",
    [
      UMOUNT2 === undefined
        ? "false"
        : `perl -e 'my $p = shift; exit(syscall(${UMOUNT2}, $p, 2) == 0 ? 0 : 1)' "$t"`,
      UMOUNT2 === undefined
        ? "false"
        : `perl -e 'my $p = shift; exit(syscall(${UMOUNT2}, $p, 2) == 0 ? 0 : 1)' "$d"`,
      `umount -l "$t"`,
      // A nested user namespace would bring capabilities back over a copy of the mounts.
      `unshare -Urm umount -l "$t"`,
    ].join(" || "),
  ],
];

function tamperScript(fragment: string): string {
  return [
    `for t in ${TARGETS.join(" ")}; do`,
    `  d=$(dirname "$t")`,
    `  ( ${fragment} ) >/dev/null`,
    `  echo "rc $t $?"`,
    "done",
    `sha256sum ${TARGETS.join(" ")}`,
  ].join("\n");
}

function parseTamper(stdout: string): { rc: Map<string, number>; sha: Map<string, string> } {
  const rc = new Map<string, number>();
  const sha = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const rcMatch = /^rc (\S+) (\d+)$/.exec(line);
    if (rcMatch) rc.set(rcMatch[1]!, Number(rcMatch[2]));
    const shaMatch = /^([0-9a-f]{64}) {2}(\S+)$/.exec(line);
    if (shaMatch) sha.set(shaMatch[2]!, shaMatch[1]!);
  }
  return { rc, sha };
}

/** The staged copies as root owns them, and as an unprivileged supervisor's own uid (the pod's) would. */
const OWNERSHIPS = [
  { stagedBy: "supervisor", label: "staged by the supervisor" },
  { stagedBy: "pod", label: "staged as the pod's own host uid" },
] as const;

describe.each(OWNERSHIPS)("injected files $label", ({ stagedBy }) => {
  let pod: ThrowawayPod;

  beforeAll(async () => {
    pod = await createThrowawayPod({ files: FILES, stagedBy });
  });

  afterAll(async () => {
    await pod?.dispose();
  });

  it("are there byte for byte with their modes, and the tool runs", async () => {
    const script = [
      `for t in ${TARGETS.join(" ")}; do echo "file $t $(stat -c %a "$t") $(base64 -w0 "$t")"; done`,
      `/opt/tools/tool.sh hello`,
    ].join("\n");
    const result = await pod.run(script, { step: "reading injected files" });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const lines = result.stdout.trimEnd().split("\n");
    expect(lines).toEqual([
      ...FILES.map((f) => `file ${f.path} ${EXPECTED_MODE[f.path]} ${f.content.toString("base64")}`),
      "tool ran: hello",
    ]);
  });

  it.each(TAMPERS)("resist: %s", async (name, fragment) => {
    const result = await pod.run(tamperScript(fragment), { step: `tamper: ${name}` });
    expect(result.code, result.stderr).toBe(0);
    const { rc, sha } = parseTamper(result.stdout);
    for (const target of TARGETS) {
      const status = rc.get(target);
      // 127 would mean a tool was missing, not that the kernel refused.
      expect(status, `${name} on ${target}: ${result.stderr}`).not.toBe(0);
      expect(status, `${name} on ${target}: ${result.stderr}`).not.toBe(127);
      expect(sha.get(target), `${target} after ${name}`).toBe(EXPECTED_SHA.get(target));
    }
    // The staged host copies are untouched too.
    for (const file of FILES) {
      expect(sha256(await readFile(join(pod.dirs.files, file.path)))).toBe(EXPECTED_SHA.get(file.path));
    }
  });

  it.runIf(UMOUNT2 !== undefined)("cannot be unmounted: the kernel answers EPERM", async () => {
    const paths = [...TARGETS, "/sandbox/.agent", "/tmp/inj", "/sandbox", "/"];
    const script = [
      `for p in ${paths.join(" ")}; do`,
      `  perl -e 'my $p = shift; syscall(${UMOUNT2}, $p, 2); print "$p ", $! + 0, "\\n"' "$p"`,
      "done",
    ].join("\n");
    const result = await pod.run(script, { step: "raw umount2" });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trimEnd().split("\n")).toEqual(paths.map((p) => `${p} 1`));
  });
});

describe("the rest of the pod", () => {
  let pod: ThrowawayPod;
  let stateMarker: string;

  beforeAll(async () => {
    pod = await createThrowawayPod({ files: FILES, hostname: "pod-fs-test" });
    // Stands in for the gateway's state directory, which the sandbox must never see.
    stateMarker = join(pod.root, "gateway-state");
    await mkdir(stateMarker);
    await writeFile(join(stateMarker, "secret"), "token");
  });

  afterAll(async () => {
    await pod?.dispose();
  });

  it("leaves the workspace and /tmp writable, inside the injected files' directories too", async () => {
    const script = [
      "set -e",
      "cd /sandbox",
      "echo a > f1; mv f1 f2; rm f2",
      "mkdir -p d1/sub; echo b > d1/sub/x; mv d1 d2; rm -r d2",
      "echo c > .agent/notes; mv .agent/notes .agent/notes2; rm .agent/notes2",
      "mkdir .agent/sub; mv .agent/sub .agent/sub2; rmdir .agent/sub2",
      "echo d > /tmp/inj/other; mv /tmp/inj/other /tmp/inj/other2; rm /tmp/inj/other2",
      "mkdir /tmp/work; echo e > /tmp/work/y; rm -r /tmp/work",
      "echo writable",
    ].join("\n");
    const result = await pod.run(script, { step: "writing the workspace" });
    expect(result.stderr).toBe("");
    expect(result.stdout).toBe("writable\n");
    expect(result.code).toBe(0);
  });

  it("cannot write /, /usr, /etc or the directories made for injected files outside writable paths", async () => {
    const script = [
      "for p in / /usr /usr/bin /etc /etc/app /opt /opt/tools; do",
      '  if touch "$p/.probe" 2>/dev/null; then echo "file written in $p"; fi',
      '  if mkdir "$p/.probe-dir" 2>/dev/null; then echo "dir made in $p"; fi',
      "done",
      "echo checked",
    ].join("\n");
    const result = await pod.run(script, { step: "probing read-only paths" });
    expect(result.stdout).toBe("checked\n");
    expect(result.code).toBe(0);
  });

  it("does not show the host's /root, /home or the gateway's state", async () => {
    const hidden = ["/root", "/home", pod.root, stateMarker, join(stateMarker, "secret")];
    const script = [
      `for p in ${hidden.join(" ")}; do if [ -e "$p" ]; then echo "visible $p"; fi; done`,
      "echo checked",
    ].join("\n");
    const result = await pod.run(script, { step: "looking for host paths" });
    expect(result.stdout).toBe("checked\n");
    expect(result.code).toBe(0);
  });

  it("runs as the sandbox user in its own UTS namespace", async () => {
    const result = await pod.run("id -u; id -un; id -g; id -gn; hostname", { step: "identity" });
    expect(result.stderr).toBe("");
    expect(result.stdout).toBe(`${SANDBOX_UID}\nsandbox\n${SANDBOX_UID}\nsandbox\npod-fs-test\n`);
  });
});
