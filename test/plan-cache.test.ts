import { setTimeout as delay } from "node:timers/promises";
import type pg from "pg";
import { createDb, type Db } from "../src/db/sql.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { startWorker, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * A prepared statement (every statement of the program is one) keeps, by PostgreSQL's default,
 * the generic plan made at its sixth run, from the table sizes of that moment, until the next
 * ANALYZE of its tables. Made while a table was small (a fresh install, the start of a burst),
 * that plan reads the whole table once it has grown: the delivery of a burst of events read its
 * whole attempt table for each event. The program's pools drop a connection's plans once they
 * are older than a bound (10 s; 300 ms here): the same statement, run six times while its table
 * was small, then finds its rows through the index once the table has grown, with no ANALYZE in
 * between. On a real PostgreSQL, on both of the program's pools (the requests' and the worker's).
 */
describe("a prepared statement whose table grew after its first runs", () => {
  const MAX_AGE_MS = 300;
  let d: TestDatabase;
  let gw: MockGateway;
  let db: Db | undefined;
  let harness: WorkerHarness | undefined;
  beforeAll(async () => {
    d = await createTestDatabase();
    gw = await startMockGateway();
  });
  afterAll(async () => {
    await harness?.stop();
    await db?.close();
    await gw?.close();
    await d?.drop();
  });

  /**
   * On the pool's one connection: six runs while the table is small (the sixth makes the generic
   * plan), the table grown, then, once the plans are older than the bound, the seventh run and
   * its plan. The statement's seventh run on the same connection.
   */
  async function planAfterGrowth(pool: pg.Pool, table: string): Promise<string> {
    const name = `${table}_by_k`;
    const text = `SELECT id FROM ${table} WHERE k = $1`;
    let client = await pool.connect();
    const pid = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
    try {
      await client.query(`CREATE TABLE ${table} (id int PRIMARY KEY, k int NOT NULL, pad text)`);
      await client.query(`CREATE INDEX ${table}_k_idx ON ${table} (k)`);
      await client.query(`INSERT INTO ${table} SELECT g, g, repeat('x', 100) FROM generate_series(1, 20) g`);
      await client.query(`ANALYZE ${table}`);
      for (let i = 1; i <= 6; i++) expect((await client.query({ name, text, values: [i] })).rows).toEqual([{ id: i }]);
      await client.query(`INSERT INTO ${table} SELECT g, g, repeat('x', 100) FROM generate_series(21, 50000) g`);
    } finally {
      client.release();
    }
    await delay(MAX_AGE_MS + 50);
    // The same connection again (the worker's pool has others, which its graphile runner uses).
    const others: pg.PoolClient[] = [];
    for (;;) {
      client = await pool.connect();
      if ((await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid === pid) break;
      others.push(client);
      expect(others.length, "the connection that ran the statement").toBeLessThan(pool.options.max);
    }
    for (const other of others) other.release();
    try {
      expect((await client.query({ name, text, values: [40_000] })).rows).toEqual([{ id: 40_000 }]);
      const plan = await client.query<{ "QUERY PLAN": string }>(`EXPLAIN EXECUTE ${name}(40000)`);
      return plan.rows.map((r) => r["QUERY PLAN"]).join("\n");
    } finally {
      client.release();
    }
  }

  it("is planned again for the grown table on the requests' pool (createDb)", async () => {
    db = createDb(d.url, { poolMax: 1, planMaxAgeMs: MAX_AGE_MS });
    const plan = await planAfterGrowth(db.pool, "plan_probe_db");
    expect(plan).toMatch(/Index (Only )?Scan using plan_probe_db_k_idx/);
    expect(plan).not.toMatch(/Seq Scan/);
  });

  it("is planned again for the grown table on the worker's pool", async () => {
    harness = await startWorker(gw, d.url, { planMaxAgeMs: MAX_AGE_MS });
    const plan = await planAfterGrowth(harness.worker.pool, "plan_probe_worker");
    expect(plan).toMatch(/Index (Only )?Scan using plan_probe_worker_k_idx/);
    expect(plan).not.toMatch(/Seq Scan/);
  });
});
