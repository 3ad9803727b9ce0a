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
import { DELIVERY_LOCK_NAMESPACE, type EnqueuedEvent } from "../src/events/outbox.js";
import { createTokenCache, type TokenCache } from "../src/events/token-cache.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { enqueue, eventRow, FAST_RETRY } from "./support/outbox-harness.js";

let database: TestDatabase;
let gw: MockGateway;
let tokens: TokenCache;
let client: OrangeEventClient;
let pool: CountingPool;

/** A pool whose checked-out connections count the statements they run, and remember their backend pid. */
class CountingPool extends pg.Pool {
  statements = 0;
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
