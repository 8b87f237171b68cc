// A private OpenSSH server on 127.0.0.1, the yardstick for exec latency and
// transfer throughput: its own generated host and client keys, config, port
// and pid file, all under one temp directory; nothing of the host's sshd
// setup is used or changed (beyond the privilege separation directory that
// sshd insists on, created empty as the openssh-server package would).

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { freePort } from "../../test/helpers/net.js";
import { runOk, waitForExit, waitForTcp } from "./proc.js";

const SSHD = "/usr/sbin/sshd";
const PRIVSEP_DIR = "/run/sshd";

export class PrivateSshd {
  readonly dir: string;
  readonly user = userInfo().username;
  port = 0;
  private child: ChildProcess | undefined;
  private stderr = "";

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "openshell-bench-sshd-"));
  }

  get keyPath(): string {
    return join(this.dir, "client_key");
  }

  /** The `ssh` arguments that reach this server, before the remote command. */
  sshArgs(): string[] {
    return [
      "-i",
      this.keyPath,
      "-p",
      String(this.port),
      "-o",
      "StrictHostKeyChecking=no",
      "-o",
      "UserKnownHostsFile=/dev/null",
      "-o",
      "BatchMode=yes",
      "-o",
      "LogLevel=ERROR",
      `${this.user}@127.0.0.1`,
    ];
  }

  async start(): Promise<void> {
    if (!existsSync(SSHD)) throw new Error(`${SSHD} is not installed (Debian package openssh-server)`);
    const root = process.getuid?.() === 0;
    if (!existsSync(PRIVSEP_DIR)) {
      if (!root) throw new Error(`${PRIVSEP_DIR} is missing and only root can create it`);
      mkdirSync(PRIVSEP_DIR, { mode: 0o755 });
    }
    const hostKey = join(this.dir, "host_ed25519");
    await runOk("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", hostKey]);
    await runOk("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", this.keyPath]);
    const authorized = join(this.dir, "authorized_keys");
    writeFileSync(authorized, readFileSync(`${this.keyPath}.pub`), { mode: 0o600 });
    this.port = await freePort();
    const config = join(this.dir, "sshd_config");
    writeFileSync(
      config,
      [
        `Port ${this.port}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${hostKey}`,
        `PidFile ${join(this.dir, "sshd.pid")}`,
        `AuthorizedKeysFile ${authorized}`,
        `PermitRootLogin ${root ? "yes" : "no"}`,
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "LogLevel ERROR",
        // Room for the concurrent sessions of one ControlMaster connection (section 9).
        "MaxSessions 256",
        "",
      ].join("\n"),
    );
    // -e: log to stderr, kept for the report if it fails.
    const child = spawn(SSHD, ["-D", "-e", "-f", config], { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    child.stderr?.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString("utf8")).slice(-4000);
    });
    const exited = new Promise<never>((_, reject) => {
      child.once("exit", (code, signal) =>
        reject(
          new Error(
            `sshd exited (${code ?? signal}) before listening: ${this.stderr.trim() || "(no output)"}`,
          ),
        ),
      );
      child.once("error", (error) => reject(new Error(`sshd: ${error.message}`)));
    });
    exited.catch(() => undefined);
    await Promise.race([waitForTcp(this.port, "private sshd start", 10_000), exited]);
  }

  async stop(): Promise<void> {
    const pid = this.child?.pid;
    if (pid !== undefined && this.child?.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      const left = await waitForExit([pid], 5_000);
      if (left.length > 0) this.child.kill("SIGKILL");
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
