import { randomBytes } from "node:crypto";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { deferralDelayMs } from "../src/domain/lifecycle.js";
import { LOST_RUN } from "../src/domain/request-jobs.js";
import { startMockGateway, type MockGateway, type ReceivedEvent } from "../src/simulator/gateway.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { waitFor } from "./support/outbox-harness.js";
import { parseExposition, valueOf } from "./support/prometheus.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * Inline runs: a server that acknowledges an asynchronous request and runs the worker (ROLE=all)
 * carries the request out itself as soon as the acknowledgement is committed, and delivers its
 * event, without a job (none added, claimed or completed). What that must not cost: a run that
 * fails is handed to a job; a run cut by kill -9 is found by the sweep once past the lease, and
 * carried out once.
 *
 * Every job graphile stores is logged by a trigger (a table of this test), so that what went
 * through the queue is read from the database, not guessed.
 */

const ORDER_URL = "/productordering/v2/productOrder";
/** ≥ 6 × ORANGE_EVENT_TIMEOUT_MS: a run (inline, or a job's) is presumed dead after it. */
const LEASE_MS = 3_000;
const METRICS_TOKEN = "metrics-inline-runs-5c1e";

let database: TestDatabase;
let gw: MockGateway;
const servers: ServerProcess[] = [];

beforeAll(async () => {
  [database, gw] = await Promise.all([createTestDatabase(), startMockGateway()]);
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop(5_000)));
});
afterAll(async () => {
  await gw?.close();
  await database?.drop();
});

async function server(role: "all" | "api" | "worker", env: Record<string, string> = {}): Promise<ServerProcess> {
  const s = await startServerProcess({
    env: {
      DATABASE_URL: database.url,
      ROLE: role,
      ORDERING_MODE: "async",
      UPDATE_MODE: "async",
      ...gatewayEnv(gw),
      ORANGE_EVENT_TIMEOUT_MS: "500",
      WORKER_LEASE_MS: String(LEASE_MS),
      WORKER_SWEEP_INTERVAL_MS: "300",
      EVENT_RETRY_BASE_MS: "50",
      EVENT_RETRY_MAX_MS: "200",
      METRICS_TOKEN,
      ...env,
    },
  });
  servers.push(s);
  // graphile's schema exists once a worker has started: the job log goes on it then.
  if (role !== "api") await logJobs();
  return s;
}

let logging = false;
async function logJobs(): Promise<void> {
  if (logging) return;
  logging = true;
  await database.prisma.$executeRawUnsafe("CREATE TABLE test_job_log (task text, key text, at timestamptz DEFAULT clock_timestamp())");
  await database.prisma.$executeRawUnsafe(`
    CREATE FUNCTION test_log_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO test_job_log (task, key)
        SELECT t.identifier, NEW.key FROM graphile_worker._private_tasks t WHERE t.id = NEW.task_id;
      RETURN NEW;
    END $$`);
  await database.prisma.$executeRawUnsafe(`
    CREATE TRIGGER test_log_job AFTER INSERT OR UPDATE OF run_at ON graphile_worker._private_jobs
      FOR EACH ROW EXECUTE FUNCTION test_log_job()`);
}

async function jobsFor(...keys: string[]): Promise<{ task: string; key: string }[]> {
  return database.prisma.$queryRaw<{ task: string; key: string }[]>`
    SELECT task, key FROM test_job_log WHERE key = ANY(${keys}::text[]) ORDER BY at`;
}

function uc2(orderRef: string, quantity = 2) {
  return {
    externalReference: { type: "orange", id: orderRef },
    customer: { externalReference: { type: "orange", id: `CUS-${orderRef}` }, tradingName: "Boulangerie Martin" },
    orderItem: [
      { id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } }, productRef: { userServiceQuantity: quantity } },
    ],
  };
}

async function post(s: ServerProcess, path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${s.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${s.token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    headersTimeout: 20_000,
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

/** Every async request acknowledged first, then carried out by its run (none carried out before its acknowledgement). */
const ACK_FIRST = { ASYNC_AT_ONCE_MAX_LICENCES: "0" };

const until = <T,>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> => waitFor(what, probe, timeoutMs);

/**
 * A trigger on `table` that does `action` the first time it fires with `when` true (a sequence
 * counts even in a transaction the action rolls back); the function it returns drops it.
 */
async function onFirst(name: string, table: string, timing: string, action: string, when = "TRUE"): Promise<() => Promise<void>> {
  const row = timing.includes("FOR EACH ROW");
  await database.prisma.$executeRawUnsafe(`CREATE SEQUENCE ${name}_seq`);
  await database.prisma.$executeRawUnsafe(`
    CREATE FUNCTION ${name}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF ${when} AND nextval('${name}_seq') = 1 THEN ${action}; END IF;
      RETURN ${row ? "NEW" : "NULL"};
    END $$`);
  await database.prisma.$executeRawUnsafe(`CREATE TRIGGER ${name} ${timing.replace(" ON ", ` ON ${table} `)} EXECUTE FUNCTION ${name}()`);
  return async () => {
    await database.prisma.$executeRawUnsafe(`DROP TRIGGER ${name} ON ${table}`);
  };
}

/** The first write of an order's `completed` state fails (a serialization failure, as under contention). */
function failFirstCompletion(name: string): Promise<() => Promise<void>> {
  return onFirst(
    name,
    "product_order",
    "BEFORE UPDATE OF state ON FOR EACH ROW",
    "RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001'",
    "NEW.state = 'completed'",
  );
}

/** Waits until a run of this test's database sleeps in a trigger (pg_sleep). */
async function stalled(): Promise<void> {
  await until("a run to stall in its transaction", async () => {
    const [n] = await database.prisma.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()`;
    return n!.n > 0 ? true : undefined;
  });
}

/** partner_requests_acknowledged_total of the server, by run. */
async function acknowledgedRuns(s: ServerProcess, kind: "order" | "update"): Promise<{ inline: number; queued: number }> {
  const res = await request(`${s.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
  const samples = parseExposition(await res.body.text());
  const of = (run: string) => valueOf(samples, "partner_requests_acknowledged_total", { kind, run }) ?? NaN;
  return { inline: of("inline"), queued: of("queued") };
}

function eventsOf(orderId: unknown): ReceivedEvent[] {
  return gw.delivered().filter((r) => (r.body as { resource: { id?: string } }).resource.id === orderId);
}

async function order(s: ServerProcess, quantity = 2) {
  const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
  const ack = await post(s, ORDER_URL, uc2(orderRef, quantity));
  expect(ack.status, JSON.stringify(ack.body)).toBe(201);
  expect(ack.body.state).toBe("acknowledged");
  return { orderRef, id: ack.body.id as string };
}

async function historyKinds(requestId: string): Promise<string[]> {
  const rows = await database.prisma.historyEntry.findMany({ where: { requestId }, orderBy: { id: "asc" } });
  return rows.map((r) => r.kind);
}

/** Each order (of 2 licences) completed at its first run, its licences written and its event sent, once. */
async function expectCarriedOutOnce(orders: { id: string }[]): Promise<void> {
  for (const o of orders) {
    await until(`the event of ${o.id}`, () => (eventsOf(o.id).length > 0 ? true : undefined));
    expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id: o.id } })).toMatchObject({ state: "completed", attempts: 0 });
    expect(await database.prisma.licence.count({ where: { orderId: o.id } })).toBe(2);
    expect(eventsOf(o.id)).toHaveLength(1);
  }
}

/**
 * Orange suspends the licence, then reactivates it: both acknowledged; both events announced in
 * that order, and the licence ends as Orange asked last. The two updates as stored.
 */
async function suspendThenReactivate(s: ServerProcess, licenceId: string) {
  const refs = { suspend: `UPD-${randomBytes(5).toString("hex")}`, reactivate: `UPD-${randomBytes(5).toString("hex")}` };
  for (const [step, externalState] of [["suspend", "suspended"], ["reactivate", "active"]] as const) {
    const ack = await post(s, "/userservice/v2/userService/update", {
      externalReference: { type: "orange", id: refs[step] },
      userService: [{ id: licenceId, externalState }],
    });
    expect(ack.body.state, JSON.stringify(ack.body)).toBe("acknowledged");
  }
  const eventOf = (ref: string) =>
    gw.delivered().findIndex((r) => (r.body as { resource: { externalReference?: { id?: string } } }).resource.externalReference?.id === ref);
  await until("both updates' events", () => (eventOf(refs.suspend) >= 0 && eventOf(refs.reactivate) >= 0 ? true : undefined));
  expect(eventOf(refs.suspend)).toBeLessThan(eventOf(refs.reactivate));
  expect(await database.prisma.licence.findUniqueOrThrow({ where: { id: licenceId } })).toMatchObject({ state: "active", externalState: "active" });
  return {
    suspension: await database.prisma.licenceUpdate.findFirstOrThrow({ where: { orangeRef: refs.suspend } }),
    reactivation: await database.prisma.licenceUpdate.findFirstOrThrow({ where: { orangeRef: refs.reactivate } }),
  };
}

describe("an acknowledged request in the process that acknowledged it (ROLE=all)", () => {
  it("is carried out before it is acknowledged, and its event delivered without any job: none added for the request or its fleet", async () => {
    const s = await server("all");
    const { id } = await order(s, 3);
    // Small (3 licences): stored, carried out and announced in the transaction that answered it.
    expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id } })).toMatchObject({ state: "completed" });
    const [event] = await until("the order's event", () => (eventsOf(id).length > 0 ? eventsOf(id) : undefined));
    expect(event!.body).toMatchObject({ type: "completedStateNotification", resource: { id, state: "completed" } });

    const row = await database.prisma.productOrder.findUniqueOrThrow({ where: { id } });
    expect(row).toMatchObject({ state: "completed", attempts: 0 });
    expect(await database.prisma.licence.count({ where: { orderId: id } })).toBe(3);
    const [outboxEvent] = await database.prisma.outboxEvent.findMany({ where: { orderId: id } });
    expect(outboxEvent).toMatchObject({ state: "delivered", attempts: 1 });
    // Nothing went through the queue: no job for the order, none for its fleet's events.
    expect(await jobsFor(`order:${id}`, `deliver:${outboxEvent!.fleetId}`)).toEqual([]);
    // Acknowledged once carried out: the history says it in that order.
    expect(await historyKinds(id)).toEqual(["request.received", "request.completed", "request.answered"]);
    expect(eventsOf(id)).toHaveLength(1);
    expect(await acknowledgedRuns(s, "order")).toEqual({ inline: 1, queued: 0 });
  }, 60_000);

  it("over ASYNC_AT_ONCE_MAX_LICENCES, is acknowledged first and carried out by its run, without a job either", async () => {
    const s = await server("all", { ASYNC_AT_ONCE_MAX_LICENCES: "2" });
    const small = await order(s, 2);
    const large = await order(s, 3);
    await until("both orders' events", () => (eventsOf(small.id).length > 0 && eventsOf(large.id).length > 0 ? true : undefined));
    expect(await historyKinds(small.id)).toEqual(["request.received", "request.completed", "request.answered"]);
    expect(await historyKinds(large.id)).toEqual(["request.received", "request.answered", "request.completed"]);
    for (const o of [small, large]) {
      expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id: o.id } })).toMatchObject({ state: "completed", attempts: 0 });
      expect(await jobsFor(`order:${o.id}`)).toEqual([]);
    }
    expect(await database.prisma.licence.count({ where: { orderId: large.id } })).toBe(3);
    expect(await acknowledgedRuns(s, "order")).toEqual({ inline: 2, queued: 0 });
  }, 60_000);

  it("whose transaction fails before it is acknowledged is stored with a job instead, and ends completed once", async () => {
    const s = await server("all");
    // The transaction that carries it out cannot write its outcome (a serialization failure, as under contention).
    const drop = await failFirstCompletion("test_fail_at_once");
    try {
      const { id } = await order(s);
      await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
      // The failed transaction left nothing: the request was stored by the next one, with its job.
      expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id } })).toMatchObject({ state: "completed", attempts: 0 });
      expect(await database.prisma.licence.count({ where: { orderId: id } })).toBe(2);
      expect(await jobsFor(`order:${id}`)).toEqual([{ task: "process_order", key: `order:${id}` }]);
      expect(await historyKinds(id)).toEqual(["request.received", "request.answered", "request.completed"]);
      expect(eventsOf(id)).toHaveLength(1);
      expect(await acknowledgedRuns(s, "order")).toEqual({ inline: 0, queued: 1 });
    } finally {
      await drop();
    }
  }, 60_000);

  it("answers a retry of the same reference from what is stored, and carries the order out once", async () => {
    const s = await server("all");
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const [a, b] = await Promise.all([post(s, ORDER_URL, uc2(orderRef)), post(s, ORDER_URL, uc2(orderRef))]);
    expect([a.status, b.status]).toEqual([201, 201]);
    expect(a.body.id).toBe(b.body.id);
    const id = a.body.id as string;
    await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
    const again = await post(s, ORDER_URL, uc2(orderRef));
    // Stored: the acknowledgement is what a retry gets, whatever happened since.
    expect(again.body).toMatchObject({ id, state: "acknowledged" });
    const changed = await post(s, ORDER_URL, uc2(orderRef, 5));
    expect(changed.status, JSON.stringify(changed.body)).toBe(409);
    expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef } })).toBe(1);
    expect(await database.prisma.licence.count({ where: { orderId: id } })).toBe(2);
    const kinds = await historyKinds(id);
    expect(kinds.filter((k) => k === "request.completed")).toHaveLength(1);
    expect(kinds.filter((k) => k === "request.replayed" || k === "request.received")).toHaveLength(3);
    expect(eventsOf(id)).toHaveLength(1);
  }, 60_000);

  it("updates too: a suspension acknowledged, carried out and announced without a job", async () => {
    const s = await server("all");
    const { id } = await order(s, 1);
    await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
    const licence = await database.prisma.licence.findFirstOrThrow({ where: { orderId: id } });
    const updateRef = `UPD-${randomBytes(5).toString("hex")}`;
    const ack = await post(s, "/userservice/v2/userService/update", {
      externalReference: { type: "orange", id: updateRef },
      userService: [{ id: licence.id, externalState: "suspended" }],
    });
    expect(ack.body.state, JSON.stringify(ack.body)).toBe("acknowledged");
    const event = await until("the update's event", () =>
      gw.delivered().find((r) => (r.body as { resource: { externalReference?: { id?: string } } }).resource.externalReference?.id === updateRef),
    );
    expect(event.body).toMatchObject({ type: "updateNotification", resource: { state: "completed" } });
    const update = await database.prisma.licenceUpdate.findFirstOrThrow({ where: { orangeRef: updateRef } });
    expect(update).toMatchObject({ state: "completed", attempts: 0 });
    expect(await database.prisma.licence.findUniqueOrThrow({ where: { id: licence.id } })).toMatchObject({ state: "inactive" });
    expect(await jobsFor(`update:${update.id}`, `deliver:${licence.fleetId}`)).toEqual([]);
  }, 60_000);

  it("acknowledged first, is handed to a job when its run fails, and ends completed once", async () => {
    const s = await server("all", ACK_FIRST);
    // The first run's outcome cannot be written (a serialization failure, as under contention).
    const drop = await failFirstCompletion("test_fail_first_run");
    try {
      const { id } = await order(s);
      await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
      const row = await database.prisma.productOrder.findUniqueOrThrow({ where: { id } });
      expect(row).toMatchObject({ state: "completed", attempts: 1 });
      expect(row.lastError).toMatch(/could not serialize/);
      expect(await database.prisma.licence.count({ where: { orderId: id } })).toBe(2);
      // The failed inline run's job carried it out.
      expect(await jobsFor(`order:${id}`)).toEqual([{ task: "process_order", key: `order:${id}` }]);
      expect(await historyKinds(id)).toEqual(["request.received", "request.answered", "request.run-failed", "request.completed"]);
      expect(eventsOf(id)).toHaveLength(1);
    } finally {
      await drop();
    }
  }, 60_000);

  it("keeps Orange's order of the changes of a licence: a reactivation waits for the suspension sent before it, whose run failed", async () => {
    const s = await server("all", ACK_FIRST);
    const { id } = await order(s, 1);
    await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
    const licence = await database.prisma.licence.findFirstOrThrow({ where: { orderId: id } });
    // The suspension's first run cannot be written (a serialization failure): its job tries it
    // again a second later. Orange meanwhile sends the reactivation, acknowledged at once.
    const drop = await onFirst(
      "test_fail_first_suspension",
      "licence",
      "BEFORE UPDATE OF state ON FOR EACH ROW",
      "RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001'",
      "NEW.state = 'inactive'",
    );
    try {
      const { suspension, reactivation } = await suspendThenReactivate(s, licence.id);
      expect(suspension).toMatchObject({ state: "completed", attempts: 1 });
      // Waiting for its turn is not a failed attempt.
      expect(reactivation).toMatchObject({ state: "completed", attempts: 0 });
      expect(reactivation.completedAt!.getTime()).toBeGreaterThan(suspension.completedAt!.getTime());
      expect(await historyKinds(reactivation.id)).toEqual(["request.received", "request.answered", "licence.changed", "request.completed"]);
    } finally {
      await drop();
    }
  }, 60_000);

  it("acknowledged first and cut by kill -9, is carried out once by the next process, once past the lease", async () => {
    const first = await server("all", ACK_FIRST);
    // The first run stops while it writes the licences, before its COMMIT is sent, long enough to
    // be killed there.
    const drop = await onFirst("test_stall_first_run", "licence", "AFTER INSERT ON FOR EACH STATEMENT", "PERFORM pg_sleep(2)");
    try {
      const { id } = await order(first);
      await stalled();
      first.child.kill("SIGKILL");
      await until("the first server's death", () => (first.alive() ? undefined : true));
      const killedAt = Date.now();
      // Acknowledged, no job: only the sweep can find it.
      expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id } })).toMatchObject({ state: "acknowledged" });

      await server("all");
      await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
      const row = await database.prisma.productOrder.findUniqueOrThrow({ where: { id } });
      expect(row).toMatchObject({ state: "completed", attempts: 1, lastError: LOST_RUN });
      // Not before its lease had passed: a run under way elsewhere is not doubled.
      expect(row.completedAt!.getTime() - row.createdAt.getTime()).toBeGreaterThanOrEqual(LEASE_MS);
      expect(Date.now() - killedAt).toBeLessThan(30_000);
      expect(await database.prisma.licence.count({ where: { orderId: id } })).toBe(2);
      expect(await jobsFor(`order:${id}`)).toEqual([{ task: "process_order", key: `order:${id}` }]);
      expect(eventsOf(id)).toHaveLength(1);
    } finally {
      await drop();
    }
  }, 90_000);
});

describe("an async request carried out before it is acknowledged, when things go wrong", () => {
  it("keeps Orange's order of the changes of a licence: a reactivation waits for the suspension before it, stored with a job after its transaction failed", async () => {
    const s = await server("all");
    const { id } = await order(s, 1);
    await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
    const licence = await database.prisma.licence.findFirstOrThrow({ where: { orderId: id } });
    // The suspension's transaction fails, and so does the first run of the job it is then
    // stored with (a second later, graphile's backoff, it succeeds). The reactivation comes
    // meanwhile: it must not go first.
    await database.prisma.$executeRawUnsafe("CREATE SEQUENCE test_fail_twice_seq");
    await database.prisma.$executeRawUnsafe(`
      CREATE FUNCTION test_fail_twice() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.state = 'inactive' AND nextval('test_fail_twice_seq') <= 2 THEN
          RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001';
        END IF;
        RETURN NEW;
      END $$`);
    await database.prisma.$executeRawUnsafe("CREATE TRIGGER test_fail_twice BEFORE UPDATE OF state ON licence FOR EACH ROW EXECUTE FUNCTION test_fail_twice()");
    const drop = () => database.prisma.$executeRawUnsafe("DROP TRIGGER test_fail_twice ON licence");
    try {
      const { suspension, reactivation } = await suspendThenReactivate(s, licence.id);
      // The suspension's failed transaction left nothing; its job's failed run is counted.
      expect(suspension).toMatchObject({ state: "completed", attempts: 1 });
      expect(reactivation).toMatchObject({ state: "completed", attempts: 0 });
      expect(reactivation.completedAt!.getTime()).toBeGreaterThan(suspension.completedAt!.getTime());
      expect(await jobsFor(`update:${suspension.id}`)).toEqual([
        { task: "process_update", key: `update:${suspension.id}` },
        { task: "process_update", key: `update:${suspension.id}` },
      ]);
      // The reactivation was stored and acknowledged without being carried out: its job did it, after the suspension.
      expect(await historyKinds(reactivation.id)).toEqual(["request.received", "request.answered", "licence.changed", "request.completed"]);
      expect((await jobsFor(`update:${reactivation.id}`)).length).toBeGreaterThanOrEqual(1);
    } finally {
      await drop();
    }
  }, 60_000);

  it("cut by kill -9 before it is acknowledged, leaves nothing; Orange's retry on the next process carries it out once", async () => {
    const first = await server("all");
    const drop = await onFirst("test_stall_at_once", "licence", "AFTER INSERT ON FOR EACH STATEMENT", "PERFORM pg_sleep(2)");
    try {
      const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
      const asked = post(first, ORDER_URL, uc2(orderRef)).then(
        (r) => r,
        (err: unknown) => err,
      );
      await stalled();
      first.child.kill("SIGKILL");
      // Never answered: Orange has no acknowledgement, and nothing is stored under its reference.
      expect(await asked).toBeInstanceOf(Error);
      expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef } })).toBe(0);

      const second = await server("all");
      const again = await post(second, ORDER_URL, uc2(orderRef));
      expect(again.body).toMatchObject({ state: "acknowledged" });
      const id = again.body.id as string;
      await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
      expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id } })).toMatchObject({ state: "completed", attempts: 0 });
      expect(await database.prisma.licence.count({ where: { orderId: id } })).toBe(2);
      expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef } })).toBe(1);
      expect(eventsOf(id)).toHaveLength(1);
    } finally {
      await drop();
    }
  }, 90_000);

  it("waiting for a slot past the bound, is stored with a job and acknowledged; a SIGTERM then loses nothing", async () => {
    const first = await server("all", { WORKER_INLINE_CONCURRENCY: "1" });
    // The one slot is held by a transaction that stalls before its commit, longer than the 2 s
    // an acknowledgement waits for a slot.
    const drop = await onFirst("test_hold_at_once", "product_order", "BEFORE UPDATE OF state ON FOR EACH ROW", "PERFORM pg_sleep(4)", "NEW.state = 'completed'");
    try {
      const held = order(first);
      await stalled();
      const asked = performance.now();
      const waiting = await Promise.all([order(first), order(first)]);
      // Answered once the bound passed, stored with their jobs (the slot still held).
      expect(performance.now() - asked).toBeGreaterThanOrEqual(1_900);
      for (const o of waiting) {
        expect(await historyKinds(o.id)).toEqual(expect.arrayContaining(["request.received", "request.answered"]));
        expect(await jobsFor(`order:${o.id}`)).toEqual([{ task: "process_order", key: `order:${o.id}` }]);
      }
      const stopping = first.stop();
      const h = await held;
      expect((await stopping).code, first.output().slice(-3000)).toBe(0);
      // The one under way finished before the process ended.
      expect(await historyKinds(h.id)).toEqual(["request.received", "request.completed", "request.answered"]);

      await server("all");
      await expectCarriedOutOnce([h, ...waiting]);
    } finally {
      await drop();
    }
  }, 90_000);
});

describe("inline runs waiting for a turn", () => {
  it("are handed to jobs when the server stops (SIGTERM), and carried out once by the next one", async () => {
    const first = await server("all", { WORKER_INLINE_CONCURRENCY: "1", ...ACK_FIRST });
    // The one slot is held by a run that stalls before its commit; the next orders wait in memory.
    const drop = await onFirst("test_hold_first_run", "product_order", "BEFORE UPDATE OF state ON FOR EACH ROW", "PERFORM pg_sleep(5)", "NEW.state = 'completed'");
    try {
      const held = await order(first);
      await stalled();
      // Their acknowledgements wait for their runs to start (backpressure), 2 s at most: answered
      // then, the runs still waiting.
      const asked = performance.now();
      const waiting = await Promise.all([order(first), order(first)]);
      expect(performance.now() - asked).toBeGreaterThanOrEqual(1_900);
      expect(await acknowledgedRuns(first, "order")).toEqual({ inline: 3, queued: 0 });
      const ended = await first.stop();
      expect(ended.code).toBe(0);
      // The run under way finished before the process ended; the waiting ones got their jobs.
      expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id: held.id } })).toMatchObject({ state: "completed" });
      for (const w of waiting) {
        expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id: w.id } })).toMatchObject({ state: "acknowledged" });
        expect(await jobsFor(`order:${w.id}`)).toEqual([{ task: "process_order", key: `order:${w.id}` }]);
      }

      await server("all");
      await expectCarriedOutOnce([held, ...waiting]);
    } finally {
      await drop();
    }
  }, 90_000);
});

describe("an acknowledged request in a process that does not run the worker (ROLE=api)", () => {
  it("gets a job, which a worker process carries out, as before", async () => {
    await server("worker");
    const api = await server("api");
    const { id } = await order(api);
    expect(await acknowledgedRuns(api, "order")).toEqual({ inline: 0, queued: 1 });
    await until("the order's event", () => (eventsOf(id).length > 0 ? true : undefined));
    expect(await database.prisma.productOrder.findUniqueOrThrow({ where: { id } })).toMatchObject({ state: "completed", attempts: 0 });
    expect(await jobsFor(`order:${id}`)).toEqual([{ task: "process_order", key: `order:${id}` }]);
    expect(eventsOf(id)).toHaveLength(1);
  }, 60_000);
});

describe("an update waiting for an earlier one of its licences, through its job", () => {
  it("looks again after a quarter of the time the earliest has waited, from 200 ms to 30 s", () => {
    expect([0, 400, 800, 4_000, 60_000, 120_000, 3_600_000].map(deferralDelayMs)).toEqual([200, 200, 200, 1_000, 15_000, 30_000, 30_000]);
  });
});
