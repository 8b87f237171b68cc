// The gateway run by an ordinary user: no root anywhere, bubblewrap started
// as that user, injected files owned by it and still tamper-proof. When the
// suite itself runs as an ordinary user every other test covers this too;
// as root, this file runs the CLI and gateway under a throwaway uid.

import { execFileSync } from "node:child_process";
import { chownSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, json, TestEnv } from "../helpers/cli.js";

const USER_UID = 1_900_000_000 + (process.pid % 10_000);
const isRoot = process.getuid?.() === 0;

/** Whether that uid can run the CLI from where this checkout lives (a clone under /root cannot). */
function reachableByUser(): boolean {
  try {
    execFileSync(process.execPath, ["-e", `require("fs").accessSync(${JSON.stringify(BIN)})`], {
      uid: USER_UID,
      gid: USER_UID,
      stdio: "ignore",
    });
    return true;
  } catch {
    return false;
  }
}

const runnable = isRoot && reachableByUser();

describe.skipIf(!runnable)(
  "a gateway run by an ordinary user (needs root to switch uid, and a checkout that uid can read)",
  () => {
    const env = new TestEnv();
    const as = { uid: USER_UID, gid: USER_UID };

    beforeAll(async () => {
      for (const dir of [env.configHome, env.stateHome, env.home]) {
        mkdirSync(dir, { recursive: true });
        chownSync(dir, USER_UID, USER_UID);
      }
      writeFileSync(join(env.home, "soul.md"), "be kind\n");
      chownSync(join(env.home, "soul.md"), USER_UID, USER_UID);
      const started = await env.run(["gateway", "start", "--port", "0"], { ...as, timeoutMs: 30_000 });
      expect(started.code, started.stderr).toBe(0);
    });
    afterAll(async () => {
      await env.run(["gateway", "stop"], { ...as, timeoutMs: 60_000 });
      await env.dispose();
    });

    it("runs sandboxes, with injected files still protected", async () => {
      const created = await env.run(
        [
          "sandbox",
          "create",
          "--name",
          "plain",
          "--detach",
          "--file",
          "./soul.md:/sandbox/.agent/SOUL.md",
          "--",
          "sleep",
          "infinity",
        ],
        { ...as, cwd: env.home },
      );
      expect(created.code, created.stderr).toBe(0);
      const inside = await env.run(
        [
          "sandbox",
          "exec",
          "-n",
          "plain",
          "--",
          "sh",
          "-c",
          "id -u; cat .agent/SOUL.md; (echo evil > .agent/SOUL.md) 2>/dev/null || echo refused; chmod 666 .agent/SOUL.md 2>/dev/null || echo refused; cat .agent/SOUL.md",
        ],
        as,
      );
      expect(inside.code, inside.stderr).toBe(0);
      expect(inside.stdout).toBe("1000\nbe kind\nrefused\nrefused\nbe kind\n");
      const list = await env.run(["sandbox", "list", "-o", "json"], as);
      expect(json<{ name: string; phase: string }[]>(list).map((s) => [s.name, s.phase])).toEqual([
        ["plain", "Ready"],
      ]);
      const gatewayInfo = JSON.parse(
        execFileSync("cat", [join(env.stateHome, "openshell", "gateways", "local", "gateway.json")], {
          encoding: "utf8",
        }),
      ) as { pid: number };
      const owner = execFileSync("ps", ["-o", "uid=", "-p", String(gatewayInfo.pid)], {
        encoding: "utf8",
      }).trim();
      expect(Number(owner)).toBe(USER_UID);
      const deleted = await env.run(["sandbox", "delete", "plain"], as);
      expect(deleted.code, deleted.stderr).toBe(0);
    });

    it("keeps the agent out of its sandbox's reach (its memory and descriptors refused) under a seccomp filter", async () => {
      const created = await env.run(
        ["sandbox", "create", "--name", "guarded", "--detach", "--", "sleep", "infinity"],
        { ...as, cwd: env.home },
      );
      expect(created.code, created.stderr).toBe(0);
      // The loader copy the kernel execs for the agent is this user's own, mode 0111.
      const script = [
        "grep '^Seccomp:' /proc/self/status",
        // The agent is the process started through the pod's loader (pgrep leaves itself out).
        "agent=$(pgrep -f '^/run/openshell/lib/ld-linux')",
        "(exec 3</proc/$agent/mem) 2>/dev/null && echo mem open || echo mem refused",
        "ls /proc/$agent/fd >/dev/null 2>&1 && echo fd open || echo fd refused",
        // The main command is an ordinary process: the same routes into it open.
        "sleeper=$(pgrep -x sleep | head -1)",
        "(exec 3</proc/$sleeper/mem) 2>/dev/null && ls /proc/$sleeper/fd >/dev/null && echo sibling open",
      ].join("\n");
      const inside = await env.run(["sandbox", "exec", "-n", "guarded", "--", "sh", "-c", script], as);
      expect(inside.code, inside.stderr).toBe(0);
      expect(inside.stdout.replace(/[ \t]+/g, " ")).toBe(
        "Seccomp: 2\nmem refused\nfd refused\nsibling open\n",
      );
      const deleted = await env.run(["sandbox", "delete", "guarded"], as);
      expect(deleted.code, deleted.stderr).toBe(0);
    });
  },
);
