import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPartnerApp, WEBHOOK_PATH, type PartnerApp } from "../examples/partner-app/app.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { freePort } from "../src/simulator/self-host.js";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";
import { ADMIN_TOKEN as PROVISIONED_ADMIN_TOKEN, startProvisioned, type Provisioned } from "./support/provisioned.js";

/**
 * Operators see everything (issue 11): the history written with each change, read through the
 * admin API as timelines, the listings with their filters and pages, and the search box. Every
 * test goes through Orange's routes and the admin routes, then looks at the database.
 */

const ADMIN_TOKEN = "admin-token-history-3b8d";
const APP_TOKEN = "app-token-history-9e41";
const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` };
const PROVISIONED_ADMIN = { authorization: `Bearer ${PROVISIONED_ADMIN_TOKEN}` };
const APP = { authorization: `Bearer ${APP_TOKEN}` };
const ORDER_URL = "/productordering/v2/productOrder";
const UPDATE_URL = "/userservice/v2/userService/update";
const PRO = "MBA-CAISSE-PRO";
const PREMIUM = "MBA-CAISSE-PREMIUM";

const ref = (prefix: string) => `${prefix}-${randomBytes(5).toString("hex")}`;
const orange = (id: string) => ({ type: "orange", id });

function uc2(opts: { quantity: number; offer?: string; orderRef?: string; customerRef?: string; tradingName?: string; contactRef?: string }) {
  return {
    externalReference: orange(opts.orderRef ?? ref("ORD")),
    category: "production",
    customer: {
      externalReference: orange(opts.customerRef ?? ref("CUS")),
      tradingName: opts.tradingName ?? "Boulangerie Martin",
      organizationCode: "41234567800019",
    },
    relatedContact: [
      { role: "customerFleetManager", externalReference: orange(opts.contactRef ?? ref("CT")), givenName: "Claire", familyName: "Martin", email: "claire@martin.example" },
    ],
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { externalReference: orange(opts.offer ?? PRO) },
        productRef: { userServiceQuantity: opts.quantity },
        endUserConfiguration: [{ endUser: { givenName: "Paul", familyName: "Martin", email: "Paul.Martin@Example.com" } }],
      },
    ],
  };
}

function update(changes: Record<string, unknown>[], updateRef = ref("UPD")) {
  return { externalReference: orange(updateRef), userService: changes };
}

const kinds = (timeline: { kind: string }[]) => timeline.map((e) => e.kind);

function expectPage(res: CallResult, total: number, count: number) {
  expect(res.status, res.text).toBe(200);
  expect(res.headers["x-total-count"]).toBe(String(total));
  expect(res.headers["x-result-count"]).toBe(String(count));
}

/** A listing that may be empty (`[]`, which TestApp.call refuses as an empty node). */
async function listing(t: TestApp, url: string): Promise<CallResult> {
  const res = await t.app.inject({ method: "GET", url, headers: ADMIN });
  return { status: res.statusCode, headers: res.headers, body: JSON.parse(res.body), text: res.body };
}

// ---------------------------------------------------------------------------------------------

describe("sync mode: orders, licences and the search box", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { ADMIN_TOKEN, APP_TOKEN } });
  });
  afterAll(async () => t?.close());

  const admin = (url: string) => t.call("GET", url, undefined, ADMIN);

  it("finds a sync order refused by a rule by its Orange reference, with its reason, its request ids and its timeline", async () => {
    const orderRef = ref("ORD");
    const body = uc2({ quantity: 2, offer: "MBA-UNKNOWN", orderRef });
    const res = await t.call("POST", ORDER_URL, body, {
      "x-request-id": "orange-call-0001",
      "x-oapi-request-id": "oapi-7f3e-42",
    });
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("failed");
    const id = res.body.id as string;

    const listed = await admin(`/admin/v1/orders?orangeRef=${orderRef}`);
    expectPage(listed, 1, 1);
    expect(listed.body[0]).toMatchObject({ id, orangeRef: orderRef, state: "failed", useCase: "UC2", answerMode: "sync" });
    expect(listed.body[0].failureReason).toMatch(/offer "MBA-UNKNOWN" is not in the partner's catalogue/);
    const failedUc2 = await admin(`/admin/v1/orders?state=failed&useCase=UC2&limit=100`);
    expect(failedUc2.body.map((o: { id: string }) => o.id)).toContain(id);
    expectPage(await listing(t, `/admin/v1/orders?state=completed&orangeRef=${orderRef}`), 0, 0);

    const found = await admin(`/admin/v1/search?q=${orderRef}`);
    expectPage(found, 1, 1);
    expect(found.body).toEqual([{ kind: "order", id, label: expect.stringMatching(/^order UC2 failed/), href: `/admin/v1/orders/${id}` }]);

    const detail = await admin(found.body[0].href);
    expect(detail.status, detail.text).toBe(200);
    expect(detail.body).toMatchObject({ id, state: "failed", answer: { state: "failed" }, request: { externalReference: { id: orderRef } } });
    expect(detail.body.command).toBeUndefined();
    expect(detail.body.events).toBeUndefined();
    expect(kinds(detail.body.timeline)).toEqual(["request.received", "request.failed", "request.answered"]);
    expect(detail.body.timelineTotal).toBe(3);
    const [received, failed, answered] = detail.body.timeline;
    expect(received).toMatchObject({
      actor: "orange",
      requestId: id,
      data: { orangeRef: orderRef, mode: "sync", httpRequestId: "orange-call-0001", headers: { "x-request-id": "orange-call-0001", "x-oapi-request-id": "oapi-7f3e-42" } },
    });
    expect(received.summary).toMatch(/Orange sent the request.*orange-call-0001/);
    expect(failed.data.reason).toBe(listed.body[0].failureReason);
    expect(answered).toMatchObject({ data: { state: "failed", reason: listed.body[0].failureReason } });
    for (let i = 1; i < 3; i++) expect(Date.parse(detail.body.timeline[i].at)).toBeGreaterThanOrEqual(Date.parse(detail.body.timeline[i - 1].at));

    // The database: three entries, written with the order (nothing else about it exists).
    const rows = await t.db.historyEntry.findMany({ where: { requestId: id }, orderBy: { id: "asc" } });
    expect(rows.map((r) => [r.kind, r.actor])).toEqual([
      ["request.received", "orange"],
      ["request.failed", null],
      ["request.answered", null],
    ]);
    expect(await t.db.licence.count({ where: { orderId: id } })).toBe(0);

    // Orange's retry: answered from the stored answer, and the history says so.
    const again = await t.call("POST", ORDER_URL, body, { "x-request-id": "orange-call-0002" });
    expect(again.headers["idempotent-replayed"]).toBe("true");
    const timeline = await admin(`/admin/v1/orders/${id}/timeline`);
    expectPage(timeline, 4, 4);
    expect(timeline.body[3]).toMatchObject({ kind: "request.replayed", actor: "orange", data: { httpRequestId: "orange-call-0002" } });
  });

  it("writes one history entry for a large order, not one per licence", async () => {
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1000 }));
    expect(res.body.state, res.text).toBe("completed");
    const rows = await t.db.historyEntry.findMany({ where: { requestId: res.body.id }, orderBy: { id: "asc" } });
    expect(rows.map((r) => r.kind)).toEqual(["request.received", "request.completed", "request.answered"]);
    const fleetId = res.body.orderItem[0].productRef.id;
    expect(rows[1]).toMatchObject({ fleetId, data: { useCase: "UC2", licences: 1000 } });
    expect(rows[1]!.customerId).toMatch(/^cu_/);
    expect(await t.db.historyEntry.count({ where: { licenceId: { not: null } } })).toBe(0);
  });

  it("shows a licence's state, offer, end user over time: suspend, reactivate, swap, then a partner-side end-user change", async () => {
    const order = await t.call("POST", ORDER_URL, uc2({ quantity: 2 }));
    const fleetId = order.body.orderItem[0].productRef.id as string;
    const [first, second] = (await t.db.licence.findMany({ where: { fleetId }, orderBy: { id: "asc" } })).map((l) => l.id);
    const suspend = await t.call("POST", UPDATE_URL, update([{ id: first, externalState: "suspended" }]));
    expect(suspend.body.state, suspend.text).toBe("completed");
    expect((await t.call("POST", UPDATE_URL, update([{ id: first, externalState: "active" }]))).body.state).toBe("completed");
    expect((await t.call("POST", UPDATE_URL, update([{ id: first, productOfferingOperation: { action: "swap", productOffering: { externalReference: orange(PREMIUM) } } }]))).body.state).toBe(
      "completed",
    );
    const uc5 = await t.call(
      "POST",
      "/admin/v1/licence-changes",
      { userService: [{ id: first, endUserOperation: { action: "swap", endUser: { givenName: "Marie", familyName: "Curie", email: "marie@example.com" } } }] },
      ADMIN,
    );
    expect(uc5.status, uc5.text).toBe(200);

    const detail = await admin(`/admin/v1/licences/${first}`);
    expect(detail.status, detail.text).toBe(200);
    expect(detail.body).toMatchObject({ id: first, fleetId, orderId: order.body.id, state: "active", offerCode: PREMIUM, endUser: { givenName: "Marie" } });
    expect(kinds(detail.body.history)).toEqual(["licence.created", "licence.changed", "licence.changed", "licence.changed", "licence.changed"]);
    expect(detail.body.historyTotal).toBe(5);
    const [created, suspended, reactivated, swapped, changed] = detail.body.history;
    expect(created).toMatchObject({ requestId: order.body.id, data: { after: { state: "active", offerCode: PRO, endUser: { givenName: "Paul" } } } });
    expect(suspended).toMatchObject({
      requestId: expect.stringMatching(/^upd_/),
      data: { source: "update", before: { state: "active" }, after: { state: "inactive", externalState: "suspended" } },
    });
    expect(suspended.summary).toMatch(/state "?active"? → "?inactive"?/);
    expect(reactivated.data).toMatchObject({ before: { state: "inactive" }, after: { state: "active", externalState: "active" } });
    expect(swapped.data).toMatchObject({ before: { offerCode: PRO }, after: { offerCode: PREMIUM } });
    expect(changed).toMatchObject({
      actor: "admin",
      eventId: uc5.body.events[0].id,
      data: { source: "licence-change", operations: { endUser: "swap" }, before: { endUser: { givenName: "Paul" } }, after: { endUser: { givenName: "Marie" } } },
    });
    expect(changed.summary).toMatch(/end user Paul Martin → Marie Curie/);

    // The database: entries for this licence's later changes only; its neighbour has none.
    expect(await t.db.historyEntry.count({ where: { licenceId: first } })).toBe(4);
    expect(await t.db.historyEntry.count({ where: { licenceId: second } })).toBe(0);
    const fleetChange = await t.db.historyEntry.findFirstOrThrow({ where: { fleetId, kind: "licences.changed" } });
    expect(fleetChange).toMatchObject({ actor: "admin", eventId: uc5.body.events[0].id, data: { licences: [first] } });

    // The same change made by the partner's application is recorded as the application's.
    const byApp = await t.call("POST", "/admin/v1/licence-changes", { userService: [{ id: second, endUserOperation: { action: "add", endUser: { givenName: "Léa" } } }] }, APP);
    expect(byApp.status, byApp.text).toBe(200);
    expect((await t.db.historyEntry.findFirstOrThrow({ where: { licenceId: second } })).actor).toBe("application");

    // The licence listing finds them by end user's e-mail (as sent or in lower case), state, fleet.
    // Stored in lower case, asked in another: found; Paul's e-mail is gone with him.
    expectPage(await listing(t, `/admin/v1/licences?endUserEmail=Marie@Example.com`), 1, 1);
    expectPage(await listing(t, `/admin/v1/licences?fleetId=${fleetId}&endUserEmail=Paul.Martin@Example.com`), 0, 0);
    const byState = await admin(`/admin/v1/licences?fleetId=${fleetId}&state=active&sort=id`);
    expectPage(byState, 2, 2);
    expect(byState.body.map((l: { id: string }) => l.id)).toEqual([first, second]);

    // The fleet's timeline: its order, its updates (one entry each), its partner-side changes and their events.
    const fleet = await admin(`/admin/v1/fleets/${fleetId}`);
    expect(fleet.status, fleet.text).toBe(200);
    expect(fleet.body).toMatchObject({ id: fleetId, offerCode: PRO, licences: 2, licencesByState: { active: 2 } });
    expect(kinds(fleet.body.timeline)).toEqual([
      "request.completed",
      "request.completed",
      "request.completed",
      "request.completed",
      "licences.changed",
      "event.written",
      "licences.changed",
      "event.written",
    ]);
    const customer = await admin(`/admin/v1/customers/${fleet.body.customerId}`);
    expect(customer.status, customer.text).toBe(200);
    expect(customer.body.fleetList).toEqual([{ id: fleetId, offerCode: PRO, createdAt: expect.any(String), licences: 2 }]);
    expect(kinds(customer.body.timeline).filter((k) => k.startsWith("request."))).toEqual(["request.completed", "request.completed", "request.completed", "request.completed"]);
  });

  it("finds each kind of object by its partner id or Orange reference in the search box", async () => {
    const orderRef = ref("ORD");
    const customerRef = ref("CUS");
    const contactRef = ref("CT");
    const order = await t.call("POST", ORDER_URL, uc2({ quantity: 1, orderRef, customerRef, contactRef }));
    const fleetId = order.body.orderItem[0].productRef.id as string;
    const licence = await t.db.licence.findFirstOrThrow({ where: { fleetId } });
    const endUserId = (licence.endUser as { id: string }).id;
    const customer = await t.db.customer.findUniqueOrThrow({ where: { orangeRef: customerRef }, include: { contacts: true } });
    const contactId = customer.contacts[0]!.id;
    const updateRef = ref("UPD");
    const upd = await t.call("POST", UPDATE_URL, update([{ id: licence.id, externalState: "suspended" }], updateRef));
    const updateId = (await t.db.licenceUpdate.findFirstOrThrow({ where: { orangeRef: updateRef } })).id;
    expect(upd.body.state).toBe("completed");
    const uc5 = await t.call("POST", "/admin/v1/licence-changes", { userService: [{ id: licence.id, realizingResourceOperation: { action: "add", realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://x.example" }] } } }] }, ADMIN);
    const eventId = uc5.body.events[0].id as string;

    const cases: [string, string, string, string][] = [
      [order.body.id, "order", order.body.id, `/admin/v1/orders/${order.body.id}`],
      [orderRef, "order", order.body.id, `/admin/v1/orders/${order.body.id}`],
      [updateId, "update", updateId, `/admin/v1/updates/${updateId}`],
      [updateRef, "update", updateId, `/admin/v1/updates/${updateId}`],
      [customer.id, "customer", customer.id, `/admin/v1/customers/${customer.id}`],
      [customerRef, "customer", customer.id, `/admin/v1/customers/${customer.id}`],
      [contactId, "contact", contactId, `/admin/v1/customers/${customer.id}`],
      [contactRef, "contact", contactId, `/admin/v1/customers/${customer.id}`],
      [fleetId, "fleet", fleetId, `/admin/v1/fleets/${fleetId}`],
      [licence.id, "licence", licence.id, `/admin/v1/licences/${licence.id}`],
      [endUserId, "licence", licence.id, `/admin/v1/licences/${licence.id}`],
      [eventId, "event", eventId, `/admin/v1/events/${eventId}`],
    ];
    for (const [q, kind, id, href] of cases) {
      const res = await admin(`/admin/v1/search?q=${encodeURIComponent(q)}`);
      expectPage(res, 1, 1);
      expect(res.body[0], q).toMatchObject({ kind, id, href, label: expect.any(String) });
      expect((await admin(href)).status, href).toBe(200);
    }
    expect((await admin(`/admin/v1/search?q=${endUserId}`)).body[0].label).toMatch(/end user Paul Martin/);
    // The end user's e-mail as Orange sent it (mixed case).
    const byEmail = await admin(`/admin/v1/licences?endUserEmail=Paul.Martin@Example.com&fleetId=${fleetId}`);
    expectPage(byEmail, 1, 1);
    expect(byEmail.body[0]).toMatchObject({ id: licence.id, endUser: { id: endUserId, email: "Paul.Martin@Example.com" } });
    const none = await t.app.inject({ method: "GET", url: "/admin/v1/search?q=nothing-such", headers: ADMIN });
    expect(none.statusCode).toBe(200);
    expect(JSON.parse(none.body)).toEqual([]);
    expect(none.headers["x-total-count"]).toBe("0");

    // The update's detail: its licences, its answer, its timeline.
    const detail = await admin(`/admin/v1/updates/${updateId}`);
    expect(detail.body).toMatchObject({ id: updateId, orangeRef: updateRef, state: "completed", licences: 1, licenceIds: [licence.id], answer: { state: "completed" } });
    expect(kinds(detail.body.timeline)).toEqual(["request.received", "licence.changed", "request.completed", "request.answered"]);
    expectPage(await admin(`/admin/v1/updates?licenceId=${licence.id}`), 1, 1);
    expectPage(await admin(`/admin/v1/updates?orangeRef=${updateRef}&state=completed`), 1, 1);
  });

  it("pages every listing with offset, limit and sort, and says how many match", async () => {
    const token = randomBytes(4).toString("hex");
    const names = ["Alpha", "Bravo", "Charlie"].map((n) => `${n} ${token}`);
    const ids: string[] = [];
    for (const name of names) {
      const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1, tradingName: name }));
      ids.push(res.body.id);
    }
    const first = await admin(`/admin/v1/customers?name=${token.toUpperCase()}&limit=2&sort=tradingName`);
    expectPage(first, 3, 2);
    expect(first.body.map((c: { tradingName: string }) => c.tradingName)).toEqual(names.slice(0, 2));
    const rest = await admin(`/admin/v1/customers?name=${token}&limit=2&offset=2&sort=tradingName`);
    expectPage(rest, 3, 1);
    expect(rest.body[0].tradingName).toBe(names[2]);
    const reversed = await admin(`/admin/v1/customers?name=${token}&sort=-tradingName`);
    expect(reversed.body.map((c: { tradingName: string }) => c.tradingName)).toEqual([...names].reverse());
    // A pattern's wildcards are taken literally.
    expectPage(await listing(t, `/admin/v1/customers?name=${encodeURIComponent("%")}${token}`), 0, 0);

    const customerId = first.body[0].id;
    expectPage(await admin(`/admin/v1/fleets?customerId=${customerId}`), 1, 1);
    expectPage(await admin(`/admin/v1/orders?customerId=${customerId}&useCase=UC2`), 1, 1);
    const newest = await admin(`/admin/v1/orders?limit=3`);
    expect(newest.body.map((o: { id: string }) => o.id)).toEqual([...ids].reverse());
    const since = newest.body[2].createdAt as string;
    const range = await admin(`/admin/v1/orders?from=${since}&to=${new Date(Date.now() + 60_000).toISOString()}&sort=createdAt`);
    expectPage(range, 3, 3);
    expect(range.body.map((o: { id: string }) => o.id)).toEqual(ids);
    expectPage(await listing(t, `/admin/v1/orders?to=${since}&orangeRef=${newest.body[2].orangeRef}`), 0, 0);

    const timeline = await admin(`/admin/v1/orders/${ids[0]}/timeline?limit=1&offset=1&sort=-at`);
    expectPage(timeline, 3, 1);
    expect(timeline.body[0].kind).toBe("request.completed");
  });

  it("refuses an unknown filter or sort field with a 400 naming it", async () => {
    for (const path of ["customers", "fleets", "licences", "orders", "updates"]) {
      const typo = await admin(`/admin/v1/${path}?customerID=cu_1`);
      expect(typo.status, path).toBe(400);
      expect(typo.body).toMatchObject({ code: 28 });
      expect(typo.body.description).toMatch(/unknown parameter "customerID" \(known: /);
      const sort = await admin(`/admin/v1/${path}?sort=-password`);
      expect(sort.status, path).toBe(400);
      expect(sort.body.description).toMatch(/sort has unknown field "password": sort by one of /);
    }
    const search = await admin(`/admin/v1/search?q=x&kind=order`);
    expect(search.body.description).toMatch(/unknown parameter "kind"/);
    expect((await admin(`/admin/v1/search`)).body.description).toMatch(/^q /);
    const timeline = await admin(`/admin/v1/orders/po_x/timeline?sort=createdAt`);
    expect(timeline.status).toBe(400);
    const range = await admin(`/admin/v1/orders?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z`);
    expect(range.status).toBe(400);
    expect(range.body.description).toMatch(/^to must not be earlier than from/);
    expect((await admin(`/admin/v1/orders?from=yesterday`)).status).toBe(400);
    expect((await admin(`/admin/v1/licences?state=suspended`)).status).toBe(400);
    expect((await admin(`/admin/v1/orders/po_unknown`)).status).toBe(404);
    expect((await admin(`/admin/v1/licences/us_unknown/timeline`)).status).toBe(404);
    // Orange's credential does not open them.
    expect((await t.call("GET", "/admin/v1/orders")).status).toBe(401);
    expect((await t.call("GET", "/admin/v1/orders", undefined, APP)).status).toBe(403);
  });
});

// ---------------------------------------------------------------------------------------------

describe("a timeline whose entries share one instant", () => {
  let t: TestApp;
  beforeAll(async () => {
    // Every entry in the same millisecond, as a sync request on a fast machine writes them.
    const at = new Date("2026-12-01T06:00:00.000Z");
    t = await createTestApp({ env: { ADMIN_TOKEN }, clock: { now: () => new Date(at) } });
  });
  afterAll(async () => t?.close());
  const admin = (url: string) => t.call("GET", url, undefined, ADMIN);

  it("shows a sync update received first, then its change, its outcome and its answer, in its detail and its timeline", async () => {
    const order = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    expect(order.body.state, order.text).toBe("completed");
    const [licence] = await t.db.licence.findMany({ where: { fleetId: order.body.orderItem[0].productRef.id as string } });
    const suspend = await t.call("POST", UPDATE_URL, update([{ id: licence!.id, externalState: "suspended" }]));
    expect(suspend.body.state, suspend.text).toBe("completed");
    const [row] = await t.db.licenceUpdate.findMany({ where: { licenceIds: { has: licence!.id } } });
    // The store: one instant for all four entries.
    const entries = await t.db.historyEntry.findMany({ where: { requestId: row!.id } });
    expect(new Set(entries.map((e) => e.at.toISOString()))).toEqual(new Set(["2026-12-01T06:00:00.000Z"]));
    const lifeOfUpdate = ["request.received", "licence.changed", "request.completed", "request.answered"];
    // The detail reads the latest entries newest first, then shows them oldest first; the timeline route pages oldest first.
    expect(kinds((await admin(`/admin/v1/updates/${row!.id}`)).body.timeline)).toEqual(lifeOfUpdate);
    expect(kinds((await admin(`/admin/v1/updates/${row!.id}/timeline`)).body)).toEqual(lifeOfUpdate);
  });
});

// ---------------------------------------------------------------------------------------------

describe("async mode: the worker, the events and the operators' actions", () => {
  let t: TestApp;
  let gw: MockGateway;
  let worker: WorkerHarness;
  beforeAll(async () => {
    gw = await startMockGateway();
    t = await createTestApp({ env: { ADMIN_TOKEN, ORDERING_MODE: "async", UPDATE_MODE: "async" } });
    worker = await startWorker(gw, t.url, { tasks: t.services.requestTasks, sweepRequests: t.services.sweepRequests });
  });
  afterAll(async () => {
    await worker?.stop();
    await t?.close();
    await gw?.close();
  });

  const admin = (method: "GET" | "POST", url: string, body?: unknown) => t.call(method, url, body, ADMIN);
  const eventOf = (orderId: string) => waitFor("the order's event", () => t.db.outboxEvent.findFirst({ where: { orderId } }));

  it("shows an async order received, acknowledged, carried out, then its event delivered", async () => {
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 3 }), { "x-oapi-request-id": "oapi-async-1" });
    expect(res.body.state, res.text).toBe("acknowledged");
    const id = res.body.id as string;
    await waitFor("the delivery", async () => (await t.db.outboxEvent.findFirst({ where: { orderId: id, state: "delivered" } })) ?? undefined);

    const detail = await admin("GET", `/admin/v1/orders/${id}`);
    expect(detail.status, detail.text).toBe(200);
    expect(detail.body).toMatchObject({ state: "completed", answerMode: "async", answer: { state: "acknowledged" } });
    expect(detail.body.events).toEqual([expect.objectContaining({ type: "completedStateNotification", state: "delivered", attempts: 1 })]);
    expect(kinds(detail.body.timeline)).toEqual(["request.received", "request.answered", "request.completed", "event.written", "event.attempt"]);
    const [received, answered, completed, written, attempt] = detail.body.timeline;
    expect(received.data.headers).toEqual({ "x-oapi-request-id": "oapi-async-1" });
    expect(answered.data).toEqual({ state: "acknowledged" });
    expect(completed).toMatchObject({ fleetId: detail.body.fleetId, customerId: detail.body.customerId, data: { useCase: "UC2", licences: 3 } });
    expect(written).toMatchObject({ eventId: detail.body.events[0].id, data: { type: "completedStateNotification", state: "delivered" } });
    const [row] = await t.db.eventDeliveryAttempt.findMany({ where: { eventId: detail.body.events[0].id } });
    expect(attempt).toMatchObject({ eventId: detail.body.events[0].id, data: { attempt: 1, outcome: "delivered", status: row!.status } });
    expect(row!.status).toBe(gw.delivered().find((r) => (r.body as { id: string }).id === detail.body.events[0].id)?.status);
    expect(attempt.data.orangeRequestId).toMatch(/^mock-/);
    expect(gw.delivered().some((r) => (r.body as { id: string }).id === detail.body.events[0].id)).toBe(true);

    // Event history is read from the outbox: nothing about the event was copied into the history.
    expect(await t.db.historyEntry.count({ where: { requestId: id } })).toBe(3);
    expect(await t.db.eventDeliveryAttempt.count({ where: { eventId: detail.body.events[0].id } })).toBe(1);
  });

  it("records an operator's re-send and discard with the credential that made them", async () => {
    gw.scriptEvents(400, 1);
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const id = res.body.id as string;
    const event = await waitFor("the dead event", async () => (await t.db.outboxEvent.findFirst({ where: { orderId: id, state: "dead" } })) ?? undefined);

    const resent = await admin("POST", `/admin/v1/events/${event.id}/resend`, {});
    expect(resent.status, resent.text).toBe(200);
    await waitFor("the delivery", async () => (await t.db.outboxEvent.findFirst({ where: { id: event.id, state: "delivered" } })) ?? undefined);

    const timeline = await admin("GET", `/admin/v1/orders/${id}/timeline?limit=100`);
    const events = timeline.body.filter((e: { kind: string }) => e.kind.startsWith("event."));
    expect(kinds(events)).toEqual(["event.written", "event.attempt", "event.resent", "event.attempt"]);
    expect(events[1].data).toMatchObject({ attempt: 1, outcome: "park", status: 400 });
    expect(events[2]).toMatchObject({ actor: "admin", eventId: event.id, requestId: id, summary: "event re-sent (by admin)" });
    expect(events[3].data).toMatchObject({ attempt: 2, outcome: "delivered" });
    const row = await t.db.historyEntry.findFirstOrThrow({ where: { eventId: event.id, kind: "event.resent" } });
    expect(row).toMatchObject({ actor: "admin", requestId: id, fleetId: event.fleetId });

    gw.scriptEvents(400, 1);
    const other = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const dead = await waitFor("the dead event", async () => (await t.db.outboxEvent.findFirst({ where: { orderId: other.body.id, state: "dead" } })) ?? undefined);
    const dropped = await admin("POST", `/admin/v1/events/${dead.id}/discard`, { reason: "Orange cancelled the order by phone" });
    expect(dropped.status, dropped.text).toBe(200);
    const fleetTimeline = await admin("GET", `/admin/v1/fleets/${dead.fleetId}`);
    expect(kinds(fleetTimeline.body.timeline)).toEqual(["request.completed", "event.written", "event.attempt", "event.dead", "event.discarded"]);
    expect(fleetTimeline.body.timeline[4]).toMatchObject({ actor: "admin", data: { reason: "Orange cancelled the order by phone" } });

    gw.scriptEvents(400, 1);
    const third = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const parked = await waitFor("the dead event", async () => (await t.db.outboxEvent.findFirst({ where: { orderId: third.body.id, state: "dead" } })) ?? undefined);
    const bulk = await admin("POST", `/admin/v1/events/resend`, { orderId: third.body.id });
    expect(bulk.body.resent).toBe(1);
    expect(await t.db.historyEntry.findFirstOrThrow({ where: { eventId: parked.id } })).toMatchObject({
      kind: "event.resent",
      actor: "admin",
      data: { bulk: { orderId: third.body.id } },
    });
    await eventOf(third.body.id);
  });
});

// ---------------------------------------------------------------------------------------------

describe("webhook mode: the commands to the partner's application in the order's timeline", () => {
  let t: TestApp;
  let partner: PartnerApp;
  let gw: MockGateway;
  let worker: WorkerHarness;
  const secret = `whsec_${randomBytes(32).toString("base64")}`;

  beforeAll(async () => {
    gw = await startMockGateway();
    const partnerPort = await freePort();
    t = await createTestApp({
      env: {
        ADMIN_TOKEN,
        APP_TOKEN,
        ORDERING_MODE: "async",
        PROVISIONING_MODE: "webhook",
        PROVISIONING_URL: `http://127.0.0.1:${partnerPort}${WEBHOOK_PATH}`,
        PROVISIONING_SECRET: secret,
        PROVISIONING_TIMEOUT_MS: "3000",
        PROVISIONING_RETRY_BASE_MS: "20",
        PROVISIONING_RETRY_MAX_MS: "100",
        PROVISIONING_MAX_ATTEMPTS: "8",
      },
    });
    await t.app.listen({ port: 0, host: "127.0.0.1" });
    const { port } = t.app.server.address() as AddressInfo;
    partner = await startPartnerApp({
      secrets: [secret],
      port: partnerPort,
      host: "127.0.0.1",
      serverUrl: `http://127.0.0.1:${port}`,
      appToken: APP_TOKEN,
      behaviour: { mode: "down" },
      resultRetry: { baseMs: 50, maxMs: 200 },
    });
    worker = await startWorker(gw, t.url, { tasks: t.services.requestTasks, sweepRequests: t.services.sweepRequests });
  });
  afterAll(async () => {
    await worker?.stop();
    await partner?.close();
    await t?.close();
    await gw?.close();
  });

  it("shows the command prepared, each call and its outcome, then the order carried out and announced", async () => {
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 2 }));
    expect(res.body.state, res.text).toBe("acknowledged");
    const id = res.body.id as string;
    await waitFor("two calls the application did not answer", async () =>
      (await t.db.historyEntry.count({ where: { requestId: id, kind: "command.attempt" } })) >= 2 ? true : undefined,
    );
    partner.setMode({ mode: "ok" });
    await waitFor("the delivery", async () => (await t.db.outboxEvent.findFirst({ where: { orderId: id, state: "delivered" } })) ?? undefined);

    const detail = await t.call("GET", `/admin/v1/orders/${id}`, undefined, ADMIN);
    expect(detail.status, detail.text).toBe(200);
    const command = await t.db.provisioningCommand.findFirstOrThrow({ where: { requestId: id } });
    expect(detail.body.command).toMatchObject({ id: command.id, state: "done", type: "licences.provision" });
    const k = kinds(detail.body.timeline);
    const calls = detail.body.timeline.filter((e: { kind: string }) => e.kind === "command.attempt");
    expect(k.slice(0, 3)).toEqual(["request.received", "request.answered", "command.prepared"]);
    expect(k.slice(3, 3 + calls.length)).toEqual(calls.map(() => "command.attempt"));
    expect(k.slice(3 + calls.length)).toEqual(["request.completed", "event.written", "event.attempt"]);
    expect(calls.length).toBe(command.attempts);
    expect(calls.map((c: { data: { outcome: string } }) => c.data.outcome)).toEqual([...Array(calls.length - 1).fill("retry"), "done"]);
    expect(calls[0]).toMatchObject({ commandId: command.id, data: { attempt: 1, status: 503 } });
    expect(calls[0].data.nextAttemptAt).toEqual(expect.any(String));
    expect(calls.at(-1)).toMatchObject({ data: { attempt: command.attempts, outcome: "done", status: 200 } });
    expect(detail.body.timeline[2].data).toMatchObject({ type: "licences.provision" });

    // The search box finds the command by its id (the webhook-id the application saw).
    const found = await t.call("GET", `/admin/v1/search?q=${command.id}`, undefined, ADMIN);
    expect(found.body).toEqual([{ kind: "command", id: command.id, label: expect.stringContaining("licences.provision done"), href: `/admin/v1/provisioning/${command.id}` }]);
    // The database: one entry per call, as many as the command's attempt rows.
    expect(await t.db.provisioningAttempt.count({ where: { commandId: command.id } })).toBe(calls.length);
  });

  it("records the application's late result with its credential", async () => {
    partner.setMode({ mode: "later", delayMs: 50 });
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    const id = res.body.id as string;
    await waitFor("the completed order", async () => (await t.db.productOrder.findFirst({ where: { id, state: "completed" } })) ?? undefined);
    const timeline = await t.call("GET", `/admin/v1/orders/${id}/timeline`, undefined, ADMIN);
    const k = kinds(timeline.body);
    expect(k.slice(0, 5)).toEqual(["request.received", "request.answered", "command.prepared", "command.attempt", "command.ended"]);
    expect(timeline.body[3].data).toMatchObject({ outcome: "accepted", status: 202 });
    expect(timeline.body[4]).toMatchObject({ kind: "command.ended", actor: "application", data: { outcome: "completed", was: "waiting" } });
    expect(timeline.body[5]).toMatchObject({ kind: "request.completed", actor: "application" });
    partner.setMode({ mode: "ok" });
  });
});

describe("webhook mode, sync: Orange's call waits for the application", () => {
  let p: Provisioned;
  beforeAll(async () => {
    p = await startProvisioned({ ORDERING_MODE: "sync" });
  });
  afterAll(async () => p?.close());

  it("records the call, the outcome and the answer Orange got, once each, in that order", async () => {
    const { t } = p;
    const res = await t.call("POST", ORDER_URL, uc2({ quantity: 1 }));
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("completed");
    const id = res.body.id as string;
    const timeline = await t.call("GET", `/admin/v1/orders/${id}/timeline`, undefined, PROVISIONED_ADMIN);
    expect(kinds(timeline.body)).toEqual(["request.received", "command.prepared", "command.attempt", "request.completed", "request.answered"]);
    expect(timeline.body[4]).toMatchObject({ data: { state: "completed" } });
    // The database: the answer's entry is the one the outcome's transaction wrote, not a second one.
    const rows = await t.db.historyEntry.findMany({ where: { requestId: id }, orderBy: { id: "asc" } });
    expect(rows.map((r) => r.kind)).toEqual(["request.received", "command.prepared", "command.attempt", "request.completed", "request.answered"]);
  });
});
