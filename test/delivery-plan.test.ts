import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLAIMED_SQL, HEADS_SQL, RECORD_DELIVERED_SQL } from "../src/events/delivery.js";
import { readContractExamples } from "../src/contract-examples.js";
import { createTestDatabaseWithClient } from "./support/db.js";

type PlanMode = "force_generic_plan" | "force_custom_plan";

/** The body of every event these tests write. */
const body = JSON.stringify({ id: "ev", type: "updateNotification", time: "2026-11-30T00:00:00.000Z", resource: {} });

/**
 * Every scan of a table in the plan of `text`, prepared as `signature` and explained as `execute`
 * (a generic plan, as a prepared statement gets after its first runs, or a custom one): the table,
 * the index (or the kind of scan) and its condition.
 */
async function planScans(client: pg.Client, mode: PlanMode, signature: string, text: string, execute: string): Promise<{ relation: string; index: string; cond: string }[]> {
  await client.query(`SET plan_cache_mode = ${mode}`);
  await client.query("DEALLOCATE ALL");
  await client.query(`PREPARE ${signature} AS ${text}`);
  const [row] = (await client.query(`EXPLAIN (FORMAT JSON) EXECUTE ${execute}`)).rows as { "QUERY PLAN": unknown }[];
  const scans: { relation: string; index: string; cond: string }[] = [];
  const walk = (node: Record<string, unknown>) => {
    if (typeof node["Relation Name"] === "string" && String(node["Node Type"]).includes("Scan")) {
      scans.push({ relation: node["Relation Name"], index: String(node["Index Name"] ?? node["Node Type"]), cond: String(node["Index Cond"] ?? node["Filter"] ?? "") });
    }
    for (const child of (node["Plans"] as Record<string, unknown>[] | undefined) ?? []) walk(child);
  };
  walk((row!["QUERY PLAN"] as { Plan: Record<string, unknown> }[])[0]!.Plan);
  return scans;
}

/**
 * An outbox that has lived: 20,000 events delivered, 10 for each of 2,000 fleets (`fl_old_*`),
 * each with its delivered attempt.
 */
async function deliveredHistory(client: pg.Client): Promise<void> {
  await client.query(
    `INSERT INTO outbox_event (id, api, type, ordering_key, body, state, attempts, delivered_at)
     SELECT 'ev_old_' || g, 'userservice', 'updateNotification', 'fl_old_' || (g % 2000), $1::json, 'delivered', 1, now()
       FROM generate_series(1, 20000) g`,
    [body],
  );
  await client.query(
    `INSERT INTO event_delivery_attempt (event_id, attempt, started_at, finished_at, outcome)
     SELECT id, 1, now(), now(), 'delivered' FROM outbox_event WHERE id LIKE 'ev_old_%'`,
  );
}

/**
 * The delivery's read of a key's next events must stay a range of the key's own index entries
 * whatever PostgreSQL's statistics say. They are gathered whenever autovacuum analyses the
 * table: analysed while the outbox was quiet (every event delivered), they say almost nothing is
 * pending, and a burst of events then comes. The plans are read with EXPLAIN, generic (a
 * prepared statement after its first runs) and custom, on a real PostgreSQL.
 */
describe("the delivery's read of a key's next events, after statistics taken on a quiet outbox", () => {
  let session: Awaited<ReturnType<typeof createTestDatabaseWithClient>> | undefined;
  let client: pg.Client;
  beforeAll(async () => {
    session = await createTestDatabaseWithClient();
    client = session.client;
    // The past, analysed then.
    await deliveredHistory(client);
    await client.query("VACUUM ANALYZE outbox_event");
    // The burst: 2,000 events pending, 10 for each of 200 fleets.
    await client.query(
      `INSERT INTO outbox_event (id, api, type, ordering_key, body)
       SELECT 'ev_new_' || g, 'userservice', 'updateNotification', 'fl_new_' || (g % 200), $1::json
         FROM generate_series(1, 2000) g`,
      [body],
    );
  });
  afterAll(async () => session?.close());

  /** Every scan of outbox_event in the plan: the index and its condition. */
  async function indexScans(mode: PlanMode): Promise<{ index: string; cond: string }[]> {
    // $5 false: no advisory lock is taken; EXPLAIN without ANALYZE runs nothing.
    const scans = await planScans(client, mode, "heads(text, text, text, int, boolean)", HEADS_SQL, "heads('fl_new_7', NULL, 'x', 1, false)");
    return scans.filter((s) => s.relation === "outbox_event");
  }

  for (const mode of ["force_generic_plan", "force_custom_plan"] as const) {
    it(`reads the key's pending and dead events through the key's index entries only (${mode})`, async () => {
      const scans = await indexScans(mode);
      // The dead event that holds the key and the pending ones, by the key's index; the first one
      // claimed and its attempts recounted, by id.
      const byKey = scans.filter((s) => s.index === "outbox_event_ordering_key_state_seq_idx");
      expect(byKey.map((s) => s.cond.includes("'dead'") ? "dead" : s.cond.includes("'pending'") ? "pending" : s.cond), JSON.stringify(scans)).toEqual(["dead", "pending"]);
      expect(scans.filter((s) => s.index !== "outbox_event_ordering_key_state_seq_idx" && s.index !== "outbox_event_pkey"), JSON.stringify(scans)).toEqual([]);
    });
  }
});

/**
 * The same read, with events of their real size (an order's completion event of the contract,
 * about 1 KB): fewer events per page make each fetch look costlier. With the key only in its
 * ranges' bounds, the generic plan estimated 0.5 % of the outbox for the key and looked four
 * times costlier than a custom one, which knows the key: PostgreSQL planned the statement anew
 * at each call (0.4 ms, twice its run, for every key a worker delivers).
 */
describe("the delivery's read of a key's next events, with events of their real size", () => {
  let session: Awaited<ReturnType<typeof createTestDatabaseWithClient>> | undefined;
  let client: pg.Client;
  const CALLS = 12;
  const realBody = JSON.stringify(readContractExamples().get("uc4-completed-event")!.value);
  beforeAll(async () => {
    session = await createTestDatabaseWithClient();
    client = session.client;
    // 20,000 events delivered, 10 for each of 2,000 fleets, analysed; then 10 pending for each of 12 fleets.
    await client.query(
      `INSERT INTO outbox_event (id, api, type, ordering_key, body, state, attempts, delivered_at)
       SELECT 'ev_old_' || g, 'productordering', 'completedStateNotification', 'fl_old_' || (g % 2000), $1::json, 'delivered', 1, now()
         FROM generate_series(1, 20000) g`,
      [realBody],
    );
    await client.query("VACUUM ANALYZE outbox_event");
    await client.query(
      `INSERT INTO outbox_event (id, api, type, ordering_key, body)
       SELECT 'ev_new_' || k || '_' || g, 'productordering', 'completedStateNotification', 'fl_new_' || k, $1::json
         FROM generate_series(1, ${CALLS}) k, generate_series(1, 10) g ORDER BY k, g`,
      [realBody],
    );
  });
  afterAll(async () => session?.close());

  it("is planned for its first five runs only, then runs its generic plan; each run reads its key's ten events and starts the first one's attempt", async () => {
    for (let k = 1; k <= CALLS; k++) {
      const { rows } = await client.query<{ locked: boolean; id: string; attempt: number | null }>({
        name: "heads",
        text: HEADS_SQL,
        values: [`fl_new_${k}`, "worker-1", "interrupted", 1, true],
      });
      await client.query("SELECT pg_advisory_unlock_all()");
      expect(rows.map((r) => r.id)).toEqual(Array.from({ length: 10 }, (_, g) => `ev_new_${k}_${g + 1}`));
      expect(rows.every((r) => r.locked && r.attempt === 1)).toBe(true);
    }
    const { rows } = await client.query<{ generic_plans: string; custom_plans: string }>(
      "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'heads'",
    );
    expect({ custom: Number(rows[0]!.custom_plans), generic: Number(rows[0]!.generic_plans) }).toEqual({ custom: 5, generic: CALLS - 5 });
    const attempts = await client.query<{ event_id: string }>("SELECT event_id FROM event_delivery_attempt WHERE finished_at IS NULL ORDER BY event_id");
    expect(attempts.rows.map((r) => r.event_id).sort()).toEqual(Array.from({ length: CALLS }, (_, k) => `ev_new_${k + 1}_1`).sort());
  });
});

/**
 * An inline run's first statement for its own event (CLAIMED_SQL): the key's first pending and
 * first dead events by the key's index entries, the event's attempt by its unique index, whatever
 * the statistics; never a scan of the outbox or of the attempts (it once cost 2 to 10 ms a call,
 * growing with the outbox, under load).
 */
describe("the lock statement of an inline run's claimed event", () => {
  let session: Awaited<ReturnType<typeof createTestDatabaseWithClient>> | undefined;
  let client: pg.Client;
  beforeAll(async () => {
    session = await createTestDatabaseWithClient();
    client = session.client;
    // Analysed while the outbox was small (a load's start), then 9,000 events of 3,000 fleets
    // written and delivered, each with its attempt, but one: the load under way. (Written as "no
    // pending or dead event of the key before this one", with NOT EXISTS, the plan was two
    // sequential scans of the outbox: 9 ms a call here.)
    await client.query(
      `INSERT INTO outbox_event (id, api, type, ordering_key, body)
       SELECT 'ev_a_' || g, 'userservice', 'updateNotification', 'fl_' || (g % 50), $1::json FROM generate_series(1, 150) g`,
      [body],
    );
    await client.query(`INSERT INTO event_delivery_attempt (event_id, attempt, started_at) SELECT id, 1, now() FROM outbox_event`);
    await client.query("VACUUM ANALYZE outbox_event");
    await client.query("VACUUM ANALYZE event_delivery_attempt");
    await client.query(
      `INSERT INTO outbox_event (id, api, type, ordering_key, body)
       SELECT 'ev_b_' || g, 'userservice', 'updateNotification', 'fl_' || (g % 3000), $1::json FROM generate_series(1, 9000) g`,
      [body],
    );
    await client.query(`INSERT INTO event_delivery_attempt (event_id, attempt, started_at) SELECT id, 1, now() FROM outbox_event WHERE id LIKE 'ev_b_%'`);
    await client.query(`UPDATE outbox_event SET state = 'delivered', attempts = 1 WHERE id <> 'ev_b_8999'`);
    await client.query(`UPDATE event_delivery_attempt SET finished_at = now(), outcome = 'delivered' WHERE event_id <> 'ev_b_8999'`);
  });
  afterAll(async () => session?.close());

  for (const mode of ["force_generic_plan", "force_custom_plan"] as const) {
    it(`reads the key's events through the key's index entries and the attempt through its own (${mode})`, async () => {
      // EXPLAIN without ANALYZE runs nothing: no lock is taken, no attempt taken back.
      const scans = await planScans(client, mode, "claimed(text, text, int)", CLAIMED_SQL, "claimed('fl_2999', 'ev_b_8999', 1)");
      const outbox = scans.filter((s) => s.relation === "outbox_event");
      expect(outbox.map((s) => [s.index, s.cond.includes("'dead'") ? "dead" : s.cond.includes("'pending'") ? "pending" : s.cond]), JSON.stringify(scans)).toEqual([
        ["outbox_event_ordering_key_state_seq_idx", "pending"],
        ["outbox_event_ordering_key_state_seq_idx", "dead"],
      ]);
      const attempts = scans.filter((s) => s.relation === "event_delivery_attempt");
      expect(attempts.length, JSON.stringify(scans)).toBeGreaterThan(0);
      expect(attempts.filter((s) => s.index !== "event_delivery_attempt_event_id_attempt_key"), JSON.stringify(scans)).toEqual([]);
    });
  }
});

/**
 * The record of a delivered event (what an inline run sends after its one event's POST) is
 * planned once per connection, then run from its generic plan, as every other hot statement is.
 * Written with a batch's arrays, PostgreSQL's generic plan assumed 100 events and always looked
 * costlier than a plan for the one event given, so each call was planned anew: 0.4 ms, three
 * times the statement's run, under load (pg_stat_statements' plans).
 */
describe("the record of one delivered event", () => {
  let session: Awaited<ReturnType<typeof createTestDatabaseWithClient>> | undefined;
  let client: pg.Client;
  const CALLS = 12;
  beforeAll(async () => {
    session = await createTestDatabaseWithClient();
    client = session.client;
    await deliveredHistory(client);
    // Events sent, each with its open first attempt, as a run leaves them before recording them.
    await client.query(
      `INSERT INTO outbox_event (id, api, type, ordering_key, body)
       SELECT 'ev_' || side || '_' || g, 'userservice', 'updateNotification', 'fl_' || side || '_' || g, $1::json
         FROM generate_series(1, ${CALLS}) g, unnest(ARRAY['one', 'many']) side`,
      [body],
    );
    await client.query(`INSERT INTO event_delivery_attempt (event_id, attempt, started_at) SELECT id, 1, now() FROM outbox_event WHERE state = 'pending'`);
    await client.query("VACUUM ANALYZE outbox_event");
    await client.query("VACUUM ANALYZE event_delivery_attempt");
  });
  afterAll(async () => session?.close());

  /** Records event `ev_<side>_<i>` delivered through the named prepared statement `side`; how many it recorded. */
  async function record(side: "one" | "many", i: number): Promise<number> {
    const id = `ev_${side}_${i}`;
    const [attempt] = (await client.query<{ id: string }>("SELECT id FROM event_delivery_attempt WHERE event_id = $1", [id])).rows;
    const item = [id, attempt!.id, 1, 12.5, 2.5, 201, `req-${i}`, null];
    const { rows } = await client.query<{ recorded: number }>({
      name: `delivered_${side}`,
      text: RECORD_DELIVERED_SQL[side],
      values: [...(side === "one" ? item : item.map((v) => [v])), "worker-1", null, 1],
    });
    return rows[0]!.recorded;
  }

  async function plans(side: "one" | "many"): Promise<{ generic: number; custom: number }> {
    const { rows } = await client.query<{ generic_plans: string; custom_plans: string }>(
      "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = $1",
      [`delivered_${side}`],
    );
    return { generic: Number(rows[0]!.generic_plans), custom: Number(rows[0]!.custom_plans) };
  }

  it("is planned for its first five runs only, then runs its generic plan, and records each event delivered", async () => {
    for (let i = 1; i <= CALLS; i++) expect(await record("one", i)).toBe(1);
    expect(await plans("one")).toEqual({ custom: 5, generic: CALLS - 5 });
    const { rows } = await client.query<{ state: string; attempts: number; outcome: string; status: number }>(
      `SELECT e.state, e.attempts, a.outcome, a.status
         FROM outbox_event e JOIN event_delivery_attempt a ON a.event_id = e.id WHERE e.id LIKE 'ev_one_%'`,
    );
    expect(rows).toHaveLength(CALLS);
    for (const row of rows) expect(row).toMatchObject({ state: "delivered", attempts: 1, outcome: "delivered", status: 201 });
  });

  it("finds the event and its attempt by their primary keys in that generic plan", async () => {
    const scans = await planScans(
      client,
      "force_generic_plan",
      "delivered(text, bigint, int, float8, float8, int, text, text, text, text, int)",
      RECORD_DELIVERED_SQL.one,
      "delivered('ev_one_1', 1, 1, 1, 1, 200, NULL, NULL, NULL, NULL, 1)",
    );
    await client.query("RESET plan_cache_mode");
    expect(scans.filter((s) => s.relation === "outbox_event").map((s) => s.index), JSON.stringify(scans)).toEqual(["outbox_event_pkey"]);
    expect(scans.filter((s) => s.relation === "event_delivery_attempt" && s.index !== "event_delivery_attempt_pkey" && s.index !== "event_delivery_attempt_event_id_attempt_key"), JSON.stringify(scans)).toEqual([]);
  });

  it("written with a batch's arrays, was planned at every call for one event (why it has its own text)", async () => {
    for (let i = 1; i <= CALLS; i++) expect(await record("many", i)).toBe(1);
    expect(await plans("many")).toEqual({ custom: CALLS, generic: 0 });
  });
});
