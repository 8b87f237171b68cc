// Host uids for sandbox pods, unique on the host across every gateway.
//
// A root gateway runs each sandbox's pod as a host uid of its own, so that a
// uid identifies one sandbox for accounting, limits and `kill`. Allocated
// from each gateway's own store, two gateways on one host (two users' state
// directories, or one user's two named gateways) handed out the same uids,
// and one sandbox could then signal or read another's processes and files.
//
// The design: one host-wide ledger of leases, a SQLite database (the same
// library as the store) in a root-only directory. Each lease names the uid,
// the sandbox directory and the sandbox id holding it. A uid is taken in one
// IMMEDIATE transaction, so two gateways allocating at once are serialised
// by SQLite's file lock, which the kernel drops if a gateway dies holding it:
// no lock file to go stale. A lease is released on delete; a lease whose
// sandbox directory no longer exists (its gateway's state was removed, or it
// died between removing the directory and releasing) is stale and handed out
// again. The ledger is persistent, not in /run: a sandbox keeps its uid across
// reboots, so the owner of the files in its workspace stays its own.
//
// Subordinate ranges (/etc/subuid) were the alternative: a range per gateway
// needs a registry of ranges just the same, and still a lease per sandbox
// inside it.

import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";

/** The host-wide ledger; only root gateways use it. */
export const HOST_UID_LEASES = "/var/lib/openshell/uid-leases.db";

/** First uid given to sandbox pods; far above any system or login uid. */
export const POD_UID_BASE = 2_100_000_000;
/** One past the last: uids up to 2^31-1 stay clear of (uid_t)-1 and signed wrap-around. */
export const POD_UID_END = 2_147_483_647;

export interface UidHolder {
  sandboxDir: string;
  sandboxId: string;
}

interface LeaseRow {
  uid: number;
  sandbox_dir: string;
  sandbox_id: string;
}

export class UidLeases {
  private readonly db: Database.Database;

  constructor(path = HOST_UID_LEASES) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.db = new Database(path);
    // Another gateway holds the write lock only for one allocation's few statements.
    this.db.pragma("busy_timeout = 10000");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS leases (
        uid INTEGER PRIMARY KEY,
        sandbox_dir TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        taken_at_ms INTEGER NOT NULL
      );
      CREATE UNIQUE INDEX IF NOT EXISTS leases_holder ON leases(sandbox_dir);
    `);
  }

  close(): void {
    this.db.close();
  }

  private stale(row: LeaseRow): boolean {
    return !existsSync(row.sandbox_dir);
  }

  private write(uid: number, holder: UidHolder): void {
    this.db
      .prepare(
        `INSERT INTO leases (uid, sandbox_dir, sandbox_id, taken_at_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT(uid) DO UPDATE SET sandbox_dir = excluded.sandbox_dir,
           sandbox_id = excluded.sandbox_id, taken_at_ms = excluded.taken_at_ms`,
      )
      .run(uid, holder.sandboxDir, holder.sandboxId, Date.now());
  }

  /**
   * Leases the lowest free uid to `holder`, whose sandbox directory must
   * exist already (a lease without one is stale). Throws when none is left.
   */
  take(holder: UidHolder): number {
    return this.db
      .transaction((): number => {
        // A holder leases one uid: its old lease (a create retried after a crash) goes.
        this.db.prepare("DELETE FROM leases WHERE sandbox_dir = ?").run(holder.sandboxDir);
        const rows = this.db
          .prepare("SELECT uid, sandbox_dir, sandbox_id FROM leases WHERE uid >= ? ORDER BY uid")
          .iterate(POD_UID_BASE) as IterableIterator<LeaseRow>;
        let candidate = POD_UID_BASE;
        let reclaim: number | undefined;
        for (const row of rows) {
          if (row.uid > candidate) break;
          if (this.stale(row)) {
            reclaim = row.uid;
            break;
          }
          candidate = row.uid + 1;
        }
        const uid = reclaim ?? candidate;
        if (uid >= POD_UID_END) throw new Error("no host uid is left for a sandbox on this host");
        this.write(uid, holder);
        return uid;
      })
      .immediate();
  }

  /**
   * Takes `uid` again for `holder` (a sandbox resumed by its gateway, or one
   * made before uids were leased): true when it is now the holder's, false
   * when another live sandbox holds it.
   */
  retake(uid: number, holder: UidHolder): boolean {
    return this.db
      .transaction((): boolean => {
        const row = this.db
          .prepare("SELECT uid, sandbox_dir, sandbox_id FROM leases WHERE uid = ?")
          .get(uid) as LeaseRow | undefined;
        if (row && row.sandbox_dir !== holder.sandboxDir && !this.stale(row)) return false;
        this.db.prepare("DELETE FROM leases WHERE sandbox_dir = ? AND uid != ?").run(holder.sandboxDir, uid);
        this.write(uid, holder);
        return true;
      })
      .immediate();
  }

  /** Gives up the holder's lease on `uid`; another holder's is left alone. */
  release(uid: number, holder: UidHolder): void {
    this.db.prepare("DELETE FROM leases WHERE uid = ? AND sandbox_dir = ?").run(uid, holder.sandboxDir);
  }

  /** Who holds `uid`, if anyone. */
  holder(uid: number): UidHolder | undefined {
    const row = this.db.prepare("SELECT uid, sandbox_dir, sandbox_id FROM leases WHERE uid = ?").get(uid) as
      | LeaseRow
      | undefined;
    return row ? { sandboxDir: row.sandbox_dir, sandboxId: row.sandbox_id } : undefined;
  }
}
