import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
