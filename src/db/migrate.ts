// Applies prisma/migrations at start-up. `prisma migrate deploy` cannot run through the pg driver
// adapter (prisma/orm#27403, see docs/database.md "Migrations"), so this runner does its job
// and keeps Prisma's ledger, `_prisma_migrations`, exactly as Prisma writes it: wherever Prisma's
// binaries are available, `prisma migrate status/deploy` agree with what was applied here.

import { createHash, randomUUID } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Logger, runMigrations as runJobQueueMigrations } from "graphile-worker";
import pg from "pg";

// The key `prisma migrate deploy` locks: this runner and Prisma's CLI exclude each other too.
const PRISMA_MIGRATE_LOCK_KEY = 72707369;
const CONNECT_TIMEOUT_MS = 30_000;

export interface ApplyMigrationsOptions {
  /** Folder holding `<name>/migration.sql`; defaults to the repository's prisma/migrations. */
  migrationsDir?: string;
  log?: (msg: string) => void;
  /**
   * Also install or upgrade graphile-worker's schema (`graphile_worker`), which the outbox
   * needs in every role: the API enqueues with `graphile_worker.add_job` (default true).
   */
  jobQueue?: boolean;
}

/** A migration script failed; its transaction was rolled back and nothing was recorded. */
export class MigrationFailedError extends Error {
  override readonly name = "MigrationFailedError";
  constructor(
    readonly migrationName: string,
    detail: string,
    options: { cause: unknown },
  ) {
    super(`Migration ${migrationName} failed and was rolled back: ${detail}`, options);
  }
}

interface Migration {
  name: string;
  script: string;
  checksum: string;
}

interface LedgerRow {
  migration_name: string;
  checksum: string;
  finished_at: Date | null;
  rolled_back_at: Date | null;
  logs: string | null;
}

/**
 * Applies every migration not yet recorded, in name order, each in its own transaction, while
 * holding a PostgreSQL advisory lock: replicas starting together apply each migration once, the
 * others wait and then find nothing to do.
 */
export async function applyMigrations(
  connectionString: string,
  opts: ApplyMigrationsOptions = {},
): Promise<{ applied: string[] }> {
  const log = opts.log ?? (() => {});
  // Read before connecting: a broken build fails without touching the database.
  const migrations = await readMigrations(opts.migrationsDir ?? (await defaultMigrationsDir()));

  const client = new pg.Client({ connectionString, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  client.on("error", () => {}); // a dropped connection surfaces as a failed query
  await client.connect();
  try {
    const { rows } = await client.query<{ locked: boolean }>(
      `SELECT pg_try_advisory_lock(${PRISMA_MIGRATE_LOCK_KEY}) AS locked`,
    );
    if (!rows[0]?.locked) {
      log("waiting for the migration lock: another process is applying migrations");
      await client.query(`SELECT pg_advisory_lock(${PRISMA_MIGRATE_LOCK_KEY})`);
    }
    // The lock is the session's: ending the connection releases it, even when a query failed.
    const result = await applyLocked(client, migrations, log);
    if (opts.jobQueue ?? true) await migrateJobQueue(connectionString, log);
    return result;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * graphile-worker keeps its own migrations (in `graphile_worker.migrations`); it is run here,
 * under the same lock, so that a database is complete after applyMigrations whatever role the
 * process has, and test templates carry it too.
 */
async function migrateJobQueue(connectionString: string, log: (msg: string) => void): Promise<void> {
  const logger = new Logger(() => (level, message) => {
    const name = String(level);
    if (name === "error" || name === "warning") log(`graphile-worker: ${message}`);
  });
  await runJobQueueMigrations({ connectionString, maxPoolSize: 1, logger });
}

async function applyLocked(
  client: pg.Client,
  migrations: Migration[],
  log: (msg: string) => void,
): Promise<{ applied: string[] }> {
  // Prisma's own DDL for the ledger, column for column.
  await client.query(`CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                  VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"            VARCHAR(64) NOT NULL,
    "finished_at"         TIMESTAMPTZ,
    "migration_name"      VARCHAR(255) NOT NULL,
    "logs"                TEXT,
    "rolled_back_at"      TIMESTAMPTZ,
    "started_at"          TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
  )`);
  const { rows } = await client.query<LedgerRow>(
    `SELECT migration_name, checksum, finished_at, rolled_back_at, logs
       FROM "_prisma_migrations" ORDER BY started_at`,
  );

  // Rows with rolled_back_at set are attempts Prisma was told to forget (`migrate resolve`).
  const live = rows.filter((row) => row.rolled_back_at === null);
  const failed = live.filter((row) => row.finished_at === null);
  if (failed.length > 0) {
    // Same rule as Prisma (P3009): a migration that failed half-way left the schema in an
    // unknown state, so nothing more is applied until someone has looked at it.
    const names = failed.map((row) => row.migration_name).join(", ");
    throw new Error(
      `Migration(s) ${names} failed in an earlier run and were not rolled back; no migration will be applied. ` +
        `Repair the database by hand, then mark each one resolved, e.g. ` +
        `UPDATE "_prisma_migrations" SET rolled_back_at = now() WHERE migration_name = '<name>' AND finished_at IS NULL ` +
        `(to apply it again) or \`prisma migrate resolve --applied <name>\`. ` +
        `Logs of the first: ${failed[0]?.logs?.slice(0, 2_000) ?? "(none)"}`,
    );
  }

  const done = new Map(live.map((row) => [row.migration_name, row]));
  const known = new Set(migrations.map((m) => m.name));
  const unknown = [...done.keys()].filter((name) => !known.has(name));
  if (unknown.length > 0) {
    // Normal during a rolling deploy: a newer replica already migrated the database.
    log(`the database has migrations this program does not know: ${unknown.join(", ")}`);
  }

  const applied: string[] = [];
  for (const migration of migrations) {
    const row = done.get(migration.name);
    if (row) {
      if (!checksumMatches(migration.script, row.checksum)) {
        log(
          `warning: migration ${migration.name} was modified after it was applied ` +
            `(recorded checksum ${row.checksum}, file checksum ${migration.checksum}); it is not applied again`,
        );
      }
      continue;
    }
    const started = Date.now();
    await applyOne(client, migration);
    applied.push(migration.name);
    log(`applied migration ${migration.name} in ${Date.now() - started} ms`);
  }
  return { applied };
}

async function applyOne(client: pg.Client, migration: Migration): Promise<void> {
  const id = randomUUID();
  await client.query("BEGIN");
  try {
    // Same row as Prisma's: inserted when the migration starts, finished_at and
    // applied_steps_count = 1 on success. In one transaction with the script, a crash leaves
    // neither a half-applied schema nor a row saying it failed.
    await client.query(
      `INSERT INTO "_prisma_migrations" (id, checksum, migration_name, started_at, applied_steps_count)
       VALUES ($1, $2, $3, clock_timestamp(), 0)`,
      [id, migration.checksum, migration.name],
    );
    try {
      await client.query(migration.script); // no parameters: simple protocol, many statements
    } catch (error) {
      throw new MigrationFailedError(migration.name, describeScriptError(error, migration.script), {
        cause: error,
      });
    }
    await client.query(
      `UPDATE "_prisma_migrations"
          SET finished_at = clock_timestamp(), applied_steps_count = applied_steps_count + 1
        WHERE id = $1`,
      [id],
    );
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  }
}

function describeScriptError(error: unknown, script: string): string {
  const { message, position } = error as { message?: string; position?: string };
  const offset = Number(position);
  if (!Number.isInteger(offset) || offset < 1) return message ?? String(error);
  const line = script.slice(0, offset - 1).split("\n").length;
  return `${message} (migration.sql line ${line})`;
}

/**
 * Prisma's rule (schema-connector checksum.rs): the recorded checksum matches the script as it
 * is, or with its line endings converted either way (git may check a file out with CRLF), and
 * checksums written by old Prisma versions lack the zero padding of each byte.
 */
function checksumMatches(script: string, recorded: string): boolean {
  const variants = [script, script.replaceAll("\r\n", "\n"), script.replaceAll("\n", "\r\n")];
  return variants.some((variant) => {
    const digest = createHash("sha256").update(variant, "utf8").digest();
    if (recorded.length === 64 || recorded.length === 0) return digest.toString("hex") === recorded;
    return [...digest].map((byte) => byte.toString(16)).join("") === recorded;
  });
}

async function readMigrations(dir: string): Promise<Migration[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  // Code-unit order, as Prisma sorts: localeCompare could put `_` and digits elsewhere.
  const names = entries
    .filter((entry) => entry.isDirectory())
    .map((entry) => entry.name)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return Promise.all(
    names.map(async (name) => {
      const file = path.join(dir, name, "migration.sql");
      let content: Buffer;
      try {
        content = await readFile(file);
      } catch (error) {
        throw new Error(`Migration ${name} has no readable migration.sql (${file})`, { cause: error });
      }
      return {
        name,
        script: content.toString("utf8"),
        // Of the bytes, as Prisma hashes the file's text as read.
        checksum: createHash("sha256").update(content).digest("hex"),
      };
    }),
  );
}

/**
 * The repository's prisma/migrations, found upwards from this module so that it works from any
 * working directory, whether this file runs from src/ (tsx) or from a build output folder.
 */
async function defaultMigrationsDir(): Promise<string> {
  const start = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, "prisma", "migrations");
    if (await isDirectory(candidate)) return candidate;
    if (path.dirname(dir) === dir) {
      throw new Error(`No prisma/migrations folder found above ${start}; pass migrationsDir`);
    }
  }
}

async function isDirectory(dir: string): Promise<boolean> {
  try {
    return (await stat(dir)).isDirectory();
  } catch {
    return false;
  }
}
