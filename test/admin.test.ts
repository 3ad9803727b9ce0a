import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { createTestApp, TEST_TOKEN, type CallResult, type TestApp } from "./support/app.js";
import { startMockGateway } from "../src/simulator/gateway.js";
import { RESEND_MAX_PER_CALL } from "../src/events/operator.js";
import { enqueue, eventRow, jobsOf, startWorker, waitFor } from "./support/outbox-harness.js";

/**
 * The operators' admin API (issue 3): its own bearer credential, partner-initiated licence
 * changes (UC5) written with their updateNotification event in one transaction, and the outbox
 * routes (list, one event with its attempts, re-send of a parked event).
 */

const ADMIN_TOKEN = "admin-token-for-tests-7c1d";
const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` };
const CHANGES = "/admin/v1/licence-changes";
const EVENTS = "/admin/v1/events";
const PASSWORD = "S3cret-P@ssw0rd-never-sent";

let t: TestApp;

beforeAll(async () => {
  t = await createTestApp({ env: { ADMIN_TOKEN } });
});
afterAll(async () => t.close());

// ---------------------------------------------------------------------------------------------
// Helpers

function admin(method: "GET" | "POST", url: string, body?: unknown): Promise<CallResult> {
  return t.call(method, url, body, ADMIN);
}

interface Fleet {
  fleetId: string;
  orderId: string;
  licenceIds: string[];
}

/** A new fleet of `quantity` licences through Orange's API; with `endUser`, one licence has an end user. */
async function orderFleet(quantity = 3, endUser = false): Promise<Fleet> {
  const res = await t.call("POST", "/productordering/v2/productOrder", {
    externalReference: { type: "orange", id: `ORD-${randomUUID()}` },
    category: "production",
    customer: { externalReference: { type: "orange", id: `CUST-${randomUUID()}` }, tradingName: "Boulangerie Martin" },
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { externalReference: { type: "orange", id: "MBA-CAISSE-PRO" } },
        productRef: { userServiceQuantity: quantity },
        ...(endUser
          ? { endUserConfiguration: [{ endUser: { givenName: "Paul", familyName: "Martin", email: "paul@example.com" } }] }
          : {}),
      },
    ],
  });
  expect(res.status, res.text).toBe(201);
  expect(res.body.state, res.text).toBe("completed");
  const rows = await t.db.licence.findMany({ where: { orderId: res.body.id }, orderBy: { id: "asc" }, select: { id: true } });
  return { fleetId: res.body.orderItem[0].productRef.id, orderId: res.body.id, licenceIds: rows.map((r) => r.id) };
}

async function licence(id: string) {
  return t.db.licence.findUniqueOrThrow({ where: { id } });
}

async function eventsOf(fleetId: string) {
  return t.db.outboxEvent.findMany({ where: { fleetId }, orderBy: { seq: "asc" } });
}

async function eventCount(): Promise<number> {
  return t.db.outboxEvent.count();
}

/** The one event a UC5 request wrote for the fleet: checks its envelope and returns its resource. */
async function onlyEventOf(fleetId: string, res: CallResult) {
  const events = await eventsOf(fleetId);
  expect(events).toHaveLength(1);
  const [event] = events;
  expect(event).toMatchObject({ api: "userservice", type: "updateNotification", orderingKey: fleetId, state: "pending" });
  expect(res.body.events).toEqual([{ id: event!.id, fleetId }]);
  const body = event!.body as { id: string; type: string; time: string; resource: { userService: Record<string, unknown>[] } };
  expect(body.id).toBe(event!.id);
  expect(body.type).toBe("updateNotification");
  expect(JSON.stringify(body)).not.toMatch(/password/i);
  return body.resource;
}

async function endUserLicence(fleet: Fleet): Promise<string> {
  for (const id of fleet.licenceIds) if ((await licence(id)).endUser !== null) return id;
  throw new Error("no licence with an end user");
}

// ---------------------------------------------------------------------------------------------

describe("admin authentication", () => {
  it("answers 401 code 40 with a challenge when no credential is sent", async () => {
    const res = await t.call("GET", EVENTS, undefined, { authorization: null });
    expect(res.status).toBe(401);
    expect(res.body).toMatchObject({ code: 40, message: "Missing credentials" });
    expect(res.body.description).toMatch(/ADMIN_TOKEN/);
    expect(res.headers["www-authenticate"]).toBe('Bearer realm="admin"');
  });

  it("refuses Orange's credential (401 code 41)", async () => {
    const res = await t.call("GET", EVENTS, undefined, { authorization: `Bearer ${TEST_TOKEN}` });
    expect(res.status).toBe(401);
    expect(res.body).toMatchObject({ code: 41 });
    const basic = await t.call("GET", EVENTS, undefined, { authorization: "Basic b3JhbmdlOnNlY3JldA==" });
    expect(basic.status).toBe(401);
    expect(basic.body.code).toBe(41);
  });

  it("accepts the admin token, which in turn does not open Orange's API", async () => {
    // Raw inject: the outbox is still empty, and `[]` is a correct answer for this API.
    expect((await t.app.inject({ method: "GET", url: EVENTS, headers: ADMIN })).statusCode).toBe(200);
    const orange = await t.call("GET", "/userservice/v2/userService?productRefId=fl_x", undefined, ADMIN);
    expect(orange.status).toBe(401);
  });

  it("answers 503 with a clear description when ADMIN_TOKEN is unset", async () => {
    const disabled = await createTestApp({ database: { url: t.url, db: t.store, prisma: t.db, drop: async () => {} } });
    try {
      for (const headers of [{ authorization: null }, ADMIN]) {
        const res = await disabled.call("GET", EVENTS, undefined, headers);
        expect(res.status).toBe(503);
        expect(res.body).toMatchObject({ code: 5 });
        expect(res.body.description).toMatch(/admin API is disabled.*ADMIN_TOKEN/);
      }
    } finally {
      await disabled.app.close();
    }
  });

  it("refuses an ADMIN_TOKEN equal to one of Orange's credentials", () => {
    expect(() => loadConfig({ INBOUND_BEARER_TOKEN: "same", ADMIN_TOKEN: "same" })).toThrow(/ADMIN_TOKEN must differ/);
  });
});

describe("UC5: end user operations", () => {
  it("adds an end user with a partner id to a licence without one", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    const res = await admin("POST", CHANGES, {
      userService: [{ id, endUserOperation: { action: "add", endUser: { givenName: "Léa", familyName: "Roux", email: "lea@example.com" } } }],
    });
    expect(res.status, res.text).toBe(200);
    const row = await licence(id);
    expect(row.endUser).toMatchObject({ givenName: "Léa", familyName: "Roux", email: "lea@example.com" });
    const euId = (row.endUser as { id: string }).id;
    expect(euId).toMatch(/^eu_/);
    expect(res.body.userService[0]).toMatchObject({ id, endUser: { id: euId, givenName: "Léa" } });
    const resource = await onlyEventOf(fleet.fleetId, res);
    expect(resource).toEqual({
      userService: [
        {
          id,
          relatedProductRefId: fleet.fleetId,
          endUserOperation: { action: "add", endUser: { id: euId, givenName: "Léa", familyName: "Roux", email: "lea@example.com" } },
        },
      ],
    });
  });

  it("keeps a given end user id only when that end user still exists", async () => {
    const known = await orderFleet(2, true);
    const withEndUser = await endUserLicence(known);
    const existingId = ((await licence(withEndUser)).endUser as { id: string }).id;
    const free = known.licenceIds.find((l) => l !== withEndUser)!;
    const other = (await orderFleet(1)).licenceIds[0]!;
    const res = await admin("POST", CHANGES, {
      userService: [
        { id: free, endUserOperation: { action: "add", endUser: { id: existingId, givenName: "Paul" } } },
        { id: other, endUserOperation: { action: "add", endUser: { id: "eu_gone", givenName: "Zoé" } } },
      ],
    });
    expect(res.status, res.text).toBe(200);
    expect((await licence(free)).endUser).toMatchObject({ id: existingId });
    const fresh = ((await licence(other)).endUser as { id: string }).id;
    expect(fresh).toMatch(/^eu_/);
    expect(fresh).not.toBe("eu_gone");
  });

  it("modifies, swaps and deletes the end user", async () => {
    const fleet = await orderFleet(2, true);
    const id = await endUserLicence(fleet);
    const before = (await licence(id)).endUser as { id: string };

    const modified = await admin("POST", CHANGES, {
      userService: [{ id, endUserOperation: { action: "modify", endUser: { email: "paul.martin@example.com" } } }],
    });
    expect(modified.status, modified.text).toBe(200);
    expect((await licence(id)).endUser).toMatchObject({ id: before.id, givenName: "Paul", email: "paul.martin@example.com" });

    const swapped = await admin("POST", CHANGES, {
      userService: [{ id, endUserOperation: { action: "swap", endUser: { givenName: "Inès", familyName: "Haddad" } } }],
    });
    expect(swapped.status, swapped.text).toBe(200);
    const after = (await licence(id)).endUser as { id: string; givenName: string; email?: string };
    expect(after.id).toMatch(/^eu_/);
    expect(after.id).not.toBe(before.id);
    expect(after).toEqual({ id: after.id, givenName: "Inès", familyName: "Haddad" });

    const deleted = await admin("POST", CHANGES, { userService: [{ id, endUserOperation: { action: "delete" } }] });
    expect(deleted.status, deleted.text).toBe(200);
    expect((await licence(id)).endUser).toBeNull();
    expect(deleted.body.userService[0].endUser).toBeUndefined();

    const events = await eventsOf(fleet.fleetId);
    expect(events).toHaveLength(3);
    const ops = events.map((e) => (e.body as { resource: { userService: { endUserOperation: unknown }[] } }).resource.userService[0]!.endUserOperation);
    expect(ops).toEqual([
      { action: "modify", endUser: { id: before.id, givenName: "Paul", familyName: "Martin", email: "paul.martin@example.com" } },
      { action: "swap", endUser: { id: after.id, givenName: "Inès", familyName: "Haddad" } },
      { action: "delete", endUser: { id: after.id, givenName: "Inès", familyName: "Haddad" } },
    ]);
  });
});

describe("UC5: realizing resource, login and service characteristics", () => {
  it("adds, modifies, swaps and deletes the realizing resource", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    const steps = [
      { action: "add", realizingResource: { type: "imei", characteristic: [{ name: "imei", value: "356938035643809" }] } },
      { action: "modify", realizingResource: { type: "imei", characteristic: [{ name: "model", value: "T2" }] } },
      { action: "swap", realizingResource: { type: "url", characteristic: [{ name: "url", value: "https://shop.example" }] } },
      { action: "delete" },
    ];
    const expected = [
      { type: "imei", characteristic: [{ name: "imei", value: "356938035643809" }] },
      { type: "imei", characteristic: [{ name: "imei", value: "356938035643809" }, { name: "model", value: "T2" }] },
      { type: "url", characteristic: [{ name: "url", value: "https://shop.example" }] },
      null,
    ];
    for (const [i, op] of steps.entries()) {
      const res = await admin("POST", CHANGES, { userService: [{ id, realizingResourceOperation: op }] });
      expect(res.status, res.text).toBe(200);
      expect((await licence(id)).realizingResource).toEqual(expected[i]);
    }
    const events = await eventsOf(fleet.fleetId);
    expect(events).toHaveLength(4);
    const last = (events[3]!.body as { resource: { userService: Record<string, unknown>[] } }).resource.userService[0];
    // A delete reports the resource removed.
    expect(last).toEqual({
      id,
      relatedProductRefId: fleet.fleetId,
      realizingResourceOperation: { action: "delete", realizingResource: expected[2] },
    });
  });

  it("adds a login with a password that is stored nowhere and sent nowhere", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    const res = await admin("POST", CHANGES, {
      userService: [
        {
          id,
          rightOperation: { action: "add", loginKeyValue: { key: "login", value: "paul.martin" }, email: "paul@example.com", password: PASSWORD },
        },
      ],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.userService[0].login).toEqual({ key: "login", value: "paul.martin" });
    expect(res.text).not.toContain(PASSWORD);
    const row = await licence(id);
    expect(row.login).toEqual({ key: "login", value: "paul.martin" });
    expect(JSON.stringify(row)).not.toContain(PASSWORD);
    const resource = await onlyEventOf(fleet.fleetId, res);
    expect(resource.userService[0]).toEqual({
      id,
      relatedProductRefId: fleet.fleetId,
      rightOperation: { action: "add", loginKeyValue: { key: "login", value: "paul.martin" }, email: "paul@example.com" },
    });
    const anywhere = await t.db.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM outbox_event WHERE body::text LIKE ${`%${PASSWORD}%`} OR body::text ILIKE '%password%'`;
    expect(anywhere[0]?.n).toBe(0);
  });

  it("modifies the login, and a reset sends only the action and the e-mail", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    const add = { action: "add", loginKeyValue: { key: "login", value: "p.martin" }, email: "paul@example.com" };
    expect((await admin("POST", CHANGES, { userService: [{ id, rightOperation: add }] })).status).toBe(200);
    const modify = { action: "modify", loginKeyValue: { key: "login", value: "paul.m" }, email: "paul@example.com" };
    expect((await admin("POST", CHANGES, { userService: [{ id, rightOperation: modify }] })).status).toBe(200);
    expect((await licence(id)).login).toEqual({ key: "login", value: "paul.m" });
    const reset = await admin("POST", CHANGES, {
      userService: [{ id, rightOperation: { action: "reset", email: "it@example.com", password: PASSWORD } }],
    });
    expect(reset.status, reset.text).toBe(200);
    expect((await licence(id)).login).toEqual({ key: "login", value: "paul.m" });
    const events = await eventsOf(fleet.fleetId);
    expect(events).toHaveLength(3);
    const ops = events.map((e) => (e.body as { resource: { userService: { rightOperation: unknown }[] } }).resource.userService[0]!.rightOperation);
    expect(ops[1]).toEqual(modify);
    expect(ops[2]).toEqual({ action: "reset", email: "it@example.com" });
    expect(JSON.stringify(events.map((e) => e.body))).not.toMatch(/password|S3cret/i);
  });

  it("adds, modifies and deletes a service characteristic", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    const op = (action: string, value = "on") => ({ userService: [{ id, serviceCharacteristicOperation: { action, characteristic: { name: "backup", value } } }] });
    expect((await admin("POST", CHANGES, op("add"))).status).toBe(200);
    expect((await licence(id)).serviceCharacteristics).toEqual([{ name: "backup", value: "on" }]);
    const modified = await admin("POST", CHANGES, op("modify", "daily"));
    expect(modified.status).toBe(200);
    expect(modified.body.userService[0].serviceCharacteristic).toEqual([{ name: "backup", value: "daily" }]);
    expect((await admin("POST", CHANGES, op("delete", "x"))).status).toBe(200);
    expect((await licence(id)).serviceCharacteristics).toBeNull();
    const events = await eventsOf(fleet.fleetId);
    const ops = events.map((e) => (e.body as { resource: { userService: { serviceCharacteristicOperation: unknown }[] } }).resource.userService[0]!.serviceCharacteristicOperation);
    expect(ops).toEqual([
      { action: "add", characteristic: { name: "backup", value: "on" } },
      { action: "modify", characteristic: { name: "backup", value: "daily" } },
      { action: "delete", characteristic: { name: "backup", value: "daily" } },
    ]);
  });
});

describe("UC5: one request, one transaction", () => {
  it("writes one event for several operations on several licences of a fleet", async () => {
    const fleet = await orderFleet(3);
    const [a, b, c] = fleet.licenceIds as [string, string, string];
    const res = await admin("POST", CHANGES, {
      userService: [
        {
          id: c,
          endUserOperation: { action: "add", endUser: { givenName: "Ana" } },
          realizingResourceOperation: { action: "add", realizingResource: { type: "mobile" } },
        },
        { id: a, rightOperation: { action: "add", loginKeyValue: { key: "organizationCode", value: "552100554" }, email: "it@example.com" } },
        { id: b, serviceCharacteristicOperation: { action: "add", characteristic: { name: "seats", value: "2" } } },
      ],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.userService.map((u: { id: string }) => u.id)).toEqual([c, a, b]);
    const resource = await onlyEventOf(fleet.fleetId, res);
    expect(resource.userService.map((u) => u.id)).toEqual([c, a, b]);
    expect(Object.keys(resource.userService[0]!).sort()).toEqual(["endUserOperation", "id", "realizingResourceOperation", "relatedProductRefId"]);
  });

  it("writes one event per fleet, in fleet id order, when the licences span fleets", async () => {
    const one = await orderFleet(1);
    const two = await orderFleet(1);
    const res = await admin("POST", CHANGES, {
      userService: [
        { id: two.licenceIds[0], serviceCharacteristicOperation: { action: "add", characteristic: { name: "k", value: "2" } } },
        { id: one.licenceIds[0], serviceCharacteristicOperation: { action: "add", characteristic: { name: "k", value: "1" } } },
      ],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.events.map((e: { fleetId: string }) => e.fleetId)).toEqual([one.fleetId, two.fleetId].sort());
    expect(await eventsOf(one.fleetId)).toHaveLength(1);
    expect(await eventsOf(two.fleetId)).toHaveLength(1);
  });

  async function expectNothingChanged(ids: string[], body: unknown, status: number, pattern: RegExp) {
    const before = await Promise.all(ids.map(licence));
    const events = await eventCount();
    const res = await admin("POST", CHANGES, body);
    expect(res.status, res.text).toBe(status);
    expect(res.body.description).toMatch(pattern);
    expect(res.body.description).toMatch(/nothing was changed/);
    expect(await Promise.all(ids.map(licence))).toEqual(before);
    expect(await eventCount()).toBe(events);
    return res;
  }

  it("refuses to add an end user where one exists (409), and changes nothing else of the request", async () => {
    const fleet = await orderFleet(2, true);
    const withEndUser = await endUserLicence(fleet);
    const other = fleet.licenceIds.find((l) => l !== withEndUser)!;
    const res = await expectNothingChanged(
      fleet.licenceIds,
      {
        userService: [
          { id: other, endUserOperation: { action: "add", endUser: { givenName: "Ok" } } },
          { id: withEndUser, endUserOperation: { action: "add", endUser: { givenName: "Twice" } } },
        ],
      },
      409,
      /^userService\[1\]\.endUserOperation\.action: "add" needs a licence without end user/,
    );
    expect(res.body.code).toBe(63);
  });

  it("refuses modify, swap or delete where there is nothing to change (409)", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    await expectNothingChanged([id], { userService: [{ id, endUserOperation: { action: "delete" } }] }, 409, /needs an end user/);
    await expectNothingChanged(
      [id],
      { userService: [{ id, rightOperation: { action: "reset", email: "a@example.com" } }] },
      409,
      /^userService\[0\]\.rightOperation\.action: "reset" needs a login/,
    );
    await expectNothingChanged(
      [id],
      { userService: [{ id, serviceCharacteristicOperation: { action: "modify", characteristic: { name: "nope", value: "1" } } }] },
      409,
      /has no characteristic "nope"/,
    );
  });

  it("refuses to change a terminated licence (409)", async () => {
    const fleet = await orderFleet(2);
    const [live, gone] = fleet.licenceIds as [string, string];
    const del = await t.call("POST", "/userservice/v2/userService/update", { userService: [{ id: gone, externalState: "deleted" }] });
    expect(del.body.state, del.text).toBe("completed");
    await expectNothingChanged(
      fleet.licenceIds,
      {
        userService: [
          { id: live, endUserOperation: { action: "add", endUser: { givenName: "A" } } },
          { id: gone, endUserOperation: { action: "add", endUser: { givenName: "B" } } },
        ],
      },
      409,
      /^userService\[1\]\.id: licence .* is terminated/,
    );
  });

  it("refuses an unknown licence (404)", async () => {
    const fleet = await orderFleet(1);
    const res = await expectNothingChanged(
      fleet.licenceIds,
      {
        userService: [
          { id: fleet.licenceIds[0], endUserOperation: { action: "add", endUser: { givenName: "A" } } },
          { id: "us_unknown", endUserOperation: { action: "add", endUser: { givenName: "B" } } },
        ],
      },
      404,
      /^userService\[1\]\.id: licence "us_unknown" does not exist/,
    );
    expect(res.body.code).toBe(60);
  });

  it("rejects malformed operations with 400 naming the field", async () => {
    const fleet = await orderFleet(1);
    const id = fleet.licenceIds[0]!;
    const cases: [unknown, RegExp][] = [
      [{ userService: [{ id, endUserOperation: { action: "add" } }] }, /userService\[0\]\.endUserOperation\.endUser is required for action "add"/],
      [{ userService: [{ id, rightOperation: { action: "add", email: "a@example.com" } }] }, /rightOperation\.loginKeyValue is required/],
      [{ userService: [{ id, rightOperation: { action: "reset", email: "not-an-email" } }] }, /rightOperation\.email/],
      [{ userService: [{ id }] }, /must carry at least one operation/],
      [{ userService: [{ id, endUserOperation: { action: "rename", endUser: {} } }] }, /endUserOperation\.action must be one of/],
      [{ userService: [] }, /userService must have at least 1 item/],
    ];
    const events = await eventCount();
    for (const [body, pattern] of cases) {
      const res = await admin("POST", CHANGES, body);
      expect(res.status, res.text).toBe(400);
      expect(res.body.description).toMatch(pattern);
    }
    expect(await eventCount()).toBe(events);
  });
});

describe("event routes", () => {
  let fleet: Fleet;
  let ids: string[];

  beforeAll(async () => {
    fleet = await orderFleet(3);
    ids = [];
    for (const [i, id] of fleet.licenceIds.entries()) {
      const res = await admin("POST", CHANGES, {
        userService: [{ id, serviceCharacteristicOperation: { action: "add", characteristic: { name: "n", value: String(i) } } }],
      });
      expect(res.status, res.text).toBe(200);
      ids.push(res.body.events[0].id);
    }
  });

  it("lists a fleet's events newest first, paginated, with X-Total-Count and X-Result-Count", async () => {
    const first = await admin("GET", `${EVENTS}?fleetId=${fleet.fleetId}&limit=2`);
    expect(first.status).toBe(200);
    expect(first.headers["x-total-count"]).toBe("3");
    expect(first.headers["x-result-count"]).toBe("2");
    expect(first.body.map((e: { id: string }) => e.id)).toEqual([ids[2], ids[1]]);
    expect(first.body[0]).toMatchObject({ api: "userservice", type: "updateNotification", state: "pending", fleetId: fleet.fleetId, attempts: 0 });
    expect(first.body[0].body.resource.userService[0].id).toBe(fleet.licenceIds[2]);

    const rest = await admin("GET", `${EVENTS}?fleetId=${fleet.fleetId}&limit=2&offset=2`);
    expect(rest.headers["x-total-count"]).toBe("3");
    expect(rest.headers["x-result-count"]).toBe("1");
    expect(rest.body.map((e: { id: string }) => e.id)).toEqual([ids[0]]);

    const oldest = await admin("GET", `${EVENTS}?fleetId=${fleet.fleetId}&sort=createdAt`);
    expect(oldest.body.map((e: { id: string }) => e.id)).toEqual(ids);
  });

  it("filters by state, type and order", async () => {
    const orderId = `po_${randomUUID()}`;
    const ordered = await enqueue(t.store, { orderId });
    const byOrder = await admin("GET", `${EVENTS}?orderId=${orderId}`);
    expect(byOrder.body.map((e: { id: string }) => e.id)).toEqual([ordered.id]);
    expect(byOrder.body[0]).toMatchObject({ api: "productordering", type: "completedStateNotification", orderingKey: orderId });

    const pending = await admin("GET", `${EVENTS}?fleetId=${fleet.fleetId}&state=pending&type=updateNotification`);
    expect(pending.headers["x-total-count"]).toBe("3");
    const none = await t.app.inject({ method: "GET", url: `${EVENTS}?fleetId=${fleet.fleetId}&state=dead`, headers: ADMIN });
    expect(none.statusCode).toBe(200);
    expect(none.json()).toEqual([]);
    expect(none.headers["x-total-count"]).toBe("0");
    const other = await t.app.inject({ method: "GET", url: `${EVENTS}?fleetId=${fleet.fleetId}&type=failedStateNotification`, headers: ADMIN });
    expect(other.headers["x-total-count"]).toBe("0");
  });

  it("defaults to 20 per page and refuses a limit above 100 or an unknown sort field (400 code 28)", async () => {
    const all = await admin("GET", EVENTS);
    expect(Number(all.headers["x-result-count"])).toBe(Math.min(20, Number(all.headers["x-total-count"])));
    const tooMany = await admin("GET", `${EVENTS}?limit=101`);
    expect(tooMany.status).toBe(400);
    expect(tooMany.body).toMatchObject({ code: 28 });
    expect(tooMany.body.description).toMatch(/limit must be <= 100/);
    const notANumber = await admin("GET", `${EVENTS}?limit=abc`);
    expect(notANumber.status).toBe(400);
    expect(notANumber.body.description).toBe("limit must be a number (got something that is not a number)");
    const badSort = await admin("GET", `${EVENTS}?sort=-password`);
    expect(badSort.status).toBe(400);
    expect(badSort.body.description).toMatch(/sort must list fields among createdAt/);
    const badState = await admin("GET", `${EVENTS}?state=lost`);
    expect(badState.status).toBe(400);
  });

  it("shows one event with its delivery attempts, 404 for an unknown one", async () => {
    const res = await admin("GET", `${EVENTS}/${ids[0]}`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id: ids[0], state: "pending", attempts: 0 });
    expect(res.body.deliveryAttempts).toBeUndefined(); // no attempt yet: the empty list is omitted by t.call's rule
    const unknown = await admin("GET", `${EVENTS}/ev_unknown`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.code).toBe(60);
  });

  it("re-sends a parked event, which is then delivered with the same id; 409 for a pending or delivered one", async () => {
    expect((await admin("POST", `${EVENTS}/${ids[0]}/resend`)).status).toBe(409);

    const target = await orderFleet(1);
    const change = await admin("POST", CHANGES, {
      userService: [{ id: target.licenceIds[0], endUserOperation: { action: "add", endUser: { givenName: "Dead" } } }],
    });
    expect(change.status, change.text).toBe(200);
    const eventId: string = change.body.events[0].id;
    // Only the target is left to deliver, so the scripted 400 is its answer.
    await t.db.outboxEvent.updateMany({ where: { state: "pending", id: { not: eventId } }, data: { state: "delivered" } });

    const gw = await startMockGateway();
    const worker = await startWorker(gw, t.url);
    try {
      gw.scriptEvents(400);
      const dead = await waitFor("the event to be parked", async () => {
        const row = await eventRow(t.db, eventId);
        return row?.state === "dead" ? row : undefined;
      });
      expect(dead.lastStatus).toBe(400);

      const resent = await admin("POST", `${EVENTS}/${eventId}/resend`);
      expect(resent.status, resent.text).toBe(200);
      expect(resent.body.id).toBe(eventId);
      expect(["pending", "delivered"]).toContain(resent.body.state);

      const delivered = await waitFor("the re-sent event to be delivered", async () => {
        const row = await eventRow(t.db, eventId);
        return row?.state === "delivered" ? row : undefined;
      });
      expect(delivered.deliveryAttempts.map((a) => [a.attempt, a.outcome, a.status])).toEqual([
        [1, "park", 400],
        [2, "delivered", 201],
      ]);
      expect(delivered.attempts).toBe(1);
      const calls = gw.received.filter((r) => (r.body as { id?: string }).id === eventId);
      expect(calls.map((c) => [c.api, c.status])).toEqual([
        ["userservice", 400],
        ["userservice", 201],
      ]);
      expect(calls[1]!.body).toEqual(calls[0]!.body);

      const detail = await admin("GET", `${EVENTS}/${eventId}`);
      expect(detail.body.deliveryAttempts.map((a: { outcome: string }) => a.outcome)).toEqual(["park", "delivered"]);
      const again = await admin("POST", `${EVENTS}/${eventId}/resend`);
      expect(again.status).toBe(409);
      expect(again.body).toMatchObject({ code: 63 });
      expect(again.body.description).toMatch(/is delivered; only a dead/);
      expect((await admin("POST", `${EVENTS}/ev_unknown/resend`)).status).toBe(404);
    } finally {
      await worker.stop();
      await gw.close();
    }
  });
});

describe("event routes: held fleets, discard, bulk re-send, strict filters", () => {
  /** A parked event of `fleetId`, with its one (parking) attempt in its history. */
  async function deadEvent(fleetId: string) {
    const event = await enqueue(t.store, { fleetId, resource: { fleet: fleetId } });
    await t.db.$executeRaw`
      UPDATE outbox_event SET state = 'dead', dead_at = now(), attempts = 1, last_status = 400, last_error = 'HTTP 400'
       WHERE id = ${event.id}`;
    await t.db.$executeRaw`
      INSERT INTO event_delivery_attempt (event_id, attempt, started_at, finished_at, outcome, status, error)
      VALUES (${event.id}, 1, now(), now(), 'park', 400, 'HTTP 400')`;
    return event;
  }
  const newFleet = () => `fl_${randomUUID()}`;

  it("refuses an unknown parameter of the events listing with 400 naming it, instead of listing every event", async () => {
    const res = await admin("GET", `${EVENTS}?externalReference=X`);
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ code: 28, message: "Invalid query-string parameter" });
    expect(res.body.description).toBe(
      'query string has unknown parameter "externalReference" (known: state, type, fleetId, orderId, offset, limit, sort)',
    );
    const typo = await admin("GET", `${EVENTS}?fleetID=fl_1&state=dead`);
    expect(typo.status).toBe(400);
    expect(typo.body.description).toMatch(/unknown parameter "fleetID"/);
    const held = await admin("GET", `${EVENTS}/held?fleetId=fl_1`);
    expect(held.status).toBe(400);
    expect(held.body.description).toBe('query string has unknown parameter "fleetId" (known: offset, limit)');
    const discarded = await t.app.inject({ method: "GET", url: `${EVENTS}?state=discarded&fleetId=fl_none`, headers: ADMIN });
    expect(discarded.statusCode).toBe(200);
    expect(discarded.json()).toEqual([]);
  });

  it("lists the fleets a dead event holds: the event, how many wait behind it, since when", async () => {
    const fleet = newFleet();
    const dead = await deadEvent(fleet);
    const waiting = [await enqueue(t.store, { fleetId: fleet }), await enqueue(t.store, { fleetId: fleet })];
    const free = await enqueue(t.store, { fleetId: newFleet() });

    const res = await admin("GET", `${EVENTS}/held?limit=100`);
    expect(res.status, res.text).toBe(200);
    const [count] = await t.db.$queryRaw<{ n: number }[]>`
      SELECT count(DISTINCT ordering_key)::int AS n FROM outbox_event WHERE state = 'dead'`;
    expect(res.headers["x-total-count"]).toBe(String(count?.n));
    const entry = res.body.find((h: { orderingKey: string }) => h.orderingKey === fleet);
    expect(entry).toMatchObject({ orderingKey: fleet, waiting: 2, event: { id: dead.id, state: "dead", lastStatus: 400, fleetId: fleet } });
    expect(entry.since).toBe(entry.event.deadAt);
    expect(res.body.some((h: { orderingKey: string }) => h.orderingKey === free.orderingKey)).toBe(false);

    const detail = await admin("GET", `${EVENTS}/${waiting[1]!.id}`);
    expect(detail.body).toMatchObject({ state: "pending", heldBy: dead.id });
    expect((await admin("GET", `${EVENTS}/${free.id}`)).body.heldBy).toBeUndefined();
  });

  it("discards a dead event, recording who, when and why; it keeps its history and its fleet goes on", async () => {
    const fleet = newFleet();
    const dead = await deadEvent(fleet);
    const later = await enqueue(t.store, { fleetId: fleet });
    await t.db.$executeRaw`SELECT graphile_worker.remove_job(${`deliver:${fleet}`})`;

    const pending = await admin("POST", `${EVENTS}/${later.id}/discard`, {});
    expect(pending.status).toBe(409);
    expect(pending.body).toMatchObject({ code: 63 });
    expect(pending.body.description).toBe(`event ${later.id} is pending; only a dead (parked) event can be discarded`);
    expect((await admin("POST", `${EVENTS}/ev_unknown/discard`, {})).status).toBe(404);
    const typo = await admin("POST", `${EVENTS}/${dead.id}/discard`, { why: "gone" });
    expect(typo.status).toBe(400);
    expect(typo.body.description).toBe('body has unknown field "why" (known: reason)');
    const empty = await admin("POST", `${EVENTS}/${dead.id}/discard`, { reason: "" });
    expect(empty.status).toBe(400);
    expect(empty.body.description).toMatch(/^reason must not be empty/);
    expect((await eventRow(t.db, dead.id))?.state).toBe("dead");

    const res = await admin("POST", `${EVENTS}/${dead.id}/discard`, { reason: "the licence was deleted at Orange" });
    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject({
      id: dead.id,
      state: "discarded",
      discardedBy: "admin",
      discardReason: "the licence was deleted at Orange",
      lastStatus: 400,
    });
    expect(res.body.deliveryAttempts).toMatchObject([{ attempt: 1, outcome: "park", status: 400 }]);
    const row = (await eventRow(t.db, dead.id))!;
    expect(row).toMatchObject({ state: "discarded", discardedBy: "admin", discardReason: "the licence was deleted at Orange" });
    expect(row.discardedAt?.toISOString()).toBe(res.body.discardedAt);
    expect(row.deadAt).toBeInstanceOf(Date);
    expect(row.deliveryAttempts).toHaveLength(1);
    // The fleet's delivery job is back, for the event that waited; the fleet is no longer held.
    expect(await jobsOf(t.db, fleet)).toBe(1);
    expect((await admin("GET", `${EVENTS}/${later.id}`)).body.heldBy).toBeUndefined();
    const held = await admin("GET", `${EVENTS}/held?limit=100`);
    expect(held.body.some((h: { orderingKey: string }) => h.orderingKey === fleet)).toBe(false);
    const listed = await admin("GET", `${EVENTS}?fleetId=${fleet}&state=discarded`);
    expect(listed.body.map((e: { id: string }) => e.id)).toEqual([dead.id]);

    // Final: neither re-sent nor discarded again.
    const resend = await admin("POST", `${EVENTS}/${dead.id}/resend`);
    expect(resend.status).toBe(409);
    expect(resend.body.description).toMatch(/is discarded; only a dead/);
    expect((await admin("POST", `${EVENTS}/${dead.id}/discard`, {})).status).toBe(409);
  });

  it("re-sends the dead events matching the listing's filters, and refuses a filter on another state", async () => {
    const [a, b] = [newFleet(), newFleet()];
    const deadA = [await deadEvent(a), await deadEvent(a)];
    const pendingA = await enqueue(t.store, { fleetId: a });
    const deadB = await deadEvent(b);
    await t.db.$executeRaw`SELECT graphile_worker.remove_job(${`deliver:${a}`})`;

    const other = await admin("POST", `${EVENTS}/resend`, { fleetId: a, state: "pending" });
    expect(other.status).toBe(400);
    expect(other.body).toMatchObject({ code: 24 });
    expect(other.body.description).toBe('state must be "dead": only dead events can be re-sent (got "pending")');
    const typo = await admin("POST", `${EVENTS}/resend`, { fleetID: a });
    expect(typo.status).toBe(400);
    expect(typo.body.description).toMatch(/^body has unknown field "fleetID" \(known: state, type, fleetId, orderId\)/);
    expect(await t.db.outboxEvent.count({ where: { orderingKey: a, state: "dead" } })).toBe(2);

    const res = await admin("POST", `${EVENTS}/resend`, { fleetId: a, state: "dead" });
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual({
      resent: 2,
      remaining: 0,
      events: deadA.map((e) => ({ id: e.id, orderingKey: a })),
    });
    const rows = await t.db.outboxEvent.findMany({ where: { orderingKey: a }, orderBy: { seq: "asc" } });
    expect(rows.map((r) => [r.id, r.state, r.attempts])).toEqual([
      [deadA[0]!.id, "pending", 0],
      [deadA[1]!.id, "pending", 0],
      [pendingA.id, "pending", 0],
    ]);
    expect(rows[0]!.resentAt).toBeInstanceOf(Date);
    expect(rows[0]!.deadAt).toBeNull();
    expect(await jobsOf(t.db, a)).toBe(1);
    expect((await eventRow(t.db, deadB.id))?.state).toBe("dead");

    const none = await admin("POST", `${EVENTS}/resend`, { fleetId: a, type: "updateNotification" });
    expect(none.body).toEqual({ resent: 0, remaining: 0 });
    const all = await admin("POST", `${EVENTS}/resend`, {});
    expect(all.status).toBe(200);
    expect(all.body.events).toContainEqual({ id: deadB.id, orderingKey: b });
    expect(all.body.remaining).toBe(0);
    expect(await t.db.outboxEvent.count({ where: { state: "dead" } })).toBe(0);
  });

  it(`re-sends at most ${RESEND_MAX_PER_CALL} events per call, oldest first, and says how many remain`, async () => {
    const fleet = newFleet();
    await t.db.$executeRaw`
      INSERT INTO outbox_event (id, api, type, ordering_key, fleet_id, body, state, dead_at)
      SELECT 'ev_bulk_' || lpad(g::text, 5, '0'), 'userservice', 'updateNotification', ${fleet}, ${fleet},
             json_build_object('id', 'ev_bulk_' || lpad(g::text, 5, '0')), 'dead', now()
        FROM generate_series(1, ${RESEND_MAX_PER_CALL + 2}) AS g ORDER BY g`;

    const first = await admin("POST", `${EVENTS}/resend`, { fleetId: fleet });
    expect(first.status, first.text).toBe(200);
    expect(first.body.resent).toBe(RESEND_MAX_PER_CALL);
    expect(first.body.remaining).toBe(2);
    const bySeq = await t.db.outboxEvent.findMany({ where: { orderingKey: fleet }, orderBy: { seq: "asc" }, select: { id: true, state: true } });
    expect(first.body.events.map((e: { id: string }) => e.id)).toEqual(bySeq.slice(0, RESEND_MAX_PER_CALL).map((e) => e.id));
    expect(bySeq.slice(RESEND_MAX_PER_CALL).map((e) => e.state)).toEqual(["dead", "dead"]);

    const second = await admin("POST", `${EVENTS}/resend`, { fleetId: fleet });
    expect(second.body).toMatchObject({ resent: 2, remaining: 0 });
    expect(await t.db.outboxEvent.count({ where: { orderingKey: fleet, state: "pending" } })).toBe(RESEND_MAX_PER_CALL + 2);
  });

  it("answers 405 for other methods on the new routes", async () => {
    expect((await admin("GET", `${EVENTS}/resend`)).status).toBe(405);
    expect((await admin("POST", `${EVENTS}/held`)).status).toBe(405);
    expect((await admin("GET", `${EVENTS}/ev_1/discard`)).status).toBe(405);
  });
});
