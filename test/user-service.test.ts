import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Clock } from "../src/lib/clock.js";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { ESSENTIEL, LIST_URL, PREMIUM, PRO, ref, UPDATE_URL } from "./support/fixtures.js";

/**
 * userService endpoints (contract sections 3, 4, 7, 8): consultation by fleet, by ids and by id,
 * and POST /userservice/v2/userService/update with its all-or-nothing rule, validation,
 * idempotency and concurrency. Licences are always created through the real productOrder API.
 */

const LIST = LIST_URL;
const UPDATE = UPDATE_URL;
const OFFER_NAMES: Record<string, string> = {
  [PRO]: "Caisse Pro",
  [PREMIUM]: "Caisse Premium",
  [ESSENTIEL]: "Caisse Essentiel",
};
const PARTNER = "Caisse Test SAS";
const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** The system clock, unless a test pins it to a given instant. */
const clock = {
  pinned: undefined as Date | undefined,
  now(): Date {
    return new Date(this.pinned?.getTime() ?? Date.now());
  },
} satisfies Clock & { pinned: Date | undefined };

let t: TestApp;

beforeAll(async () => {
  t = await createTestApp({ clock });
});
afterAll(async () => t.close());

// ---------------------------------------------------------------------------------------------
// Local helpers

const uniqueRef = ref;

interface Fleet {
  fleetId: string;
  customerRef: string;
  orderId: string;
  /** Licence ids of the order, in creation order. */
  licenceIds: string[];
}

/** UC2 (examples/uc2-request.json): a new fleet with `quantity` licences for the customer. */
async function orderFleet(
  opts: { customerRef?: string; quantity?: number; offer?: string; endUser?: boolean } = {},
): Promise<Fleet> {
  const customerRef = opts.customerRef ?? uniqueRef("CUST");
  const offer = opts.offer ?? PRO;
  const body = {
    externalReference: { type: "orange", id: uniqueRef("ORD") },
    category: "production",
    orderDate: "2026-05-02T09:20:00.000Z",
    customer: { externalReference: { type: "orange", id: customerRef }, tradingName: "Boulangerie Martin" },
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { name: OFFER_NAMES[offer], externalReference: { type: "orange", id: offer } },
        productRef: {
          userServiceQuantity: opts.quantity ?? 3,
          characteristic: [{ name: "storageSize", value: "50GB" }],
        },
        ...(opts.endUser
          ? {
              endUserConfiguration: [
                { endUser: { givenName: "Paul", familyName: "Martin", email: "paul@boulangerie-martin.example" } },
              ],
            }
          : {}),
      },
    ],
  };
  const res = await t.call("POST", "/productordering/v2/productOrder", body);
  expect(res.status, res.text).toBe(201);
  expect(res.body.state, res.text).toBe("completed");
  const fleetId: string = res.body.orderItem[0].productRef.id;
  return { fleetId, customerRef, orderId: res.body.id, licenceIds: await licenceIdsOfOrder(res.body.id) };
}

/** UC3 (examples/uc3-request.json): `quantity` more licences in a known fleet. */
async function addToFleet(fleetId: string, quantity: number, offer = PRO): Promise<string[]> {
  const res = await t.call("POST", "/productordering/v2/productOrder", {
    externalReference: { type: "orange", id: uniqueRef("ORD") },
    category: "production",
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { externalReference: { type: "orange", id: offer } },
        productRef: { id: fleetId, userServiceQuantity: quantity },
      },
    ],
  });
  expect(res.status, res.text).toBe(201);
  expect(res.body.state, res.text).toBe("completed");
  expect(res.body.orderItem[0].productRef.id).toBe(fleetId);
  return licenceIdsOfOrder(res.body.id);
}

async function licenceIdsOfOrder(orderId: string): Promise<string[]> {
  const rows = await t.db.$queryRaw<{ id: string }[]>`
    SELECT id FROM licence WHERE order_id = ${orderId} ORDER BY created_at, id`;
  return rows.map((r) => r.id);
}

interface LicenceRow {
  id: string;
  fleet_id: string;
  order_id: string;
  state: string;
  external_state: string | null;
  offer_code: string;
  end_user: Record<string, unknown> | null;
  created_at: Date;
  updated_at: Date;
  terminated_at: Date | null;
}

async function licenceRows(ids: string[]): Promise<LicenceRow[]> {
  return t.db.$queryRaw<LicenceRow[]>`
    SELECT id, fleet_id, order_id, state::text AS state, external_state::text AS external_state, offer_code,
           end_user, created_at, updated_at, terminated_at
    FROM licence WHERE id = ANY(${ids}::text[]) ORDER BY id`;
}

async function licenceRow(id: string): Promise<LicenceRow> {
  const [row] = await licenceRows([id]);
  expect(row, `licence ${id} in the database`).toBeDefined();
  return row!;
}

/** The whole licence table, every column of every row, as PostgreSQL prints it: a byte-for-byte snapshot. */
async function licenceTable(): Promise<{ text: string[]; rows: unknown[] }> {
  const text = await t.db.$queryRaw<{ row: string }[]>`SELECT l::text AS row FROM licence l ORDER BY l.id`;
  const rows = await t.db.$queryRaw<unknown[]>`SELECT * FROM licence ORDER BY id`;
  return { text: text.map((r) => r.row), rows };
}

interface UpdateRow {
  id: string;
  idempotency_key: string | null;
  orange_ref: string | null;
  request: unknown;
  response: unknown;
  state: string;
  failure_reason: string | null;
  licence_ids: string[];
  completed_at: Date | null;
}

async function updateRowsOf(orangeRef: string): Promise<UpdateRow[]> {
  return t.db.$queryRaw<UpdateRow[]>`
    SELECT id, idempotency_key, orange_ref, request, response, state::text AS state, failure_reason,
           licence_ids, completed_at
    FROM licence_update WHERE orange_ref = ${orangeRef} ORDER BY created_at, id`;
}

/** Waits until `n` sessions of this database wait for a lock (a request blocked on a row lock). */
async function lockWaiters(n: number): Promise<void> {
  for (let attempt = 0; attempt < 1000; attempt++) {
    const [row] = await t.db.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND wait_event_type = 'Lock'`;
    if (row!.n >= n) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`no ${n} session(s) waiting for a lock`);
}

async function updateCount(): Promise<number> {
  const [row] = await t.db.$queryRaw<{ n: number }[]>`SELECT count(*)::int AS n FROM licence_update`;
  return row!.n;
}

type Change = { id: string; externalState?: string; productOfferingOperation?: unknown };

function swapTo(offer: string) {
  return { action: "swap", productOffering: { externalReference: { type: "orange", id: offer } } };
}

/** An update request; `ref` null sends no externalReference. */
function updateBody(userService: Change[], ref: string | null = uniqueRef("UPD")) {
  return ref === null ? { userService } : { externalReference: { type: "orange", id: ref }, userService };
}

async function postUpdate(body: unknown, headers?: Record<string, string>): Promise<CallResult> {
  return t.call("POST", UPDATE, body, headers);
}

function offering(code: string) {
  return { name: OFFER_NAMES[code], externalReference: { type: "orange", id: code } };
}

function expectError(res: CallResult, status: number, code: number) {
  expect(res.status, res.text).toBe(status);
  expect(res.body).toEqual({ code, message: expect.any(String), description: expect.any(String) });
}

// ---------------------------------------------------------------------------------------------
// Consultation

describe("GET /userservice/v2/userService?productRefId={fleet}", () => {
  it("lists every licence of the fleet in creation order, with offering and dates and without externalState", async () => {
    const fleet = await orderFleet({ quantity: 3, endUser: true });

    const res = await t.call("GET", `${LIST}?productRefId=${fleet.fleetId}`);

    expect(res.status, res.text).toBe(200);
    expect(res.text).not.toContain("externalState");
    const rows = await licenceRows(fleet.licenceIds);
    const byId = new Map(rows.map((r) => [r.id, r]));
    expect(res.body.map((u: { id: string }) => u.id)).toEqual(fleet.licenceIds);
    res.body.forEach((u: Record<string, unknown>, i: number) => {
      const row = byId.get(fleet.licenceIds[i]!)!;
      expect(Object.keys(u).sort()).toEqual(
        [
          "id",
          "relatedProductRefId",
          "state",
          "productOffering",
          "creationDate",
          "lastUpdate",
          ...(i === 0 ? ["endUser"] : []),
        ].sort(),
      );
      expect(u).toMatchObject({
        id: row.id,
        relatedProductRefId: fleet.fleetId,
        state: "active",
        productOffering: offering(PRO),
        creationDate: row.created_at.toISOString(),
        lastUpdate: row.updated_at.toISOString(),
      });
      expect(u.creationDate).toMatch(ISO_MS);
      expect(u.lastUpdate).toMatch(ISO_MS);
    });
    // The first licence created carries the first endUserConfiguration entry.
    expect(res.body[0].endUser).toEqual({
      id: expect.stringMatching(/^eu_/),
      givenName: "Paul",
      familyName: "Martin",
      email: "paul@boulangerie-martin.example",
    });

    expect(rows).toHaveLength(3);
    for (const row of rows) {
      expect(row).toMatchObject({ fleet_id: fleet.fleetId, state: "active", external_state: null, offer_code: PRO });
      expect(row.terminated_at).toBeNull();
    }
    const [updates] = await t.db.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM licence_update WHERE licence_ids && ${fleet.licenceIds}::text[]`;
    expect(updates!.n).toBe(0);
  });

  it("lists the licences added by a UC3 order after those of the UC2 order, each with its own offer", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const added = await addToFleet(fleet.fleetId, 2, PREMIUM);

    const res = await t.call("GET", `${LIST}?productRefId=${fleet.fleetId}`);

    expect(res.status, res.text).toBe(200);
    expect(res.body.map((u: { id: string }) => u.id)).toEqual([...fleet.licenceIds, ...added]);
    expect(res.body.map((u: { productOffering: unknown }) => u.productOffering)).toEqual([
      offering(PRO),
      offering(PRO),
      offering(PREMIUM),
      offering(PREMIUM),
    ]);
    for (const u of res.body) expect(u.relatedProductRefId).toBe(fleet.fleetId);

    const rows = await t.db.$queryRaw<{ id: string; offer_code: string }[]>`
      SELECT id, offer_code FROM licence WHERE fleet_id = ${fleet.fleetId} ORDER BY created_at, id`;
    expect(rows.map((r) => r.id)).toEqual([...fleet.licenceIds, ...added]);
    expect(rows.map((r) => r.offer_code)).toEqual([PRO, PRO, PREMIUM, PREMIUM]);
  });

  it("does not list the licences of another fleet of the same customer", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const other = await orderFleet({ quantity: 1, customerRef: fleet.customerRef });

    const res = await t.call("GET", `${LIST}?productRefId=${fleet.fleetId}`);

    expect(res.status, res.text).toBe(200);
    expect(res.body.map((u: { id: string }) => u.id)).toEqual(fleet.licenceIds);
    expect(res.text).not.toContain(other.licenceIds[0]!);
  });

  it("answers 404 code 60 for an unknown fleet", async () => {
    const res = await t.call("GET", `${LIST}?productRefId=fl_doesnotexist`);
    expectError(res, 404, 60);
    expect(res.body.description).toContain("fl_doesnotexist");
  });
});

describe("GET /userservice/v2/userService?id={ids}", () => {
  it("answers the licences asked for, in the order asked, skipping unknown ids", async () => {
    const fleet = await orderFleet({ quantity: 3 });
    const [a, b, c] = fleet.licenceIds as [string, string, string];

    const res = await t.call("GET", `${LIST}?id=${c},us_unknown1,${a},${b},us_unknown2`);

    expect(res.status, res.text).toBe(200);
    expect(res.body.map((u: { id: string }) => u.id)).toEqual([c, a, b]);
    const rows = await licenceRows([a, b, c]);
    for (const u of res.body) {
      const row = rows.find((r) => r.id === u.id)!;
      expect(u).toEqual({
        id: row.id,
        relatedProductRefId: fleet.fleetId,
        state: row.state,
        productOffering: offering(row.offer_code),
        creationDate: row.created_at.toISOString(),
        lastUpdate: row.updated_at.toISOString(),
      });
    }
  });

  it("answers licences of different fleets together", async () => {
    const f1 = await orderFleet({ quantity: 1 });
    const f2 = await orderFleet({ quantity: 1, offer: ESSENTIEL });

    const res = await t.call("GET", `${LIST}?id=${f2.licenceIds[0]},${f1.licenceIds[0]}`);

    expect(res.status, res.text).toBe(200);
    expect(res.body.map((u: { id: string; relatedProductRefId: string }) => [u.id, u.relatedProductRefId])).toEqual([
      [f2.licenceIds[0], f2.fleetId],
      [f1.licenceIds[0], f1.fleetId],
    ]);
    expect(res.body[0].productOffering).toEqual(offering(ESSENTIEL));
  });

  it("answers 404 code 60 when none of the ids exists", async () => {
    const res = await t.call("GET", `${LIST}?id=us_nope1,us_nope2`);
    expectError(res, 404, 60);
  });

  it("answers 400 code 28 when both productRefId and id are given", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const res = await t.call("GET", `${LIST}?productRefId=${fleet.fleetId}&id=${fleet.licenceIds[0]}`);
    expectError(res, 400, 28);
    expect(res.body.description).toMatch(/productRefId/);
  });

  it("answers 400 code 28 when neither productRefId nor id is given", async () => {
    const res = await t.call("GET", LIST);
    expectError(res, 400, 28);
    expect(res.body.description).toMatch(/productRefId/);
  });

  it("answers 400 code 28 for an id parameter that names no licence id", async () => {
    const res = await t.call("GET", `${LIST}?id=,,`);
    expectError(res, 400, 28);
  });

  it("accepts 1000 ids and answers 400 code 28 for 1001", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const unknown = Array.from({ length: 999 }, (_, i) => `us_missing${i}`);

    const ok = await t.call("GET", `${LIST}?id=${[...unknown, fleet.licenceIds[0]].join(",")}`);
    expect(ok.status, ok.text).toBe(200);
    expect(ok.body.map((u: { id: string }) => u.id)).toEqual(fleet.licenceIds);

    const tooMany = await t.call("GET", `${LIST}?id=${[...unknown, "us_missing999", fleet.licenceIds[0]].join(",")}`);
    expectError(tooMany, 400, 28);
    expect(tooMany.body.description).toContain("1000");
  });
});

describe("GET /userservice/v2/userService/{id}", () => {
  it("answers the licence as the fleet listing shows it", async () => {
    const fleet = await orderFleet({ quantity: 2, endUser: true });

    const one = await t.call("GET", `${LIST}/${fleet.licenceIds[0]}`);
    const list = await t.call("GET", `${LIST}?productRefId=${fleet.fleetId}`);

    expect(one.status, one.text).toBe(200);
    expect(one.body).toEqual(list.body[0]);
    const row = await licenceRow(fleet.licenceIds[0]!);
    expect(one.body).toMatchObject({
      id: row.id,
      relatedProductRefId: row.fleet_id,
      state: "active",
      productOffering: offering(PRO),
      creationDate: row.created_at.toISOString(),
      lastUpdate: row.updated_at.toISOString(),
    });
    expect(one.body).not.toHaveProperty("externalState");
  });

  it("answers 404 code 60 for an unknown licence", async () => {
    const res = await t.call("GET", `${LIST}/us_doesnotexist`);
    expectError(res, 404, 60);
    expect(res.body.description).toContain("us_doesnotexist");
  });
});

// ---------------------------------------------------------------------------------------------
// Updates

describe("POST /userservice/v2/userService/update", () => {
  it("suspends a licence: state inactive with externalState suspended echoed, login and data kept", async () => {
    const fleet = await orderFleet({ quantity: 2, endUser: true });
    const [id, untouched] = fleet.licenceIds as [string, string];
    const before = await licenceRow(id);
    const untouchedBefore = await licenceRow(untouched);
    const tableBefore = await licenceTable();
    const ref = uniqueRef("UPD");
    const body = updateBody([{ id, externalState: "suspended" }], ref);

    const res = await postUpdate(body);

    expect(res.status, res.text).toBe(200);
    expect(res.headers["idempotent-replayed"]).toBe("false");
    const after = await licenceRow(id);
    expect(res.body).toEqual({
      externalReference: { type: "orange", id: ref },
      state: "completed",
      userService: [
        {
          id,
          relatedProductRefId: fleet.fleetId,
          state: "inactive",
          externalState: "suspended",
          productOffering: offering(PRO),
          endUser: expect.objectContaining({ givenName: "Paul" }),
          creationDate: before.created_at.toISOString(),
          lastUpdate: after.updated_at.toISOString(),
        },
      ],
    });

    expect(after).toMatchObject({ state: "inactive", external_state: "suspended", offer_code: PRO, terminated_at: null });
    expect(after.end_user).toEqual(before.end_user);
    expect(after.created_at).toEqual(before.created_at);
    expect(after.updated_at.getTime()).toBeGreaterThanOrEqual(before.updated_at.getTime());
    expect(await licenceRow(untouched)).toEqual(untouchedBefore);
    // Only the licence asked for changed.
    const tableAfter = await licenceTable();
    expect(tableAfter.text.filter((r) => !tableBefore.text.includes(r))).toHaveLength(1);

    const [stored, ...more] = await updateRowsOf(ref);
    expect(more).toEqual([]);
    expect(stored).toMatchObject({
      idempotency_key: ref,
      orange_ref: ref,
      state: "completed",
      failure_reason: null,
      licence_ids: [id],
      request: body,
      response: res.body,
    });
    expect(stored!.completed_at).toBeInstanceOf(Date);

    const get = await t.call("GET", `${LIST}/${id}`);
    expect(get.body).toEqual(res.body.userService[0]);
  });

  it("sets a licence inactive with externalState inactive", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;

    const res = await postUpdate(updateBody([{ id, externalState: "inactive" }]));

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("completed");
    expect(res.body.userService).toEqual([
      expect.objectContaining({ id, state: "inactive", externalState: "inactive", productOffering: offering(PRO) }),
    ]);
    expect(await licenceRow(id)).toMatchObject({ state: "inactive", external_state: "inactive", terminated_at: null });
  });

  it("reactivates a suspended licence with externalState active", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    const suspended = await postUpdate(updateBody([{ id, externalState: "suspended" }]));
    expect(suspended.body.state).toBe("completed");

    const res = await postUpdate(updateBody([{ id, externalState: "active" }]));

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("completed");
    expect(res.body.userService).toEqual([expect.objectContaining({ id, state: "active", externalState: "active" })]);
    expect(await licenceRow(id)).toMatchObject({ state: "active", external_state: "active", terminated_at: null });
  });

  it("accepts asking again for the state a licence is already in", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    await postUpdate(updateBody([{ id, externalState: "suspended" }]));

    const res = await postUpdate(updateBody([{ id, externalState: "inactive" }]));

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("completed");
    expect(res.body.userService[0]).toMatchObject({ state: "inactive", externalState: "inactive" });
    expect(await licenceRow(id)).toMatchObject({ state: "inactive", external_state: "inactive" });
  });

  it("terminates a licence on deleted and keeps it consultable as terminated", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const [id, other] = fleet.licenceIds as [string, string];

    const res = await postUpdate(updateBody([{ id, externalState: "deleted" }]));

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("completed");
    expect(res.body.userService).toEqual([
      expect.objectContaining({ id, state: "terminated", externalState: "deleted", productOffering: offering(PRO) }),
    ]);
    const row = await licenceRow(id);
    expect(row).toMatchObject({ state: "terminated", external_state: "deleted" });
    expect(row.terminated_at).toEqual(row.updated_at);

    const one = await t.call("GET", `${LIST}/${id}`);
    expect(one.status).toBe(200);
    expect(one.body).toEqual(res.body.userService[0]);
    const list = await t.call("GET", `${LIST}?productRefId=${fleet.fleetId}`);
    expect(list.body.map((u: { id: string; state: string }) => [u.id, u.state])).toEqual([
      [id, "terminated"],
      [other, "active"],
    ]);
    const byIds = await t.call("GET", `${LIST}?id=${id}`);
    expect(byIds.body).toEqual([res.body.userService[0]]);
  });

  it("refuses to reactivate a terminated licence and changes nothing", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    await postUpdate(updateBody([{ id, externalState: "deleted" }]));
    const before = await licenceTable();
    const ref = uniqueRef("UPD");

    const res = await postUpdate(updateBody([{ id, externalState: "active" }], ref));

    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject({ externalReference: { type: "orange", id: ref }, state: "failed" });
    expect(res.body.note).toEqual({ text: expect.stringContaining(id), date: expect.stringMatching(ISO_MS), author: PARTNER });
    expect(res.body.note.text).toMatch(/terminated.*cannot be reactivated/);
    expect(res.body.userService).toEqual([expect.objectContaining({ id, state: "terminated", externalState: "deleted" })]);
    expect(await licenceTable()).toEqual(before);
    expect(await updateRowsOf(ref)).toEqual([expect.objectContaining({ state: "failed", failure_reason: res.body.note.text })]);
  });

  it("moves a licence to another catalogue offer on swap, keeping its state", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const [id, other] = fleet.licenceIds as [string, string];
    await postUpdate(updateBody([{ id, externalState: "suspended" }]));
    const ref = uniqueRef("UPD");
    const body = updateBody([{ id, productOfferingOperation: swapTo(PREMIUM) }], ref);

    const res = await postUpdate(body);

    expect(res.status, res.text).toBe(200);
    const row = await licenceRow(id);
    expect(res.body).toEqual({
      externalReference: { type: "orange", id: ref },
      state: "completed",
      userService: [
        {
          id,
          relatedProductRefId: fleet.fleetId,
          state: "inactive",
          externalState: "suspended",
          productOffering: offering(PREMIUM),
          creationDate: row.created_at.toISOString(),
          lastUpdate: row.updated_at.toISOString(),
        },
      ],
    });
    expect(row).toMatchObject({ offer_code: PREMIUM, state: "inactive", external_state: "suspended" });
    expect(await licenceRow(other)).toMatchObject({ offer_code: PRO, state: "active", external_state: null });
    expect(await updateRowsOf(ref)).toEqual([
      expect.objectContaining({ state: "completed", request: body, response: res.body, licence_ids: [id] }),
    ]);
    const get = await t.call("GET", `${LIST}/${id}`);
    expect(get.body.productOffering).toEqual(offering(PREMIUM));
  });

  it("applies a suspend, a delete and a swap in one request and answers the licences in the order of the request", async () => {
    const fleet = await orderFleet({ quantity: 3 });
    const [a, b, c] = fleet.licenceIds as [string, string, string];
    const ref = uniqueRef("UPD");

    // As examples/update-request.json: the list is not in id order.
    const res = await postUpdate(
      updateBody(
        [
          { id: b, externalState: "suspended" },
          { id: c, externalState: "deleted" },
          { id: a, productOfferingOperation: swapTo(PREMIUM) },
        ],
        ref,
      ),
    );

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("completed");
    expect(res.body.externalReference).toEqual({ type: "orange", id: ref });
    expect(
      res.body.userService.map((u: { id: string; state: string; externalState?: string; productOffering: { externalReference: { id: string } } }) => [
        u.id,
        u.state,
        u.externalState,
        u.productOffering.externalReference.id,
      ]),
    ).toEqual([
      [b, "inactive", "suspended", PRO],
      [c, "terminated", "deleted", PRO],
      [a, "active", undefined, PREMIUM],
    ]);
    expect(res.body.userService[2]).not.toHaveProperty("externalState");
    const rows = await licenceRows([a, b, c]);
    expect(rows.map((r) => [r.id, r.state, r.external_state, r.offer_code])).toEqual([
      [a, "active", null, PREMIUM],
      [b, "inactive", "suspended", PRO],
      [c, "terminated", "deleted", PRO],
    ]);
    // One transaction: every licence carries the same change time.
    expect(new Set(rows.map((r) => r.updated_at.toISOString())).size).toBe(1);
    expect(await updateRowsOf(ref)).toEqual([expect.objectContaining({ state: "completed", licence_ids: [b, c, a] })]);
  });

  it("answers without externalReference when Orange sent none, and applies each such call", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    const count = await updateCount();

    const first = await postUpdate(updateBody([{ id, externalState: "suspended" }], null));
    const second = await postUpdate(updateBody([{ id, externalState: "suspended" }], null));

    for (const res of [first, second]) {
      expect(res.status, res.text).toBe(200);
      expect(res.headers["idempotent-replayed"]).toBe("false");
      expect(res.body).not.toHaveProperty("externalReference");
      expect(res.body.state).toBe("completed");
    }
    expect(await updateCount()).toBe(count + 2);
    expect(await licenceRow(id)).toMatchObject({ state: "inactive", external_state: "suspended" });
  });
});

describe("POST /userservice/v2/userService/update: the whole list is one transaction", () => {
  /**
   * Sends a request that must fail as a whole: answers 200 failed with the reason, the licence
   * table is unchanged byte for byte, and the update is stored as failed with the raw request.
   */
  async function expectFailedAndNothingChanged(changes: Change[], reason: RegExp) {
    const before = await licenceTable();
    const ref = uniqueRef("UPD");
    // Unknown fields are accepted and kept in the stored raw request.
    const body = { ...updateBody(changes, ref), channel: "espace-client" };

    const res = await postUpdate(body);

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("failed");
    expect(res.body.externalReference).toEqual({ type: "orange", id: ref });
    expect(res.body.note).toEqual({ text: expect.any(String), date: expect.stringMatching(ISO_MS), author: PARTNER });
    expect(res.body.note.text).toMatch(reason);
    expect(res.body).not.toHaveProperty("channel");

    const after = await licenceTable();
    expect(after.text).toEqual(before.text);
    expect(after.rows).toEqual(before.rows);

    const [stored, ...more] = await updateRowsOf(ref);
    expect(more).toEqual([]);
    expect(stored).toMatchObject({
      idempotency_key: ref,
      state: "failed",
      failure_reason: res.body.note.text,
      request: body,
      response: res.body,
      licence_ids: changes.map((c) => c.id),
    });
    return res;
  }

  it("suspends every licence of the list or none of them: one unknown id fails the whole list", async () => {
    const fleet = await orderFleet({ quantity: 3 });
    const [a, b, c] = fleet.licenceIds as [string, string, string];

    const res = await expectFailedAndNothingChanged(
      [
        { id: a, externalState: "suspended" },
        { id: "us_unknown_licence", externalState: "suspended" },
        { id: b, externalState: "suspended" },
      ],
      /unknown licence.*us_unknown_licence/,
    );

    // The answer shows the existing licences as they still are.
    expect(res.body.userService.map((u: { id: string; state: string }) => [u.id, u.state])).toEqual([
      [a, "active"],
      [b, "active"],
    ]);
    expect((await licenceRows([a, b, c])).map((r) => r.state)).toEqual(["active", "active", "active"]);
  });

  it("fails the whole list when one licence is terminated", async () => {
    const fleet = await orderFleet({ quantity: 3 });
    const [a, b, c] = fleet.licenceIds as [string, string, string];
    await postUpdate(updateBody([{ id: c, externalState: "deleted" }]));

    await expectFailedAndNothingChanged(
      [
        { id: a, externalState: "suspended" },
        { id: b, productOfferingOperation: swapTo(PREMIUM) },
        { id: c, externalState: "suspended" },
      ],
      new RegExp(`${c}.*terminated`),
    );
  });

  it("fails the whole list when a terminated licence is asked to change offer", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const [a, b] = fleet.licenceIds as [string, string];
    await postUpdate(updateBody([{ id: b, externalState: "deleted" }]));

    await expectFailedAndNothingChanged(
      [
        { id: a, externalState: "inactive" },
        { id: b, productOfferingOperation: swapTo(PREMIUM) },
      ],
      new RegExp(`${b}.*terminated`),
    );
  });

  it("fails the whole list when the licences belong to two different customers", async () => {
    const f1 = await orderFleet({ quantity: 1 });
    const f2 = await orderFleet({ quantity: 1 });

    await expectFailedAndNothingChanged(
      [
        { id: f1.licenceIds[0]!, externalState: "suspended" },
        { id: f2.licenceIds[0]!, externalState: "suspended" },
      ],
      /different customers/,
    );
  });

  it("accepts licences of two fleets of the same customer in one list", async () => {
    const f1 = await orderFleet({ quantity: 1 });
    const f2 = await orderFleet({ quantity: 1, customerRef: f1.customerRef });

    const res = await postUpdate(
      updateBody([
        { id: f1.licenceIds[0]!, externalState: "suspended" },
        { id: f2.licenceIds[0]!, externalState: "suspended" },
      ]),
    );

    expect(res.status, res.text).toBe(200);
    expect(res.body.state).toBe("completed");
    expect((await licenceRows([f1.licenceIds[0]!, f2.licenceIds[0]!])).map((r) => r.state)).toEqual([
      "inactive",
      "inactive",
    ]);
  });

  it("fails the whole list when a swap names an offer that is not in the catalogue", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const [a, b] = fleet.licenceIds as [string, string];

    await expectFailedAndNothingChanged(
      [
        { id: a, productOfferingOperation: swapTo(PREMIUM) },
        { id: b, productOfferingOperation: swapTo("MBA-UNKNOWN-OFFER") },
      ],
      /MBA-UNKNOWN-OFFER.*not in the partner's catalogue/,
    );
  });
});

describe("POST /userservice/v2/userService/update: validation", () => {
  async function expectRejected(body: unknown, code: number, description: (string | RegExp)[]) {
    const before = await licenceTable();
    const count = await updateCount();

    const res = await postUpdate(body);

    expectError(res, 400, code);
    for (const d of description) {
      if (typeof d === "string") expect(res.body.description).toContain(d);
      else expect(res.body.description).toMatch(d);
    }
    expect(await licenceTable()).toEqual(before);
    expect(await updateCount()).toBe(count);
    return res;
  }

  it("answers 400 code 24 for an empty userService list", async () => {
    await expectRejected(updateBody([]), 24, ["userService", "at least 1"]);
  });

  it("answers 400 code 23 when userService is missing", async () => {
    await expectRejected({ externalReference: { type: "orange", id: uniqueRef("UPD") } }, 23, ["userService"]);
  });

  it("answers 400 code 24 with the path of an item that carries no change", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    await expectRejected(
      updateBody([{ id: fleet.licenceIds[0]!, externalState: "suspended" }, { id: fleet.licenceIds[1]! }]),
      24,
      ["userService[1]", "externalState", "productOfferingOperation"],
    );
  });

  it("answers 400 code 24 listing the allowed values for an externalState outside the enum", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    await expectRejected(updateBody([{ id: fleet.licenceIds[0]!, externalState: "paused" }]), 24, [
      "userService[0].externalState",
      '"active"',
      '"inactive"',
      '"suspended"',
      '"deleted"',
      '"paused"',
    ]);
  });

  it("answers 400 code 24 for a swap with another action than swap", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    await expectRejected(
      updateBody([
        {
          id: fleet.licenceIds[0]!,
          productOfferingOperation: { action: "add", productOffering: { externalReference: { type: "orange", id: PREMIUM } } },
        },
      ]),
      24,
      ["userService[0].productOfferingOperation.action"],
    );
  });

  it("answers 400 code 24 when the same licence appears twice", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    await expectRejected(
      updateBody([
        { id, externalState: "suspended" },
        { id, productOfferingOperation: swapTo(PREMIUM) },
      ]),
      24,
      ["userService[1].id", id],
    );
  });

  it("answers 400 code 23 naming the path of a missing licence id", async () => {
    await expectRejected({ userService: [{ externalState: "suspended" }] }, 23, ["userService[0].id"]);
  });

  it("answers 400 code 23 for missing ids in several items without calling them duplicates", async () => {
    const res = await expectRejected(
      { userService: [{ externalState: "suspended" }, { externalState: "deleted" }] },
      23,
      ["userService[0].id", "userService[1].id"],
    );
    expect(res.body.description).not.toContain("duplicate");
  });

  it("answers 400 code 21 without a body", async () => {
    const res = await t.call("POST", UPDATE, undefined, { "content-type": "application/json" });
    expectError(res, 400, 21);
  });
});

describe("POST /userservice/v2/userService/update: idempotency", () => {
  it("answers a retry with the stored answer, marked replayed, and changes nothing more", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const [a, b] = fleet.licenceIds as [string, string];
    const ref = uniqueRef("UPD");
    const body = updateBody(
      [
        { id: a, externalState: "suspended" },
        { id: b, productOfferingOperation: swapTo(ESSENTIEL) },
      ],
      ref,
    );

    const first = await postUpdate(body);
    expect(first.status, first.text).toBe(200);
    expect(first.headers["idempotent-replayed"]).toBe("false");
    expect(first.body.state).toBe("completed");
    const afterFirst = await licenceTable();
    const rowsAfterFirst = await licenceRows([a, b]);

    // Same body with its keys in another order: the same request.
    const retry = await postUpdate({ userService: body.userService, externalReference: body.externalReference });

    expect(retry.status, retry.text).toBe(200);
    expect(retry.headers["idempotent-replayed"]).toBe("true");
    expect(retry.body).toEqual(first.body);
    expect(retry.text).toBe(first.text);
    expect(await licenceTable()).toEqual(afterFirst);
    const rowsAfterRetry = await licenceRows([a, b]);
    expect(rowsAfterRetry.map((r) => r.updated_at)).toEqual(rowsAfterFirst.map((r) => r.updated_at));
    expect(await updateRowsOf(ref)).toHaveLength(1);
  });

  it("replays a failed answer too, without applying the request on the retry", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    const ref = uniqueRef("UPD");
    const body = updateBody(
      [
        { id, externalState: "suspended" },
        { id: "us_not_there", externalState: "suspended" },
      ],
      ref,
    );

    const first = await postUpdate(body);
    expect(first.body.state).toBe("failed");
    const before = await licenceTable();
    const retry = await postUpdate(body);

    expect(retry.status).toBe(200);
    expect(retry.headers["idempotent-replayed"]).toBe("true");
    expect(retry.body).toEqual(first.body);
    expect(await licenceTable()).toEqual(before);
    expect(await updateRowsOf(ref)).toEqual([expect.objectContaining({ state: "failed" })]);
  });

  it("answers 409 code 63 to the same reference with another body and changes nothing", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    const ref = uniqueRef("UPD");
    const first = await postUpdate(updateBody([{ id, externalState: "suspended" }], ref));
    expect(first.body.state).toBe("completed");
    const before = await licenceTable();

    const res = await postUpdate(updateBody([{ id, externalState: "deleted" }], ref));

    expectError(res, 409, 63);
    expect(res.body.description).toContain(ref);
    expect(await licenceTable()).toEqual(before);
    expect(await licenceRow(id)).toMatchObject({ state: "inactive", external_state: "suspended" });
    const stored = await updateRowsOf(ref);
    expect(stored).toHaveLength(1);
    expect(stored[0]!.response).toEqual(first.body);
  });

  it("uses the Idempotency-Key header as the reference when present", async () => {
    const fleet = await orderFleet({ quantity: 1 });
    const id = fleet.licenceIds[0]!;
    const key = uniqueRef("KEY");
    const body = updateBody([{ id, externalState: "suspended" }], null);

    const first = await postUpdate(body, { "idempotency-key": key });
    const retry = await postUpdate(body, { "idempotency-key": key });
    const other = await postUpdate(updateBody([{ id, externalState: "active" }], null), { "idempotency-key": key });

    expect(first.headers["idempotent-replayed"]).toBe("false");
    expect(retry.headers["idempotent-replayed"]).toBe("true");
    expect(retry.body).toEqual(first.body);
    expectError(other, 409, 63);
    const rows = await t.db.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM licence_update WHERE idempotency_key = ${key}`;
    expect(rows[0]!.n).toBe(1);
    expect(await licenceRow(id)).toMatchObject({ state: "inactive", external_state: "suspended" });
  });
});

describe("POST /userservice/v2/userService/update: concurrency", () => {
  it("serialises a concurrent suspend and delete of one licence into one of the two serial orders", async () => {
    const fleet = await orderFleet({ quantity: 8 });
    for (const id of fleet.licenceIds) {
      const [suspend, del] = await Promise.all([
        postUpdate(updateBody([{ id, externalState: "suspended" }])),
        postUpdate(updateBody([{ id, externalState: "deleted" }])),
      ]);
      expect(suspend.status, suspend.text).toBe(200);
      expect(del.status, del.text).toBe(200);
      // Nothing can prevent the delete: either it ran last, or it ran first.
      expect(del.body.state).toBe("completed");
      expect(del.body.userService).toEqual([expect.objectContaining({ id, state: "terminated", externalState: "deleted" })]);
      const row = await licenceRow(id);
      expect(row).toMatchObject({ state: "terminated", external_state: "deleted" });
      expect(row.updated_at.toISOString()).toBe(del.body.userService[0].lastUpdate);
      if (suspend.body.state === "completed") {
        // suspend, then delete.
        expect(suspend.body.userService).toEqual([
          expect.objectContaining({ id, state: "inactive", externalState: "suspended" }),
        ]);
        expect(Date.parse(suspend.body.userService[0].lastUpdate)).toBeLessThanOrEqual(row.updated_at.getTime());
      } else {
        // delete, then suspend: the suspend found a terminated licence and failed.
        expect(suspend.body.state).toBe("failed");
        expect(suspend.body.note.text).toMatch(/terminated/);
        expect(suspend.body.userService).toEqual([del.body.userService[0]]);
      }
    }
  });

  it("leaves a licence on the offer of whichever of two concurrent swaps ran last", async () => {
    const fleet = await orderFleet({ quantity: 8 });
    for (const id of fleet.licenceIds) {
      const [toPremium, toEssentiel] = await Promise.all([
        postUpdate(updateBody([{ id, productOfferingOperation: swapTo(PREMIUM) }])),
        postUpdate(updateBody([{ id, productOfferingOperation: swapTo(ESSENTIEL) }])),
      ]);
      for (const res of [toPremium, toEssentiel]) {
        expect(res.status, res.text).toBe(200);
        expect(res.body.state).toBe("completed");
      }
      expect(toPremium.body.userService[0].productOffering).toEqual(offering(PREMIUM));
      expect(toEssentiel.body.userService[0].productOffering).toEqual(offering(ESSENTIEL));

      const row = await licenceRow(id);
      const [last, first] = row.offer_code === PREMIUM ? [toPremium, toEssentiel] : [toEssentiel, toPremium];
      expect([PREMIUM, ESSENTIEL]).toContain(row.offer_code);
      expect(row.state).toBe("active");
      // The row is what the last one answered, and its change came after the first one's.
      const get = await t.call("GET", `${LIST}/${id}`);
      expect(get.body).toEqual(last.body.userService[0]);
      expect(Date.parse(first.body.userService[0].lastUpdate)).toBeLessThanOrEqual(row.updated_at.getTime());
    }
  });

  it("applies two concurrent deliveries of the same update once, the other answering the stored result", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const ref = uniqueRef("UPD");
    const body = updateBody(fleet.licenceIds.map((id) => ({ id, externalState: "suspended" })), ref);

    const answers = await Promise.all([postUpdate(body), postUpdate(body)]);

    for (const res of answers) expect(res.status, res.text).toBe(200);
    expect(answers.map((r) => r.headers["idempotent-replayed"]).sort()).toEqual(["false", "true"]);
    expect(answers[0]!.body).toEqual(answers[1]!.body);
    expect(answers[0]!.body.state).toBe("completed");
    const stored = await updateRowsOf(ref);
    expect(stored).toHaveLength(1);
    expect(stored[0]).toMatchObject({ state: "completed", response: answers[0]!.body });
    const rows = await licenceRows(fleet.licenceIds);
    for (const row of rows) {
      expect(row).toMatchObject({ state: "inactive", external_state: "suspended" });
      expect(row.updated_at.toISOString()).toBe(answers[0]!.body.userService[0].lastUpdate);
    }
  });

  it("does not deadlock on two concurrent updates of overlapping lists given in reverse order", async () => {
    for (let round = 0; round < 3; round++) {
      const fleet = await orderFleet({ quantity: 6 });
      const ids = fleet.licenceIds;
      const reversed = [...ids].reverse();

      const [suspend, swap] = await Promise.all([
        postUpdate(updateBody(ids.map((id) => ({ id, externalState: "suspended" })))),
        postUpdate(updateBody(reversed.map((id) => ({ id, productOfferingOperation: swapTo(PREMIUM) })))),
      ]);

      expect(suspend.status, suspend.text).toBe(200);
      expect(swap.status, swap.text).toBe(200);
      expect(suspend.body.state).toBe("completed");
      expect(swap.body.state).toBe("completed");
      expect(suspend.body.userService.map((u: { id: string }) => u.id)).toEqual(ids);
      expect(swap.body.userService.map((u: { id: string }) => u.id)).toEqual(reversed);
      // Both changes apply whatever their order.
      const rows = await licenceRows(ids);
      for (const row of rows) {
        expect(row).toMatchObject({ state: "inactive", external_state: "suspended", offer_code: PREMIUM });
      }
    }
  });
  it("never moves lastUpdate back: an update that waited for a lock stamps its change after the one it waited behind", async () => {
    const fleet = await orderFleet({ quantity: 2 });
    const [x, z] = fleet.licenceIds as [string, string];
    // Another transaction holds licence x, so that update A waits while update B changes z.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let holding!: () => void;
    const held = new Promise<void>((resolve) => (holding = resolve));
    const holder = t.db.$transaction(
      async (tx) => {
        await tx.$queryRaw`SELECT id FROM licence WHERE id = ${x} FOR UPDATE`;
        holding();
        await released;
      },
      { timeout: 30_000 },
    );
    try {
      await held;
      const base = Date.now() + 3_600_000;
      clock.pinned = new Date(base);
      const pendingA = postUpdate(
        updateBody([
          { id: x, externalState: "suspended" },
          { id: z, externalState: "suspended" },
        ]),
      );
      await lockWaiters(1);
      clock.pinned = new Date(base + 1_000);
      const b = await postUpdate(updateBody([{ id: z, productOfferingOperation: swapTo(PREMIUM) }]));
      expect(b.body.state, b.text).toBe("completed");
      release();
      await holder;
      const a = await pendingA;

      expect(a.status, a.text).toBe(200);
      expect(a.body.state).toBe("completed");
      // Serial order B then A: A's answer already carries B's swap.
      const aOfZ = a.body.userService[1];
      expect(aOfZ).toMatchObject({ id: z, state: "inactive", externalState: "suspended", productOffering: offering(PREMIUM) });
      const row = await licenceRow(z);
      expect(row).toMatchObject({ state: "inactive", external_state: "suspended", offer_code: PREMIUM });
      expect(row.updated_at.toISOString()).toBe(aOfZ.lastUpdate);
      // The last change of z is not older than the one before it.
      expect(Date.parse(aOfZ.lastUpdate)).toBeGreaterThanOrEqual(Date.parse(b.body.userService[0].lastUpdate));
    } finally {
      release();
      clock.pinned = undefined;
      await holder.catch(() => undefined);
    }
  });
});
