import { randomBytes } from "node:crypto";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { parseExposition, valueOf, type Sample } from "./support/prometheus.js";
import { startRestartablePostgres, type RestartablePostgres } from "./support/restartable-postgres.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * The real server process (src/main.ts): /metrics and /health/ready as main.ts wires them (the
 * API pool and the worker's, the worker's readiness), through a PostgreSQL outage; and a process
 * that runs the worker alone (ROLE=worker), which serves /health/* and /metrics only.
 */

const METRICS_TOKEN = "metrics-token-process-31d8";
const CONNECT_TIMEOUT_MS = 1_500;

let db: RestartablePostgres;
let gw: MockGateway;
const servers: ServerProcess[] = [];

beforeAll(async () => {
  [db, gw] = await Promise.all([startRestartablePostgres(), startMockGateway()]);
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  await gw?.close();
  await db?.close();
});

async function start(env: Record<string, string>): Promise<ServerProcess> {
  const server = await startServerProcess({
    env: { DATABASE_URL: db.url, METRICS_TOKEN, DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS), ...gatewayEnv(gw), ...env },
  });
  servers.push(server);
  return server;
}

async function get(server: ServerProcess, path: string, headers: Record<string, string> = {}) {
  const res = await request(`${server.url}${path}`, { headers, headersTimeout: 10_000, bodyTimeout: 10_000 });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

async function scrape(server: ServerProcess): Promise<Sample[]> {
  const res = await get(server, "/metrics", { authorization: `Bearer ${METRICS_TOKEN}` });
  expect(res.status, res.text).toBe(200);
  return parseExposition(res.text);
}

describe("the server process", () => {
  it("keeps answering /metrics through a database outage, and /health/ready names what is not ready", { timeout: 120_000 }, async () => {
    const server = await start({ ROLE: "all" });
    const order = await request(`${server.url}/productordering/v2/productOrder`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
      body: JSON.stringify({
        externalReference: { type: "orange", id: `ORD-${randomBytes(4).toString("hex")}` },
        customer: { externalReference: { type: "orange", id: `CUS-${randomBytes(4).toString("hex")}` }, tradingName: "Martin" },
        orderItem: [{ id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } }, productRef: { userServiceQuantity: 1 } }],
      }),
    });
    expect(((await order.body.json()) as { state: string }).state).toBe("completed");

    const up = await scrape(server);
    expect(valueOf(up, "partner_metrics_database_up")).toBe(1);
    expect(valueOf(up, "partner_requests_finished_total", { kind: "order", use_case: "UC2", state: "completed" })).toBe(1);
    expect(valueOf(up, "partner_events", { state: "pending" })).toBe(0);
    expect(valueOf(up, "partner_db_pool_max_connections", { pool: "api" })).toBe(10);
    // ROLE=all with Orange's credentials: this process runs the worker (WORKER_CONCURRENCY 8, one
    // for each of the WORKER_INLINE_CONCURRENCY 16 inline runs' deliveries, + 4).
    expect(valueOf(up, "partner_db_pool_max_connections", { pool: "worker" })).toBe(28);
    const ready = await get(server, "/health/ready");
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.text)).toEqual({ status: "ok", checks: { database: "ok", worker: "ok" } });

    await db.stop();
    try {
      // The figures read before the outage serve until the cache period (5 s) passes.
      const down = await server.waitFor(
        "the database gauges marked down",
        async () => {
          const samples = await scrape(server);
          return valueOf(samples, "partner_metrics_database_up") === 0 ? samples : undefined;
        },
        30_000,
      );
      expect(valueOf(down, "partner_events", { state: "pending" })).toBeUndefined();
      expect(valueOf(down, "partner_job_queue_lag_seconds", { task: "deliver_events" })).toBeUndefined();
      expect(valueOf(down, "partner_requests_finished_total", { kind: "order", use_case: "UC2", state: "completed" })).toBe(1);
      expect(valueOf(down, "process_resident_memory_bytes")).toBeGreaterThan(0);

      const notReady = await get(server, "/health/ready");
      expect(notReady.status).toBe(503);
      expect(JSON.parse(notReady.text)).toEqual({
        code: 5,
        message: "Service unavailable",
        description: expect.stringMatching(/^not ready: the licence store does not answer; .*the worker's database connection does not answer$/),
      });
      expect((await get(server, "/health/live")).status).toBe(200);
    } finally {
      await db.start();
    }

    await server.waitFor("ready again", async () => (await get(server, "/health/ready")).status === 200, 30_000);
    const back = await server.waitFor(
      "the database gauges back",
      async () => {
        const samples = await scrape(server);
        return valueOf(samples, "partner_metrics_database_up") === 1 ? samples : undefined;
      },
      30_000,
    );
    expect(valueOf(back, "partner_events", { state: "pending" })).toBe(0);
    expect(valueOf(back, "partner_metrics_database_reads_total", { outcome: "error" })).toBeGreaterThanOrEqual(1);
  });

  it("running the worker alone (ROLE=worker), serves /health/* and /metrics and nothing else", { timeout: 60_000 }, async () => {
    const worker = await start({ ROLE: "worker" });
    const ready = await get(worker, "/health/ready");
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.text)).toEqual({ status: "ok", checks: { database: "ok", worker: "ok" } });
    const samples = await scrape(worker);
    // No inline runs in a worker alone: WORKER_CONCURRENCY 8, + 4.
    expect(valueOf(samples, "partner_db_pool_max_connections", { pool: "worker" })).toBe(12);
    expect(valueOf(samples, "partner_metrics_database_up")).toBe(1);
    expect((await get(worker, "/metrics")).status).toBe(401);

    const order = await get(worker, "/productordering/v2/productOrder");
    expect(order.status).toBe(404);
    expect(JSON.parse(order.text)).toMatchObject({ code: 60, message: "Resource not found" });
  });
});
