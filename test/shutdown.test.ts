import { randomBytes } from "node:crypto";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { waitFor } from "./support/outbox-harness.js";
import { startServerProcess } from "./support/server-process.js";

/**
 * A stop (SIGTERM) while a caller's request is under way, on a connection the caller keeps alive
 * (as Orange's IT does): the request is answered, then the connection is ended, and the process
 * exits 0 without waiting for the keep-alive timeout.
 */

let database: TestDatabase;

beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.drop();
});

describe("stopping while a request is under way on a kept-alive connection", () => {
  it("answers it, ends the connection, and exits 0 well before the keep-alive timeout", async () => {
    const server = await startServerProcess({ env: { DATABASE_URL: database.url, ORDERING_MODE: "sync", HTTP_KEEP_ALIVE_TIMEOUT_MS: "120000" } });
    // The order's transaction stalls 2 s in a trigger: the stop comes meanwhile.
    await database.prisma.$executeRawUnsafe(`
      CREATE FUNCTION test_stall_order() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$`);
    await database.prisma.$executeRawUnsafe("CREATE TRIGGER test_stall_order BEFORE INSERT ON product_order FOR EACH ROW EXECUTE FUNCTION test_stall_order()");
    const agent = new Agent({ keepAliveTimeout: 120_000, keepAliveMaxTimeout: 120_000 });
    try {
      const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
      const asked = request(`${server.url}/productordering/v2/productOrder`, {
        method: "POST",
        dispatcher: agent,
        headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
        body: JSON.stringify({
          externalReference: { type: "orange", id: orderRef },
          customer: { externalReference: { type: "orange", id: `CUS-${orderRef}` }, tradingName: "Boulangerie Martin" },
          orderItem: [
            { id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } }, productRef: { userServiceQuantity: 1 } },
          ],
        }),
      });
      await waitFor("the order to stall in its transaction", async () => {
        const [n] = await database.prisma.$queryRaw<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()`;
        return n!.n > 0 ? true : undefined;
      });
      const stopping = server.stop(60_000);
      const res = await asked;
      expect(res.statusCode).toBe(201);
      expect(await res.body.json()).toMatchObject({ state: "completed" });
      const t0 = performance.now();
      const ended = await stopping;
      // Without ending the connection, the stop waited for the keep-alive timeout, then gave up (exit 1).
      expect(ended, server.output().slice(-2_000)).toEqual({ code: 0, signal: null });
      expect(performance.now() - t0).toBeLessThan(15_000);
      expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef, state: "completed" } })).toBe(1);
    } finally {
      await agent.close();
    }
  }, 90_000);
});
