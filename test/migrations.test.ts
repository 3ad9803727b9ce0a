import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { applyMigrations } from "../src/db/migrate.js";

const run = promisify(execFile);
const MIGRATIONS = new URL("../prisma/migrations/", import.meta.url);
const migrationNames = readdirSync(MIGRATIONS, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

const created: string[] = [];

function urlOf(database: string): string {
  const u = new URL(inject("pgAdminUrl"));
  u.pathname = `/${database}`;
  return u.toString();
}

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

/**
 * What the migrations make that prisma/schema.prisma has no words for (a partial index, an index's
 * storage setting): applied to the schema's own SQL before the catalogs are compared, so that
 * each is in the comparison too (an index missing, or one no migration made, is a drift).
 */
const BEYOND_PRISMA = [
  `CREATE INDEX "provisioning_command_unfinished_lanes_idx" ON "provisioning_command" USING GIN ("lanes")
     WITH (fastupdate = off) WHERE "state" IN ('queued', 'sending', 'waiting', 'retrying')`,
  `ALTER INDEX "provisioning_command_lanes_idx" SET (fastupdate = off)`,
  `CREATE INDEX "licence_update_acknowledged_licences_idx" ON "licence_update" USING GIN ("licence_ids")
     WITH (fastupdate = off) WHERE "state" = 'acknowledged'`,
];

/** An empty database of its own (not cloned from the migrated template). */
async function emptyDatabase(): Promise<string> {
  const name = `mig_${Math.random().toString(36).slice(2, 10)}`;
  await query(inject("pgAdminUrl"), `CREATE DATABASE ${name}`);
  created.push(name);
  return urlOf(name);
}

/** Everything that makes up the schema, as comparable text (the migration ledger left out). */
async function catalog(url: string) {
  const tables = await query(
    url,
    `SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default, ordinal_position
     FROM information_schema.columns
     WHERE table_schema = 'public' AND table_name <> '_prisma_migrations'
     ORDER BY table_name, column_name`,
  );
  const enums = await query(
    url,
    `SELECT t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) AS labels
     FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname ORDER BY t.typname`,
  );
  const indexes = await query(
    url,
    `SELECT tablename, indexname, indexdef FROM pg_indexes
     WHERE schemaname = 'public' AND tablename <> '_prisma_migrations' ORDER BY indexname`,
  );
  const constraints = await query(
    url,
    `SELECT c.conrelid::regclass::text AS table_name, c.conname, pg_get_constraintdef(c.oid) AS def
     FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
     WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> '_prisma_migrations'
     ORDER BY c.conname`,
  );
  return { tables, enums, indexes, constraints };
}

afterAll(async () => {
  for (const name of created) await query(inject("pgAdminUrl"), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
});

describe("migrations", () => {
  it("applies every migration once and records it in _prisma_migrations as Prisma does", async () => {
    const url = await emptyDatabase();
    expect((await applyMigrations(url)).applied).toEqual(migrationNames);
    expect((await applyMigrations(url)).applied).toEqual([]);

    const rows = await query<{ migration_name: string; checksum: string; finished_at: Date | null; applied_steps_count: number }>(
      url,
      `SELECT migration_name, checksum, finished_at, applied_steps_count FROM _prisma_migrations ORDER BY migration_name`,
    );
    expect(rows.map((r) => r.migration_name)).toEqual(migrationNames);
    for (const row of rows) {
      const sql = readFileSync(new URL(`${row.migration_name}/migration.sql`, MIGRATIONS));
      expect(row.checksum).toBe(createHash("sha256").update(sql).digest("hex"));
      expect(row.finished_at).toBeInstanceOf(Date);
      expect(row.applied_steps_count).toBe(1);
    }
  });

  it("applies each migration exactly once when three processes start together", async () => {
    const url = await emptyDatabase();
    const results = await Promise.all([applyMigrations(url), applyMigrations(url), applyMigrations(url)]);
    expect(results.flatMap((r) => r.applied).sort()).toEqual(migrationNames);
    const [row] = await query<{ count: string }>(url, `SELECT count(*) FROM _prisma_migrations`);
    expect(Number(row?.count)).toBe(migrationNames.length);
  });

  it("gives exactly the schema of prisma/schema.prisma (no drift)", async () => {
    // Prisma cannot introspect a database offline (prisma/orm#27403), but it can write the SQL of
    // the datamodel: applied to an empty database, it must give the catalog the migrations give.
    const fromMigrations = await emptyDatabase();
    await applyMigrations(fromMigrations);
    const fromSchema = await emptyDatabase();
    const { stdout: sql } = await run(
      "npx",
      ["prisma", "migrate", "diff", "--from-empty", "--to-schema-datamodel", "prisma/schema.prisma", "--script"],
      { env: { ...process.env, DATABASE_URL: fromSchema }, cwd: new URL("..", import.meta.url).pathname },
    );
    expect(sql).toMatch(/CREATE TABLE "licence"/);
    const client = new pg.Client({ connectionString: fromSchema });
    await client.connect();
    try {
      await client.query(sql);
      for (const statement of BEYOND_PRISMA) await client.query(statement);
    } finally {
      await client.end();
    }
    expect(await catalog(fromMigrations), "run `npm run migration:new -- <name>` after changing schema.prisma").toEqual(
      await catalog(fromSchema),
    );
  }, 60_000);
});
