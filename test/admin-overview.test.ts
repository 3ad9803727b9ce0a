import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { UPDATE_URL, stateUpdate } from "./support/fixtures.js";
import { enqueue } from "./support/outbox-harness.js";

/**
 * GET /admin/v1/overview (issue 11, the console's first page): counts by state, the oldest
 * pending event no dead event holds, the parked events and the fleets they hold, the last calls
 * from Orange; checked against what the database holds.
 */

const ADMIN_TOKEN = "admin-token-overview-5e2b";
const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` };
const OVERVIEW = "/admin/v1/overview";

let t: TestApp;

beforeAll(async () => {
  t = await createTestApp({ env: { ADMIN_TOKEN } });
});
afterAll(async () => t.close());

const overview = (): Promise<CallResult> => t.call("GET", OVERVIEW, undefined, ADMIN);

async function order(offer: string) {
  const orangeRef = `ORD-${randomUUID()}`;
  const res = await t.call("POST", "/productordering/v2/productOrder", {
    externalReference: { type: "orange", id: orangeRef },
    customer: { externalReference: { type: "orange", id: `CUST-${randomUUID()}` }, tradingName: "Boulangerie Martin" },
    orderItem: [{ id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: offer } }, productRef: { userServiceQuantity: 2 } }],
  });
  expect(res.status, res.text).toBe(201);
  return { id: res.body.id as string, orangeRef, state: res.body.state as string };
}

/** A dead event of `fleetId`, parked by Orange's 400. */
async function deadEvent(fleetId: string) {
  const event = await enqueue(t.store, { fleetId, resource: { fleet: fleetId } });
  await t.db.$executeRaw`
    UPDATE outbox_event SET state = 'dead', dead_at = now(), attempts = 1, last_status = 400, last_error = 'HTTP 400' WHERE id = ${event.id}`;
  return event;
}

describe("GET /admin/v1/overview", () => {
  it("on an empty store: every state counted 0, nothing parked, held or received", async () => {
    const res = await overview();
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual({
      at: expect.any(String),
      orders: { acknowledged: 0, completed: 0, failed: 0 },
      updates: { acknowledged: 0, completed: 0, failed: 0 },
      events: { pending: 0, delivered: 0, dead: 0, discarded: 0 },
      commands: { queued: 0, sending: 0, waiting: 0, retrying: 0, done: 0, refused: 0, parked: 0 },
      parkedEvents: { total: 0 },
      heldFleets: { total: 0 },
    });
  });

  it("counts by state as stored, names the oldest pending event not held, the parked events, held fleets and last calls", async () => {
    const done = await order("MBA-CAISSE-PRO");
    const failed = await order("NO-SUCH-OFFER");
    expect([done.state, failed.state]).toEqual(["completed", "failed"]);

    const heldFleet = `fl_${randomUUID()}`;
    const dead = await deadEvent(heldFleet);
    const behind = await enqueue(t.store, { fleetId: heldFleet, resource: { fleet: heldFleet } });
    const free = await enqueue(t.store, { fleetId: `fl_${randomUUID()}`, resource: { n: 1 } });
    await enqueue(t.store, { fleetId: `fl_${randomUUID()}`, resource: { n: 2 } });

    const res = await overview();
    expect(res.status, res.text).toBe(200);
    const body = res.body;

    // The counts, against the database read independently.
    const byState = async (rows: Promise<{ state: string; _count: { _all: number } }[]>) =>
      Object.fromEntries((await rows).map((r) => [r.state, r._count._all]));
    const orders = await byState(t.db.productOrder.groupBy({ by: ["state"], _count: { _all: true } }) as never);
    const events = await byState(t.db.outboxEvent.groupBy({ by: ["state"], _count: { _all: true } }) as never);
    expect(orders).toEqual({ completed: 1, failed: 1 });
    expect(body.orders).toEqual({ acknowledged: 0, ...orders });
    expect(events).toEqual({ pending: 3, dead: 1 });
    expect(body.events).toEqual({ delivered: 0, discarded: 0, ...events });
    expect(body.updates).toEqual({ acknowledged: 0, completed: 0, failed: 0 });

    // Not the event behind the dead one, older but held: that one is listed with its fleet.
    expect(body.oldestPendingEvent).toMatchObject({ id: free.id, orderingKey: expect.stringMatching(/^fl_/), attempts: 0 });
    expect(body.oldestPendingEvent.id).not.toBe(behind.id);
    expect(body.oldestPendingEvent.ageSeconds).toBeGreaterThanOrEqual(0);

    expect(body.parkedEvents.total).toBe(1);
    expect(body.parkedEvents.items).toEqual([expect.objectContaining({ id: dead.id, state: "dead", lastStatus: 400, fleetId: heldFleet })]);
    expect(body.heldFleets).toEqual({
      total: 1,
      items: [{ orderingKey: heldFleet, since: expect.any(String), waiting: 1, event: expect.objectContaining({ id: dead.id }) }],
    });

    // Newest first, each with what Orange was told.
    expect(body.lastCalls).toEqual([
      { kind: "order", id: failed.id, orangeRef: failed.orangeRef, useCase: "UC2", state: "failed", failureReason: expect.stringContaining("NO-SUCH-OFFER"), answerMode: "sync", receivedAt: expect.any(String) },
      { kind: "order", id: done.id, orangeRef: done.orangeRef, useCase: "UC2", state: "completed", answerMode: "sync", receivedAt: expect.any(String) },
    ]);
  });

  it("shows at most 10 last calls, newest first, orders and updates together", async () => {
    const made: string[] = [];
    for (let i = 0; i < 11; i++) made.push((await order("MBA-CAISSE-PRO")).id);
    const licence = await t.db.licence.findFirstOrThrow({ where: { orderId: made.at(-1)! } });
    const update = stateUpdate("suspended", licence.id);
    const suspended = await t.call("POST", UPDATE_URL, update);
    expect(suspended.status, suspended.text).toBe(200);
    const stored = await t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: update.externalReference.id } });
    made.push(stored.id);
    const res = await overview();
    expect(res.body.lastCalls.map((c: { id: string }) => c.id)).toEqual(made.slice(-10).reverse());
    expect(res.body.lastCalls[0]).toEqual({
      kind: "update",
      id: stored.id,
      orangeRef: update.externalReference.id,
      state: "completed",
      answerMode: "sync",
      receivedAt: expect.any(String),
    });
    expect(res.body.updates).toEqual({ acknowledged: 0, completed: 1, failed: 0 });
  });

  it("refuses an unknown parameter (400 naming it), another method (405), and answers 401 without the admin token", async () => {
    const typo = await t.call("GET", `${OVERVIEW}?state=dead`, undefined, ADMIN);
    expect(typo.status).toBe(400);
    expect(typo.body).toMatchObject({ code: 28 });
    expect(typo.body.description).toContain('"state"');
    const post = await t.call("POST", OVERVIEW, {}, ADMIN);
    expect(post.status).toBe(405);
    const none = await t.call("GET", OVERVIEW, undefined, { authorization: null });
    expect(none.status).toBe(401);
    const orange = await t.call("GET", OVERVIEW);
    expect(orange.status).toBe(401);
  });
});
