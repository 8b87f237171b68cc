// The gateway's persistent store: SQLite through better-sqlite3, one file per
// gateway, mode 0600. Sandboxes are stored as encoded `Sandbox` messages
// without file content; injected file content lives in its own table so that
// listing a thousand sandboxes never reads it. SSH session tokens are stored
// as SHA-256 digests, never in plain text.
//
// A full filesystem must not stop the gateway from deleting sandboxes, which
// is how space is given back, or from starting. Sandboxes of a root gateway
// write on filesystems of their own, but an ordinary user's gateway keeps
// them beside the store, and anything else on the host may fill it too. So
// the store keeps a reserve: a file of RESERVE_BYTES next to the database,
// removed when a write that frees space (a delete, a phase change on the way
// to one) fails for want of it, or before opening when the filesystem is
// already short, and made again at the next start with room.

import { createHash } from "node:crypto";
import { chmodSync, closeSync, existsSync, openSync, rmSync, statfsSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { PolicyStatus, Sandbox, type Sandbox as SandboxMessage } from "../gen/openshell.js";
import { SandboxPolicy } from "../gen/sandbox.js";
import { orElse } from "../host/fs.js";

export interface StoredSandboxRuntime {
  sandboxId: string;
  /** Host uid/gid the sandbox's bubblewrap pod runs as (root gateways only). */
  hostUid: number;
  hostGid: number;
  /** Secret the sandbox's supervisor presents to the gateway. */
  supervisorSecret: string;
}

export interface StoredSshSession {
  tokenHash: string;
  sandboxId: string;
  expiresAtMs: number;
  revoked: boolean;
  createdAtMs: number;
}

/** One stored revision of a sandbox's policy (1 is the policy it was created with). */
export interface StoredPolicyRevision {
  version: number;
  hash: string;
  policy: SandboxPolicy;
  status: PolicyStatus;
  loadError: string;
  createdAtMs: number;
  /** 0 until the sandbox loaded it. */
  loadedAtMs: number;
}

/** Policy revisions kept per sandbox: each may be 256 KiB, and a loop of updates must not fill the store. */
export const POLICY_REVISIONS_KEPT = 100;

/** Room kept on the store's filesystem for the writes that free space. */
export const RESERVE_BYTES = 8 * 1024 * 1024;

/** Free bytes for an unprivileged writer on the filesystem holding `file`; Infinity when unknown. */
function freeBytes(file: string): number {
  return orElse(Number.POSITIVE_INFINITY, () => {
    const fs = statfsSync(dirname(file));
    return fs.bavail * fs.bsize;
  });
}

/** SQLite's, or the kernel's, "no space left". */
function isFull(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === "SQLITE_FULL" || code === "ENOSPC" || code === "SQLITE_IOERR_WRITE";
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

export class Store {
  private readonly db: Database.Database;
  private readonly reservePath: string;
  /** Prepared once per SQL text: compiling a statement costs more than running most of them. */
  private readonly statements = new Map<string, Database.Statement>();

  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.db.prepare(text);
      this.statements.set(text, statement);
    }
    return statement;
  }

  constructor(path: string) {
    this.reservePath = `${path}.reserve`;
    const fresh = !existsSync(path);
    if (existsSync(this.reservePath) && freeBytes(path) < RESERVE_BYTES) this.dropReserve();
    this.db = new Database(path);
    if (fresh) chmodSync(path, 0o600);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.migrate();
    for (const suffix of ["", "-wal", "-shm"]) {
      if (existsSync(path + suffix)) chmodSync(path + suffix, 0o600);
    }
    this.fillReserve();
  }

  /** Writes the reserve when it is missing and the filesystem has room for it and as much again. */
  private fillReserve(): void {
    if (existsSync(this.reservePath)) return;
    try {
      if (freeBytes(this.reservePath) < 2 * RESERVE_BYTES) return;
      const fd = openSync(this.reservePath, "wx", 0o600);
      try {
        // Written, not sparse: the blocks must be taken now to be given back later.
        const zeros = Buffer.alloc(1024 * 1024);
        for (let done = 0; done < RESERVE_BYTES; done += zeros.length) writeSync(fd, zeros);
      } finally {
        closeSync(fd);
      }
    } catch {
      rmSync(this.reservePath, { force: true });
    }
  }

  private dropReserve(): boolean {
    if (!existsSync(this.reservePath)) return false;
    rmSync(this.reservePath, { force: true });
    return true;
  }

  /** Runs a write that frees space; when the filesystem is full, once more after giving up the reserve. */
  private withReserve<T>(write: () => T): T {
    try {
      return write();
    } catch (error) {
      if (isFull(error) && this.dropReserve()) return write();
      throw error;
    }
  }

  private migrate(): void {
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS sandboxes (
        id TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        payload BLOB NOT NULL
      );
      CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_name ON sandboxes(workspace, name);
      CREATE TABLE IF NOT EXISTS sandbox_runtime (
        sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
        host_uid INTEGER NOT NULL,
        host_gid INTEGER NOT NULL,
        supervisor_secret TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS ssh_sessions (
        token_hash TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
        expires_at_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS ssh_sessions_sandbox ON ssh_sessions(sandbox_id);
      CREATE TABLE IF NOT EXISTS policy_revisions (
        sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        payload BLOB NOT NULL,
        status INTEGER NOT NULL,
        load_error TEXT NOT NULL DEFAULT '',
        created_at_ms INTEGER NOT NULL,
        loaded_at_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sandbox_id, version)
      );
    `);
  }

  close(): void {
    this.db.close();
  }

  /**
   * Inserts a new sandbox with its runtime record in one transaction. Its
   * injected files' content is not here but in its state directory
   * (src/runtime/file-content.ts).
   */
  createSandbox(sandbox: SandboxMessage, runtime: StoredSandboxRuntime): void {
    const meta = sandbox.metadata!;
    const insert = this.db.transaction(() => {
      this.sql(
        `INSERT INTO sandboxes (id, workspace, name, created_at_ms, updated_at_ms, labels, payload)
           VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        meta.id,
        meta.workspace,
        meta.name,
        meta.createdAtMs,
        Date.now(),
        JSON.stringify(meta.labels),
        Buffer.from(Sandbox.encode(sandbox).finish()),
      );
      this.sql(
        "INSERT INTO sandbox_runtime (sandbox_id, host_uid, host_gid, supervisor_secret) VALUES (?, ?, ?, ?)",
      ).run(meta.id, runtime.hostUid, runtime.hostGid, runtime.supervisorSecret);
    });
    insert();
  }

  updateSandbox(sandbox: SandboxMessage): void {
    const meta = sandbox.metadata!;
    this.withReserve(() =>
      this.sql("UPDATE sandboxes SET payload = ?, updated_at_ms = ? WHERE id = ?").run(
        Buffer.from(Sandbox.encode(sandbox).finish()),
        Date.now(),
        meta.id,
      ),
    );
  }

  deleteSandbox(id: string): void {
    this.withReserve(() => this.sql("DELETE FROM sandboxes WHERE id = ?").run(id));
  }

  getSandbox(id: string): SandboxMessage | undefined {
    const row = this.sql("SELECT payload FROM sandboxes WHERE id = ?").get(id) as
      | { payload: Buffer }
      | undefined;
    return row ? Sandbox.decode(row.payload) : undefined;
  }

  getSandboxByName(workspace: string, name: string): SandboxMessage | undefined {
    const row = this.sql("SELECT payload FROM sandboxes WHERE workspace = ? AND name = ?").get(
      workspace,
      name,
    ) as { payload: Buffer } | undefined;
    return row ? Sandbox.decode(row.payload) : undefined;
  }

  /** Sandboxes in created order (then name), filtered by exact label matches. */
  listSandboxes(options: {
    workspace?: string;
    labels?: Record<string, string>;
    limit: number;
    offset: number;
  }): SandboxMessage[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (options.workspace !== undefined) {
      where.push("workspace = ?");
      params.push(options.workspace);
    }
    for (const [key, value] of Object.entries(options.labels ?? {})) {
      where.push("json_extract(labels, ?) = ?");
      params.push(`$."${key.replace(/"/g, '\\"')}"`, value);
    }
    const sql = `SELECT payload FROM sandboxes ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
      ORDER BY created_at_ms ASC, name ASC LIMIT ? OFFSET ?`;
    // Prepared afresh: its text varies with the filters asked for.
    const rows = this.db.prepare(sql).all(...params, options.limit, options.offset) as { payload: Buffer }[];
    return rows.map((row) => Sandbox.decode(row.payload));
  }

  allSandboxes(): SandboxMessage[] {
    const rows = this.sql("SELECT payload FROM sandboxes ORDER BY created_at_ms ASC").all() as {
      payload: Buffer;
    }[];
    return rows.map((row) => Sandbox.decode(row.payload));
  }

  getRuntime(sandboxId: string): StoredSandboxRuntime | undefined {
    const row = this.sql(
      "SELECT host_uid, host_gid, supervisor_secret FROM sandbox_runtime WHERE sandbox_id = ?",
    ).get(sandboxId) as { host_uid: number; host_gid: number; supervisor_secret: string } | undefined;
    return row
      ? {
          sandboxId,
          hostUid: row.host_uid,
          hostGid: row.host_gid,
          supervisorSecret: row.supervisor_secret,
        }
      : undefined;
  }

  /** Gives a sandbox other host ids (its uid was leased to another sandbox on this host). */
  setHostIds(sandboxId: string, hostUid: number, hostGid: number): void {
    this.sql("UPDATE sandbox_runtime SET host_uid = ?, host_gid = ? WHERE sandbox_id = ?").run(
      hostUid,
      hostGid,
      sandboxId,
    );
  }

  /**
   * Stores a new policy revision and the sandbox carrying it as its policy,
   * in one transaction; revisions still pending become superseded, and only
   * the latest POLICY_REVISIONS_KEPT are kept.
   */
  addPolicyRevision(sandbox: SandboxMessage, revision: StoredPolicyRevision): void {
    const id = sandbox.metadata!.id;
    this.db.transaction(() => {
      this.sql("DELETE FROM policy_revisions WHERE sandbox_id = ? AND version <= ?").run(
        id,
        revision.version - POLICY_REVISIONS_KEPT,
      );
      this.sql("UPDATE policy_revisions SET status = ? WHERE sandbox_id = ? AND status = ?").run(
        PolicyStatus.POLICY_STATUS_SUPERSEDED,
        id,
        PolicyStatus.POLICY_STATUS_PENDING,
      );
      this.sql(
        `INSERT INTO policy_revisions (sandbox_id, version, hash, payload, status, load_error, created_at_ms, loaded_at_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        id,
        revision.version,
        revision.hash,
        Buffer.from(SandboxPolicy.encode(revision.policy).finish()),
        revision.status,
        revision.loadError,
        revision.createdAtMs,
        revision.loadedAtMs,
      );
      this.updateSandbox(sandbox);
    })();
  }

  /** Revision `version` of a sandbox's policy, or its latest when `version` is 0. */
  policyRevision(sandboxId: string, version = 0): StoredPolicyRevision | undefined {
    const row = (
      version === 0
        ? this.sql("SELECT * FROM policy_revisions WHERE sandbox_id = ? ORDER BY version DESC LIMIT 1").get(
            sandboxId,
          )
        : this.sql("SELECT * FROM policy_revisions WHERE sandbox_id = ? AND version = ?").get(
            sandboxId,
            version,
          )
    ) as
      | {
          version: number;
          hash: string;
          payload: Buffer;
          status: number;
          load_error: string;
          created_at_ms: number;
          loaded_at_ms: number;
        }
      | undefined;
    return row
      ? {
          version: row.version,
          hash: row.hash,
          policy: SandboxPolicy.decode(row.payload),
          status: row.status as PolicyStatus,
          loadError: row.load_error,
          createdAtMs: row.created_at_ms,
          loadedAtMs: row.loaded_at_ms,
        }
      : undefined;
  }

  /** Records what the sandbox made of a revision; false when there is no such revision. */
  setPolicyStatus(
    sandboxId: string,
    version: number,
    status: PolicyStatus,
    loadError: string,
    loadedAtMs: number,
  ): boolean {
    return (
      this.sql(
        "UPDATE policy_revisions SET status = ?, load_error = ?, loaded_at_ms = ? WHERE sandbox_id = ? AND version = ?",
      ).run(status, loadError, loadedAtMs, sandboxId, version).changes > 0
    );
  }

  createSshSession(session: StoredSshSession): void {
    this.sql(
      "INSERT INTO ssh_sessions (token_hash, sandbox_id, expires_at_ms, revoked, created_at_ms) VALUES (?, ?, ?, 0, ?)",
    ).run(session.tokenHash, session.sandboxId, session.expiresAtMs, session.createdAtMs);
  }

  getSshSession(tokenHash: string): StoredSshSession | undefined {
    const row = this.sql(
      "SELECT token_hash, sandbox_id, expires_at_ms, revoked, created_at_ms FROM ssh_sessions WHERE token_hash = ?",
    ).get(tokenHash) as
      | {
          token_hash: string;
          sandbox_id: string;
          expires_at_ms: number;
          revoked: number;
          created_at_ms: number;
        }
      | undefined;
    return row
      ? {
          tokenHash: row.token_hash,
          sandboxId: row.sandbox_id,
          expiresAtMs: row.expires_at_ms,
          revoked: row.revoked !== 0,
          createdAtMs: row.created_at_ms,
        }
      : undefined;
  }

  revokeSshSession(tokenHash: string): boolean {
    return this.sql("UPDATE ssh_sessions SET revoked = 1 WHERE token_hash = ?").run(tokenHash).changes > 0;
  }

  revokeSandboxSessions(sandboxId: string): void {
    this.withReserve(() =>
      this.sql("UPDATE ssh_sessions SET revoked = 1 WHERE sandbox_id = ?").run(sandboxId),
    );
  }

  reapSshSessions(nowMs: number): number {
    return this.sql(
      "DELETE FROM ssh_sessions WHERE revoked = 1 OR (expires_at_ms > 0 AND expires_at_ms < ?)",
    ).run(nowMs).changes;
  }
}
