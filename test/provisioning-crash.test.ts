import { randomBytes } from "node:crypto";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startPartnerApp, WEBHOOK_PATH, type PartnerApp } from "../examples/partner-app/app.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { freePort } from "../src/simulator/self-host.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { gatewayEnv, startServerProcess, type ServerProcess } from "./support/server-process.js";

/**
 * kill -9 of the real server while the partner's application is carrying out a command (it has
 * recorded its answer and not sent it yet: the change is made on its side, not on ours). After a
 * restart the order ends exactly once: no licence twice, the application sees the command again
 * only with the same webhook-id, and Orange gets its outcome (an event, or the answer to its retry).
 */

const SECRET = `whsec_${randomBytes(32).toString("base64")}`;
const ORDER_URL = "/productordering/v2/productOrder";

let database: TestDatabase;
let gw: MockGateway;
let partner: PartnerApp;
let partnerPort: number;
const servers: ServerProcess[] = [];

beforeAll(async () => {
  partnerPort = await freePort();
  [database, gw, partner] = await Promise.all([
    createTestDatabase(),
    startMockGateway(),
    startPartnerApp({ secrets: [SECRET], port: partnerPort, host: "127.0.0.1" }),
  ]);
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop(5_000)));
});
afterAll(async () => {
  await partner?.close();
  await gw?.close();
  await database?.drop();
});

async function server(mode: "sync" | "async"): Promise<ServerProcess> {
  const s = await startServerProcess({
    env: {
      DATABASE_URL: database.url,
      ROLE: "all",
      ORDERING_MODE: mode,
      ...gatewayEnv(gw),
      PROVISIONING_MODE: "webhook",
      PROVISIONING_URL: `http://127.0.0.1:${partnerPort}${WEBHOOK_PATH}`,
      PROVISIONING_SECRET: SECRET,
      PROVISIONING_TIMEOUT_MS: "1500",
      PROVISIONING_RETRY_BASE_MS: "50",
      PROVISIONING_RETRY_MAX_MS: "200",
      PROVISIONING_SYNC_DEADLINE_MS: "4000",
      WORKER_SWEEP_INTERVAL_MS: "300",
    },
  });
  servers.push(s);
  return s;
}

function uc2(orderRef: string) {
  return {
    externalReference: { type: "orange", id: orderRef },
    customer: { externalReference: { type: "orange", id: `CUS-${orderRef}` }, tradingName: "Boulangerie Martin" },
    orderItem: [
      { id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } }, productRef: { userServiceQuantity: 3 } },
    ],
  };
}

async function post(s: ServerProcess, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${s.url}${ORDER_URL}`, {
    method: "POST",
    headers: { authorization: `Bearer ${s.token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    headersTimeout: 20_000,
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Everything about one order: the store's rows, what the application holds and what it received. */
async function carriedOutOnce(orderRef: string) {
  const prisma = database.prisma;
  const order = await prisma.productOrder.findFirstOrThrow({ where: { orangeRef: orderRef } });
  const command = await prisma.provisioningCommand.findFirstOrThrow({ where: { requestId: order.id }, include: { attemptRows: true } });
  const licences = await prisma.licence.findMany({ where: { orderId: order.id }, orderBy: { id: "asc" } });
  const received = partner.received.filter((r) => r.body.includes(order.id));
  const seats = Object.values(partner.store.licences).filter((l) => licences.some((x) => x.id === l.id));
  return { order, command, licences, received, seats };
}

describe("kill -9 of the server while the partner's application carries out a command", () => {
  it("async: after a restart the command is sent again with the same webhook-id, the order completes once, its event goes out", async () => {
    partner.setMode({ mode: "slow", delayMs: 2_500 });
    const first = await server("async");
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const ack = await post(first, uc2(orderRef));
    expect(ack.body.state).toBe("acknowledged");
    await until("the application to receive the command", () => partner.received.find((r) => r.body.includes(String(ack.body.id))));
    first.child.kill("SIGKILL");
    await until("the first server's death", () => (first.alive() ? undefined : true));

    partner.setMode({ mode: "ok" });
    await server("async");
    const event = await until("the order's event", () =>
      gw.delivered().find((r) => (r.body as { resource: { id?: string } }).resource.id === ack.body.id),
    );
    expect(event.body).toMatchObject({ type: "completedStateNotification", resource: { state: "completed" } });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(order.state).toBe("completed");
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    // Seen again, always under the one webhook-id; applied once on both sides.
    expect(received.length).toBeGreaterThanOrEqual(2);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(command.attemptRows.map((a) => a.outcome).sort()).toEqual(["done", "interrupted"]);
    expect(gw.delivered().filter((r) => (r.body as { resource: { id?: string } }).resource.id === ack.body.id)).toHaveLength(1);
    // The secret signs every call and never shows in what the server writes.
    for (const s of servers) expect(s.output()).not.toContain(SECRET.slice("whsec_".length));
  }, 90_000);

  it("sync: Orange's call is cut; its retry with the same reference gets the one outcome, nothing created twice", async () => {
    partner.setMode({ mode: "slow", delayMs: 2_500 });
    const first = await server("sync");
    const orderRef = `ORD-${randomBytes(5).toString("hex")}`;
    const cut = post(first, uc2(orderRef)).then(
      () => "answered",
      () => "cut",
    );
    await until("the application to receive the command", () => partner.received.find((r) => r.body.includes(orderRef)));
    first.child.kill("SIGKILL");
    expect(await cut).toBe("cut");

    partner.setMode({ mode: "ok" });
    const second = await server("sync");
    const retry = await until("Orange's retry to get the outcome", async () => {
      const res = await post(second, uc2(orderRef));
      return res.status === 201 ? res : undefined;
    });
    expect(retry.body).toMatchObject({ state: "completed" });

    const { order, command, licences, received, seats } = await carriedOutOnce(orderRef);
    expect(retry.body.id).toBe(order.id);
    expect(command.state).toBe("done");
    expect(licences).toHaveLength(3);
    expect(seats).toHaveLength(3);
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set([command.id]));
    expect(await database.prisma.productOrder.count({ where: { orangeRef: orderRef } })).toBe(1);
  }, 90_000);
});
