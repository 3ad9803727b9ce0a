import { setTimeout as delay } from "node:timers/promises";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { expectOrdersCarriedOutOnce, pendingWork, startOrderLoad } from "./support/order-load.js";
import { startRestartablePostgres, type RestartablePostgres } from "./support/restartable-postgres.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * PostgreSQL restarts while the real server (ROLE=all, both asynchronous modes) is taking orders
 * and its worker is carrying them out and delivering their events. The server must outlive the
 * outage, answer 503 meanwhile, and afterwards have carried out every acknowledged order exactly
 * once, with its event at the gateway, on its own.
 */

const CONNECT_TIMEOUT_MS = 1_500;
const OUTAGE_MS = 4_000;

let db: RestartablePostgres;
let gw: MockGateway;
let server: ServerProcess;

beforeAll(async () => {
  [db, gw] = await Promise.all([startRestartablePostgres(), startMockGateway()]);
  server = await startServerProcess({
    env: {
      DATABASE_URL: db.url,
      ROLE: "all",
      ORDERING_MODE: "async",
      UPDATE_MODE: "async",
      ...gatewayEnv(gw),
      DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
      DATABASE_POOL_MAX: "6",
      WORKER_CONCURRENCY: "4",
      EVENT_RETRY_BASE_MS: "200",
      EVENT_RETRY_MAX_MS: "1000",
    },
  });
});

afterAll(async () => {
  await server?.stop();
  await gw?.close();
  await db?.close();
});

async function get(path: string): Promise<{ status: number; body: unknown; retryAfter: unknown }> {
  const res = await request(`${server.url}${path}`, { headersTimeout: CONNECT_TIMEOUT_MS + 5_000, bodyTimeout: 5_000 }).catch(
    (err: unknown) => {
      const state = server.alive() ? "still running" : `exited ${JSON.stringify(server.exit())}`;
      throw new Error(`GET ${path} failed (${String(err)}); the server ${state}:\n${server.output()}`);
    },
  );
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? JSON.parse(text) : undefined, retryAfter: res.headers["retry-after"] };
}

const SERVICE_UNAVAILABLE = { code: 5, message: "Service unavailable", description: expect.any(String) };

describe("PostgreSQL restart while the worker is busy", () => {
  it("keeps the server up, answers 503 meanwhile, then carries out every acknowledged order once", { timeout: 120_000 }, async () => {
    // Answers later than the connect timeout (plus slack for a loaded machine) count as hangs.
    const load = startOrderLoad({ url: server.url, token: server.token, concurrency: 3, answerTimeoutMs: CONNECT_TIMEOUT_MS + 5_000 });
    try {
      // The worker is busy: orders acknowledged, some carried out and their events sent, more queued.
      await server.waitFor("orders flowing through the worker", () => load.accepted().length >= 15 && gw.delivered().length >= 5, 30_000);

      await db.stop();
      const downAt = Date.now();
      // Calls that were in flight when the database went away end one way or the other first.
      await delay(CONNECT_TIMEOUT_MS);
      const readyWhileDown = await get("/health/ready");
      const liveWhileDown = await get("/health/live");
      await delay(Math.max(0, OUTAGE_MS - (Date.now() - downAt)));
      expect(server.alive(), `the server died during the outage:\n${server.output()}`).toBe(true);
      const upAt = Date.now();
      await db.start();

      expect(readyWhileDown).toEqual({ status: 503, body: SERVICE_UNAVAILABLE, retryAfter: "5" });
      expect(liveWhileDown.status).toBe(200);

      await server.waitFor("/health/ready 200 after the restart", async () => (await get("/health/ready")).status === 200, 20_000);
      await server.waitFor("an order acknowledged after the restart", () => load.accepted().some((c) => c.startedAt > upAt), 20_000);
      await load.stop();

      // Every call got an answer, and only these: acknowledged, or 503 in Orange's format.
      const unexpected = load.calls.filter(
        (c) => !(c.status === 201 && c.body?.state === "acknowledged") && !(c.status === 503 && c.retryAfter === "5"),
      );
      expect(unexpected, "answers other than 201 acknowledged or 503").toEqual([]);
      const during = load.calls.filter((c) => c.startedAt >= downAt + CONNECT_TIMEOUT_MS && c.endedAt <= upAt);
      expect(during.length, "calls made while the database was down").toBeGreaterThan(0);
      for (const c of during) expect({ status: c.status, body: c.body }).toEqual({ status: 503, body: SERVICE_UNAVAILABLE });

      // The worker resumed by itself: everything carried out and delivered, no job left behind.
      await server.waitFor(
        "every order carried out, every event delivered, no job left",
        async () => {
          const left = await pendingWork(db.url);
          return left.orders === 0 && left.events === 0 && left.jobs === 0;
        },
        45_000,
      );
      await expectOrdersCarriedOutOnce(db.url, load, gw);

      expect(server.alive()).toBe(true);
      expect(server.output()).not.toMatch(/unhandled|uncaught/i);
    } finally {
      await load.stop();
    }
  });
});
