import pg from "pg";
import { createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDb } from "../src/db/sql.js";
import { createPrisma } from "./support/prisma.js";
import { AUTH, createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { z } from "zod";
import { describeIssues } from "../src/orange/validation.js";
import { uc2Request } from "./support/examples.js";
import { createTestDatabase } from "./support/db.js";
import { uc2 as uc2Of, uc3 } from "./support/fixtures.js";

/**
 * Orange's error bodies (contract section 7): every rejection answers `{code, message,
 * description}` with the right HTTP status, says precisely what is wrong for 4xx, never leaks
 * internals for 5xx, and a rejected POST stores nothing.
 */

const ORDER_URL = "/productordering/v2/productOrder";
const UPDATE_URL = "/userservice/v2/userService/update";

const uc2 = uc2Request;

/** uc2() with orderItem[0].productRef replaced. */
function uc2WithProductRef(productRef: Record<string, unknown>): Record<string, unknown> {
  const body = uc2();
  const [item] = body.orderItem as Record<string, unknown>[];
  return { ...body, orderItem: [{ ...item, productRef }] };
}

/** Header map for a raw inject, authenticated as Orange. */
function authed(headers: Record<string, string> = {}): Record<string, string> {
  return { ...AUTH, ...headers };
}

interface RawResponse {
  statusCode: number;
  headers: Record<string, string | string[] | number | undefined>;
  body: string;
}

function asCall(res: RawResponse): CallResult {
  const isJson = String(res.headers["content-type"] ?? "").includes("json");
  return { status: res.statusCode, headers: res.headers, body: isJson ? JSON.parse(res.body) : undefined, text: res.body };
}

function expectOrangeError(res: CallResult, status: number, code: number, description?: RegExp | string) {
  expect(res.status, res.text).toBe(status);
  expect(res.headers["content-type"]).toMatch(/^application\/json/);
  expect(Object.keys(res.body as object).sort()).toEqual(["code", "description", "message"]);
  expect(res.body.code).toBe(code);
  expect(typeof res.body.message).toBe("string");
  expect(res.body.message.length).toBeGreaterThan(0);
  expect(typeof res.body.description).toBe("string");
  expect(res.body.description.length).toBeGreaterThan(0);
  if (typeof description === "string") expect(res.body.description).toContain(description);
  else if (description) expect(res.body.description).toMatch(description);
}

/** Strings that must never reach Orange in a 5xx body. */
function expectNoInternals(text: string, extra: (string | RegExp)[] = []) {
  const forbidden: (string | RegExp)[] = [
    /\bat .*\(.*:\d+:\d+\)/, // a stack frame
    /\.ts:\d+/,
    /node_modules/,
    /\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET)\b/i,
    /prisma/i,
    /postgres/i,
    /ECONNREFUSED/,
    /relation ".*"/,
    ...extra,
  ];
  for (const pattern of forbidden) {
    if (typeof pattern === "string") expect(text).not.toContain(pattern);
    else expect(text).not.toMatch(pattern);
  }
}

/** A TCP port on 127.0.0.1 that nothing listens on (taken, then released). */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      srv.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

describe("Orange error bodies for rejected requests", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(async () => t.close());

  async function expectNothingStored() {
    expect(await t.db.productOrder.count()).toBe(0);
    expect(await t.db.licenceUpdate.count()).toBe(0);
    expect(await t.db.customer.count()).toBe(0);
    expect(await t.db.licence.count()).toBe(0);
  }

  async function raw(method: "POST" | "GET" | "PUT" | "DELETE" | "PATCH", url: string, headers: Record<string, string>, payload?: string) {
    return asCall(await t.app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) }));
  }

  describe("400 code 21: missing body", () => {
    it("rejects a POST with Content-Type application/json and an empty body", async () => {
      const res = await raw("POST", ORDER_URL, authed({ "content-type": "application/json" }), "");
      expectOrangeError(res, 400, 21, /body/i);
      await expectNothingStored();
    });

    it("rejects a POST with no body and no Content-Type", async () => {
      const res = await raw("POST", ORDER_URL, authed());
      expectOrangeError(res, 400, 21, /body/i);
      await expectNothingStored();
    });

    it("rejects a licence update with no body", async () => {
      const res = await raw("POST", UPDATE_URL, authed());
      expectOrangeError(res, 400, 21);
      await expectNothingStored();
    });
  });

  describe("400 code 22: body is not valid JSON", () => {
    it("rejects a truncated JSON document", async () => {
      const res = await t.call("POST", ORDER_URL, '{"externalReference": {"type": "orange", "id": "ORD-1"');
      expectOrangeError(res, 400, 22, /JSON/);
      await expectNothingStored();
    });

    it("rejects text that is not JSON at all", async () => {
      const res = await t.call("POST", ORDER_URL, "orderItem=1&quantity=3");
      expectOrangeError(res, 400, 22, /JSON/);
      await expectNothingStored();
    });

    it("rejects a JSON body carrying a __proto__ key (prototype poisoning)", async () => {
      const res = await t.call("POST", ORDER_URL, '{"__proto__": {"admin": true}, "category": "production"}');
      expectOrangeError(res, 400, 22);
      await expectNothingStored();
    });
  });

  describe("400 code 23: missing body field", () => {
    it("names the JSON path of a missing nested field", async () => {
      const res = await t.call("POST", ORDER_URL, uc2WithProductRef({ characteristic: [{ name: "storageSize", value: "50GB" }] }));
      expectOrangeError(res, 400, 23, "orderItem[0].productRef.userServiceQuantity");
      expect(res.body.description).toMatch(/required/);
      await expectNothingStored();
    });

    it("names a missing top-level field of a licence update", async () => {
      const res = await t.call("POST", UPDATE_URL, { externalReference: { type: "orange", id: "UPD-1" } });
      expectOrangeError(res, 400, 23, "userService");
      await expectNothingStored();
    });

    it("names the offer reference when orderItem[0].productOffering.externalReference is missing", async () => {
      const body = uc2();
      const [item] = body.orderItem as Record<string, unknown>[];
      const res = await t.call("POST", ORDER_URL, { ...body, orderItem: [{ ...item, productOffering: { name: "Caisse Pro" } }] });
      expectOrangeError(res, 400, 23, "orderItem[0].productOffering.externalReference");
      await expectNothingStored();
    });
  });

  describe("a field that takes several forms", () => {
    const FORMS = 'an object {"type": "orange", "id": "…"} or a non-empty array of such objects';

    it("names the forms when the field is missing", async () => {
      const res = await t.call("POST", ORDER_URL, { ...uc2(), customer: { tradingName: "Boulangerie Martin" } });
      expectOrangeError(res, 400, 23);
      expect(res.body.description).toBe(`customer.externalReference is required: ${FORMS}`);
      await expectNothingStored();
    });

    it("names the forms and the value received when the field has neither", async () => {
      const res = await t.call("POST", UPDATE_URL, { externalReference: "UPD-1", userService: [{ id: "us_1", externalState: "suspended" }] });
      expectOrangeError(res, 400, 24);
      expect(res.body.description).toBe(`externalReference must be ${FORMS} (got "UPD-1")`);
      await expectNothingStored();
    });

    it("lists what each form expects when a union has no wording of its own", () => {
      const issues = z.union([z.string(), z.array(z.number())]).safeParse(true, { reportInput: true }).error!.issues;
      expect(describeIssues(issues, "body").description).toBe("body must be a string or an array (got true)");
    });
  });

  describe("a body generated from the schema", () => {
    /** What Swagger UI made of the order's schema before the document carried examples. */
    const generated = {
      externalReference: { type: "string", id: "string", additionalProp1: {} },
      category: "string",
      orderDate: "6400-10-08T11:06:39.999Z",
      customer: { externalReference: { type: "string", id: "string" }, tradingName: "string", additionalProp1: {} },
      orderItem: [
        {
          id: "string",
          action: "string",
          productOffering: { name: "string", externalReference: { type: "string", id: "string" } },
          productRef: { id: "string", userServiceQuantity: 1 },
        },
      ],
    };

    it("is refused with the example to send instead, and nothing is stored", async () => {
      const res = await t.call("POST", ORDER_URL, generated);
      expectOrangeError(res, 400, 24);
      expect(res.body.description).toBe(
        'body holds the placeholders a tool generates from the schema (externalReference.type is "string"), not a request: ' +
          'send the example "uc2" (a first order) of this operation under /docs, or those of docs/orange-contract.md section 2, with your own values',
      );
      await expectNothingStored();
    });

    it("is recognised by its additionalProp fields too, and on the update route", async () => {
      const order = await t.call("POST", ORDER_URL, { ...uc2(), additionalProp1: {} });
      expectOrangeError(order, 400, 24, "(additionalProp1 is a placeholder field)");
      const update = await t.call("POST", UPDATE_URL, { userService: [{ id: "string", externalState: "suspended" }] });
      expectOrangeError(update, 400, 24, '(userService[0].id is "string")');
      expect(update.body.description).toContain('the example "suspend"');
      await expectNothingStored();
    });
  });

  describe("400 code 24: invalid body field", () => {
    it("gives the path, the rule and the value received for an out-of-range quantity", async () => {
      const res = await t.call("POST", ORDER_URL, uc2WithProductRef({ userServiceQuantity: -2 }));
      expectOrangeError(res, 400, 24, "orderItem[0].productRef.userServiceQuantity");
      // The wording of the example in docs/orange-contract.md, section 7.
      expect(res.body.description).toBe("orderItem[0].productRef.userServiceQuantity must be an integer >= 1 (got -2)");
      await expectNothingStored();
    });

    it("gives the expected type for a quantity sent as a string", async () => {
      const res = await t.call("POST", ORDER_URL, uc2WithProductRef({ userServiceQuantity: "3" }));
      expectOrangeError(res, 400, 24, "orderItem[0].productRef.userServiceQuantity");
      expect(res.body.description).toMatch(/number|integer/);
      expect(res.body.description).toContain('"3"');
      await expectNothingStored();
    });

    it("lists the allowed values of an enumerated field", async () => {
      const res = await t.call("POST", UPDATE_URL, { userService: [{ id: "us_1", externalState: "paused" }] });
      expectOrangeError(res, 400, 24, "userService[0].externalState");
      for (const allowed of ["active", "inactive", "suspended", "deleted"]) {
        expect(res.body.description).toContain(`"${allowed}"`);
      }
      expect(res.body.description).toContain('"paused"');
      await expectNothingStored();
    });

    it("rejects a date-time that is not ISO 8601 and shows the expected format", async () => {
      const res = await t.call("POST", ORDER_URL, { ...uc2(), orderDate: "02/05/2026 09:20" });
      expectOrangeError(res, 400, 24, "orderDate");
      expect(res.body.description).toMatch(/ISO 8601/);
      expect(res.body.description).toContain("02/05/2026 09:20");
      await expectNothingStored();
    });

    it("rejects a calendar date that does not exist", async () => {
      const res = await t.call("POST", ORDER_URL, { ...uc2(), orderDate: "2026-02-30T09:20:00.000Z" });
      expectOrangeError(res, 400, 24, "orderDate");
      await expectNothingStored();
    });

    it("rejects a body that is JSON but not an object", async () => {
      const res = await t.call("POST", ORDER_URL, [uc2()]);
      expectOrangeError(res, 400, 24, /object/);
      await expectNothingStored();
    });
  });

  describe("400 code 28: invalid query-string parameter", () => {
    it("rejects a licence consultation with neither productRefId nor id", async () => {
      const res = await t.call("GET", "/userservice/v2/userService");
      expectOrangeError(res, 400, 28, /productRefId/);
    });
  });

  describe("415 code 68: unsupported media type", () => {
    for (const contentType of ["text/plain", "application/xml", "application/x-www-form-urlencoded"]) {
      it(`rejects a body sent as ${contentType}`, async () => {
        const res = await raw("POST", ORDER_URL, authed({ "content-type": contentType }), JSON.stringify(uc2()));
        expectOrangeError(res, 415, 68, /application\/json/);
        await expectNothingStored();
      });
    }
  });

  describe("404 code 60: unknown route", () => {
    it("answers an unknown path in the error format, naming the method and path", async () => {
      const res = await t.call("GET", "/productordering/v3/nothing?x=1");
      expectOrangeError(res, 404, 60, "GET /productordering/v3/nothing");
      expect(res.body.description).not.toContain("x=1");
    });

    it("answers a POST to an unknown path without storing anything", async () => {
      const res = await t.call("POST", "/productordering/v2/productOrders", uc2());
      expectOrangeError(res, 404, 60);
      await expectNothingStored();
    });
  });

  describe("405 code 61: method not allowed", () => {
    const cases: [method: "DELETE" | "GET" | "PUT" | "POST" | "PATCH", url: string, allow: string][] = [
      ["DELETE", ORDER_URL, "POST"],
      ["GET", ORDER_URL, "POST"],
      ["PUT", ORDER_URL, "POST"],
      ["POST", "/ping", "GET"],
      ["POST", "/userservice/v2/userService", "GET"],
      ["DELETE", "/userservice/v2/userService/us_1", "GET"],
      ["GET", UPDATE_URL, "POST"],
    ];
    for (const [method, url, allow] of cases) {
      it(`answers ${method} ${url} with 405 and Allow: ${allow}`, async () => {
        const res = await t.call(method, url);
        expectOrangeError(res, 405, 61, method);
        expect(res.headers.allow).toBe(allow);
      });
    }

    it("stores nothing when a body is sent with a method the path does not serve", async () => {
      const res = await t.call("PUT", ORDER_URL, uc2());
      expectOrangeError(res, 405, 61);
      expect(res.headers.allow).toBe("POST");
      await expectNothingStored();
    });
  });

  describe("406 code 62: not acceptable", () => {
    it("rejects a consultation that accepts only text/html", async () => {
      const res = await t.call("GET", "/userservice/v2/userService?productRefId=fl_x", undefined, { accept: "text/html" });
      expectOrangeError(res, 406, 62, "application/json");
    });

    it("rejects an order that accepts only text/html and stores nothing", async () => {
      const res = await t.call("POST", ORDER_URL, uc2(), { accept: "text/html" });
      expectOrangeError(res, 406, 62);
      await expectNothingStored();
    });

    it("rejects GET /ping that accepts only text/html", async () => {
      const res = await t.call("GET", "/ping", undefined, { authorization: null, accept: "text/html" });
      expectOrangeError(res, 406, 62);
    });

    it("accepts application/json, */* and a list that includes JSON", async () => {
      for (const accept of ["application/json", "*/*", "text/html, application/json;q=0.9", "application/*"]) {
        const res = await t.call("GET", "/userservice/v2/userService?productRefId=fl_unknown", undefined, { accept });
        expectOrangeError(res, 404, 60, "fl_unknown");
      }
    });
  });

  it("never echoes the request's Authorization header in an error body", async () => {
    const res = await t.call("POST", ORDER_URL, "{not json", { authorization: "Bearer test-orange-token" });
    expectOrangeError(res, 400, 22);
    expect(res.text).not.toContain("test-orange-token");
  });
});

describe("a real request whose free text happens to read \"string\"", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(async () => t.close());

  it("is not taken for a generated body", async () => {
    const body = uc2();
    body.orderItem[0]!.productRef.characteristic = [{ name: "format", value: "string" }];
    const res = await t.call("POST", ORDER_URL, { ...body, category: "string" });
    expect(res.status, res.text).toBe(201);
    expect(res.body.state).toBe("completed");
    expect(await t.db.licence.count()).toBe(3);
  });
});

describe("413 code 64: body larger than BODY_LIMIT_BYTES", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ env: { BODY_LIMIT_BYTES: "2048" } });
  });
  afterAll(async () => t.close());

  it("rejects a body over the limit, states the limit and stores nothing", async () => {
    const body = { ...uc2(), note: { text: "x".repeat(3000) } };
    expect(JSON.stringify(body).length).toBeGreaterThan(2048);
    const res = await t.call("POST", ORDER_URL, body);
    expectOrangeError(res, 413, 64, "2048");
    expect(await t.db.productOrder.count()).toBe(0);
  });

  it("accepts a body under the limit", async () => {
    const body = uc2();
    expect(JSON.stringify(body).length).toBeLessThan(2048);
    const res = await t.call("POST", ORDER_URL, body);
    expect(res.status).toBe(201);
    expect(res.body.state).toBe("completed");
    expect(await t.db.productOrder.count()).toBe(1);
  });
});

describe("503 code 5: the database cannot finish the work in time", () => {
  let t: TestApp;
  let db: ReturnType<typeof createDb>;
  beforeAll(async () => {
    const database = await createTestDatabase();
    // The program's access with a short bound on each transaction (DATABASE_TRANSACTION_TIMEOUT_MS).
    db = createDb(database.url, { transactionTimeoutMs: 500 });
    t = await createTestApp({
      database: { ...database, db, drop: async () => Promise.all([db.close(), database.drop()]).then(() => {}) },
    });
  });
  afterAll(async () => t.close());

  it("answers an order blocked past the bound with 503 code 5 and Retry-After, keeps nothing, and completes it when Orange retries", async () => {
    const first = await t.call("POST", ORDER_URL, uc2Of({ quantity: 1 }));
    expect(first.status, first.text).toBe(201);
    const fleetId = first.body.orderItem[0].productRef.id as string;
    const orders = await t.db.productOrder.count();
    const licences = await t.db.licence.count();

    // Another transaction holds the fleet past the bound: the order's statement times out.
    const other = new pg.Client({ connectionString: t.url });
    await other.connect();
    const body = uc3(fleetId, { quantity: 2 });
    try {
      await other.query("BEGIN");
      await other.query("SELECT 1 FROM fleet WHERE id = $1 FOR UPDATE", [fleetId]);
      const res = await t.call("POST", ORDER_URL, body);
      expectOrangeError(res, 503, 5);
      expect(res.headers["retry-after"]).toBe("5");
      expect(res.body.description).toMatch(/could not complete the request in time/);
      expectNoInternals(res.text, ["statement timeout", "canceling", "fleet"]);
    } finally {
      await other.query("ROLLBACK");
      await other.end();
    }
    // Rolled back whole: no order, no licence.
    expect(await t.db.productOrder.count()).toBe(orders);
    expect(await t.db.licence.count()).toBe(licences);

    // Orange's retry, same reference, once the fleet is free: carried out once.
    const retried = await t.call("POST", ORDER_URL, body);
    expect(retried.status, retried.text).toBe(201);
    expect(retried.body.state).toBe("completed");
    expect(await t.db.productOrder.count()).toBe(orders + 1);
    expect(await t.db.licence.count({ where: { fleetId } })).toBe(3);
  });
});

describe("503 code 5: the database is down", () => {
  let t: TestApp;
  let port: number;
  beforeAll(async () => {
    port = await closedPort();
    const url = `postgresql://x:y@127.0.0.1:${port}/nope`;
    const db = createDb(url, { connectTimeoutMs: 500 });
    const prisma = createPrisma(url, { connectTimeoutMs: 500 });
    t = await createTestApp({ database: { url, db, prisma, drop: async () => Promise.all([db.close(), prisma.$disconnect()]).then(() => {}) } });
  });
  afterAll(async () => t.close());

  function expectUnavailable(res: CallResult) {
    expectOrangeError(res, 503, 5);
    expect(res.headers["retry-after"]).toBeDefined();
    expectNoInternals(res.text, ["x:y", String(port), "nope", "127.0.0.1"]);
  }

  it("answers an order with 503 code 5 and no connection details", async () => {
    expectUnavailable(await t.call("POST", ORDER_URL, uc2()));
  });

  it("answers a licence consultation with 503 code 5", async () => {
    expectUnavailable(await t.call("GET", "/userservice/v2/userService?productRefId=fl_1"));
  });

  it("answers a licence update with 503 code 5", async () => {
    expectUnavailable(await t.call("POST", UPDATE_URL, { userService: [{ id: "us_1", externalState: "suspended" }] }));
  });

  it("reports /health/ready as 503 code 5 while /health/live stays 200", async () => {
    const ready = await t.call("GET", "/health/ready", undefined, { authorization: null });
    expectUnavailable(ready);
    const live = await t.call("GET", "/health/live", undefined, { authorization: null });
    expect(live.status).toBe(200);
    expect(live.body).toEqual({ status: "ok" });
  });

  it("still answers GET /ping, which needs no database", async () => {
    const res = await t.call("GET", "/ping");
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: "ok" });
  });

  it("still rejects an invalid body with 400 before touching the database", async () => {
    const res = await t.call("POST", ORDER_URL, uc2WithProductRef({ userServiceQuantity: 0 }));
    expectOrangeError(res, 400, 24, "orderItem[0].productRef.userServiceQuantity");
  });
});

describe("500 code 1: an unexpected error", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
    // A schema the code does not expect: the licence insert fails with a PostgreSQL error whose
    // message names the table and the statement.
    await t.db.$executeRawUnsafe("ALTER TABLE licence RENAME TO licence_moved_away");
  });
  afterAll(async () => t.close());

  it("answers 500 code 1 with no stack, no SQL and no internal message, and rolls the order back", async () => {
    const res = await t.call("POST", ORDER_URL, uc2());
    expectOrangeError(res, 500, 1);
    expectNoInternals(res.text, ["licence", "42P01", "does not exist", "Error:"]);
    expect(await t.db.productOrder.count()).toBe(0);
    expect(await t.db.customer.count()).toBe(0);
    expect(await t.db.fleet.count()).toBe(0);
  });

  it("answers a consultation that hits the same failure with 500 code 1", async () => {
    const res = await t.call("GET", "/userservice/v2/userService?id=us_1");
    expectOrangeError(res, 500, 1);
    expectNoInternals(res.text, ["licence", "42P01", "does not exist", "Error:"]);
  });
});
