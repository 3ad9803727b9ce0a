/**
 * The delivery run's statements: a key's delivered attempts are recorded together (one statement
 * for a batch), never before their POSTs were answered, and a failure or a crash between the POSTs
 * and that statement loses nothing (the events are sent again with the same ids).
 *
 * The task runs here by itself (no graphile runner), on a pool whose connections count their
 * statements, against the loopback mock gateway.
 */
import { setTimeout as delay } from "node:timers/promises";
import type { JobHelpers } from "graphile-worker";
import pg from "pg";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createDeliverEventsTask } from "../src/events/delivery.js";
import { createOrangeEventClient, type OrangeEventClient } from "../src/events/orange-client.js";
import { committedDeliveryJobs, DELIVERY_LOCK_NAMESPACE, enqueueEvent, type EnqueuedEvent, type RunDeliveries } from "../src/events/outbox.js";
import { createTokenCache, type TokenCache } from "../src/events/token-cache.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { clock, enqueue, eventRow, FAST_RETRY, ids } from "./support/outbox-harness.js";

let database: TestDatabase;
let gw: MockGateway;
let tokens: TokenCache;
let client: OrangeEventClient;
let pool: CountingPool;

/** A pool whose checked-out connections count the statements they run, and remember their backend pid. */
class CountingPool extends pg.Pool {
  statements = 0;
  /** Each statement's prepared name, or its text. */
  names: string[] = [];
  backendPids: number[] = [];

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void): void;
  override connect(
    callback?: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void,
  ): Promise<pg.PoolClient> | void {
    if (callback) return super.connect(callback);
    return super.connect().then((conn) => {
      this.backendPids.push((conn as unknown as { processID: number }).processID);
      const query = conn.query.bind(conn) as (...args: unknown[]) => unknown;
      (conn as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
        this.statements++;
        const q = args[0] as string | { name?: string; text?: string };
        this.names.push(typeof q === "string" ? q : (q.name ?? q.text ?? ""));
        return query(...args);
      };
      return conn;
    });
  }
}

beforeAll(async () => {
  database = await createTestDatabase();
  gw = await startMockGateway();
});
beforeEach(() => {
  gw.reset();
  tokens = createTokenCache({
    tokenUrl: gw.tokenUrl,
    clientId: gw.clientId,
    clientSecret: gw.clientSecret,
    timeoutMs: 2_000,
    retry: { attempts: 2, baseMs: 5, maxMs: 20 },
  });
  client = createOrangeEventClient({ baseUrl: gw.url, offer: "mba2", tokens, timeoutMs: 5_000 });
  pool = new CountingPool({ connectionString: database.url, max: 2 });
  pool.on("error", () => {});
  pool.on("connect", (c) => c.on("error", () => {}));
});
afterEach(async () => {
  await pool.end();
  await client.close();
  await tokens.close();
});
afterAll(async () => {
  await gw?.close();
  await database?.drop();
});

const db = () => database.prisma;
const sentIds = (fleetId: string) =>
  gw.received.filter((r) => (r.body as { resource?: { fleet?: string } }).resource?.fleet === fleetId).map((r) => (r.body as { id: string }).id);

/** `n` events of one fleet, written in one transaction (seq order = array order). */
async function eventsOf(fleet: string, n: number): Promise<EnqueuedEvent[]> {
  const events: EnqueuedEvent[] = [];
  for (let i = 0; i < n; i++) events.push(await enqueue(database.db, { fleetId: fleet, resource: { fleet, n: i } }));
  return events;
}

function task(send: OrangeEventClient["send"] = client.send) {
  return createDeliverEventsTask({ pool, client: { send }, retry: FAST_RETRY, runBudgetMs: 30_000, workerId: () => "test-worker" });
}

async function run(t: ReturnType<typeof task>, orderingKey: string): Promise<void> {
  await t({ orderingKey }, { abortSignal: new AbortController().signal, job: { id: "1" } } as unknown as JobHelpers);
}

async function advisoryLocks(): Promise<number> {
  const rows = await db().$queryRaw<{ n: number }[]>`
    SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = ${DELIVERY_LOCK_NAMESPACE}::int::oid`;
  return rows[0]!.n;
}

describe("a delivery run's statements", () => {
  it("records ten delivered events of a fleet in one statement after the first read, each with its attempt, in send order", async () => {
    const events = await eventsOf("fl_batch", 10);
    await run(task(), "fl_batch");

    expect(sentIds("fl_batch")).toEqual(events.map((e) => e.id));
    // The read (which takes the key lock and starts the first attempt), then one statement that
    // records the ten attempts and releases the lock (one statement per event before).
    expect(pool.statements).toBe(2);
    expect(await advisoryLocks()).toBe(0);
    let previousFinish = 0;
    for (const [i, e] of events.entries()) {
      const row = (await eventRow(db(), e.id))!;
      expect(row.state).toBe("delivered");
      expect(row.attempts).toBe(1);
      expect(row.lastStatus).toBe(201);
      expect(row.lastRequestId).toMatch(/^mock-/);
      expect(row.deliveryAttempts).toHaveLength(1);
      const [a] = row.deliveryAttempts;
      expect(a).toMatchObject({ attempt: 1, outcome: "delivered", status: 201, workerId: "test-worker", requestId: row.lastRequestId });
      // The attempt ends as its event is delivered; it started after its predecessor was delivered.
      expect(a!.finishedAt!.getTime()).toBe(row.deliveredAt!.getTime());
      expect(a!.startedAt.getTime()).toBeLessThanOrEqual(a!.finishedAt!.getTime());
      expect(a!.startedAt.getTime()).toBeGreaterThanOrEqual(previousFinish);
      previousFinish = a!.finishedAt!.getTime();
      if (i === 0) expect(row.deliveredAt!.getTime()).toBeGreaterThanOrEqual(row.createdAt.getTime());
    }
  });

  it("records at most 16 delivered attempts per statement: a crash re-sends no more than that", async () => {
    const events = await eventsOf("fl_bound", 40);
    await run(task(), "fl_bound");
    expect(sentIds("fl_bound")).toEqual(events.map((e) => e.id));
    // The read, then 16 + 16 + 8.
    expect(pool.statements).toBe(4);
    expect(await db().outboxEvent.count({ where: { orderingKey: "fl_bound", state: "delivered" } })).toBe(40);
    expect(await db().eventDeliveryAttempt.count({ where: { event: { orderingKey: "fl_bound" }, outcome: "delivered" } })).toBe(40);
  });

  it("records what was delivered once an answer is 250 ms old, when Orange answers slowly", async () => {
    const events = await eventsOf("fl_slow", 3);
    const slow: OrangeEventClient["send"] = async (api, event, signal) => {
      await delay(300);
      return client.send(api, event, signal);
    };
    await run(task(slow), "fl_slow");
    expect(sentIds("fl_slow")).toEqual(events.map((e) => e.id));
    // The read; the first two once the second answer came (the first was then 300 ms old); the third.
    expect(pool.statements).toBe(3);
    expect(await db().outboxEvent.count({ where: { orderingKey: "fl_slow", state: "delivered" } })).toBe(3);
  });

  it("on a failed POST mid-batch records the delivered ones, then the failure with its own attempt, and sends nothing after it", async () => {
    const events = await eventsOf("fl_fail", 6);
    let calls = 0;
    const failing: OrangeEventClient["send"] = async (api, event, signal) => {
      if (++calls === 4) return { outcome: "retry", status: 503, error: "HTTP 503" };
      return client.send(api, event, signal);
    };
    await run(task(failing), "fl_fail");

    expect(calls).toBe(4);
    expect(sentIds("fl_fail")).toEqual(events.slice(0, 3).map((e) => e.id));
    for (const e of events.slice(0, 3)) expect((await eventRow(db(), e.id))?.state).toBe("delivered");
    const failed = (await eventRow(db(), events[3]!.id))!;
    expect(failed).toMatchObject({ state: "pending", attempts: 1, lastStatus: 503, lastError: "HTTP 503" });
    expect(failed.deliveryAttempts).toHaveLength(1);
    expect(failed.deliveryAttempts[0]).toMatchObject({ attempt: 1, outcome: "retry", status: 503, error: "HTTP 503", workerId: "test-worker" });
    expect(failed.deliveryAttempts[0]!.finishedAt!.getTime()).toBeGreaterThanOrEqual(failed.deliveryAttempts[0]!.startedAt.getTime());
    for (const e of events.slice(4)) {
      const row = (await eventRow(db(), e.id))!;
      expect(row).toMatchObject({ state: "pending", attempts: 0 });
      expect(row.deliveryAttempts).toHaveLength(0);
    }
    // The key's job is scheduled at the retry; the lock is released.
    const jobs = await db().$queryRaw<{ n: number }[]>`SELECT count(*)::int AS n FROM graphile_worker.jobs WHERE key = 'deliver:fl_fail'`;
    expect(jobs[0]!.n).toBe(1);
    expect(await advisoryLocks()).toBe(0);

    // The next run sends the failed event first, then the rest, in order.
    await run(task(), "fl_fail");
    expect(sentIds("fl_fail")).toEqual(events.map((e) => e.id));
    const retried = (await eventRow(db(), events[3]!.id))!;
    expect(retried.deliveryAttempts.map((a) => [a.attempt, a.outcome])).toEqual([
      [1, "retry"],
      [2, "delivered"],
    ]);
    expect(retried.attempts).toBe(2);
  });

  it("on a park mid-batch records the delivered ones and holds the key behind the dead event", async () => {
    const events = await eventsOf("fl_park", 5);
    let calls = 0;
    const parking: OrangeEventClient["send"] = async (api, event, signal) => {
      if (++calls === 2) return { outcome: "park", status: 400, body: '{"code":"bad"}', error: "HTTP 400" };
      return client.send(api, event, signal);
    };
    await run(task(parking), "fl_park");
    expect(calls).toBe(2);
    expect((await eventRow(db(), events[0]!.id))?.state).toBe("delivered");
    const dead = (await eventRow(db(), events[1]!.id))!;
    expect(dead).toMatchObject({ state: "dead", attempts: 1, lastStatus: 400 });
    expect(dead.deliveryAttempts.map((a) => [a.attempt, a.outcome, a.status])).toEqual([[1, "park", 400]]);
    for (const e of events.slice(2)) expect((await eventRow(db(), e.id))?.attempts).toBe(0);
    expect(await advisoryLocks()).toBe(0);
  });

  it("when the connection dies before the batch is recorded, the next run sends those events again with the same ids", async () => {
    const events = await eventsOf("fl_crash", 5);
    const killer = new pg.Client({ connectionString: database.url });
    await killer.connect();
    let calls = 0;
    const dying: OrangeEventClient["send"] = async (api, event, signal) => {
      const result = await client.send(api, event, signal);
      // The fifth event is answered; the run's connection dies before it records the batch.
      if (++calls === 5) await killer.query("SELECT pg_terminate_backend($1)", [pool.backendPids.at(-1)]);
      return result;
    };
    try {
      await expect(run(task(dying), "fl_crash")).rejects.toThrow();
    } finally {
      await killer.end();
    }
    expect(sentIds("fl_crash")).toEqual(events.map((e) => e.id));
    // Nothing of the batch was recorded but the first attempt's start (left open by the dead run).
    for (const [i, e] of events.entries()) {
      const row = (await eventRow(db(), e.id))!;
      expect(row.state).toBe("pending");
      expect(row.deliveryAttempts.map((a) => [a.attempt, a.finishedAt])).toEqual(i === 0 ? [[1, null]] : []);
    }

    // Its lock went with the connection: the next run takes the key and sends them all again.
    await run(task(), "fl_crash");
    expect(sentIds("fl_crash")).toEqual([...events, ...events].map((e) => e.id));
    for (const [i, e] of events.entries()) {
      const row = (await eventRow(db(), e.id))!;
      expect(row.state).toBe("delivered");
      expect(row.deliveryAttempts.map((a) => [a.attempt, a.outcome])).toEqual(
        i === 0
          ? [
              [1, "retry"],
              [2, "delivered"],
            ]
          : [[1, "delivered"]],
      );
      if (i === 0) expect(row.deliveryAttempts[0]?.error).toMatch(/^interrupted/);
    }
    expect(await db().eventDeliveryAttempt.count({ where: { event: { orderingKey: "fl_crash" }, finishedAt: null } })).toBe(0);
  });
});

/**
 * An inline run's transaction writes its `n` events of one fleet (seq order = array order): the
 * first one claimed, its first attempt started in that transaction (outbox.ts).
 */
async function inlineEventsOf(fleet: string, n: number): Promise<{ events: EnqueuedEvent[]; run: RunDeliveries }> {
  const run: RunDeliveries = { keys: new Map(), inline: true, claims: new Map(), workerId: "inline-worker" };
  const events = await committedDeliveryJobs.run(run, () =>
    database.db.transaction(async (tx) => {
      const written: EnqueuedEvent[] = [];
      for (let i = 0; i < n; i++) {
        written.push(await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { fleet, n: i }, fleetId: fleet }, clock, ids));
      }
      return written;
    }),
  );
  return { events, run };
}

describe("an inline run's own event, its first attempt started by the transaction that wrote it", () => {
  it("is sent as written, the key's lock taken by a read-only statement, then recorded on the attempt that transaction started", async () => {
    const { events, run: inline } = await inlineEventsOf("fl_claim", 1);
    const [event] = events;
    const claim = inline.claims!.get("fl_claim")!;
    expect(claim).toMatchObject({ id: event!.id, api: "userservice", type: "updateNotification", more: false });
    // Committed with its event: the attempt is open before any delivery run.
    const [opened] = (await eventRow(db(), event!.id))!.deliveryAttempts;
    expect(opened).toMatchObject({ attempt: 1, workerId: "inline-worker", finishedAt: null, outcome: null });

    await task().deliverClaimed("fl_claim", claim);

    expect(gw.received.map((r) => r.body)).toEqual([{ ...event!.body }]);
    // The lock statement (which reads no event back and, the event still first, writes nothing),
    // then the record; not the read of the key's events, which locks the event's row and starts
    // an attempt in a transaction of its own.
    expect(pool.names).toEqual(["outbox_claimed", "outbox_attempt_delivered"]);
    expect(await advisoryLocks()).toBe(0);
    const row = (await eventRow(db(), event!.id))!;
    expect(row).toMatchObject({ state: "delivered", attempts: 1, lastStatus: 201 });
    expect(row.deliveryAttempts).toHaveLength(1);
    expect(row.deliveryAttempts[0]).toMatchObject({ id: opened!.id, attempt: 1, outcome: "delivered", status: 201, workerId: "inline-worker" });
    expect(row.deliveryAttempts[0]!.finishedAt!.getTime()).toBe(row.deliveredAt!.getTime());
  });

  it("waits for an earlier pending event of its key: that attempt, never made, is taken back, and both go in seq order", async () => {
    const [earlier] = await eventsOf("fl_behind", 1);
    const { events, run: inline } = await inlineEventsOf("fl_behind", 1);
    await task().deliverClaimed("fl_behind", inline.claims!.get("fl_behind")!);

    expect(sentIds("fl_behind")).toEqual([earlier!.id, events[0]!.id]);
    for (const e of [earlier!, events[0]!]) {
      const row = (await eventRow(db(), e.id))!;
      expect(row).toMatchObject({ state: "delivered", attempts: 1 });
      // One attempt each, delivered: none reported interrupted.
      expect(row.deliveryAttempts.map((a) => [a.attempt, a.outcome, a.error])).toEqual([[1, "delivered", null]]);
    }
    expect(await advisoryLocks()).toBe(0);
  });

  it("sends nothing while another run holds its key: that attempt is taken back, and the key's job comes back shortly", async () => {
    const { events, run: inline } = await inlineEventsOf("fl_busy", 1);
    const holder = new pg.Client({ connectionString: database.url });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock($1::int, hashtext($2))", [DELIVERY_LOCK_NAMESPACE, "fl_busy"]);
      await task().deliverClaimed("fl_busy", inline.claims!.get("fl_busy")!);
      expect(sentIds("fl_busy")).toEqual([]);
      const row = (await eventRow(db(), events[0]!.id))!;
      expect(row).toMatchObject({ state: "pending", attempts: 0 });
      expect(row.deliveryAttempts).toEqual([]);
      const jobs = await db().$queryRaw<{ n: number }[]>`
        SELECT count(*)::int AS n FROM graphile_worker.jobs WHERE key = 'deliver:fl_busy' AND run_at > now()`;
      expect(jobs[0]!.n).toBe(1);
    } finally {
      await holder.end();
    }
    // The key's next run delivers it, its only attempt numbered 1.
    await run(task(), "fl_busy");
    expect(sentIds("fl_busy")).toEqual([events[0]!.id]);
    expect((await eventRow(db(), events[0]!.id))!.deliveryAttempts.map((a) => [a.attempt, a.outcome])).toEqual([[1, "delivered"]]);
  });

  it("goes on with the key's later events that its own transaction wrote, then releases the key", async () => {
    const { events, run: inline } = await inlineEventsOf("fl_more", 3);
    const claim = inline.claims!.get("fl_more")!;
    expect(claim).toMatchObject({ id: events[0]!.id, more: true });
    // Only the first has an attempt started.
    expect((await eventRow(db(), events[1]!.id))!.deliveryAttempts).toEqual([]);
    await task().deliverClaimed("fl_more", claim);

    expect(sentIds("fl_more")).toEqual(events.map((e) => e.id));
    for (const e of events) {
      const row = (await eventRow(db(), e.id))!;
      expect(row.state).toBe("delivered");
      expect(row.deliveryAttempts.map((a) => [a.attempt, a.outcome])).toEqual([[1, "delivered"]]);
    }
    expect(await advisoryLocks()).toBe(0);
  });

  it("rolled back, leaves neither the event, nor its attempt, nor a claim", async () => {
    const inline: RunDeliveries = { keys: new Map(), inline: true, claims: new Map(), workerId: "inline-worker" };
    await expect(
      committedDeliveryJobs.run(inline, () =>
        database.db.transaction(async (tx) => {
          await enqueueEvent(tx, { api: "userservice", type: "updateNotification", resource: { fleet: "fl_rollback" }, fleetId: "fl_rollback" }, clock, ids);
          throw new Error("rolled back");
        }),
      ),
    ).rejects.toThrow("rolled back");
    expect(inline.claims!.size).toBe(0);
    expect(inline.keys.size).toBe(0);
    expect(await db().outboxEvent.count({ where: { orderingKey: "fl_rollback" } })).toBe(0);
    expect(await db().eventDeliveryAttempt.count({ where: { event: { orderingKey: "fl_rollback" } } })).toBe(0);
  });
});
