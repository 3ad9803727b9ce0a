import { randomBytes } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import pg from "pg";
import { inject } from "vitest";
import { createDb, type Db } from "../../src/db/sql.js";
import { createPrisma, type PrismaReader } from "./prisma.js";
import { TEMPLATE_DATABASE, withDatabase } from "./global-setup.js";

export interface TestDatabase {
  url: string;
  /** The program's own access (src/db/sql.ts), for the code under test. */
  db: Db;
  /** An independent reader (Prisma), for the tests' assertions on what was written. */
  prisma: PrismaReader;
  drop(): Promise<void>;
}

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: inject("pgAdminUrl") });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/**
 * A fresh database cloned from the migrated template: each test file gets its own, so files run
 * in parallel without seeing each other's rows.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `test_${randomBytes(6).toString("hex")}`;
  await admin(async (client) => {
    // PostgreSQL refuses to clone a template another session is cloning at the same moment.
    for (let attempt = 0; ; attempt++) {
      try {
        await client.query(`CREATE DATABASE ${name} TEMPLATE ${TEMPLATE_DATABASE}`);
        return;
      } catch (err) {
        if (attempt < 50 && /being accessed by other users/.test(String((err as Error).message))) {
          await delay(50 + Math.random() * 100);
          continue;
        }
        throw err;
      }
    }
  });
  const url = withDatabase(inject("pgAdminUrl"), name);
  const prisma = createPrisma(url, { poolMax: 10 });
  const db = createDb(url, { poolMax: 10 });
  return {
    url,
    db,
    prisma,
    async drop() {
      await prisma.$disconnect();
      await db.close();
      await admin((client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}

/**
 * A fresh database and one plain connection to it, for tests that set a session up (plan cache
 * mode, prepared statements) and read plans with EXPLAIN; `close` ends the connection and drops
 * the database.
 */
export async function createTestDatabaseWithClient(): Promise<{ database: TestDatabase; client: pg.Client; close(): Promise<void> }> {
  const database = await createTestDatabase();
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  return {
    database,
    client,
    async close() {
      await client.end();
      await database.drop();
    },
  };
}

/**
 * Makes graphile-worker's first completion of the job keyed `jobKey` fail, as it does when the
 * database goes away while the runner records a job's outcome; later completions pass. A
 * sequence, because it counts even in the transaction the exception rolls back.
 */
export async function failFirstCompletion(database: TestDatabase, jobKey: string): Promise<void> {
  await database.prisma.$executeRawUnsafe("CREATE SEQUENCE completion_fault");
  await database.prisma.$executeRawUnsafe(`
    CREATE FUNCTION fail_first_completion() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF nextval('completion_fault') = 1 THEN RAISE EXCEPTION 'injected: completion not recorded'; END IF;
      RETURN OLD;
    END $$`);
  // DDL takes no parameters: the key goes in as a quoted literal.
  const key = `'${jobKey.replaceAll("'", "''")}'`;
  await database.prisma.$executeRawUnsafe(`
    CREATE TRIGGER fail_first_completion BEFORE DELETE ON graphile_worker._private_jobs
      FOR EACH ROW WHEN (OLD.key = ${key}) EXECUTE FUNCTION fail_first_completion()`);
}
