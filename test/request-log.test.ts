import { randomBytes } from "node:crypto";
import { connect, type AddressInfo } from "node:net";
import { pino } from "pino";
import { sql } from "../src/db/sql.js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { LOG_REDACT } from "../src/app.js";
import { createTestApp, TEST_TOKEN, type TestApp } from "./support/app.js";
import { uc2Request } from "./support/examples.js";

/**
 * Request ids and log lines (issue 8, item 10): a caller's x-request-id is taken only when it is
 * short and plain, every answer echoes the id, a request's log lines carry its order, update,
 * fleet or licence id once known, and a failed query's SQL, parameters and row values (customer
 * data) never reach the logs. Log lines are captured from a pino destination in memory.
 */

const ORDER_URL = "/productordering/v2/productOrder";
const UPDATE_URL = "/userservice/v2/userService/update";
const FRESH_ID = /^req_[0-9a-z]{20}$/;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type LogLine = Record<string, any>;

function memoryLogger() {
  const lines: LogLine[] = [];
  const logger = pino({ level: "info", redact: LOG_REDACT }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { logger, lines };
}

function ref(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

function order() {
  const o = uc2Request();
  o.externalReference.id = ref("ORD");
  o.customer.externalReference.id = ref("CUS");
  return o;
}

const captured = memoryLogger();
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ logger: captured.logger });
});
afterAll(async () => t?.close());
beforeEach(() => {
  captured.lines.length = 0;
});

function linesOf(reqId: string): LogLine[] {
  return captured.lines.filter((l) => l.reqId === reqId);
}

function completed(reqId: string): LogLine {
  const line = linesOf(reqId).find((l) => l.msg === "request completed");
  expect(line, `a "request completed" line for ${reqId}`).toBeDefined();
  return line!;
}

describe("x-request-id", () => {
  it("takes a well-formed id from the caller, echoes it and logs under it", async () => {
    const id = "orange:2026-05-02.req_A1";
    const res = await t.call("GET", "/userservice/v2/userService?productRefId=fl_none", undefined, { "x-request-id": id });
    expect(res.status).toBe(404);
    expect(res.headers["x-request-id"]).toBe(id);
    expect(linesOf(id).map((l) => l.msg)).toEqual(expect.arrayContaining(["incoming request", "request completed"]));
  });

  it.each([
    ["longer than 128 characters", "a".repeat(129)],
    ["with a space", "orange req 1"],
    ["with markup", "<script>alert(1)</script>"],
    ["with percent signs", "a%0d%0ab"],
    ["empty", ""],
  ])("replaces an id %s with a fresh one, and never logs what was sent", async (_what, sent) => {
    const res = await t.call("GET", "/ping", undefined, { "x-request-id": sent });
    expect(res.status).toBe(200);
    const id = String(res.headers["x-request-id"]);
    expect(id).toMatch(FRESH_ID);
    if (sent !== "") expect(JSON.stringify(captured.lines)).not.toContain(sent);
  });

  it("echoes the id on every kind of answer", async () => {
    const answers = [
      await t.call("POST", ORDER_URL, order()), // 201
      await t.call("GET", "/userservice/v2/userService?productRefId=fl_none"), // 404
      await t.call("POST", ORDER_URL, { orderItem: "x" }), // 400
      await t.call("GET", "/userservice/v2/userService/us_1", undefined, { authorization: null }), // 401
      await t.call("PUT", ORDER_URL), // 405
      await t.call("GET", "/userservice/v2/userService/us_1", undefined, { accept: "text/html" }), // 406
      await t.call("POST", ORDER_URL, "<order/>", { "content-type": "application/xml" }), // 415
      await t.call("GET", "/nowhere"), // 404
      await t.call("GET", "/userservice/v2/userService/%E0%A4%A"), // 400 before routing
    ];
    expect(answers.map((a) => a.status)).toEqual([201, 404, 400, 401, 405, 406, 415, 404, 400]);
    const ids = answers.map((a) => String(a.headers["x-request-id"]));
    for (const id of ids) expect(id).toMatch(FRESH_ID);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("is echoed by GET /ping over a real port, answered before Fastify", async () => {
    const app = await createTestApp();
    try {
      await app.app.listen({ port: 0, host: "127.0.0.1" });
      const base = `http://127.0.0.1:${(app.app.server.address() as AddressInfo).port}`;
      const given = await fetch(`${base}/ping`, { headers: { "x-request-id": "probe-42" } });
      expect(given.headers.get("x-request-id")).toBe("probe-42");
      const fresh = await fetch(`${base}/ping`, { headers: { "x-request-id": "not valid!" } });
      expect(fresh.headers.get("x-request-id")).toMatch(FRESH_ID);
      expect(await fresh.json()).toEqual({ status: "ok" });
    } finally {
      await app.close();
    }
  });
});

describe("log lines carry the ids of what the request is about", () => {
  it("an order: Orange's reference from the start, then the partner order and fleet ids", async () => {
    const o = order();
    const res = await t.call("POST", ORDER_URL, o, { "x-request-id": "order-1" });
    expect(res.status, res.text).toBe(201);
    expect(completed("order-1")).toMatchObject({
      orderRef: o.externalReference.id,
      orderId: res.body.id,
      fleetId: res.body.orderItem[0].productRef.id,
    });

    // A retry answered from the stored result names the same order.
    const retry = await t.call("POST", ORDER_URL, o, { "x-request-id": "order-1-retry" });
    expect(retry.headers["idempotent-replayed"]).toBe("true");
    expect(completed("order-1-retry")).toMatchObject({ orderRef: o.externalReference.id, orderId: res.body.id });
  });

  it("a consultation by fleet, a consultation by id and an update", async () => {
    const created = await t.call("POST", ORDER_URL, order());
    const fleetId: string = created.body.orderItem[0].productRef.id;
    const list = await t.call("GET", `/userservice/v2/userService?productRefId=${fleetId}`, undefined, { "x-request-id": "list-1" });
    expect(completed("list-1")).toMatchObject({ fleetId });
    const licenceId: string = list.body[0].id;
    await t.call("GET", `/userservice/v2/userService/${licenceId}`, undefined, { "x-request-id": "one-1" });
    expect(completed("one-1")).toMatchObject({ licenceId });

    const updateRef = ref("UPD");
    const update = await t.call(
      "POST",
      UPDATE_URL,
      { externalReference: { type: "orange", id: updateRef }, userService: [{ id: licenceId, externalState: "suspended" }] },
      { "x-request-id": "update-1" },
    );
    expect(update.body.state).toBe("completed");
    const line = completed("update-1");
    expect(line).toMatchObject({ updateRef });
    const [row] = await t.db.$queryRaw<{ id: string }[]>`SELECT id FROM licence_update WHERE orange_ref = ${updateRef}`;
    expect(line.updateId).toBe(row!.id);
  });

  it("an acknowledged order in asynchronous mode", async () => {
    const log = memoryLogger();
    const app = await createTestApp({ logger: log.logger, env: { ORDERING_MODE: "async" } });
    try {
      const res = await app.call("POST", ORDER_URL, order(), { "x-request-id": "ack-1" });
      expect(res.body.state).toBe("acknowledged");
      const line = log.lines.find((l) => l.reqId === "ack-1" && l.msg === "request completed");
      expect(line).toMatchObject({ orderId: res.body.id });
    } finally {
      await app.close();
    }
  });
});

describe("a failed query's customer data never reaches the logs", () => {
  let broken: TestApp;
  const log = memoryLogger();
  beforeAll(async () => {
    broken = await createTestApp({ logger: log.logger });
    // Two ways PostgreSQL puts customer data in its error: the failing row in `detail`, and
    // the value it could not take in its message.
    await broken.db.$executeRawUnsafe(
      "ALTER TABLE customer ADD CONSTRAINT no_secret_bakery CHECK (trading_name IS DISTINCT FROM 'Boulangerie Secrète')",
    );
    await broken.db.$executeRawUnsafe("ALTER TABLE customer ALTER COLUMN organization_code TYPE bigint USING NULL");
  });
  afterAll(async () => broken?.close());
  beforeEach(() => {
    log.lines.length = 0;
  });

  function errorLines(): LogLine[] {
    return log.lines.filter((l) => l.level >= 50);
  }

  it("drops the failing row of a constraint violation, keeps the SQLSTATE and the constraint", async () => {
    const o = order();
    o.customer.tradingName = "Boulangerie Secrète";
    const res = await broken.call("POST", ORDER_URL, o, { "x-request-id": "check-1" });
    expect(res.status).toBe(500);
    const [line] = errorLines();
    expect(line).toMatchObject({ reqId: "check-1", orderRef: o.externalReference.id, msg: "unhandled error" });
    expect(line!.err.type).toBe("DatabaseError");
    expect(line!.err.message).toContain('violates check constraint "no_secret_bakery"');
    expect(line!.err).toMatchObject({ code: "23514", constraint: "no_secret_bakery" });
    const text = JSON.stringify(log.lines);
    expect(text).not.toContain("Secrète");
    expect(text).not.toContain(o.customer.externalReference.id);
    expect(text).not.toContain("Failing row");
  });

  it("masks the value PostgreSQL quotes in its message", async () => {
    const o = order();
    (o.customer as Record<string, unknown>).organizationCode = "SIRET-0042-SECRET";
    const res = await broken.call("POST", ORDER_URL, o);
    expect(res.status).toBe(500);
    const [line] = errorLines();
    expect(line!.err.message).toContain('invalid input syntax for type bigint: "…"');
    expect(line!.err).toMatchObject({ code: "22P02" });
    expect(JSON.stringify(log.lines)).not.toContain("SIRET-0042-SECRET");
  });

  it("keeps the values of a failed statement out of the log, whether the error is logged as an object or as text", async () => {
    const err = await broken.store
      .query(sql`SELECT ${"CUST-SECRET-99"}::bigint AS ref`)
      .then(() => undefined, (e: unknown) => e as Error);
    expect(err?.message).toContain("CUST-SECRET-99"); // what the default serializer would log
    broken.app.log.error({ err }, "query failed");
    const [line] = errorLines();
    expect(line!.err).toMatchObject({ type: "DatabaseError", code: "22P02" });
    expect(line!.err.message).toBe('invalid input syntax for type bigint: "…"');
    // The worker logs graphile-worker's errors as strings.
    broken.app.log.error({ err: String(err) }, "job failed");
    expect(errorLines()[1]!.err.message).toMatch(/invalid input syntax for type bigint: "…"/);
    const text = JSON.stringify(log.lines);
    expect(text).not.toContain("CUST-SECRET-99");
    expect(text).not.toContain("SELECT");
  });

  it("logs no request bytes for a request Node cannot parse", async () => {
    await broken.app.listen({ port: 0, host: "127.0.0.1" });
    const { port } = broken.app.server.address() as AddressInfo;
    const socket = connect(port, "127.0.0.1");
    await new Promise<void>((resolve) => {
      socket.on("close", () => resolve());
      socket.on("error", () => resolve());
      socket.write(`GET /ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TEST_TOKEN}\r\nX-Bad: a\u0001b\r\n\r\n`);
      socket.resume();
    });
    const line = log.lines.find((l) => l.msg === "request refused by the HTTP server");
    expect(line).toMatchObject({ code: "HPE_INVALID_HEADER_TOKEN", status: 400 });
    expect(line!.reqId).toMatch(FRESH_ID);
    expect(JSON.stringify(log.lines)).not.toContain(TEST_TOKEN);
  });
});
