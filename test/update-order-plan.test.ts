import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tx } from "../src/db/sql.js";
import { lockLicences, lockLicencesOfCompletedOrders, selectLicences, updateStatesAndOffers } from "../src/domain/licences.dal.js";
import { earlierUnfinishedUpdates } from "../src/domain/requests.dal.js";
import { createTestDatabaseWithClient } from "./support/db.js";

/**
 * Every run of an acknowledged update first asks which updates of the same licences, sent before
 * it, are unfinished (so that a licence's changes are carried out in Orange's order). It must stay
 * a look into the small partial index of acknowledged updates, not a read of every update of the
 * history: checked with EXPLAIN, generic and custom plans, on a real PostgreSQL.
 */
describe("the run's look for earlier unfinished updates of the same licences", () => {
  let session: Awaited<ReturnType<typeof createTestDatabaseWithClient>> | undefined;
  let client: pg.Client;
  beforeAll(async () => {
    session = await createTestDatabaseWithClient();
    client = session.client;
    // 20,000 updates of 5,000 licences, one in a hundred still acknowledged.
    await client.query(`
      INSERT INTO licence_update (id, request_hash, request, state, created_at, licence_ids)
      SELECT 'upd_' || g, 'h', '{}'::json, (CASE WHEN g % 100 = 0 THEN 'acknowledged' ELSE 'completed' END)::"RequestState",
             now() - (20000 - g) * interval '1 second', ARRAY['us_' || (g % 5000)]
        FROM generate_series(1, 20000) g`);
    await client.query("VACUUM ANALYZE licence_update");
  });
  afterAll(async () => session?.close());

  for (const mode of ["force_generic_plan", "force_custom_plan"] as const) {
    it(`finds them through the acknowledged updates' index (${mode})`, async () => {
      await client.query(`SET plan_cache_mode = ${mode}`);
      await client.query("DEALLOCATE ALL");
      await client.query(`PREPARE earlier(text) AS ${earlierUnfinishedUpdates("").text}`);
      await client.query("BEGIN");
      try {
        const plan = (await client.query(`EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE earlier('upd_15300')`)).rows[0]["QUERY PLAN"] as unknown;
        const text = JSON.stringify(plan);
        expect(text).toContain('"Index Name":"licence_update_acknowledged_licences_idx"');
        expect(text).not.toContain('"Node Type":"Seq Scan"');
        // What it finds: the acknowledged updates of us_300 sent before upd_15300.
        const found = (await client.query(`EXECUTE earlier('upd_15300')`)).rows.map((r: { id: string }) => r.id);
        expect(found).toEqual(["upd_300", "upd_5300", "upd_10300"]);
      } finally {
        await client.query("ROLLBACK");
      }
    });
  }
});

/**
 * A suspension or a reactivation reads, locks and writes one licence. Those statements are
 * prepared, and must run from their generic plan once PostgreSQL has made it (from their sixth
 * run), as the other hot statements do: written for an array of ids, their generic plan assumed
 * ten licences and always looked costlier than a plan for the one given, and each run was planned
 * anew (0.1–0.2 ms a statement under 16 callers, more than running it; pg_stat_statements).
 */
describe("the statements that change one licence", () => {
  let session: Awaited<ReturnType<typeof createTestDatabaseWithClient>> | undefined;
  let client: pg.Client;
  let tx: Tx;
  const RUNS = 12;
  beforeAll(async () => {
    session = await createTestDatabaseWithClient();
    client = session.client;
    // 20,000 licences of 200 fleets, each fleet made by a completed order.
    await client.query(`INSERT INTO customer (id, orange_ref) VALUES ('cu_1', 'CUST-1')`);
    await client.query(`
      INSERT INTO fleet (id, customer_id, offer_code) SELECT 'fl_' || k, 'cu_1', 'MBA-STD' FROM generate_series(1, 200) k`);
    await client.query(`
      INSERT INTO product_order (id, request_hash, request, state, use_case, customer_id, fleet_id, quantity)
      SELECT 'po_' || k, 'h', '{}'::json, 'completed', 'UC2', 'cu_1', 'fl_' || k, 100 FROM generate_series(1, 200) k`);
    await client.query(`
      INSERT INTO licence (id, fleet_id, order_id, offer_code)
      SELECT 'us_' || n, 'fl_' || (1 + (n - 1) / 100), 'po_' || (1 + (n - 1) / 100), 'MBA-STD' FROM generate_series(1, 20000) n`);
    for (const table of ["customer", "fleet", "product_order", "licence"]) await client.query(`VACUUM ANALYZE ${table}`);
    await client.query("DEALLOCATE ALL");
    tx = {
      transaction: true,
      query: async (statement: pg.QueryConfig) => (await client.query(statement)).rows,
      execute: async (statement: pg.QueryConfig) => (await client.query(statement)).rowCount ?? 0,
    } as unknown as Tx;
  });
  afterAll(async () => session?.close());

  it("are planned for their first five runs only, then run their generic plan; each run reads and writes its licence", async () => {
    const now = new Date("2026-12-01T05:00:00.000Z");
    for (let i = 1; i <= RUNS; i++) {
      const id = `us_${i * 1000 + 7}`;
      expect((await selectLicences(tx, [id])).map((l) => l.id)).toEqual([id]);
      expect((await lockLicencesOfCompletedOrders(tx, [id])).map((l) => l.id)).toEqual([id]);
      const [licence] = await lockLicences(tx, [id]);
      const [after] = await updateStatesAndOffers(tx, [{ ...licence!, state: "inactive", externalState: "suspended" }], now);
      expect(after).toMatchObject({ id, state: "inactive", externalState: "suspended", offerCode: "MBA-STD", fleetId: `fl_${i * 10 + 1}` });
    }
    const { rows } = await client.query<{ statement: string; generic_plans: string; custom_plans: string }>(
      "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements WHERE name LIKE 'p\\_%'",
    );
    expect(rows).toHaveLength(4);
    for (const row of rows) {
      expect({ generic: Number(row.generic_plans), custom: Number(row.custom_plans) }, row.statement).toEqual({ generic: RUNS - 5, custom: 5 });
    }
    const changed = await client.query("SELECT count(*)::int AS n FROM licence WHERE state = 'inactive' AND external_state = 'suspended'");
    expect(changed.rows[0].n).toBe(RUNS);
  });

  it("still take several licences at once", async () => {
    const ids = ["us_5", "us_6", "us_19999"];
    expect((await selectLicences(tx, ids)).map((l) => l.id)).toEqual(ids.slice().sort());
    const locked = await lockLicences(tx, ids);
    const after = await updateStatesAndOffers(tx, locked.map((l) => ({ ...l, offerCode: "MBA-PRO" })), new Date());
    expect(after.map((l) => [l.id, l.offerCode]).sort()).toEqual(ids.map((id) => [id, "MBA-PRO"]).sort());
  });
});
