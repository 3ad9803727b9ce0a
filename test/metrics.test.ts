import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { startPartnerApp, WEBHOOK_PATH, type PartnerApp } from "../examples/partner-app/app.js";
import { ConfigError, loadConfig } from "../src/config.js";
import { createDb, sql as sqlTag } from "../src/db/sql.js";
import { createMetrics, type Metrics } from "../src/metrics.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { freePort } from "../src/simulator/self-host.js";
import { AUTH, createTestApp, TEST_TOKEN, type CallResult, type TestApp } from "./support/app.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { enqueue, startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";
import { createPrisma } from "./support/prisma.js";
import { matching, parseExposition, valueOf, type Sample } from "./support/prometheus.js";

/**
 * GET /metrics after real traffic: orders sync and async, updates, an event delivered, one
 * parked and the fleet it holds, commands to the partner's application; each figure checked
 * against what the database and the mock gateway saw. Then the cache of the database-derived
 * gauges, an unreachable database, and who may scrape.
 */

const ORDER_URL = "/productordering/v2/productOrder";
const UPDATE_URL = "/userservice/v2/userService/update";
const LICENCES_URL = "/userservice/v2/userService";
const PRO = "MBA-CAISSE-PRO";
const ADMIN_TOKEN = "admin-token-metrics-4b1d";
const METRICS_TOKEN = "metrics-token-7c2a";
const APP_TOKEN = "app-token-metrics-90ef";
const SCRAPER = { authorization: `Bearer ${METRICS_TOKEN}` };

const ref = (prefix: string) => `${prefix}-${randomBytes(5).toString("hex")}`;
const orange = (id: string) => ({ type: "orange", id });

function uc2(quantity: number, offer = PRO) {
  return {
    externalReference: orange(ref("ORD")),
    category: "production",
    customer: { externalReference: orange(ref("CUS")), tradingName: "Boulangerie Martin" },
    orderItem: [
      { id: "1", action: "add", productOffering: { externalReference: orange(offer) }, productRef: { userServiceQuantity: quantity } },
    ],
  };
}

function uc3(fleetId: string, quantity: number) {
  return {
    externalReference: orange(ref("ORD")),
    orderItem: [{ id: "1", action: "add", productOffering: { externalReference: orange(PRO) }, productRef: { id: fleetId, userServiceQuantity: quantity } }],
  };
}

function suspend(licenceId: string) {
  return { externalReference: orange(ref("UPD")), userService: [{ id: licenceId, externalState: "suspended" }] };
}

const fleetOf = (order: CallResult) => order.body.orderItem[0].productRef.id as string;

/** A clock for the metrics' cache that the tests move by hand. */
function manualClock() {
  let offsetMs = 0;
  return { now: () => new Date(Date.now() + offsetMs), advance: (ms: number) => (offsetMs += ms) };
}

async function scrape(t: TestApp, headers: Record<string, string> = SCRAPER): Promise<{ res: CallResult; samples: Sample[] }> {
  const res = await t.call("GET", "/metrics", undefined, headers);
  expect(res.status, res.text).toBe(200);
  expect(res.headers["content-type"]).toBe("text/plain; version=0.0.4; charset=utf-8");
  return { res, samples: parseExposition(res.text) };
}

describe("GET /metrics after real traffic", () => {
  let database: TestDatabase;
  let gw: MockGateway;
  let sync: TestApp;
  let asyncApp: TestApp;
  let worker: WorkerHarness | undefined;
  let metrics: Metrics;
  const clock = manualClock();

  /** A scrape whose database figures are read now (the clock jumps past the cache). */
  async function freshScrape() {
    clock.advance(60_000);
    return scrape(sync);
  }

  beforeAll(async () => {
    [database, gw] = await Promise.all([createTestDatabase(), startMockGateway()]);
    // Both apps on one database and one set of metrics: the process of ROLE=all, answering sync and async.
    const shared = { url: database.url, db: database.db, prisma: database.prisma, drop: async () => {} };
    metrics = createMetrics({ db: database.db, clock });
    const env = { ADMIN_TOKEN, METRICS_TOKEN, APP_TOKEN };
    sync = await createTestApp({ database: shared, env, metrics });
    asyncApp = await createTestApp({
      database: shared,
      env: { ...env, ORDERING_MODE: "async", UPDATE_MODE: "async" },
      metrics,
      worker: () => worker?.worker,
    });
    worker = await startWorker(gw, database.url, {
      tasks: asyncApp.services.requestTasks,
      sweepRequests: asyncApp.services.sweepRequests,
      observer: metrics.delivery,
      onTokenRequest: metrics.tokenRequest,
    });
    metrics.watchPool("worker", () => worker?.worker.pool);
    metrics.watchInline(() => worker?.worker.inlineLoad());
  });

  afterAll(async () => {
    await worker?.stop();
    await gw?.close();
    await sync?.close();
    await asyncApp?.close();
    await database?.drop();
  });

  it("counts orders, updates, HTTP answers by route pattern, deliveries and token requests, and reads events and pools", async () => {
    // Sync: a UC2 order, one refused (offer not in the catalogue), the fleet's licences, one by id, a 404, a suspension.
    const first = await sync.call("POST", ORDER_URL, uc2(3));
    expect(first.body.state, first.text).toBe("completed");
    const fleet = fleetOf(first);
    const refused = await sync.call("POST", ORDER_URL, uc2(1, "NOT-IN-CATALOGUE"));
    expect(refused.body.state, refused.text).toBe("failed");
    const licenceIds = ((await sync.call("GET", `${LICENCES_URL}?productRefId=${fleet}`)).body as { id: string }[]).map((l) => l.id);
    expect(licenceIds).toHaveLength(3);
    expect((await sync.call("GET", `${LICENCES_URL}/${licenceIds[0]}`)).status).toBe(200);
    expect((await sync.call("GET", `/no-such-route/${licenceIds[0]}`)).status).toBe(404);
    expect((await sync.call("POST", UPDATE_URL, suspend(licenceIds[1]!))).body.state).toBe("completed");

    // Async: UC3 on the fleet, carried out by the worker, its event delivered (the first token
    // request fails with a 500, the token cache's retry gets one).
    gw.scriptToken(500, 1);
    const added = await asyncApp.call("POST", ORDER_URL, uc3(fleet, 2));
    expect(added.body.state, added.text).toBe("acknowledged");
    await waitFor("the UC3 event at the gateway", () =>
      gw.delivered().find((e) => (e.body as { resource: { id: string } }).resource.id === added.body.id),
    );

    // An event Orange refuses (400) is parked; the next event of its fleet waits behind it.
    gw.scriptEvents(400, 1);
    const parkedOrder = await asyncApp.call("POST", ORDER_URL, uc2(1));
    const dead = await waitFor("the order's event dead", () =>
      asyncApp.db.outboxEvent.findFirst({ where: { orderId: parkedOrder.body.id as string, state: "dead" } }),
    );
    const heldLicence = await asyncApp.db.licence.findFirstOrThrow({ where: { fleetId: dead.fleetId! } });
    const heldUpdate = await asyncApp.call("POST", UPDATE_URL, suspend(heldLicence.id));
    expect(heldUpdate.body.state, heldUpdate.text).toBe("acknowledged");
    await waitFor("the update's event written, held", async () => {
      const rows = await asyncApp.db.$queryRaw<{ n: number }[]>`
        SELECT count(*)::int AS n FROM outbox_event e JOIN licence_update u ON u.id = e.update_id
         WHERE u.orange_ref = ${heldUpdate.body.externalReference.id as string} AND e.state = 'pending'`;
      return rows[0]!.n === 1;
    });

    // The open GET /ping is answered before Fastify's routing: over a real port, counted all the same.
    await sync.app.listen({ port: 0, host: "127.0.0.1" });
    const ping = await request(`http://127.0.0.1:${(sync.app.server.address() as AddressInfo).port}/ping`);
    expect(ping.statusCode).toBe(200);
    await ping.body.dump();

    const { res, samples } = await freshScrape();
    const value = (name: string, labels: Record<string, string> = {}) => valueOf(samples, name, labels);

    // Requests finished, as the store records them.
    const orders = await sync.db.$queryRaw<{ use_case: string; state: string; n: number }[]>`
      SELECT use_case, state::text AS state, count(*)::int AS n FROM product_order GROUP BY 1, 2`;
    expect(orders.map((o) => [o.use_case, o.state, o.n]).sort()).toEqual([
      ["UC2", "completed", 2],
      ["UC2", "failed", 1],
      ["UC3", "completed", 1],
    ]);
    for (const o of orders) expect(value("partner_requests_finished_total", { kind: "order", use_case: o.use_case, state: o.state })).toBe(o.n);
    expect(value("partner_requests_finished_total", { kind: "order", use_case: "UC1", state: "completed" })).toBe(0);
    expect(await sync.db.licenceUpdate.count({ where: { state: "completed" } })).toBe(2);
    expect(value("partner_requests_finished_total", { kind: "update", use_case: "update", state: "completed" })).toBe(2);
    expect(value("partner_requests_finished_total", { kind: "update", use_case: "update", state: "failed" })).toBe(0);

    // HTTP answers by route pattern: never the raw URL.
    const count = (method: string, route: string, status: number) =>
      value("partner_http_request_duration_seconds_count", { method, route, status_code: String(status) });
    expect(count("POST", ORDER_URL, 201)).toBe(4);
    expect(count("POST", UPDATE_URL, 200)).toBe(2);
    expect(count("GET", LICENCES_URL, 200)).toBe(1);
    expect(count("GET", `${LICENCES_URL}/:id`, 200)).toBe(1);
    expect(count("GET", "unmatched", 404)).toBe(1);
    expect(count("GET", "/ping", 200)).toBe(1);
    expect(res.text).not.toContain(licenceIds[0]);
    expect(value("partner_http_request_duration_seconds_bucket", { method: "POST", route: ORDER_URL, status_code: "201", le: "+Inf" })).toBe(4);

    // Delivery attempts and token requests, as the gateway and the attempts table saw them.
    const attempts = await sync.db.eventDeliveryAttempt.groupBy({ by: ["outcome"], _count: true });
    expect(attempts.map((a) => [a.outcome, a._count]).sort()).toEqual([
      ["delivered", 1],
      ["park", 1],
    ]);
    expect(gw.delivered()).toHaveLength(1);
    expect(value("partner_event_delivery_duration_seconds_count", { outcome: "delivered" })).toBe(1);
    expect(value("partner_event_delivery_duration_seconds_count", { outcome: "park" })).toBe(1);
    expect(value("partner_event_delivery_duration_seconds_count", { outcome: "retry" })).toBe(0);
    expect(gw.tokenLog.map((r) => r.status)).toEqual([500, 200]);
    expect(value("partner_token_requests_total", { outcome: "failed" })).toBe(1);
    expect(value("partner_token_requests_total", { outcome: "issued" })).toBe(1);
    expect(value("partner_token_requests_total", { outcome: "refused" })).toBe(0);

    // Events as the outbox holds them: one dead, one pending held behind it, no other pending.
    expect(await sync.db.outboxEvent.count({ where: { state: "dead" } })).toBe(1);
    expect(await sync.db.outboxEvent.count({ where: { state: "pending" } })).toBe(1);
    expect(value("partner_events", { state: "dead" })).toBe(1);
    expect(value("partner_events", { state: "pending" })).toBe(1);
    expect(value("partner_event_keys_held")).toBe(1);
    expect(value("partner_events_held")).toBe(1);
    // The only pending event is held (its alert is the dead event's): nothing else is late.
    expect(value("partner_event_oldest_pending_age_seconds")).toBe(0);
    expect(value("partner_metrics_database_up")).toBe(1);

    // Pools: the API's and the worker's (its concurrency + 4).
    expect(value("partner_db_pool_max_connections", { pool: "api" })).toBe(10);
    expect(value("partner_db_pool_max_connections", { pool: "worker" })).toBe(8);
    expect(value("partner_db_pool_connections", { pool: "api" })).toBeGreaterThanOrEqual(1);
    expect(value("partner_db_pool_connections", { pool: "worker" })).toBeGreaterThanOrEqual(1);
    // The inline runs, read from the worker at the scrape: none left under way or waiting.
    expect(value("partner_inline_runs", { state: "running" })).toBe(0);
    expect(value("partner_inline_runs", { state: "waiting" })).toBe(0);
    expect(value("partner_db_pool_waiting_clients", { pool: "api" })).toBe(0);
    // prom-client's process metrics.
    expect(value("process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect(matching(samples, "nodejs_heap_size_used_bytes")).toHaveLength(1);

    // This process runs a worker: readiness says so.
    const ready = await asyncApp.call("GET", "/health/ready", undefined, { authorization: null });
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: "ok", checks: { database: "ok", worker: "ok" } });
  });

  it("exposes every metric the README's alert rules use", async () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const block = /### Alerts\n[\s\S]*?```yaml\n([\s\S]*?)```/.exec(readme)?.[1];
    const rules = (parse(block!) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups.flatMap((g) => g.rules);
    expect(rules.map((r) => r.alert)).toEqual([
      "OrangeEventsParked",
      "OrangeEventsLate",
      "PartnerServerErrors",
      "PartnerCommandParked",
      "PartnerJobQueueLag",
      "PartnerMetricsDatabaseDown",
    ]);
    const { samples } = await freshScrape();
    for (const rule of rules) {
      const names = rule.expr.match(/partner_[a-z_]+/g) ?? [];
      expect(names.length, rule.alert).toBeGreaterThan(0);
      for (const name of names) expect(matching(samples, name).length, `${rule.alert}: ${name}`).toBeGreaterThan(0);
    }
  });

  it("reports the age of the oldest pending event and the job queue's lag once no worker runs", async () => {
    await worker!.stop();
    const ready = await asyncApp.call("GET", "/health/ready", undefined, { authorization: null });
    expect(ready.status).toBe(503);
    expect(ready.body).toEqual({ code: 5, message: "Service unavailable", description: "not ready: the worker is stopped" });

    const event = await enqueue(database.db, { fleetId: `fl_lag_${randomBytes(3).toString("hex")}`, orderId: "po_lag" });
    // Written ten minutes ago, its delivery job due for five: as if the workers had been gone that long.
    await sync.db.$executeRaw`UPDATE outbox_event SET created_at = now() - interval '600 seconds' WHERE id = ${event.id}`;
    await sync.db.$executeRaw`
      UPDATE graphile_worker._private_jobs SET run_at = now() - interval '300 seconds' WHERE key = ${`deliver:${event.orderingKey}`}`;
    const changedAt = Date.now();

    const { samples } = await freshScrape();
    const elapsed = (Date.now() - changedAt) / 1000 + 1;
    const age = valueOf(samples, "partner_event_oldest_pending_age_seconds")!;
    expect(age).toBeGreaterThanOrEqual(600);
    expect(age).toBeLessThan(600 + elapsed);
    expect(valueOf(samples, "partner_events", { state: "pending" })).toBe(2);

    const due = await sync.db.$queryRaw<{ task: string; n: number }[]>`
      SELECT task_identifier AS task, count(*)::int AS n FROM graphile_worker.jobs
       WHERE locked_at IS NULL AND attempts < max_attempts AND run_at <= now() GROUP BY 1`;
    expect(due).toEqual([{ task: "deliver_events", n: 1 }]);
    expect(valueOf(samples, "partner_job_queue_due_jobs", { task: "deliver_events" })).toBe(1);
    const lag = valueOf(samples, "partner_job_queue_lag_seconds", { task: "deliver_events" })!;
    expect(lag).toBeGreaterThanOrEqual(300);
    expect(lag).toBeLessThan(300 + elapsed);
    // Every task of the worker has a series, 0 when nothing waits.
    for (const task of ["process_order", "process_update", "provision_command"]) {
      expect(valueOf(samples, "partner_job_queue_lag_seconds", { task })).toBe(0);
      expect(valueOf(samples, "partner_job_queue_due_jobs", { task })).toBe(0);
    }
  });

  it("reads the database once per cache period, whatever the number of scrapes", async () => {
    const before = await freshScrape();
    const reads = valueOf(before.samples, "partner_metrics_database_reads_total", { outcome: "ok" })!;
    const pending = valueOf(before.samples, "partner_events", { state: "pending" })!;

    await enqueue(database.db, { fleetId: `fl_cache_${randomBytes(3).toString("hex")}`, orderId: "po_cache" });
    // Within the cache period: the figures read before, and no new read for 20 scrapes at once.
    const burst = await Promise.all(Array.from({ length: 20 }, () => scrape(sync)));
    for (const { samples } of burst) {
      expect(valueOf(samples, "partner_events", { state: "pending" })).toBe(pending);
      expect(valueOf(samples, "partner_metrics_database_reads_total", { outcome: "ok" })).toBe(reads);
    }

    // Past it (5 s by default): one read, shared by 20 scrapes at once, sees the new event.
    clock.advance(5_001);
    const after = await Promise.all(Array.from({ length: 20 }, () => scrape(sync)));
    for (const { samples } of after) {
      expect(valueOf(samples, "partner_events", { state: "pending" })).toBe(pending + 1);
      expect(valueOf(samples, "partner_metrics_database_reads_total", { outcome: "ok" })).toBe(reads + 1);
    }
  });

  it("opens to METRICS_TOKEN and ADMIN_TOKEN only, in Orange's error format otherwise", async () => {
    expect((await sync.call("GET", "/metrics", undefined, { authorization: `Bearer ${ADMIN_TOKEN}` })).status).toBe(200);
    const none = await sync.call("GET", "/metrics", undefined, { authorization: null });
    expect(none.status).toBe(401);
    expect(none.body).toEqual({ code: 40, message: "Missing credentials", description: expect.stringContaining("METRICS_TOKEN") });
    expect(none.headers["www-authenticate"]).toBe('Bearer realm="metrics"');
    for (const [authorization, why] of [
      [AUTH.authorization, "Orange's token"],
      [`Bearer ${APP_TOKEN}`, "the application's token"],
      [`Bearer ${METRICS_TOKEN}x`, "a wrong token"],
      [`Basic ${Buffer.from(`u:${METRICS_TOKEN}`).toString("base64")}`, "another scheme"],
    ] as const) {
      const res = await sync.call("GET", "/metrics", undefined, { authorization });
      expect(res.status, why).toBe(401);
      expect(res.body.code, why).toBe(41);
      expect(res.text, why).not.toContain(METRICS_TOKEN);
    }
    // The scraper's credential opens nothing else.
    const admin = await sync.call("GET", "/admin/v1/events", undefined, SCRAPER);
    expect(admin.status).toBe(401);
    expect(admin.body.code).toBe(41);
  });
});

describe("GET /metrics with the partner's application (PROVISIONING_MODE=webhook)", () => {
  let t: TestApp;
  let partner: PartnerApp;
  const secret = `whsec_${randomBytes(32).toString("base64")}`;

  beforeAll(async () => {
    const partnerPort = await freePort();
    t = await createTestApp({
      env: {
        METRICS_TOKEN,
        APP_TOKEN,
        PROVISIONING_MODE: "webhook",
        PROVISIONING_URL: `http://127.0.0.1:${partnerPort}${WEBHOOK_PATH}`,
        PROVISIONING_SECRET: secret,
        PROVISIONING_TIMEOUT_MS: "3000",
        // One attempt: an application that does not answer parks the command at once.
        PROVISIONING_MAX_ATTEMPTS: "1",
        PROVISIONING_SYNC_DEADLINE_MS: "3000",
      },
    });
    // Listening: the application's late results (mode later) are posted to it.
    await t.app.listen({ port: 0, host: "127.0.0.1" });
    const serverUrl = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    partner = await startPartnerApp({ secrets: [secret], port: partnerPort, host: "127.0.0.1", appToken: APP_TOKEN, serverUrl });
  });
  afterAll(async () => {
    await partner?.close();
    await t?.close();
  });

  it("reads commands by state and counts the calls by outcome", async () => {
    expect((await t.call("POST", ORDER_URL, uc2(2))).body.state).toBe("completed");
    partner.setMode({ mode: "down" });
    const failed = await t.call("POST", ORDER_URL, uc2(1));
    expect(failed.body.state, failed.text).toBe("failed");
    // 202: the application reports later (not within this test): the command waits, Orange's call gets 503.
    partner.setMode({ mode: "later", delayMs: 600_000 });
    expect((await t.call("POST", ORDER_URL, uc2(1))).status).toBe(503);

    const commands = await t.db.provisioningCommand.findMany({ orderBy: { seq: "asc" } });
    expect(commands.map((c) => c.state)).toEqual(["done", "parked", "waiting"]);
    const { samples } = await scrape(t);
    expect(valueOf(samples, "partner_provisioning_commands", { state: "parked" })).toBe(1);
    expect(valueOf(samples, "partner_provisioning_commands", { state: "waiting" })).toBe(1);
    for (const state of ["queued", "sending", "retrying"]) expect(valueOf(samples, "partner_provisioning_commands", { state })).toBe(0);
    expect(matching(samples, "partner_provisioning_commands", { state: "done" })).toEqual([]);
    expect(valueOf(samples, "partner_provisioning_last_parked_timestamp_seconds")).toBe(commands[1]!.finishedAt!.getTime() / 1000);

    const attempts = await t.db.provisioningAttempt.groupBy({ by: ["outcome"], _count: true });
    expect(attempts.map((a) => [a.outcome, a._count]).sort()).toEqual([
      ["accepted", 1],
      ["done", 1],
      ["retry", 1],
    ]);
    for (const a of attempts) expect(valueOf(samples, "partner_provisioning_attempt_duration_seconds_count", { outcome: a.outcome! })).toBe(a._count);
    expect(valueOf(samples, "partner_provisioning_attempt_duration_seconds_count", { outcome: "rejected" })).toBe(0);
    expect(valueOf(samples, "partner_requests_finished_total", { kind: "order", use_case: "UC2", state: "completed" })).toBe(1);
    expect(valueOf(samples, "partner_requests_finished_total", { kind: "order", use_case: "UC2", state: "failed" })).toBe(1);
  });
});

function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      srv.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

describe("GET /metrics while the database does not answer", () => {
  let t: TestApp;
  beforeAll(async () => {
    const url = `postgresql://x:y@127.0.0.1:${await closedPort()}/nope`;
    const db = createDb(url, { connectTimeoutMs: 500 });
    const prisma = createPrisma(url, { connectTimeoutMs: 500 });
    t = await createTestApp({
      env: { METRICS_TOKEN },
      database: { url, db, prisma, drop: async () => Promise.all([db.close(), prisma.$disconnect()]).then(() => {}) },
    });
  });
  afterAll(async () => t?.close());

  it("still answers: process and HTTP figures, the database gauges left out and marked", async () => {
    expect((await t.call("POST", ORDER_URL, uc2(1))).status).toBe(503);
    const { samples } = await scrape(t);
    expect(valueOf(samples, "partner_metrics_database_up")).toBe(0);
    expect(valueOf(samples, "partner_metrics_database_reads_total", { outcome: "error" })).toBe(1);
    for (const name of [
      "partner_events",
      "partner_event_oldest_pending_age_seconds",
      "partner_event_keys_held",
      "partner_events_held",
      "partner_provisioning_commands",
      "partner_provisioning_last_parked_timestamp_seconds",
      "partner_job_queue_lag_seconds",
      "partner_job_queue_due_jobs",
    ]) {
      expect(matching(samples, name), name).toEqual([]);
    }
    expect(valueOf(samples, "partner_http_request_duration_seconds_count", { method: "POST", route: ORDER_URL, status_code: "503" })).toBe(1);
    expect(valueOf(samples, "process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect(valueOf(samples, "partner_db_pool_max_connections", { pool: "api" })).toBe(10);
  });
});

describe("METRICS_TOKEN", () => {
  it("must differ from every other credential", () => {
    const base = { INBOUND_BEARER_TOKEN: TEST_TOKEN, ADMIN_TOKEN, APP_TOKEN };
    expect(loadConfig({ ...base, METRICS_TOKEN }).metrics.token).toBe(METRICS_TOKEN);
    for (const same of [TEST_TOKEN, ADMIN_TOKEN, APP_TOKEN]) {
      expect(() => loadConfig({ ...base, METRICS_TOKEN: same })).toThrow(ConfigError);
    }
  });

  it("answers 503 code 5 when neither METRICS_TOKEN nor ADMIN_TOKEN is set", async () => {
    const t = await createTestApp();
    try {
      const res = await t.call("GET", "/metrics", undefined, SCRAPER);
      expect(res.status).toBe(503);
      expect(res.body).toEqual({ code: 5, message: "Service unavailable", description: expect.stringContaining("set METRICS_TOKEN") });
    } finally {
      await t.close();
    }
  });
});

describe("what the domain tells the metrics", () => {
  it("is told once the transaction committed, never after a rollback; an effect that throws does not undo the commit", async () => {
    const database = await createTestDatabase();
    try {
      const told: string[] = [];
      await expect(
        database.db.transaction(async (tx) => {
          await tx.execute(sqlTag`CREATE TABLE t (x int)`);
          tx.afterCommit(() => told.push("rolled back"));
          throw new Error("rollback");
        }),
      ).rejects.toThrow("rollback");
      expect(told).toEqual([]);

      const result = await database.db.transaction(async (tx) => {
        await tx.execute(sqlTag`CREATE TABLE t (x int)`);
        tx.afterCommit(() => {
          throw new Error("ignored");
        });
        tx.afterCommit(() => told.push("committed"));
        expect(told).toEqual([]);
        return "done";
      });
      expect(result).toBe("done");
      expect(told).toEqual(["committed"]);
      expect(await database.prisma.$queryRaw`SELECT count(*)::int AS n FROM t`).toEqual([{ n: 0 }]);
    } finally {
      await database.drop();
    }
  });
});
