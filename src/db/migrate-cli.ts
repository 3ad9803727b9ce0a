import { existsSync } from "node:fs";
import { applyMigrations, MigrationFailedError } from "./migrate.js";

/**
 * `npm run migrate` (in an image: `node dist/db/migrate-cli.js`): applies the migrations to
 * DATABASE_URL and exits, so that a deployment runs them once, with a role that owns the schema,
 * before starting the servers with MIGRATE_ON_START=false and a role that only reads and writes
 * rows (README, "Database roles"). The same runner as at start: under an advisory lock, recorded
 * in `_prisma_migrations`, graphile-worker's schema included.
 */

if (existsSync(".env")) process.loadEnvFile(".env");

const url = process.env.DATABASE_URL;
if (url === undefined || url.trim() === "") {
  console.error("npm run migrate: DATABASE_URL is not set (the database to migrate, with a role that owns its schema)");
  process.exit(2);
}

const say = (line: string) => process.stdout.write(`${line}\n`);

try {
  const { applied } = await applyMigrations(url, { log: say });
  say(applied.length > 0 ? `applied ${applied.length} migration(s): ${applied.join(", ")}` : "schema up to date: nothing to apply");
} catch (err) {
  console.error(err instanceof MigrationFailedError ? err.message : `npm run migrate failed: ${(err as Error).message}`);
  process.exit(1);
}
