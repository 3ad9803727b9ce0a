import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { startEmbeddedPostgres } from "../../src/db/embedded.js";
import { applyMigrations } from "../../src/db/migrate.js";
import { freePort } from "../../src/simulator/self-host.js";

export const TEMPLATE_DATABASE = "orange_template";

declare module "vitest" {
  export interface ProvidedContext {
    /** Connection URL of the run's PostgreSQL (any database; tests swap the path). */
    pgAdminUrl: string;
  }
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** One embedded PostgreSQL for the whole run, and a template database with every migration applied. */
export default async function setup(project: TestProject) {
  const dir = mkdtempSync(join(tmpdir(), "orange-test-pg-"));
  // As root, PostgreSQL runs as its own system user, which must be able to enter the folder.
  chmodSync(dir, 0o755);
  const server = await startEmbeddedPostgres({ dataDir: join(dir, "data"), port: await freePort() });
  const client = new pg.Client({ connectionString: server.url });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${TEMPLATE_DATABASE}`);
  } finally {
    await client.end();
  }
  await applyMigrations(withDatabase(server.url, TEMPLATE_DATABASE));
  project.provide("pgAdminUrl", server.url);

  return async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  };
}
