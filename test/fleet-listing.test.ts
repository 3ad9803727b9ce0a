import { randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDb } from "../src/db/sql.js";
import { FLEET_AT_ONCE_MAX, FLEET_CHUNK_SIZE } from "../src/domain/licences.js";
import { selectLicences } from "../src/domain/licences.dal.js";
import { renderUserService } from "../src/orange/mapping.js";
import { createTestApp, type CallResult, type TestApp } from "./support/app.js";
import { parseExposition, valueOf } from "./support/prometheus.js";

/**
 * GET /userservice/v2/userService?productRefId=: the fleet listing is streamed a chunk at a time
 * from one read-only REPEATABLE READ transaction, with offset/limit paging. Its bytes are those of
 * the whole array rendered at once; a paused client holds the server back (backpressure), a
 * client that goes away ends the transaction, and an update made while a listing is being sent
 * does not show in it. Streaming tests go over a real socket (a Unix socket: its small buffer
 * makes backpressure show after a few hundred kB), the others through inject.
 */

const LIST = "/userservice/v2/userService";
const METRICS_TOKEN = "metrics-token-fleet-4d1e";
const PRO = "MBA-CAISSE-PRO";
/** Licences of the fleets streamed to a paused client: about 3 MB, far more than the socket holds. */
const LARGE = 10_000;
/** Licences of the fleet whose bytes are compared: three chunks, the last one partial. */
const MIXED = 2 * FLEET_CHUNK_SIZE + 537;

let t: TestApp;
let socketPath: string;
/** What the app logs at warn and above. */
const logged: { level: number; msg: string; err?: { message?: string } }[] = [];

beforeAll(async () => {
  const logger = pino({ level: "warn" }, { write: (line: string) => void logged.push(JSON.parse(line)) });
  // Pages above one chunk are streamed here (the program streams those above FLEET_AT_ONCE_MAX),
  // so that fleets of a few thousand licences exercise the streaming.
  t = await createTestApp({ logger, fleetListing: { atOnceMax: FLEET_CHUNK_SIZE } });
  socketPath = path.join(tmpdir(), `fleet-listing-${randomBytes(6).toString("hex")}.sock`);
  await t.app.listen({ path: socketPath });
});
afterAll(async () => t.close());

// ---------------------------------------------------------------------------------------------
// Helpers

function uniqueRef(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}

/** UC2 through the API: a new fleet of `quantity` licences, the first with an end user. */
async function orderFleet(quantity: number, app: TestApp = t): Promise<string> {
  const res = await app.call("POST", "/productordering/v2/productOrder", {
    externalReference: { type: "orange", id: uniqueRef("ORD") },
    category: "production",
    customer: { externalReference: { type: "orange", id: uniqueRef("CUST") }, tradingName: "Boulangerie Martin" },
    orderItem: [
      {
        id: "1",
        action: "add",
        productOffering: { externalReference: { type: "orange", id: PRO } },
        productRef: { userServiceQuantity: quantity },
        endUserConfiguration: [{ endUser: { givenName: "Paul", familyName: "Martin", email: "paul@example.com" } }],
      },
    ],
  });
  expect(res.status, res.text).toBe(201);
  expect(res.body.state, res.text).toBe("completed");
  return res.body.orderItem[0].productRef.id as string;
}

async function licenceIds(fleetId: string): Promise<string[]> {
  const rows = await t.db.$queryRaw<{ id: string }[]>`SELECT id FROM licence WHERE fleet_id = ${fleetId} ORDER BY id`;
  return rows.map((r) => r.id);
}

/**
 * What the listing answered before it was streamed: every licence read at once and the array
 * rendered with one JSON.stringify (the serializer's), as the items of that array.
 */
async function renderedAtOnce(fleetId: string): Promise<string[]> {
  const records = await selectLicences(t.store, await licenceIds(fleetId));
  return records.map((r) => JSON.stringify(renderUserService(r, t.catalogue)));
}

/**
 * A call through inject that keeps the answer as text: `t.call` fails any answer holding an empty
 * node, the root of an empty listing included.
 */
async function get(url: string): Promise<{ status: number; headers: Record<string, unknown>; text: string }> {
  const res = await t.app.inject({ method: "GET", url, headers: { authorization: "Bearer test-orange-token" } });
  return { status: res.statusCode, headers: res.headers, text: res.body };
}

const listUrl = (fleetId: string, query = "") => `${LIST}?productRefId=${encodeURIComponent(fleetId)}${query}`;

/** Sessions of this database, other than the asking one, inside a transaction. */
/** The clients' open transactions (not autovacuum's, which a large fleet just written may start). */
async function openTransactions(app: TestApp = t): Promise<number> {
  const [row] = await app.db.$queryRaw<{ n: number }[]>`
    SELECT count(*)::int AS n FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
      AND backend_type = 'client backend'`;
  return row!.n;
}

async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await delay(20);
  }
}

/** A GET over the server's Unix socket; resolves once the head arrived, the body not read yet. */
function open(url: string, socket = socketPath): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath: socket, path: url, headers: { authorization: "Bearer test-orange-token", accept: "application/json" } });
    req.on("response", (res) => resolve({ req, res }));
    req.on("error", reject);
  });
}

/** The rest of a body: its text once complete, or how it ended when cut short. */
function readRest(res: http.IncomingMessage): Promise<{ complete: boolean; text: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    res.on("data", (c: Buffer) => chunks.push(c));
    res.on("error", () => undefined);
    res.on("close", () => resolve({ complete: res.complete, text: Buffer.concat(chunks).toString("utf8") }));
  });
}

// ---------------------------------------------------------------------------------------------

describe("the bytes of a fleet listing", () => {
  let fleetId: string;
  let items: string[];

  beforeAll(async () => {
    fleetId = await orderFleet(MIXED);
    const ids = await licenceIds(fleetId);
    // Every optional node in turn, with text that JSON must escape, on licences of every chunk.
    await t.db.$executeRaw`
      UPDATE licence l SET
        end_user = CASE WHEN n % 3 = 0 THEN jsonb_build_object(
            'id', 'eu_' || n, 'givenName', 'Zoë "' || n || '"', 'familyName', E'O\\'Brien \\\\ \u2028',
            'email', 'user' || n || '@example.com', 'mobileNumber', jsonb_build_object('cc', '33', 'sn', '6' || n),
            'characteristic', jsonb_build_array(jsonb_build_object('name', 'team', 'value', 'é' || n)))
          ELSE l.end_user END,
        realizing_resource = CASE WHEN n % 4 = 1 THEN jsonb_build_object(
            'type', 'tablet', 'characteristic', jsonb_build_array(jsonb_build_object('name', 'serial', 'value', 'SN' || n)))
          ELSE NULL END,
        login = CASE WHEN n % 5 = 2 THEN jsonb_build_object('key', 'login', 'value', 'login' || n || '@example.com') ELSE NULL END,
        service_characteristics = CASE WHEN n % 7 = 3 THEN jsonb_build_array(
            jsonb_build_object('name', 'storageSize', 'value', n || 'GB'), jsonb_build_object('name', 'tier', 'value', '<&>'))
          ELSE NULL END
      FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM licence WHERE fleet_id = ${fleetId}) v
      WHERE l.id = v.id`;
    // States and lastUpdate through the API: one licence per chunk suspended, one deleted.
    const changes = [5, FLEET_CHUNK_SIZE + 5, 2 * FLEET_CHUNK_SIZE + 5]
      .map((i) => ({ id: ids[i]!, externalState: "suspended" }))
      .concat([{ id: ids[FLEET_CHUNK_SIZE - 1]!, externalState: "deleted" }]);
    const update = await t.call("POST", `${LIST}/update`, { userService: changes });
    expect(update.body.state, update.text).toBe("completed");
    items = await renderedAtOnce(fleetId);
    expect(items).toHaveLength(MIXED);
    expect(items.filter((i) => i.includes('"endUser"')).length).toBeGreaterThan(MIXED / 4);
    expect(items.filter((i) => i.includes('"login"')).length).toBeGreaterThan(MIXED / 6);
    expect(items.filter((i) => i.includes('"realizingResource"')).length).toBeGreaterThan(MIXED / 5);
    expect(items.filter((i) => i.includes('"serviceCharacteristic"')).length).toBeGreaterThan(MIXED / 8);
    expect(items.filter((i) => i.includes('"state":"inactive"'))).toHaveLength(3);
    expect(items.filter((i) => i.includes('"state":"terminated"'))).toHaveLength(1);
  });

  it("are those of the whole fleet rendered at once, with the fleet's counts in the headers", async () => {
    const res = await t.call("GET", listUrl(fleetId));
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json; charset=utf-8");
    expect(res.headers["x-total-count"]).toBe(String(MIXED));
    expect(res.headers["x-result-count"]).toBe(String(MIXED));
    expect(res.text === `[${items.join(",")}]`, "streamed bytes differ from the answer rendered at once").toBe(true);
    expect(res.body).toHaveLength(MIXED);
  });

  it("are the same over a real socket", async () => {
    const { res } = await open(listUrl(fleetId));
    expect(res.statusCode).toBe(200);
    expect(res.headers["transfer-encoding"]).toBe("chunked");
    const body = await readRest(res);
    expect(body.complete).toBe(true);
    expect(body.text === `[${items.join(",")}]`).toBe(true);
  });

  it("of a fleet of one chunk are today's answer, in one piece with its Content-Length", async () => {
    const small = await orderFleet(FLEET_CHUNK_SIZE);
    const expected = `[${(await renderedAtOnce(small)).join(",")}]`;
    const { res } = await open(listUrl(small));
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json; charset=utf-8");
    expect(res.headers["transfer-encoding"]).toBeUndefined();
    expect(res.headers["content-length"]).toBe(String(Buffer.byteLength(expected)));
    expect(res.headers["x-total-count"]).toBe(String(FLEET_CHUNK_SIZE));
    const body = await readRest(res);
    expect(body.complete).toBe(true);
    expect(body.text === expected, "the answer differs from the array rendered at once").toBe(true);
  });

  it("of a fleet of FLEET_AT_ONCE_MAX licences are today's answer in one piece, with the program's limits", async () => {
    const fleet = await orderFleet(FLEET_AT_ONCE_MAX);
    const expected = `[${(await renderedAtOnce(fleet)).join(",")}]`;
    const own = await createTestApp({ database: { url: t.url, db: t.store, prisma: t.db, drop: async () => undefined } });
    const ownSocket = path.join(tmpdir(), `fleet-listing-${randomBytes(6).toString("hex")}.sock`);
    await own.app.listen({ path: ownSocket });
    try {
      const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const req = http.get({ socketPath: ownSocket, path: listUrl(fleet), headers: { authorization: "Bearer test-orange-token" } });
        req.on("response", resolve);
        req.on("error", reject);
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers["transfer-encoding"]).toBeUndefined();
      expect(res.headers["content-length"]).toBe(String(Buffer.byteLength(expected)));
      expect(res.headers["x-total-count"]).toBe(String(FLEET_AT_ONCE_MAX));
      expect(res.headers["x-result-count"]).toBe(String(FLEET_AT_ONCE_MAX));
      const body = await readRest(res);
      expect(body.text === expected, "the answer differs from the array rendered at once").toBe(true);
      // One more licence: streamed.
      const more = await t.call("POST", "/productordering/v2/productOrder", {
        externalReference: { type: "orange", id: uniqueRef("ORD") },
        orderItem: [
          { id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: PRO } }, productRef: { id: fleet, userServiceQuantity: 1 } },
        ],
      });
      expect(more.body.state, more.text).toBe("completed");
      const streamed = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const req = http.get({ socketPath: ownSocket, path: listUrl(fleet), headers: { authorization: "Bearer test-orange-token" } });
        req.on("response", resolve);
        req.on("error", reject);
      });
      expect(streamed.headers["transfer-encoding"]).toBe("chunked");
      expect(streamed.headers["x-total-count"]).toBe(String(FLEET_AT_ONCE_MAX + 1));
      const all = await readRest(streamed);
      expect(all.text === `[${(await renderedAtOnce(fleet)).join(",")}]`).toBe(true);
    } finally {
      await own.close();
    }
  });

  it("of a page are the slice of the whole array, across chunk boundaries", async () => {
    const pages: [number, number | undefined][] = [
      [0, 1],
      [FLEET_CHUNK_SIZE - 2, 5],
      [FLEET_CHUNK_SIZE, FLEET_CHUNK_SIZE],
      [17, 2 * FLEET_CHUNK_SIZE + 100],
      [MIXED - 3, 10],
      [1234, undefined],
      [0, MIXED],
    ];
    for (const [offset, limit] of pages) {
      const query = `&offset=${offset}${limit === undefined ? "" : `&limit=${limit}`}`;
      const res = await t.call("GET", listUrl(fleetId, query));
      const slice = items.slice(offset, limit === undefined ? undefined : offset + limit);
      expect(res.status, query).toBe(200);
      expect(res.headers["x-total-count"], query).toBe(String(MIXED));
      expect(res.headers["x-result-count"], query).toBe(String(slice.length));
      expect(res.text === `[${slice.join(",")}]`, `bytes of the page ${query}`).toBe(true);
    }
  });

  it("of the first licences alone (limit without offset)", async () => {
    const res = await t.call("GET", listUrl(fleetId, "&limit=3"));
    expect(res.text).toBe(`[${items.slice(0, 3).join(",")}]`);
    expect(res.headers["x-result-count"]).toBe("3");
  });

  it("of a page past the end are an empty array, with the fleet's count", async () => {
    const res = await get(listUrl(fleetId, `&offset=${MIXED}&limit=10`));
    expect(res.status).toBe(200);
    expect(res.text).toBe("[]");
    expect(res.headers["x-total-count"]).toBe(String(MIXED));
    expect(res.headers["x-result-count"]).toBe("0");
  });
});

describe("paging parameters", () => {
  let fleetId: string;
  beforeAll(async () => {
    fleetId = await orderFleet(3);
  });

  function expectQueryError(res: CallResult, field: string, rule: string) {
    expect(res.status, res.text).toBe(400);
    expect(res.body.code).toBe(28);
    expect(res.body.message).toBe("Invalid query-string parameter");
    expect(res.body.description).toContain(field);
    expect(res.body.description).toContain(rule);
  }

  it.each([
    ["offset=-1", "offset", "must be an integer >= 0"],
    ["offset=1.5", "offset", "must be an integer >= 0"],
    ["offset=abc", "offset", "must be an integer >= 0"],
    ["offset=", "offset", "must be an integer >= 0"],
    ["offset=1e3", "offset", "must be an integer >= 0"],
    ["offset=99999999999", "offset", "must be <= 2147483647"],
    ["limit=0", "limit", "must be >= 1"],
    ["limit=-5", "limit", "must be an integer >= 1"],
    ["limit=2.0", "limit", "must be an integer >= 1"],
    ["limit=10001", "limit", "must be <= 10000"],
  ])("rejects %s naming the field and the rule", async (query, field, rule) => {
    expectQueryError(await t.call("GET", listUrl(fleetId, `&${query}`)), field, rule);
  });

  it("accepts the largest limit", async () => {
    const res = await t.call("GET", listUrl(fleetId, "&limit=10000"));
    expect(res.status).toBe(200);
    expect(res.body).toHaveLength(3);
  });

  it("rejects offset and limit with id, which they do not page", async () => {
    const [id] = await licenceIds(fleetId);
    const res = await t.call("GET", `${LIST}?id=${id}&limit=1`);
    expectQueryError(res, "offset and limit", "productRefId");
  });

  it("answers 404 for an unknown fleet, paged or not", async () => {
    for (const query of ["", "&offset=0&limit=10"]) {
      const res = await t.call("GET", listUrl("fl_unknown", query));
      expect(res.status).toBe(404);
      expect(res.body.code).toBe(60);
      expect(res.headers["x-total-count"]).toBeUndefined();
    }
  });

  it("answers an empty array for a fleet without licences", async () => {
    const empty = await orderFleet(1);
    await t.db.$executeRaw`DELETE FROM licence WHERE fleet_id = ${empty}`;
    const res = await get(listUrl(empty));
    expect(res.status).toBe(200);
    expect(res.text).toBe("[]");
    expect(res.headers["x-total-count"]).toBe("0");
    expect(res.headers["x-result-count"]).toBe("0");
  });
});

describe("streaming to a real client", () => {
  let fleetId: string;
  beforeAll(async () => {
    fleetId = await orderFleet(LARGE);
  });

  it("stops reading the fleet while the client does not read, and ends its transaction when the client goes away", async () => {
    // More aborted listings than the pool has connections: a leaked one would starve the last listing.
    for (let i = 0; i < 11; i++) {
      const { req, res } = await open(listUrl(fleetId));
      expect(res.statusCode).toBe(200);
      expect(res.headers["x-total-count"]).toBe(String(LARGE));
      // The client reads nothing: the server is held back with most of the fleet unread, so
      // its transaction stays open.
      await delay(i === 0 ? 500 : 50);
      expect(await openTransactions()).toBe(1);
      req.destroy();
      await eventually("the listing's transaction ended", async () => (await openTransactions()) === 0);
    }
    const res = await t.call("GET", listUrl(fleetId));
    expect(res.status).toBe(200);
    expect(res.body).toHaveLength(LARGE);
  });

  it("answers as before once a paused client reads again", async () => {
    const expected = `[${(await renderedAtOnce(fleetId)).join(",")}]`;
    const { res } = await open(listUrl(fleetId));
    await delay(300);
    expect(await openTransactions()).toBe(1);
    const body = await readRest(res);
    expect(body.complete).toBe(true);
    expect(body.text.length).toBe(expected.length);
    expect(body.text === expected).toBe(true);
    await eventually("the listing's transaction ended", async () => (await openTransactions()) === 0);
  });

  it("shows the fleet as it was when the listing started, whatever changes while it is sent", async () => {
    const ids = await licenceIds(fleetId);
    const last = ids[ids.length - 1]!;
    const { res } = await open(listUrl(fleetId));
    await delay(200);
    expect(await openTransactions()).toBe(1);
    // While the client is paused (most of the fleet not read yet): the first and the last licence
    // suspended in one update, and licences added.
    const update = await t.call("POST", `${LIST}/update`, {
      userService: [
        { id: ids[0]!, externalState: "suspended" },
        { id: last, externalState: "suspended" },
      ],
    });
    expect(update.body.state, update.text).toBe("completed");
    const added = await t.call("POST", "/productordering/v2/productOrder", {
      externalReference: { type: "orange", id: uniqueRef("ORD") },
      orderItem: [
        { id: "1", action: "add", productOffering: { externalReference: { type: "orange", id: PRO } }, productRef: { id: fleetId, userServiceQuantity: 5 } },
      ],
    });
    expect(added.body.state, added.text).toBe("completed");

    const body = await readRest(res);
    expect(body.complete).toBe(true);
    const list = JSON.parse(body.text) as { id: string; state: string }[];
    expect(list).toHaveLength(LARGE);
    expect(list.map((l) => l.id)).toEqual(ids);
    expect(list.filter((l) => l.state !== "active")).toEqual([]);

    const after = await t.call("GET", listUrl(fleetId));
    expect(after.headers["x-total-count"]).toBe(String(LARGE + 5));
    expect(after.body[0].state).toBe("inactive");
    expect(after.body.find((l: { id: string }) => l.id === last).state).toBe("inactive");
  });
});

describe("streamed listings at once (FLEET_STREAMS_MAX, two by default)", () => {
  let app: TestApp;
  let socket: string;
  let fleetId: string;
  beforeAll(async () => {
    // The default: two at once (eight 100,000-licence listings peaked 25–30 MB lower than with four).
    app = await createTestApp({ env: { METRICS_TOKEN }, fleetListing: { atOnceMax: FLEET_CHUNK_SIZE } });
    socket = path.join(tmpdir(), `fleet-streams-${randomBytes(6).toString("hex")}.sock`);
    await app.app.listen({ path: socket });
    fleetId = await orderFleet(LARGE, app);
  });
  afterAll(async () => app?.close());

  /** partner_fleet_listings_streamed, as GET /metrics tells it. */
  async function streamed(): Promise<{ running: number | undefined; waiting: number | undefined }> {
    const res = await app.call("GET", "/metrics", undefined, { authorization: `Bearer ${METRICS_TOKEN}` });
    expect(res.status, res.text).toBe(200);
    const samples = parseExposition(res.text);
    return {
      running: valueOf(samples, "partner_fleet_listings_streamed", { state: "running" }),
      waiting: valueOf(samples, "partner_fleet_listings_streamed", { state: "waiting" }),
    };
  }

  it("are two at most: a third waits, before its snapshot and its first byte, until one of them ends", async () => {
    expect(await streamed()).toEqual({ running: 0, waiting: 0 });
    // Two paused clients: each listing holds its transaction (the answer is far larger than the socket).
    const first = await open(listUrl(fleetId), socket);
    const second = await open(listUrl(fleetId), socket);
    await eventually("both listings hold their transactions", async () => (await openTransactions(app)) === 2);
    let thirdHead = false;
    const third = open(listUrl(fleetId), socket).then((o) => {
      thirdHead = true;
      return o;
    });
    await delay(300);
    expect(thirdHead).toBe(false);
    expect(await openTransactions(app)).toBe(2);
    // What an operator sees meanwhile.
    expect(await streamed()).toEqual({ running: 2, waiting: 1 });
    // The first one read to its end: the third takes its turn.
    const firstBody = await readRest(first.res);
    const { res } = await third;
    expect(res.statusCode).toBe(200);
    expect(res.headers["x-total-count"]).toBe(String(LARGE));
    const [secondBody, thirdBody] = await Promise.all([readRest(second.res), readRest(res)]);
    for (const body of [firstBody, secondBody, thirdBody]) {
      expect(body.complete).toBe(true);
      expect((JSON.parse(body.text) as unknown[]).length).toBe(LARGE);
    }
    await eventually("the listings' transactions ended", async () => (await openTransactions(app)) === 0);
    await eventually("their turns given back", async () => (await streamed()).running === 0);
    expect(await streamed()).toEqual({ running: 0, waiting: 0 });
  });

  it("a waiting listing whose client went away, and one whose client stops early, leave the turns to the others", async () => {
    const first = await open(listUrl(fleetId), socket);
    const second = await open(listUrl(fleetId), socket);
    // A third client gives up while it waits; a fourth waits behind it.
    const gone = http.get({ socketPath: socket, path: listUrl(fleetId), headers: { authorization: "Bearer test-orange-token" } });
    gone.on("error", () => undefined);
    const fourth = open(listUrl(fleetId), socket);
    await delay(200);
    gone.destroy();
    first.req.destroy();
    second.req.destroy();
    const { res } = await fourth;
    const body = await readRest(res);
    expect(body.complete).toBe(true);
    expect((JSON.parse(body.text) as unknown[]).length).toBe(LARGE);
    await eventually("every transaction ended", async () => (await openTransactions(app)) === 0);
    // Both turns are free again: two more are streamed at once.
    const again = [await open(listUrl(fleetId), socket), await open(listUrl(fleetId), socket)];
    await eventually("two listings at once again", async () => (await openTransactions(app)) === 2);
    for (const o of again) o.req.destroy();
    await eventually("their transactions ended", async () => (await openTransactions(app)) === 0);
    await eventually("no listing left under way", async () => (await streamed()).running === 0);
    expect(await streamed()).toEqual({ running: 0, waiting: 0 });
  });
});

describe("failures", () => {
  /** Gives licence number `index` (creation order) of the fleet a login the contract does not allow. */
  async function breakLicence(fleetId: string, index: number): Promise<string> {
    const id = (await licenceIds(fleetId))[index]!;
    await t.db.$executeRaw`UPDATE licence SET login = '{"key": "email", "value": "x@example.com"}'::jsonb WHERE id = ${id}`;
    return id;
  }

  it("checks every licence against the schema (RESPONSE_VALIDATION): 500 when the first chunk breaks it", async () => {
    const fleetId = await orderFleet(FLEET_CHUNK_SIZE + 10);
    await breakLicence(fleetId, 7);
    const res = await t.call("GET", listUrl(fleetId));
    expect(res.status).toBe(500);
    expect(res.body).toEqual({
      code: 1,
      message: "Internal error",
      description: "the server built an answer that breaks the contract; it has been logged",
    });
    expect(res.headers["x-total-count"]).toBeUndefined();
    await eventually("the listing's transaction ended", async () => (await openTransactions()) === 0);
  });

  it("cuts the answer short when a later chunk breaks the schema, and ends its transaction", async () => {
    const fleetId = await orderFleet(FLEET_CHUNK_SIZE + 10);
    const broken = await breakLicence(fleetId, FLEET_CHUNK_SIZE + 3);
    const { res } = await open(listUrl(fleetId));
    expect(res.statusCode).toBe(200);
    const body = await readRest(res);
    expect(body.complete).toBe(false);
    expect(() => JSON.parse(body.text)).toThrow();
    expect(body.text).not.toContain(broken);
    await eventually("the listing's transaction ended", async () => (await openTransactions()) === 0);
  });

  it("answers 503 with Orange's body when the database connection drops before the first byte", async () => {
    const fleetId = await orderFleet(3);
    // The listing's statement waits behind this lock; its connection is then terminated.
    const locker = new pg.Client({ connectionString: t.url });
    await locker.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE licence IN ACCESS EXCLUSIVE MODE");
      const pending = t.call("GET", listUrl(fleetId));
      const waiting = await waitingForLock();
      await locker.query("SELECT pg_terminate_backend($1)", [waiting]);
      const res = await pending;
      expect(res.status).toBe(503);
      expect(res.body).toEqual({ code: 5, message: "Service unavailable", description: "the licence store is unavailable; retry later" });
      expect(res.headers["retry-after"]).toBe("5");
      expect(res.headers["x-total-count"]).toBeUndefined();
    } finally {
      await locker.query("ROLLBACK");
      await locker.end();
    }
    const again = await t.call("GET", listUrl(fleetId));
    expect(again.status).toBe(200);
    expect(again.body).toHaveLength(3);
  });

  it("cuts the answer short, logs it and stays up when the connection drops after the first byte", async () => {
    const fleetId = await orderFleet(LARGE);
    logged.length = 0;
    const { res } = await open(listUrl(fleetId));
    expect(res.statusCode).toBe(200);
    expect(res.headers["x-total-count"]).toBe(String(LARGE));
    // The client reads nothing: the listing's transaction waits, idle, with most of the fleet unread.
    await delay(300);
    const [listing] = await t.db.$queryRaw<{ pid: number }[]>`
      SELECT pid FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
      AND backend_type = 'client backend'`;
    expect(listing).toBeDefined();
    await t.db.$queryRaw`SELECT pg_terminate_backend(${listing!.pid}::int)`;
    const body = await readRest(res);
    expect(body.complete).toBe(false);
    expect(() => JSON.parse(body.text)).toThrow();
    await eventually("the failure was logged", async () => logged.some((l) => l.level >= 50));
    expect(logged.filter((l) => l.level >= 50).map((l) => l.msg)).toContain("fleet listing failed after its answer started");
    // The server answers the same listing in full afterwards.
    const again = await t.call("GET", listUrl(fleetId));
    expect(again.status).toBe(200);
    expect(again.body).toHaveLength(LARGE);
    await eventually("the listings' transactions ended", async () => (await openTransactions()) === 0);
  });

  it("ends the transaction of a client that stops reading after DATABASE_TRANSACTION_TIMEOUT_MS and cuts its answer", async () => {
    const fleetId = await orderFleet(LARGE);
    // The bound of the program's transactions is its Db's (DATABASE_TRANSACTION_TIMEOUT_MS in main.ts).
    const db = createDb(t.url, { poolMax: 2, transactionTimeoutMs: 1000 });
    const short = await createTestApp({
      database: { url: t.url, db, prisma: t.db, drop: () => db.close() },
      fleetListing: { atOnceMax: FLEET_CHUNK_SIZE },
    });
    const shortSocket = path.join(tmpdir(), `fleet-listing-${randomBytes(6).toString("hex")}.sock`);
    await short.app.listen({ path: shortSocket });
    try {
      const { res } = await new Promise<{ res: http.IncomingMessage }>((resolve, reject) => {
        const req = http.get({
          socketPath: shortSocket,
          path: listUrl(fleetId),
          headers: { authorization: "Bearer test-orange-token" },
        });
        req.on("response", (r) => resolve({ res: r }));
        req.on("error", reject);
      });
      expect(res.statusCode).toBe(200);
      expect(await openTransactions()).toBe(1);
      // The client still holds its connection and reads nothing; the database connection is given back.
      await eventually("the transaction timed out", async () => (await openTransactions()) === 0, 5_000);
      const body = await readRest(res);
      expect(body.complete).toBe(false);
    } finally {
      await short.close();
    }
  });
});

/** The pid of the one session waiting for a lock (not asked through the locker: a transaction sees pg_stat_activity as at its first look). */
async function waitingForLock(): Promise<number> {
  let waiting: number | undefined;
  await eventually("the listing waits for the lock", async () => {
    const rows = await t.db.$queryRaw<{ pid: number }[]>`
      SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`;
    waiting = rows[0]?.pid;
    return waiting !== undefined;
  });
  return waiting!;
}
