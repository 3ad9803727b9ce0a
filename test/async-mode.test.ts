import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { isTransient } from "../src/db/errors.js";
import { createRequestLifecycle, type RequestLifecycle } from "../src/domain/lifecycle.js";
import { createOrderHandler } from "../src/domain/orders.js";
import type { TaskHandler } from "../src/domain/ports.js";
import { createRequestTasks, LOST_RUN } from "../src/domain/request-jobs.js";
import { createOutbox } from "../src/events/outbox.js";
import { jobQueue } from "../src/events/queue.js";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { ORDER_URL, orange, PRO, ref, uc2 as fixtureUc2, UPDATE_URL } from "./support/fixtures.js";
import { startMockGateway, type MockGateway, type ReceivedEvent } from "../src/simulator/gateway.js";
import { clock, ids, startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * ORDERING_MODE=async and UPDATE_MODE=async (contract section 5): the answer is `acknowledged`,
 * a real worker carries the request out against a real PostgreSQL, and the final state reaches
 * the loopback Orange gateway as an event whose resource is what the sync mode would have answered.
 */


let asyncApp: TestApp;
let syncApp: TestApp;
let gw: MockGateway;
const running: WorkerHarness[] = [];

beforeAll(async () => {
  gw = await startMockGateway();
  [asyncApp, syncApp] = await Promise.all([
    createTestApp({ env: { ORDERING_MODE: "async", UPDATE_MODE: "async" } }),
    createTestApp(),
  ]);
});
beforeEach(() => gw.reset());
afterEach(async () => {
  await Promise.all(running.splice(0).map((w) => w.stop()));
});
afterAll(async () => {
  await gw?.close();
  await asyncApp?.close();
  await syncApp?.close();
});

async function worker(tasks: Record<string, TaskHandler> = asyncApp.services.requestTasks): Promise<WorkerHarness> {
  const w = await startWorker(gw, asyncApp.url, { tasks, sweepRequests: asyncApp.services.sweepRequests });
  running.push(w);
  return w;
}

/** UC2 with a contact and a first end user, as the async and sync answers are compared on it. */
function uc2(orderRef: string, opts: { quantity: number; offer?: string }) {
  return fixtureUc2({
    orderRef,
    quantity: opts.quantity,
    offer: opts.offer,
    withContact: true,
    endUserConfiguration: [{ endUser: { givenName: "Ana", familyName: "Diaz", email: "ana@example.org" } }],
  });
}

/** The event of an order (or an update) the gateway accepted, once it arrived. */
function deliveredFor(pick: (resource: Record<string, unknown>) => boolean): ReceivedEvent[] {
  return gw.delivered().filter((r) => pick((r.body as { resource: Record<string, unknown> }).resource));
}

async function eventOf(pick: (resource: Record<string, unknown>) => boolean): Promise<{
  call: ReceivedEvent;
  body: { id: string; type: string; time: string; resource: Record<string, unknown> };
}> {
  const call = await waitFor("the event at the gateway", () => deliveredFor(pick)[0]);
  return { call, body: call.body as never };
}

/** Partner ids and dates differ between two databases and two runs: compare the rest. */
function normalise(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(normalise);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [
        k,
        k === "completionDate" || (k === "date" && typeof v === "string") ? "<date>" : normalise(v),
      ]),
    );
  }
  return typeof value === "string" && /^(po|cu|ct|fl|us|eu|upd)_[0-9a-z]{20}$/.test(value) ? "<id>" : value;
}

async function orderRow(orderId: string) {
  return asyncApp.db.productOrder.findUnique({ where: { id: orderId } });
}

async function licencesOfOrder(orderId: string): Promise<number> {
  return asyncApp.db.licence.count({ where: { orderId } });
}

async function placeAndComplete(quantity: number): Promise<{ orderId: string; fleetId: string; licenceIds: string[] }> {
  const res = await asyncApp.call("POST", ORDER_URL, uc2(ref("ORD"), { quantity }));
  expect(res.status, res.text).toBe(201);
  const orderId = res.body.id as string;
  const { body } = await eventOf((r) => r.id === orderId);
  const fleetId = (body.resource as { orderItem: { productRef: { id: string } }[] }).orderItem[0]!.productRef.id;
  const list = await asyncApp.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`);
  return { orderId, fleetId, licenceIds: (list.body as { id: string }[]).map((l) => l.id) };
}

describe("asynchronous productOrder", () => {
  it("acknowledges a UC2 order at once, then the worker creates the fleet and sends the sync answer as completedStateNotification", async () => {
    const body = uc2(ref("ORD"), { quantity: 3 });

    const res = await asyncApp.call("POST", ORDER_URL, body);
    expect(res.status, res.text).toBe(201);
    expect(res.headers["idempotent-replayed"]).toBe("false");
    const orderId = res.body.id as string;
    expect(orderId).toMatch(/^po_/);
    expect(res.body).toMatchObject({ state: "acknowledged", externalReference: body.externalReference, category: "production" });
    expect(res.body.orderItem[0].state).toBe("acknowledged");
    expect(res.body.orderItem[0].productRef).toEqual({ userServiceQuantity: 3 }); // no fleet yet
    expect(res.body).not.toHaveProperty("completionDate");
    expect(res.body.customer).not.toHaveProperty("id");

    // Durable and not carried out: no worker runs yet.
    expect(await orderRow(orderId)).toMatchObject({ state: "acknowledged", fleetId: null, completedAt: null });
    expect(await licencesOfOrder(orderId)).toBe(0);
    const jobs = await asyncApp.db.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM graphile_worker.jobs
       WHERE task_identifier = 'process_order' AND key = ${`order:${orderId}`}`;
    expect(jobs[0]?.n).toBe(1);

    // Licences appear with the completed state, never before it: each probe reads both in one snapshot.
    await worker();
    await waitFor("the order completed", async () => {
      const [row] = await asyncApp.db.$queryRaw<{ state: string; licences: number }[]>`
        SELECT (SELECT state::text FROM product_order WHERE id = ${orderId}) AS state,
               (SELECT count(*)::int FROM licence WHERE order_id = ${orderId}) AS licences`;
      if (row!.state !== "completed") expect(row!.licences).toBe(0);
      return row!.state === "completed";
    });

    const { call, body: event } = await eventOf((r) => r.id === orderId);
    expect(call.path).toBe("/mba2/productordering/v2/event");
    expect(event.type).toBe("completedStateNotification");
    expect(event.id).toMatch(/^ev_/);

    const sync = await syncApp.call("POST", ORDER_URL, body);
    expect(sync.status, sync.text).toBe(201);
    expect(sync.body.state).toBe("completed");
    expect(normalise(event.resource)).toEqual(normalise(sync.body));

    const fleetId = (event.resource as { orderItem: { productRef: { id: string } }[] }).orderItem[0]!.productRef.id;
    expect(fleetId).toMatch(/^fl_/);
    const list = await asyncApp.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`);
    expect(list.status).toBe(200);
    expect(list.body).toHaveLength(3);
    expect(await orderRow(orderId)).toMatchObject({ state: "completed", fleetId, failureReason: null });
    const outbox = await asyncApp.db.outboxEvent.findMany({ where: { orderId } });
    expect(outbox).toHaveLength(1);
    expect(outbox[0]).toMatchObject({ orderingKey: fleetId, fleetId, state: "delivered" });
  });

  it("sends failedStateNotification with the reason for an unknown offer, and creates nothing", async () => {
    const body = uc2(ref("ORD"), { quantity: 2, offer: "MBA-UNKNOWN" });
    const customerRef = body.customer.externalReference.id;
    await worker();

    const res = await asyncApp.call("POST", ORDER_URL, body);
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("acknowledged");
    const orderId = res.body.id as string;

    const { body: event } = await eventOf((r) => r.id === orderId);
    expect(event.type).toBe("failedStateNotification");
    expect(event.resource).toMatchObject({
      state: "failed",
      note: { text: expect.stringContaining("MBA-UNKNOWN"), author: asyncApp.config.partnerName },
    });
    const sync = await syncApp.call("POST", ORDER_URL, body);
    expect(sync.body.state).toBe("failed");
    expect(normalise(event.resource)).toEqual(normalise(sync.body));

    expect(await orderRow(orderId)).toMatchObject({ state: "failed", failureReason: expect.stringContaining("MBA-UNKNOWN") });
    expect(await licencesOfOrder(orderId)).toBe(0);
    expect(await asyncApp.db.customer.count({ where: { orangeRef: customerRef } })).toBe(0);
    // No fleet: the order is its own ordering key.
    expect(await asyncApp.db.outboxEvent.findFirst({ where: { orderId } })).toMatchObject({ orderingKey: orderId, fleetId: null });
  });

  it("answers a retried order acknowledged again, before and after it is carried out, and creates it once", async () => {
    const body = uc2(ref("ORD"), { quantity: 2 });
    const first = await asyncApp.call("POST", ORDER_URL, body);
    const again = await asyncApp.call("POST", ORDER_URL, body);
    expect(again.status).toBe(201);
    expect(again.headers["idempotent-replayed"]).toBe("true");
    expect(again.body).toEqual(first.body);
    const orderId = first.body.id as string;

    await worker();
    await eventOf((r) => r.id === orderId);
    const late = await asyncApp.call("POST", ORDER_URL, body);
    expect(late.status).toBe(201);
    expect(late.body).toEqual(first.body); // the stored acknowledgement
    expect(late.body.state).toBe("acknowledged");

    const conflict = await asyncApp.call("POST", ORDER_URL, { ...body, category: "trial" });
    expect(conflict.status).toBe(409);

    const orangeRef = body.externalReference.id;
    expect(await asyncApp.db.productOrder.count({ where: { orangeRef } })).toBe(1);
    expect(await licencesOfOrder(orderId)).toBe(2);
    expect(await asyncApp.db.outboxEvent.count({ where: { orderId } })).toBe(1);
    expect(deliveredFor((r) => r.id === orderId)).toHaveLength(1);
  });

  it("writes no event and nothing else when the job's transaction rolls back, and retries the job", async () => {
    const body = uc2(ref("ORD"), { quantity: 2 });
    const res = await asyncApp.call("POST", ORDER_URL, body);
    const orderId = res.body.id as string;

    // A technical error inside the job (here while rendering) rolls everything back.
    const orders = createRequestLifecycle({
      db: asyncApp.store,
      clock,
      ids,
      outbox: createOutbox({ clock, ids }),
      jobs: jobQueue,
      maxAttempts: 5,
      handler: createOrderHandler({ catalogue: asyncApp.catalogue, clock, ids }),
      codec: {
        ...asyncApp.services.codecs.order,
        answer: () => {
          throw new Error("database went away");
        },
      },
    });
    await expect(orders.process(orderId)).rejects.toThrow("database went away");
    expect(await orderRow(orderId)).toMatchObject({ state: "acknowledged", fleetId: null });
    expect(await licencesOfOrder(orderId)).toBe(0);
    expect(await asyncApp.db.outboxEvent.count({ where: { orderId } })).toBe(0);

    // The same failure in the worker: graphile runs the job again, and the order goes out once.
    const real = asyncApp.services.orders;
    let failures = 0;
    const failingOnce: RequestLifecycle = {
      ...real,
      async process(id) {
        if (id === orderId && failures === 0) {
          failures++;
          throw new Error("database went away");
        }
        return real.process(id);
      },
    };
    await worker(createRequestTasks({ lifecycles: [failingOnce, asyncApp.services.updates], isTransient }));
    const { body: event } = await eventOf((r) => r.id === orderId);
    expect(failures).toBe(1);
    expect(event.type).toBe("completedStateNotification");
    expect(await asyncApp.db.outboxEvent.count({ where: { orderId } })).toBe(1);
    expect(await licencesOfOrder(orderId)).toBe(2);
  });
  it("keys each order's event on its fleet: UC3 the given fleet (even an unknown one), UC1 the order", async () => {
    await worker();
    const { fleetId } = await placeAndComplete(1);
    const item = (fleet: string) => ({
      id: "1",
      action: "add",
      productOffering: { externalReference: orange(PRO) },
      productRef: { id: fleet, userServiceQuantity: 2 },
    });
    const post = (body: object) => asyncApp.call("POST", ORDER_URL, { externalReference: orange(ref("ORD")), ...body });
    const uc3 = await post({ orderItem: [item(fleetId)] });
    const unknown = await post({ orderItem: [item("fl_nowhere")] });
    const uc1 = await post({ customer: { externalReference: orange(ref("CUS")) } });
    for (const r of [uc3, unknown, uc1]) expect(r.body.state, r.text).toBe("acknowledged");

    const uc3Event = await eventOf((r) => r.id === uc3.body.id);
    expect(uc3Event.body.type).toBe("completedStateNotification");
    expect(uc3Event.body.resource).toMatchObject({ orderItem: [{ productRef: { id: fleetId, userServiceQuantity: 2 } }] });
    const unknownEvent = await eventOf((r) => r.id === unknown.body.id);
    expect(unknownEvent.body.type).toBe("failedStateNotification");
    await eventOf((r) => r.id === uc1.body.id);

    const keyOf = async (orderId: string) => (await asyncApp.db.outboxEvent.findFirst({ where: { orderId } }))?.orderingKey;
    expect(await keyOf(uc3.body.id)).toBe(fleetId);
    expect(await keyOf(unknown.body.id)).toBe("fl_nowhere");
    expect(await keyOf(uc1.body.id)).toBe(uc1.body.id);
    expect((await asyncApp.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`)).body).toHaveLength(3);
  });
});

describe("acknowledged requests whose job gave up", () => {
  it("are carried out again by the worker's sweep: an order whose job ran out of attempts, an update whose job is gone", async () => {
    // No worker yet: the order stays acknowledged with its job waiting.
    const order = await asyncApp.call("POST", ORDER_URL, uc2(ref("ORD"), { quantity: 2 }));
    expect(order.body.state, order.text).toBe("acknowledged");
    const update = await asyncApp.call("POST", UPDATE_URL, {
      externalReference: orange(ref("UPD")),
      userService: [{ id: "us_does_not_exist", externalState: "suspended" }],
    });
    expect(update.body.state, update.text).toBe("acknowledged");
    const [updateRow] = await asyncApp.db.$queryRaw<{ id: string }[]>`
      SELECT id FROM licence_update WHERE orange_ref = ${update.body.externalReference.id}`;
    // As after graphile's 25 failed attempts (days of a database outage), and as after a removal.
    await asyncApp.db.$executeRaw`UPDATE graphile_worker._private_jobs SET attempts = max_attempts, last_error = 'database down'
                                   WHERE key = ${`order:${order.body.id}`}`;
    await asyncApp.db.$executeRaw`SELECT graphile_worker.remove_job(${`update:${updateRow!.id}`})`;

    const w = await worker();
    const completed = await eventOf((r) => r.id === order.body.id);
    expect(completed.body.type).toBe("completedStateNotification");
    const failed = await eventOf((r) => (r.externalReference as { id?: string } | undefined)?.id === update.body.externalReference.id);
    expect(failed.body.type).toBe("updateNotification");
    expect(failed.body.resource.state).toBe("failed");
    expect((await asyncApp.db.productOrder.findUniqueOrThrow({ where: { id: order.body.id } })).state).toBe("completed");
    expect((await asyncApp.db.licenceUpdate.findUniqueOrThrow({ where: { id: updateRow!.id } })).state).toBe("failed");
    // Done once: the next sweep finds nothing.
    expect((await w.worker.sweep()).rescheduledRequests).toEqual([]);
  });
});

describe("acknowledged requests that keep failing for a reason nobody foresaw", () => {
  let strict: TestApp;
  beforeAll(async () => {
    strict = await createTestApp({ env: { ORDERING_MODE: "async", UPDATE_MODE: "async", REQUEST_MAX_ATTEMPTS: "2" } });
  });
  afterAll(async () => strict?.close());

  async function strictWorker(): Promise<WorkerHarness> {
    const w = await startWorker(gw, strict.url, { tasks: strict.services.requestTasks, sweepRequests: strict.services.sweepRequests });
    running.push(w);
    return w;
  }

  it("end failed after REQUEST_MAX_ATTEMPTS runs, with their event and the error kept for operators", async () => {
    const order = await strict.call("POST", ORDER_URL, uc2(ref("ORD"), { quantity: 2 }));
    expect(order.body.state, order.text).toBe("acknowledged");
    const orderRef = order.body.externalReference.id as string;
    // Something no run can get past: the stored request no longer reads as an order.
    await strict.db.$executeRaw`UPDATE product_order SET request = ${JSON.stringify({
      externalReference: { type: "orange", id: orderRef },
      orderItem: "not an array",
    })}::json WHERE id = ${order.body.id}`;

    await strictWorker();
    const { body: event } = await waitFor(
      "the failed order's event",
      () => gw.delivered().find((r) => (r.body as { resource: { id?: string } }).resource.id === order.body.id),
      20_000,
    ).then((call) => ({ body: call.body as { type: string; resource: Record<string, unknown> } }));
    expect(event.type).toBe("failedStateNotification");
    expect(event.resource).toMatchObject({
      id: order.body.id,
      externalReference: { type: "orange", id: orderRef },
      state: "failed",
      note: { text: expect.stringContaining("technical error"), author: strict.config.partnerName },
    });
    const row = await strict.db.productOrder.findUniqueOrThrow({ where: { id: order.body.id } });
    expect(row).toMatchObject({ state: "failed", attempts: 2, failureReason: expect.stringContaining("technical error") });
    expect(row.lastError).toMatch(/ZodError|expected array/i);
    expect(await strict.db.licence.count({ where: { orderId: order.body.id } })).toBe(0);
    // The job is done with: nothing left to run, and the sweep does not re-arm it. (graphile records
    // the run's completion after the run, which delivered the event: it may come a little later.)
    const jobsLeft = async () =>
      (await strict.db.$queryRaw<{ n: number }[]>`
        SELECT count(*)::int AS n FROM graphile_worker.jobs WHERE key = ${`order:${order.body.id}`} AND attempts < max_attempts`)[0]!.n;
    await waitFor("graphile to record the last run", async () => ((await jobsLeft()) === 0 ? true : undefined));
    expect(await strict.services.sweepRequests()).toEqual([]);
  }, 30_000);

  it("are not re-armed forever by the sweep: past the bound, an acknowledged request without a job ends failed", async () => {
    const update = await strict.call("POST", UPDATE_URL, {
      externalReference: orange(ref("UPD")),
      userService: [{ id: "us_nowhere", externalState: "suspended" }],
    });
    expect(update.body.state, update.text).toBe("acknowledged");
    const [row] = await strict.db.$queryRaw<{ id: string }[]>`
      SELECT id FROM licence_update WHERE orange_ref = ${update.body.externalReference.id}`;
    // As after days of failed runs: the bound is reached and the job is gone.
    await strict.db.$executeRaw`UPDATE licence_update SET attempts = 1 WHERE id = ${row!.id}`;
    await strict.db.$executeRaw`SELECT graphile_worker.remove_job(${`update:${row!.id}`})`;

    expect(await strict.services.sweepRequests()).toEqual([`update:${row!.id}`]);
    expect(await strict.db.licenceUpdate.findUniqueOrThrow({ where: { id: row!.id } })).toMatchObject({
      state: "failed",
      attempts: 2,
      failureReason: expect.stringContaining("technical error"),
      lastError: LOST_RUN,
    });
    const events = await strict.db.outboxEvent.findMany({ where: { updateId: row!.id } });
    expect(events).toHaveLength(1);
    expect(events[0]!.body).toMatchObject({ type: "updateNotification", resource: { state: "failed" } });
    expect(await strict.services.sweepRequests()).toEqual([]);
  });
});

describe("asynchronous userService/update", () => {
  async function postUpdate(body: unknown): Promise<CallResult> {
    return asyncApp.call("POST", UPDATE_URL, body);
  }

  it("acknowledges an update, then applies it and sends updateNotification with the licences after the change", async () => {
    await worker();
    const { fleetId, licenceIds } = await placeAndComplete(3);
    const [a, b] = licenceIds as [string, string];
    const updateRef = ref("UPD");
    const body = {
      externalReference: orange(updateRef),
      userService: [
        { id: a, externalState: "suspended" },
        { id: b, productOfferingOperation: { action: "swap", productOffering: { externalReference: orange("MBA-CAISSE-PREMIUM") } } },
      ],
    };
    gw.reset();

    const res = await postUpdate(body);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual({ externalReference: orange(updateRef), state: "acknowledged" });

    const { call, body: event } = await eventOf(() => true);
    expect(call.path).toBe("/mba2/userservice/v2/event");
    expect(event.type).toBe("updateNotification");
    expect(event.resource).toMatchObject({
      externalReference: orange(updateRef),
      state: "completed",
      userService: [
        { id: a, relatedProductRefId: fleetId, state: "inactive", externalState: "suspended" },
        { id: b, relatedProductRefId: fleetId, state: "active", productOffering: { externalReference: orange("MBA-CAISSE-PREMIUM") } },
      ],
    });
    expect(event.resource).not.toHaveProperty("note");

    const now = await asyncApp.call("GET", `/userservice/v2/userService?id=${a},${b}`);
    expect(now.body).toEqual((event.resource as { userService: unknown[] }).userService);
    const update = await asyncApp.db.licenceUpdate.findFirst({ where: { orangeRef: updateRef } });
    expect(update).toMatchObject({ state: "completed", failureReason: null });
    expect(await asyncApp.db.outboxEvent.findFirst({ where: { updateId: update!.id } })).toMatchObject({
      api: "userservice",
      orderingKey: fleetId,
    });

    // A retry answers the stored acknowledgement and changes nothing more.
    const retry = await postUpdate(body);
    expect(retry.body).toEqual(res.body);
    expect(retry.headers["idempotent-replayed"]).toBe("true");
    expect(await asyncApp.db.licenceUpdate.count({ where: { orangeRef: updateRef } })).toBe(1);
  });

  it("fails the whole update on one unknown id: failed event with the reason, nothing changed", async () => {
    await worker();
    const { fleetId, licenceIds } = await placeAndComplete(2);
    const [a] = licenceIds as [string];
    const before = await asyncApp.call("GET", `/userservice/v2/userService/${a}`);
    const updateRef = ref("UPD");
    gw.reset();

    const res = await postUpdate({
      externalReference: orange(updateRef),
      userService: [
        { id: a, externalState: "deleted" },
        { id: "us_unknown", externalState: "suspended" },
      ],
    });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe("acknowledged");

    const { body: event } = await eventOf(() => true);
    expect(event.type).toBe("updateNotification");
    expect(event.resource).toMatchObject({
      externalReference: orange(updateRef),
      state: "failed",
      note: { text: expect.stringContaining("us_unknown"), author: asyncApp.config.partnerName },
      userService: [{ id: a, relatedProductRefId: fleetId, state: "active" }],
    });
    const after = await asyncApp.call("GET", `/userservice/v2/userService/${a}`);
    expect(after.body).toEqual(before.body);
    expect(await asyncApp.db.licenceUpdate.findFirst({ where: { orangeRef: updateRef } })).toMatchObject({
      state: "failed",
      failureReason: expect.stringContaining("us_unknown"),
    });
  });

  it("sends one updateNotification per fleet when the licences span several fleets of the customer, each in its fleet's order", async () => {
    await worker();
    const first = uc2(ref("ORD"), { quantity: 1 });
    const second = { ...uc2(ref("ORD"), { quantity: 1 }), customer: first.customer };
    const fleets: string[] = [];
    const licences: string[] = [];
    for (const body of [first, second]) {
      const res = await asyncApp.call("POST", ORDER_URL, body);
      const { body: event } = await eventOf((r) => r.id === res.body.id);
      const fleetId = (event.resource as { orderItem: { productRef: { id: string } }[] }).orderItem[0]!.productRef.id;
      const list = await asyncApp.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`);
      fleets.push(fleetId);
      licences.push(list.body[0].id);
    }
    gw.reset();
    const updateRef = ref("UPD");
    const res = await postUpdate({
      externalReference: orange(updateRef),
      userService: licences.map((id) => ({ id, externalState: "suspended" })),
    });
    expect(res.body.state).toBe("acknowledged");

    await waitFor("both events", () => gw.delivered().length >= 2);
    const events = gw.delivered().map((r) => r.body as { type: string; resource: { state: string; userService: { id: string; relatedProductRefId: string }[] } });
    expect(events).toHaveLength(2);
    for (const [i, fleetId] of fleets.entries()) {
      const event = events.find((e) => e.resource.userService[0]?.relatedProductRefId === fleetId);
      expect(event, fleetId).toMatchObject({
        type: "updateNotification",
        resource: { externalReference: orange(updateRef), state: "completed", userService: [{ id: licences[i], state: "inactive" }] },
      });
      expect(event!.resource.userService).toHaveLength(1);
    }
    const update = await asyncApp.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: updateRef } });
    const rows = await asyncApp.db.outboxEvent.findMany({ where: { updateId: update.id }, orderBy: { orderingKey: "asc" } });
    expect(rows.map((r) => r.orderingKey)).toEqual([...fleets].sort());
  });

  it("orders an update none of whose licences exists on the update itself", async () => {
    await worker();
    const res = await postUpdate({ userService: [{ id: "us_nowhere", externalState: "suspended" }] });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ state: "acknowledged" });
    const { body: event } = await eventOf(() => true);
    expect(event.resource).toMatchObject({ state: "failed", note: { text: expect.stringContaining("us_nowhere") } });
    expect(event.resource).not.toHaveProperty("userService");
    const row = await asyncApp.db.outboxEvent.findFirst({ where: { id: event.id } });
    expect(row?.orderingKey).toBe(row?.updateId);
  });
});
