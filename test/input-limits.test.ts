import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateOpenApi } from "../src/openapi.js";
import { LIMITS, MAX_JSON_DEPTH } from "../src/orange/schemas.js";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { uc2Request } from "./support/examples.js";

/**
 * Input PostgreSQL cannot store (issue 8, items 2 and 6): a NUL or a lone surrogate in any
 * string, an identifier longer than a btree index row allows, JSON nested deeper than
 * MAX_JSON_DEPTH. Each is refused at intake with 400 and Orange's error body naming the field
 * and the rule, on every route, in both answer modes: nothing is stored, no job is queued (an
 * acknowledged request that can never be carried out would be retried forever).
 */

const ORDER_URL = "/productordering/v2/productOrder";
const UPDATE_URL = "/userservice/v2/userService/update";
const ADMIN_TOKEN = "admin-token-for-input-limits";
const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` };

let sync: TestApp;
let async: TestApp;

beforeAll(async () => {
  [sync, async] = await Promise.all([
    createTestApp({ env: { ADMIN_TOKEN } }),
    createTestApp({ env: { ADMIN_TOKEN, ORDERING_MODE: "async", UPDATE_MODE: "async" } }),
  ]);
});
afterAll(async () => {
  await sync?.close();
  await async?.close();
});

const MODES = [
  ["sync", () => sync],
  ["async", () => async],
] as const;

function ref(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

/** A UC2 order with fresh Orange references. */
function order() {
  const o = uc2Request();
  o.externalReference.id = ref("ORD");
  o.customer.externalReference.id = ref("CUS");
  return o;
}

/** Random hex: PostgreSQL compresses a repeated character below the index limit, not this. */
function longId(length: number): string {
  return randomBytes(Math.ceil(length / 2))
    .toString("hex")
    .slice(0, length);
}

async function stored(t: TestApp) {
  const [row] = await t.db.$queryRaw<Record<string, number>[]>`
    SELECT (SELECT count(*)::int FROM product_order) AS orders,
           (SELECT count(*)::int FROM licence_update) AS updates,
           (SELECT count(*)::int FROM customer) AS customers,
           (SELECT count(*)::int FROM contact) AS contacts,
           (SELECT count(*)::int FROM fleet) AS fleets,
           (SELECT count(*)::int FROM licence) AS licences,
           (SELECT count(*)::int FROM outbox_event) AS events,
           (SELECT count(*)::int FROM graphile_worker.jobs) AS jobs`;
  return row!;
}

function expectRefused(res: CallResult, status: number, code: number, description: string | RegExp) {
  expect(res.status, res.text).toBe(status);
  expect(res.headers["content-type"]).toMatch(/^application\/json/);
  expect(Object.keys(res.body as object).sort()).toEqual(["code", "description", "message"]);
  expect(res.body.code, res.text).toBe(code);
  if (typeof description === "string") expect(res.body.description).toContain(description);
  else expect(res.body.description).toMatch(description);
}

/** Sends, expects 400 with `code` and `description`, and checks that nothing at all was stored. */
async function expectNothingStored(t: TestApp, send: () => Promise<CallResult>, code: number, description: string | RegExp) {
  const before = await stored(t);
  expectRefused(await send(), 400, code, description);
  expect(await stored(t)).toEqual(before);
}

// One licence of a real fleet, for updates and consultations.
let licenceId: string;
let fleetId: string;
beforeAll(async () => {
  const res = await sync.call("POST", ORDER_URL, order());
  expect(res.status, res.text).toBe(201);
  fleetId = res.body.orderItem[0].productRef.id;
  const list = await sync.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`);
  licenceId = list.body[0].id;
});

const NUL = "\u0000";
const HIGH = "\ud800";
const LOW = "\udc00";

describe.each(MODES)("productOrder (%s mode) refuses what PostgreSQL cannot store", (_mode, app) => {
  it("a NUL in a top-level string", async () => {
    const o = { ...order(), category: `produc${NUL}tion` };
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, o),
      24,
      'category must not contain the NUL character (U+0000), which cannot be stored (got "produc\\u0000tion")',
    );
  });

  it("a NUL in a nested characteristic", async () => {
    const o = order();
    o.orderItem[0]!.productRef.characteristic = [{ name: "storageSize", value: `50${NUL}GB` }];
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, o),
      24,
      "orderItem[0].productRef.characteristic[0].value must not contain the NUL character (U+0000)",
    );
  });

  it("a lone high surrogate in an end user's name", async () => {
    const o = order();
    o.orderItem[0]!.endUserConfiguration[0]!.endUser.givenName = `Pa${HIGH}ul`;
    // JSON.stringify escapes the lone surrogate as \ud800, as a client would send it.
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, JSON.stringify(o)),
      24,
      "orderItem[0].endUserConfiguration[0].endUser.givenName must be well-formed Unicode: it contains a lone surrogate (U+D800)",
    );
  });

  it("a lone surrogate in an unknown field and a NUL in a field name", async () => {
    const o = { ...order(), orangeExtension: { note: `x${LOW}` }, [`bad${NUL}key`]: 1 };
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, JSON.stringify(o)),
      24,
      /orangeExtension\.note must be well-formed Unicode: it contains a lone surrogate \(U\+DC00\).*; body has a field name that must not contain the NUL character/,
    );
  });

  it("an 8,000-character Orange order reference, longer than an index row allows", async () => {
    const o = order();
    o.externalReference.id = longId(8000);
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, o),
      24,
      `externalReference.id must be at most ${LIMITS.orangeRef} characters long (got 8000)`,
    );
  });

  it("an 8,000-character customer reference", async () => {
    const o = order();
    o.customer.externalReference.id = longId(8000);
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, o),
      24,
      `customer.externalReference.id must be at most ${LIMITS.orangeRef} characters long (got 8000)`,
    );
  });

  it("an 8,000-character Idempotency-Key header", async () => {
    const o = order();
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, o, { "idempotency-key": longId(8000) }),
      26,
      `idempotency-key must be at most ${LIMITS.orangeRef} characters long (got 8000)`,
    );
  });

  it("takes an order whose every limit is reached exactly", async () => {
    const o = order();
    o.externalReference.id = longId(LIMITS.orangeRef);
    o.customer.externalReference.id = longId(LIMITS.orangeRef);
    o.customer.tradingName = "é".repeat(LIMITS.name);
    o.orderItem[0]!.endUserConfiguration[0]!.endUser.email = `${"p".repeat(LIMITS.email - 12)}@example.com`;
    o.orderItem[0]!.productRef.characteristic = [{ name: "n".repeat(LIMITS.name), value: "🍞".repeat(LIMITS.text / 2) }];
    const res = await app().call("POST", ORDER_URL, o, { "idempotency-key": longId(LIMITS.orangeRef) });
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe(app() === sync ? "completed" : "acknowledged");
  });
});

describe.each(MODES)("userService/update (%s mode) refuses what PostgreSQL cannot store", (_mode, app) => {
  it("a NUL in a licence id", async () => {
    await expectNothingStored(
      app(),
      () => app().call("POST", UPDATE_URL, { userService: [{ id: `us_x${NUL}`, externalState: "suspended" }] }),
      24,
      'userService[0].id must not contain the NUL character (U+0000), which cannot be stored (got "us_x\\u0000")',
    );
  });

  it("a lone surrogate in the offer code of a swap", async () => {
    const body = {
      externalReference: { type: "orange", id: ref("UPD") },
      userService: [
        {
          id: licenceId,
          productOfferingOperation: { action: "swap", productOffering: { externalReference: { type: "orange", id: `MBA${HIGH}` } } },
        },
      ],
    };
    await expectNothingStored(
      app(),
      () => app().call("POST", UPDATE_URL, JSON.stringify(body)),
      24,
      "userService[0].productOfferingOperation.productOffering.externalReference.id must be well-formed Unicode",
    );
  });

  it("an 8,000-character update reference", async () => {
    const body = {
      externalReference: { type: "orange", id: longId(8000) },
      userService: [{ id: licenceId, externalState: "suspended" }],
    };
    await expectNothingStored(
      app(),
      () => app().call("POST", UPDATE_URL, body),
      24,
      `externalReference.id must be at most ${LIMITS.orangeRef} characters long (got 8000)`,
    );
  });

  it("a licence id longer than any partner id", async () => {
    const id = `us_${"a".repeat(LIMITS.partnerId)}`;
    await expectNothingStored(
      app(),
      () => app().call("POST", UPDATE_URL, { userService: [{ id, externalState: "suspended" }] }),
      24,
      `userService[0].id must be at most ${LIMITS.partnerId} characters long (got ${id.length})`,
    );
  });
});

describe("consultations refuse what PostgreSQL cannot store in ids, path and query", () => {
  it("a NUL in the licence id of the path", async () => {
    expectRefused(
      await sync.call("GET", "/userservice/v2/userService/lic%00x"),
      400,
      20,
      'id must not contain the NUL character (U+0000), which cannot be stored (got "lic\\u0000x")',
    );
  });

  it("a NUL in one of the ids of ?id=", async () => {
    expectRefused(
      await sync.call("GET", `/userservice/v2/userService?id=${licenceId},us_%00b`),
      400,
      28,
      "id must not contain the NUL character (U+0000)",
    );
  });

  it("a NUL in ?productRefId=", async () => {
    expectRefused(
      await sync.call("GET", "/userservice/v2/userService?productRefId=fl%00"),
      400,
      28,
      'productRefId must not contain the NUL character (U+0000), which cannot be stored (got "fl\\u0000")',
    );
  });

  it("ids longer than any partner id, in the path, in ?id= and in ?productRefId=", async () => {
    const long = "x".repeat(LIMITS.partnerId + 1);
    expectRefused(
      await sync.call("GET", `/userservice/v2/userService/${long}`),
      400,
      20,
      `id must be at most ${LIMITS.partnerId} characters long (got ${long.length})`,
    );
    expectRefused(
      await sync.call("GET", `/userservice/v2/userService?id=${licenceId},${long}`),
      400,
      28,
      `id must list licence ids of at most ${LIMITS.partnerId} characters each (got one of ${long.length})`,
    );
    expectRefused(
      await sync.call("GET", `/userservice/v2/userService?productRefId=${long}`),
      400,
      28,
      `productRefId must be at most ${LIMITS.partnerId} characters long`,
    );
  });

  it("still answers well-formed ids", async () => {
    const one = await sync.call("GET", `/userservice/v2/userService/${licenceId}`);
    expect(one.status, one.text).toBe(200);
    const byFleet = await sync.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`);
    expect(byFleet.status).toBe(200);
    expect(byFleet.body).toHaveLength(3);
  });
});

describe("the admin API refuses what PostgreSQL cannot store", () => {
  it("a NUL in an end user's name of a licence change, and changes nothing", async () => {
    const before = await sync.db.licence.findUniqueOrThrow({ where: { id: licenceId } });
    const body = {
      userService: [{ id: licenceId, endUserOperation: { action: "add", endUser: { givenName: `Cl${NUL}aire` } } }],
    };
    await expectNothingStored(
      sync,
      () => sync.call("POST", "/admin/v1/licence-changes", body, ADMIN),
      24,
      "userService[0].endUserOperation.endUser.givenName must not contain the NUL character (U+0000)",
    );
    expect(await sync.db.licence.findUniqueOrThrow({ where: { id: licenceId } })).toEqual(before);
  });

  it("a NUL in a query filter and in an event id", async () => {
    expectRefused(
      await sync.call("GET", "/admin/v1/events?fleetId=fl%00x", undefined, ADMIN),
      400,
      28,
      "fleetId must not contain the NUL character (U+0000)",
    );
    expectRefused(
      await sync.call("GET", "/admin/v1/events/ev%00x", undefined, ADMIN),
      400,
      20,
      "id must not contain the NUL character (U+0000)",
    );
    expectRefused(
      await sync.call("POST", "/admin/v1/events/ev%00x/resend", undefined, ADMIN),
      400,
      20,
      "id must not contain the NUL character (U+0000)",
    );
  });
});

describe("JSON nesting depth", () => {
  /** `{"extra": {"a": {"a": … 1 …}}}` merged into an order: the unknown field nests `levels` objects. */
  function nested(levels: number): string {
    const o = JSON.stringify(order());
    return `${o.slice(0, -1)},"extra":${'{"a":'.repeat(levels)}1${"}".repeat(levels)}}`;
  }

  it.each(MODES)("refuses 10,000 levels with 400 naming where, in %s mode, and stores nothing", async (_mode, app) => {
    await expectNothingStored(
      app(),
      () => app().call("POST", ORDER_URL, nested(10_000)),
      24,
      new RegExp(`^extra(\\.a)+\\.\\.\\. is nested deeper than ${MAX_JSON_DEPTH} levels of objects and arrays$`),
    );
  });

  it("refuses 1,000,000 nested arrays as the whole body", async () => {
    const body = `${"[".repeat(1_000_000)}${"]".repeat(1_000_000)}`;
    await expectNothingStored(sync, () => sync.call("POST", ORDER_URL, body), 24, /^(\[0\])+\.\.\. is nested deeper than 64 levels/);
  });

  it(`takes ${MAX_JSON_DEPTH} levels and refuses ${MAX_JSON_DEPTH + 1}`, async () => {
    // The order is level 1, "extra" level 2: the deepest object of extra is at level 1 + levels.
    const ok = await sync.call("POST", ORDER_URL, nested(MAX_JSON_DEPTH - 1));
    expect(ok.status, ok.text).toBe(201);
    const [row] = await sync.db.$queryRaw<{ depth: number }[]>`
      SELECT length(request::text) - length(replace(request::text, '{', '')) AS depth
        FROM product_order WHERE id = ${ok.body.id as string}`;
    expect(row!.depth).toBeGreaterThanOrEqual(MAX_JSON_DEPTH);
    await expectNothingStored(sync, () => sync.call("POST", ORDER_URL, nested(MAX_JSON_DEPTH)), 24, "is nested deeper than 64 levels");
  });

  it("refuses a deep licence change of the admin API", async () => {
    const deep = `{"userService":[{"id":"${licenceId}","extra":${"[".repeat(100)}${"]".repeat(100)}}]}`;
    await expectNothingStored(
      sync,
      () => sync.call("POST", "/admin/v1/licence-changes", deep, ADMIN),
      24,
      "userService[0].extra[0][0]",
    );
  });
});

describe("the limits are in the OpenAPI document", () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let doc: any;
  beforeAll(async () => {
    doc = JSON.parse(await generateOpenApi());
  });

  it("gives maxLength to references, ids, codes, e-mails and text", () => {
    const schemas = doc.components.schemas;
    expect(schemas.ExternalReference.properties.id.maxLength).toBe(LIMITS.orangeRef);
    expect(schemas.OfferReference.properties.id.maxLength).toBe(LIMITS.offerCode);
    expect(schemas.Individual.properties.email.maxLength).toBe(LIMITS.email);
    expect(schemas.Individual.properties.givenName.maxLength).toBe(LIMITS.name);
    expect(schemas.Characteristic.properties.value.maxLength).toBe(LIMITS.text);
    const order = doc.paths[ORDER_URL].post;
    expect(order.requestBody.content["application/json"].schema.$ref).toBe("#/components/schemas/ProductOrderRequest");
    const body = schemas.ProductOrderRequest;
    expect(body.properties.orderItem.items.properties.productRef.properties.id.maxLength).toBe(LIMITS.partnerId);
    expect(order.parameters).toContainEqual(
      expect.objectContaining({ in: "header", name: "idempotency-key", schema: expect.objectContaining({ maxLength: LIMITS.orangeRef }) }),
    );
    const byId = doc.paths["/userservice/v2/userService/{id}"].get.parameters;
    expect(byId).toContainEqual(expect.objectContaining({ in: "path", name: "id", schema: expect.objectContaining({ maxLength: LIMITS.partnerId }) }));
    const events = doc.paths["/admin/v1/events"].get.parameters;
    expect(events).toContainEqual(expect.objectContaining({ name: "fleetId", schema: expect.objectContaining({ maxLength: LIMITS.partnerId }) }));
  });
});
