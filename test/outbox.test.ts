import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sql } from "../src/db/sql.js";
import { enqueueEvent } from "../src/events/outbox.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { clock, enqueue, ids, jobsOf, waitFor } from "./support/outbox-harness.js";

let database: TestDatabase;

beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database.drop();
});

describe("enqueueEvent", () => {
  it("writes the event envelope and its delivery job in the caller's transaction", async () => {
    const db = database.prisma;
    const event = await enqueue(database.db, {
      fleetId: "fl_commit",
      orderId: "po_commit",
      resource: { id: "po_commit", state: "completed", orderItem: [{ id: "1" }] },
    });

    const row = await db.outboxEvent.findUniqueOrThrow({ where: { id: event.id } });
    expect(row).toMatchObject({
      api: "productordering",
      type: "completedStateNotification",
      orderingKey: "fl_commit",
      fleetId: "fl_commit",
      orderId: "po_commit",
      state: "pending",
      attempts: 0,
    });
    expect(row.body).toEqual({
      id: event.id,
      type: "completedStateNotification",
      time: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      resource: { id: "po_commit", state: "completed", orderItem: [{ id: "1" }] },
    });
    expect(event.id).toMatch(/^ev_/);
    expect(await jobsOf(db, "fl_commit")).toBe(1);
  });

  it("leaves neither an event nor a job when the transaction rolls back", async () => {
    const db = database.prisma;
    let id: string | undefined;
    await expect(
      database.db.transaction(async (tx) => {
        id = (await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: {}, fleetId: "fl_rollback" }, clock, ids)).id;
        throw new Error("the business change failed");
      }),
    ).rejects.toThrow("the business change failed");
    expect(id).toBeDefined();
    expect(await db.outboxEvent.count({ where: { orderingKey: "fl_rollback" } })).toBe(0);
    expect(await jobsOf(db, "fl_rollback")).toBe(0);
  });

  it("sends a transaction's events without waiting for each one's answer; a failure among them fails its commit and writes nothing", async () => {
    const db = database.prisma;
    // The insert of a fl_stream event waits for an advisory lock this test holds; a fl_stream_bad
    // event's second insert fails.
    await db.$executeRawUnsafe(`
      CREATE FUNCTION test_outbox_stream() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.ordering_key = 'fl_stream' THEN PERFORM pg_advisory_xact_lock(4242); END IF;
        IF NEW.ordering_key = 'fl_stream_bad' AND EXISTS (SELECT 1 FROM outbox_event WHERE ordering_key = 'fl_stream_bad') THEN
          RAISE EXCEPTION 'injected: the second event cannot be written';
        END IF;
        RETURN NEW;
      END $$`);
    await db.$executeRawUnsafe(`CREATE TRIGGER test_outbox_stream BEFORE INSERT ON outbox_event FOR EACH ROW EXECUTE FUNCTION test_outbox_stream()`);
    const holder = new pg.Client({ connectionString: database.url });
    await holder.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("SELECT pg_advisory_xact_lock(4242)");
      let returned = 0;
      const committed = database.db.transaction(async (tx) => {
        for (let i = 0; i < 3; i++) {
          await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { n: i }, fleetId: "fl_stream" }, clock, ids);
          returned++;
        }
      });
      // The first insert waits for the lock, and the three calls have returned all the same.
      await waitFor("the first insert to wait for the lock", async () => {
        const [row] = await db.$queryRaw<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()`;
        return row!.n > 0;
      });
      expect(returned).toBe(3);
      expect(await db.outboxEvent.count({ where: { orderingKey: "fl_stream" } })).toBe(0);
      await holder.query("COMMIT");
      await committed;
      expect((await db.outboxEvent.findMany({ where: { orderingKey: "fl_stream" }, orderBy: { seq: "asc" } })).map((e) => (e.body as { resource: unknown }).resource)).toEqual([
        { n: 0 },
        { n: 1 },
        { n: 2 },
      ]);
      expect(await jobsOf(db, "fl_stream")).toBe(1);

      await expect(
        database.db.transaction(async (tx) => {
          for (let i = 0; i < 3; i++) await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { n: i }, fleetId: "fl_stream_bad" }, clock, ids);
        }),
      ).rejects.toThrow("injected: the second event cannot be written");
      expect(await db.outboxEvent.count({ where: { orderingKey: "fl_stream_bad" } })).toBe(0);
      expect(await jobsOf(db, "fl_stream_bad")).toBe(0);
    } finally {
      await holder.end();
      await db.$executeRawUnsafe("DROP TRIGGER test_outbox_stream ON outbox_event");
    }
  });

  it("keeps one job per ordering key, however many events wait", async () => {
    const db = database.prisma;
    await Promise.all(Array.from({ length: 10 }, () => enqueue(database.db, { fleetId: "fl_many" })));
    expect(await db.outboxEvent.count({ where: { orderingKey: "fl_many" } })).toBe(10);
    expect(await jobsOf(db, "fl_many")).toBe(1);
  });

  it("schedules each key once per transaction: one job, added once, for many events of several fleets", async () => {
    const db = database.prisma;
    await database.db.transaction(async (tx) => {
      for (let n = 0; n < 5; n++) {
        for (const fleetId of ["fl_tx_a", "fl_tx_b"]) {
          await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { n }, fleetId }, clock, ids);
        }
      }
    });
    expect(await db.outboxEvent.count({ where: { orderingKey: { in: ["fl_tx_a", "fl_tx_b"] } } })).toBe(10);
    // revision: graphile's upsert counts every add_job that met the key's job; 0 = added once.
    const jobs = await db.$queryRaw<{ key: string; revision: number; attempts: number }[]>`
      SELECT key, revision, attempts FROM graphile_worker._private_jobs
       WHERE key IN ('deliver:fl_tx_a', 'deliver:fl_tx_b') ORDER BY key`;
    expect(jobs).toEqual([
      { key: "deliver:fl_tx_a", revision: 0, attempts: 0 },
      { key: "deliver:fl_tx_b", revision: 0, attempts: 0 },
    ]);
  });

  it("reuses a key's waiting job, held from the worker's claim until the commit", async () => {
    const db = database.prisma;
    await enqueue(database.db, { fleetId: "fl_waiting" });
    const [before] = await db.$queryRaw<{ id: bigint; run_at: Date }[]>`
      SELECT id, run_at FROM graphile_worker._private_jobs WHERE key = 'deliver:fl_waiting'`;
    const worker = new pg.Client({ connectionString: database.url });
    await worker.connect();
    try {
      await database.db.transaction(async (tx) => {
        await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: {}, fleetId: "fl_waiting" }, clock, ids);
        // Its statement is pipelined: it has run once the transaction's next one is answered.
        await tx.query(sql`SELECT 1`);
        // graphile's claim (FOR UPDATE SKIP LOCKED) cannot take the job before this event commits.
        const claimable = await worker.query("SELECT id FROM graphile_worker._private_jobs WHERE key = 'deliver:fl_waiting' FOR UPDATE SKIP LOCKED");
        expect(claimable.rowCount).toBe(0);
      });
      const claimable = await worker.query("SELECT id FROM graphile_worker._private_jobs WHERE key = 'deliver:fl_waiting' FOR UPDATE SKIP LOCKED");
      expect(claimable.rowCount).toBe(1);
    } finally {
      await worker.end();
    }
    const jobs = await db.$queryRaw<{ id: bigint; run_at: Date; revision: number }[]>`
      SELECT id, run_at, revision FROM graphile_worker._private_jobs WHERE payload->>'orderingKey' = 'fl_waiting'`;
    // The same job, not added to again (no add_job), its run time kept.
    expect(jobs).toEqual([{ id: before!.id, run_at: before!.run_at, revision: 0 }]);
    expect(await db.outboxEvent.count({ where: { orderingKey: "fl_waiting" } })).toBe(2);
  });

  it("adds a second job for a key whose job is running (the delivery task keeps them apart)", async () => {
    const db = database.prisma;
    await enqueue(database.db, { fleetId: "fl_running" });
    // As a worker claiming it would.
    await db.$executeRaw`UPDATE graphile_worker._private_jobs SET locked_at = now(), locked_by = 'some-worker'
                          WHERE key = 'deliver:fl_running'`;
    await enqueue(database.db, { fleetId: "fl_running" });
    const jobs = await db.$queryRaw<{ key: string | null; locked_by: string | null }[]>`
      SELECT key, locked_by FROM graphile_worker._private_jobs
       WHERE payload->>'orderingKey' = 'fl_running' ORDER BY id`;
    expect(jobs).toEqual([
      { key: null, locked_by: "some-worker" },
      { key: "deliver:fl_running", locked_by: null },
    ]);
  });

  it("still adds a job when a worker claims the key's job while the event is being written", async () => {
    const db = database.prisma;
    await enqueue(database.db, { fleetId: "fl_race" });
    // A worker's claim of the key's job, not yet committed when the next event's add_job runs:
    // add_job sees the job free (no key to clear), its upsert waits for the claim, then skips the
    // now-running job; without a second add_job the event would have no job.
    const worker = new pg.Client({ connectionString: database.url });
    await worker.connect();
    try {
      await worker.query("BEGIN");
      await worker.query(
        "UPDATE graphile_worker._private_jobs SET locked_at = now(), locked_by = 'racing-worker' WHERE key = 'deliver:fl_race'",
      );
      const writing = enqueue(database.db, { fleetId: "fl_race" });
      await waitFor("the event's add_job to wait for the claim", async () => {
        const { rows } = await worker.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        );
        return rows[0]!.n > 0 ? true : undefined;
      });
      await worker.query("COMMIT");
      await writing;
    } finally {
      await worker.end();
    }
    const jobs = await db.$queryRaw<{ key: string | null; locked_by: string | null }[]>`
      SELECT key, locked_by FROM graphile_worker._private_jobs
       WHERE payload->>'orderingKey' = 'fl_race' ORDER BY id`;
    expect(jobs).toEqual([
      { key: null, locked_by: "racing-worker" },
      { key: "deliver:fl_race", locked_by: null },
    ]);
  });

  it("orders an event without a fleet by its order", async () => {
    const db = database.prisma;
    const event = await enqueue(database.db, { orderId: "po_alone", type: "failedStateNotification" });
    const row = await db.outboxEvent.findUniqueOrThrow({ where: { id: event.id } });
    expect(row.orderingKey).toBe("po_alone");
    expect(row.fleetId).toBeNull();
    expect(await jobsOf(db, "po_alone")).toBe(1);
  });

  it("refuses an event with neither a fleet nor an order", async () => {
    await expect(
      database.db.transaction((tx) =>
        enqueueEvent(tx, { api: "productordering", type: "completedStateNotification", resource: {} }, clock, ids),
      ),
    ).rejects.toThrow(/ordering key/);
  });

  it("gives the events of one fleet seqs in commit order when transactions overlap", async () => {
    const db = database.prisma;
    // The first transaction enqueues, then lingers before committing; the second one, started
    // later, must not get an earlier seq... nor commit first.
    let releaseFirst!: () => void;
    const firstMayCommit = new Promise<void>((resolve) => (releaseFirst = resolve));
    let firstId = "";
    const first = database.db.transaction(async (tx) => {
      const id = (await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: {}, fleetId: "fl_overlap" }, clock, ids)).id;
      // Its statement (pipelined) has run, and holds the fleet's lock, once the next one is answered.
      await tx.query(sql`SELECT 1`);
      firstId = id;
      await firstMayCommit;
    });
    while (firstId === "") await new Promise((r) => setTimeout(r, 5));
    let secondDone = false;
    const second = enqueue(database.db, { fleetId: "fl_overlap", api: "userservice", type: "updateNotification" }).then((e) => {
      secondDone = true;
      return e;
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(secondDone).toBe(false); // waits for the first transaction of its fleet
    releaseFirst();
    await first;
    const secondEvent = await second;
    const rows = await db.outboxEvent.findMany({ where: { orderingKey: "fl_overlap" }, orderBy: { seq: "asc" } });
    expect(rows.map((r) => r.id)).toEqual([firstId, secondEvent.id]);
  });
});
