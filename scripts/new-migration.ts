/**
 * npm run migration:new -- <name>
 *
 * Writes prisma/migrations/<timestamp>_<name>/migration.sql: the SQL that takes the schema as it
 * was at the newest migration to the current prisma/schema.prisma.
 *
 * Prisma's own `migrate dev` needs a native engine or a database it can introspect, and neither
 * works offline here (prisma/orm#27403), but diffing two datamodels does. The previous datamodel is
 * prisma/schema.prisma as committed with the newest migration; Prisma's WebAssembly engine still
 * wants a reachable database for the diff, so a throwaway embedded PostgreSQL is started.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEmbeddedPostgres } from "../src/db/embedded.js";

const name = process.argv[2];
if (!name || !/^[a-z0-9_]+$/.test(name)) {
  console.error("usage: npm run migration:new -- <name in snake_case>");
  process.exit(2);
}

const migrationsDir = "prisma/migrations";
const lastCommit = execFileSync("git", ["log", "-1", "--format=%H", "--", migrationsDir], { encoding: "utf8" }).trim();
if (!lastCommit) throw new Error("no committed migration to diff from");
const previous = execFileSync("git", ["show", `${lastCommit}:prisma/schema.prisma`], { encoding: "utf8" });

const work = mkdtempSync(join(tmpdir(), "new-migration-"));
// PostgreSQL runs as its own system user when we are root: it must be able to enter the folder.
chmodSync(work, 0o755);
const previousFile = join(work, "previous.prisma");
writeFileSync(previousFile, previous);
const pgServer = await startEmbeddedPostgres({ dataDir: join(work, "pg"), port: 54000 + Math.floor(Math.random() * 1000) });
try {
  const sql = execFileSync(
    "npx",
    ["prisma", "migrate", "diff", "--from-schema-datamodel", previousFile, "--to-schema-datamodel", "prisma/schema.prisma", "--script"],
    { encoding: "utf8", env: { ...process.env, DATABASE_URL: pgServer.url } },
  );
  if (/^-- This is an empty migration\.?\s*$/m.test(sql) || sql.trim() === "") {
    console.log("prisma/schema.prisma has not changed since the newest migration: nothing to write");
  } else {
    const stamp = new Date().toISOString().replace(/\D/g, "").slice(0, 14);
    const dir = join(migrationsDir, `${stamp}_${name}`);
    if (existsSync(dir)) throw new Error(`${dir} exists`);
    mkdirSync(dir);
    writeFileSync(join(dir, "migration.sql"), sql);
    console.log(`wrote ${dir}/migration.sql (${readdirSync(migrationsDir).length - 1} migrations now); review it, then commit it with the schema`);
  }
} finally {
  await pgServer.stop();
  rmSync(work, { recursive: true, force: true });
}
