import { existsSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import * as adminSchemas from "../src/admin/schemas.js";
import * as orangeSchemas from "../src/orange/schemas.js";
import { createDb } from "../src/db/sql.js";
import { startMockGateway, type MockGateway, type ReceivedEvent } from "../src/simulator/gateway.js";
import { freePort } from "../src/simulator/self-host.js";
import { readCommittedOpenApi, schemaChecker } from "./support/openapi.js";
import { createTestApp, findEmptyNodes, type CallResult, type TestApp } from "./support/app.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import {
  anchors,
  examples,
  jsonBlockCount,
  links,
  markdownFiles,
  read,
  repositoryFiles,
  ROOT,
  type Example,
} from "./support/markdown.js";
import { startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * The documentation stays true and self-contained: every link of the repository's Markdown
 * resolves inside the repository, nothing points at the folder the contract was first written
 * in, every JSON example of docs/ parses with the wire schema it names, and the story the
 * examples tell is replayed against a real server, whose answers must equal them up to partner
 * ids and the dates the server sets.
 */

const DOCS = markdownFiles().filter((f) => f.startsWith("docs/"));
const ALL_EXAMPLES: Example[] = DOCS.flatMap(examples);

/** The folder the contract and the design notes were first written in, outside the repository. */
const OUTSIDE = /\.\.\/shared|shared\/(orange-api|design)/;

describe("links", () => {
  it("has documentation under docs/", () => {
    expect(DOCS).toContain("docs/orange-contract.md");
    expect(markdownFiles()).toContain("README.md");
  });

  it("resolves every relative link of the repository's Markdown to a file of the repository, and every anchor to a heading", () => {
    const broken: string[] = [];
    let checked = 0;
    for (const file of markdownFiles()) {
      for (const target of links(read(file))) {
        checked++;
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) {
          // The only absolute links allowed are to this server running locally.
          if (!/^https?:\/\/(localhost|127\.0\.0\.1)(:\d+)?(\/|$)/.test(target)) broken.push(`${file}: ${target} leaves the repository`);
          continue;
        }
        const [path = "", anchor] = target.split("#");
        const absolute = path === "" ? join(ROOT, file) : resolve(ROOT, dirname(file), decodeURIComponent(path));
        if (!absolute.startsWith(ROOT) || absolute === ROOT.replace(/\/$/, "")) {
          broken.push(`${file}: ${target} leaves the repository`);
        } else if (!existsSync(absolute)) {
          broken.push(`${file}: ${target} does not exist`);
        } else if (anchor !== undefined && absolute.endsWith(".md") && statSync(absolute).isFile()) {
          const headings = anchors(read(absolute.slice(ROOT.length)));
          if (!headings.has(anchor)) broken.push(`${file}: ${target}: no heading with anchor #${anchor}`);
        }
      }
    }
    expect(broken).toEqual([]);
    expect(checked).toBeGreaterThan(10);
  });

  it("mentions the folder outside the repository nowhere: README, docs, code, tests, configuration", () => {
    const text = repositoryFiles("", (p) => p !== "test/docs.test.ts" && /\.(md|ts|mts|js|mjs|json|ya?ml|prisma|sql|toml)$|(^|\/)(Dockerfile|\.env\.example)$/.test(p));
    expect(text).toContain("prisma.config.ts");
    expect(text).toContain("src/orange/schemas.ts");
    const found = text.filter((p) => p !== "package-lock.json" && OUTSIDE.test(read(p)));
    expect(found).toEqual([]);
  });
});

// -------------------------------------------------------------------------------------------------
// Examples and schemas

const ISO_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

function schemaOf(name: string): z.ZodType {
  const key = `${name}Schema`;
  const schema = (orangeSchemas as Record<string, unknown>)[key] ?? (adminSchemas as Record<string, unknown>)[key];
  if (!(schema instanceof z.ZodType)) throw new Error(`no ${key} in src/orange/schemas.ts or src/admin/schemas.ts`);
  return schema;
}

const EVENT_TYPES: Record<string, string[]> = {
  ProductOrderResponse: ["completedStateNotification", "failedStateNotification"],
  UserServiceUpdateResponse: ["updateNotification"],
  UserServiceChangeNotification: ["updateNotification"],
};

function eventSchema(resource: string): z.ZodType {
  const types = EVENT_TYPES[resource];
  if (!types) throw new Error(`${resource} is not the resource of any event`);
  return z.strictObject({
    id: z.string().regex(/^ev_/),
    type: z.enum(types as [string, ...string[]]),
    time: z.string().regex(ISO_MS),
    resource: schemaOf(resource),
  });
}

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join(".") || "$"}: ${i.message}`).join("; ");
}

describe("worked examples", () => {
  it("announces every JSON block of docs/ as a named example with its schema, each name once", () => {
    for (const file of DOCS) {
      expect(examples(file).length, `${file}: a \`\`\`json block without <!-- example NAME (Schema) --> before it`).toBe(
        jsonBlockCount(read(file)),
      );
    }
    const names = ALL_EXAMPLES.map((e) => e.name);
    expect(names.length).toBeGreaterThanOrEqual(30);
    expect(names.filter((n, i) => names.indexOf(n) !== i)).toEqual([]);
  });

  it("parses every example with the wire schema it names, without empty optional nodes", () => {
    const failures: string[] = [];
    for (const ex of ALL_EXAMPLES) {
      const result = (ex.event ? eventSchema(ex.schema) : schemaOf(ex.schema)).safeParse(ex.value);
      if (!result.success) failures.push(`${ex.file} ${ex.name}: ${issues(result.error)}`);
      const empty = findEmptyNodes(ex.value);
      if (empty.length > 0) failures.push(`${ex.file} ${ex.name}: empty nodes at ${empty.join(", ")}`);
    }
    expect(failures).toEqual([]);
  });

  it("types each event example after its resource's state", () => {
    for (const ex of ALL_EXAMPLES.filter((e) => e.event && e.schema === "ProductOrderResponse")) {
      const { type, resource } = ex.value as { type: string; resource: { state: string } };
      expect(type, ex.name).toBe(resource.state === "completed" ? "completedStateNotification" : "failedStateNotification");
    }
  });

  it("would catch an example that breaks its schema", () => {
    const uc2 = structuredClone(example("uc2-request")) as { orderItem: { productRef: { userServiceQuantity: unknown } }[] };
    uc2.orderItem[0]!.productRef.userServiceQuantity = "3";
    expect(schemaOf("ProductOrderRequest").safeParse(uc2).success).toBe(false);
    expect(eventSchema("ProductOrderResponse").safeParse({ ...(example("uc4-completed-event") as object), extra: 1 }).success).toBe(false);
  });
});

function example(name: string): unknown {
  const found = ALL_EXAMPLES.find((e) => e.name === name);
  if (!found) throw new Error(`no example ${name} in docs/`);
  return structuredClone(found.value);
}

// -------------------------------------------------------------------------------------------------
// The story of the examples, replayed

const PARTNER_ID = /^(po|cu|ct|fl|us|eu|ev|upd)_[0-9a-z]{20}$/;
const PARTNER_ID_IN_TEXT = /\b(?:po|cu|ct|fl|us|eu|ev|upd)_[0-9a-z]{20}\b/g;
const PARTNER_NAME = "Caisse Express SAS";
const ADMIN_TOKEN = "docs-admin-token-3f9a";
const ORDER = "/productordering/v2/productOrder";
const LICENCES = "/userservice/v2/userService";
const UPDATE = "/userservice/v2/userService/update";

/**
 * Partner ids of the documentation ↔ ids the live server gave: one to one over the whole story,
 * so that the fleet of the UC2 example is the fleet the later examples name.
 */
class IdMap {
  private readonly live = new Map<string, string>();
  private readonly doc = new Map<string, string>();

  bind(docId: string, liveId: string, where: string): string | undefined {
    if (docId.slice(0, 3) !== liveId.slice(0, 3)) return `${where}: ${docId} answered as ${liveId}`;
    const known = this.live.get(docId);
    if (known !== undefined && known !== liveId) return `${where}: ${docId} is ${known} elsewhere, here ${liveId}`;
    const knownDoc = this.doc.get(liveId);
    if (knownDoc !== undefined && knownDoc !== docId) return `${where}: ${liveId} is ${knownDoc} elsewhere, here ${docId}`;
    this.live.set(docId, liveId);
    this.doc.set(liveId, docId);
    return undefined;
  }

  toLive(docId: string): string {
    const id = this.live.get(docId);
    if (id === undefined) throw new Error(`the example names ${docId}, which no earlier answer of the story produced`);
    return id;
  }
}

/** An example request made sendable: its partner ids replaced by the live ones. */
function translate(value: unknown, ids: IdMap): unknown {
  if (typeof value === "string") return value.replace(PARTNER_ID_IN_TEXT, (id) => ids.toLive(id));
  if (Array.isArray(value)) return value.map((v) => translate(v, ids));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, translate(v, ids)]));
  }
  return value;
}

function stringsOf(value: unknown, out = new Set<string>()): Set<string> {
  if (typeof value === "string") out.add(value);
  else if (Array.isArray(value)) value.forEach((v) => stringsOf(v, out));
  else if (value !== null && typeof value === "object") Object.values(value).forEach((v) => stringsOf(v, out));
  return out;
}

/**
 * The differences between an example and a live answer. Equal means: same keys, same values,
 * except partner ids (bound one to one through `ids`) and dates the server sets (any ISO 8601
 * UTC date with milliseconds; a date of the request must come back as it was).
 */
function differences(docValue: unknown, liveValue: unknown, ids: IdMap, request: unknown, path = "$", out: string[] = []): string[] {
  const echoed = stringsOf(request);
  const visit = (d: unknown, l: unknown, p: string) => {
    if (typeof d === "string") {
      if (typeof l !== "string") return void out.push(`${p}: ${JSON.stringify(d)} answered as ${JSON.stringify(l)}`);
      if (PARTNER_ID.test(d)) {
        const problem = ids.bind(d, l, p);
        if (problem) out.push(problem);
        return;
      }
      if (ISO_MS.test(d) && !echoed.has(d)) {
        if (!ISO_MS.test(l)) out.push(`${p}: a date expected, got ${JSON.stringify(l)}`);
        return;
      }
      const docIds = d.match(PARTNER_ID_IN_TEXT) ?? [];
      const liveIds = l.match(PARTNER_ID_IN_TEXT) ?? [];
      if (d.replace(PARTNER_ID_IN_TEXT, "<id>") !== l.replace(PARTNER_ID_IN_TEXT, "<id>") || docIds.length !== liveIds.length) {
        return void out.push(`${p}: ${JSON.stringify(d)} answered as ${JSON.stringify(l)}`);
      }
      docIds.forEach((id, i) => {
        const problem = ids.bind(id, liveIds[i]!, p);
        if (problem) out.push(problem);
      });
      return;
    }
    if (Array.isArray(d)) {
      if (!Array.isArray(l) || l.length !== d.length) {
        return void out.push(`${p}: ${d.length} items expected, got ${Array.isArray(l) ? l.length : JSON.stringify(l)}`);
      }
      d.forEach((x, i) => visit(x, l[i], `${p}[${i}]`));
      return;
    }
    if (d !== null && typeof d === "object") {
      if (l === null || typeof l !== "object" || Array.isArray(l)) return void out.push(`${p}: an object expected, got ${JSON.stringify(l)}`);
      const dk = Object.keys(d).sort();
      const lk = Object.keys(l).sort();
      if (dk.join() !== lk.join()) out.push(`${p}: keys ${dk.join(", ")} expected, got ${lk.join(", ")}`);
      for (const k of dk) if (k in l) visit((d as Record<string, unknown>)[k], (l as Record<string, unknown>)[k], `${p}.${k}`);
      return;
    }
    if (d !== l) out.push(`${p}: ${JSON.stringify(d)} answered as ${JSON.stringify(l)}`);
  };
  visit(docValue, liveValue, path);
  return out;
}

describe("the story of the examples, replayed against a real server", () => {
  let database: TestDatabase;
  let sync: TestApp;
  let async: TestApp;
  let gw: MockGateway;
  let worker: WorkerHarness;
  const ids = new IdMap();
  /** The story's database, for one more app (closing the app leaves it open). */
  const shared = () => ({ url: database.url, db: database.db, prisma: database.prisma, drop: async () => {} });

  beforeAll(async () => {
    database = await createTestDatabase();
    // Both apps on one database: the asynchronous half of the story continues the synchronous one.
    const env = { PARTNER_NAME, ADMIN_TOKEN };
    sync = await createTestApp({ database: shared(), env });
    async = await createTestApp({ database: shared(), env: { ...env, ORDERING_MODE: "async", UPDATE_MODE: "async" } });
    gw = await startMockGateway();
    worker = await startWorker(gw, database.url, {
      tasks: async.services.requestTasks,
      sweepRequests: async.services.sweepRequests,
    });
  });
  afterAll(async () => {
    await worker?.stop();
    await gw?.close();
    await sync?.close();
    await async?.close();
    await database?.drop();
  });

  /** Sends an example request (or a body built here) and checks the answer against an example. */
  async function step(
    app: TestApp,
    method: "GET" | "POST",
    url: string,
    request: string | { body: unknown } | undefined,
    status: number,
    answer: string,
    headers?: Record<string, string | null>,
  ): Promise<CallResult> {
    const docRequest = typeof request === "string" ? example(request) : request?.body;
    const res = await app.call(method, url, docRequest === undefined ? undefined : translate(docRequest, ids), headers);
    expect(res.status, `${method} ${url} (${answer}): ${res.text}`).toBe(status);
    expect(differences(example(answer), res.body, ids, docRequest), `${answer} differs from the live answer:\n${JSON.stringify(res.body, null, 2)}\n`).toEqual([]);
    return res;
  }

  async function event(pick: (e: ReceivedEvent) => boolean, name: string): Promise<void> {
    const received = await waitFor(`the event of ${name} at the gateway`, () => gw.delivered().find(pick));
    expect(received.status).toBe(201);
    expect(differences(example(name), received.body, ids, undefined), `${name} differs from the event sent:\n${JSON.stringify(received.body, null, 2)}\n`).toEqual([]);
  }

  const docId = (name: string, pick: (value: never) => string) => ids.toLive(pick(example(name) as never));

  it("answers UC1, UC2, the fleet listing, UC3, the updates, the consultations and a failed order as documented", async () => {
    await step(sync, "POST", ORDER, "uc1-request", 201, "uc1-response");
    await step(sync, "POST", ORDER, "uc2-request", 201, "uc2-response");
    const fleet = docId("uc2-response", (o: { orderItem: { productRef: { id: string } }[] }) => o.orderItem[0]!.productRef.id);
    await step(sync, "GET", `${LICENCES}?productRefId=${fleet}`, undefined, 200, "fleet-licences");
    await step(sync, "POST", ORDER, "uc3-request", 201, "uc3-response");
    await step(sync, "POST", UPDATE, "suspend-request", 200, "suspend-response");
    await step(sync, "POST", UPDATE, "delete-request", 200, "delete-response");
    await step(sync, "POST", UPDATE, "swap-request", 200, "swap-response");
    await step(sync, "POST", UPDATE, "failed-update-request", 200, "failed-update-response");
    await step(sync, "POST", UPDATE, "reactivate-request", 200, "reactivate-response");
    const one = docId("licence", (l: { id: string }) => l.id);
    await step(sync, "GET", `${LICENCES}/${one}`, undefined, 200, "licence");
    const some = (example("licences-by-ids") as { id: string }[]).map((l) => ids.toLive(l.id));
    await step(sync, "GET", `${LICENCES}?id=${some.join(",")}`, undefined, 200, "licences-by-ids");
    await step(sync, "POST", ORDER, "failed-order-request", 201, "failed-order-response");

    // A retry of UC3 is answered from the stored result.
    const replay = await step(sync, "POST", ORDER, "uc3-request", 201, "uc3-response");
    expect(replay.headers["idempotent-replayed"]).toBe("true");
    expect((await sync.call("GET", `${LICENCES}?productRefId=${fleet}`)).body).toHaveLength(5);
  });

  it("rejects as documented in section 7", async () => {
    const fleet = docId("uc2-response", (o: { orderItem: { productRef: { id: string } }[] }) => o.orderItem[0]!.productRef.id);
    const negative = example("uc2-request") as { externalReference: { id: string }; orderItem: { productRef: { userServiceQuantity: number } }[] };
    negative.externalReference.id = "ORD-2026-000190";
    negative.orderItem[0]!.productRef.userServiceQuantity = -2;
    await step(sync, "POST", ORDER, { body: negative }, 400, "error-invalid-field");
    const empty = { externalReference: { type: "orange", id: "ORD-2026-000191" }, category: "production" };
    await step(sync, "POST", ORDER, { body: empty }, 400, "error-missing-field");
    await step(sync, "GET", `${LICENCES}?productRefId=${fleet}`, undefined, 401, "error-missing-credentials", { authorization: null });
    await step(sync, "GET", `${LICENCES}?productRefId=fl_unknown`, undefined, 404, "error-unknown-fleet");
    await step(sync, "GET", LICENCES, undefined, 400, "error-query");
    const conflict = example("uc3-request") as { orderItem: { productRef: { userServiceQuantity: number } }[] };
    conflict.orderItem[0]!.productRef.userServiceQuantity = 5;
    await step(sync, "POST", ORDER, { body: conflict }, 409, "error-conflict");
    const updateConflict = example("suspend-request") as { userService: { externalState: string }[] };
    updateConflict.userService[0]!.externalState = "deleted";
    await step(sync, "POST", UPDATE, { body: updateConflict }, 409, "error-update-conflict");
    await step(sync, "GET", `${LICENCES}/us_unknown`, undefined, 404, "error-unknown-licence");
    await step(sync, "GET", `${LICENCES}/us_${"x".repeat(67)}`, undefined, 400, "error-invalid-url");
    const second = docId("licence", (l: { id: string }) => l.id);
    const secondInDocs = (example("licence") as { id: string }).id;
    await step(sync, "POST", UPDATE, { body: { userService: [{ id: secondInDocs, externalState: "paused" }] } }, 400, "error-update-invalid");
    const noReference = { externalReference: { type: "orange", id: "ORD-2026-000192" }, customer: { tradingName: "Boulangerie Martin" } };
    await step(sync, "POST", ORDER, { body: noReference }, 400, "error-forms");
    const generated = example("uc2-request") as { externalReference: unknown };
    generated.externalReference = { type: "string", id: "string" };
    await step(sync, "POST", ORDER, { body: generated }, 400, "error-generated-body");
    expect(await database.prisma.productOrder.count({ where: { orangeRef: { in: ["ORD-2026-000192", "string"] } } })).toBe(0);

    const fenced = await createTestApp({ database: shared(), env: { INBOUND_IP_ALLOWLIST: "10.0.0.0/8" } });
    try {
      await step(fenced, "GET", `${LICENCES}/${second}`, undefined, 403, "error-forbidden");
    } finally {
      await fenced.close();
    }
    const port = await freePort();
    const downUrl = `postgresql://x:y@127.0.0.1:${port}/nope`;
    const downDb = createDb(downUrl, { connectTimeoutMs: 500 });
    const down = await createTestApp({ database: { url: downUrl, db: downDb, prisma: database.prisma, drop: () => downDb.close() } });
    try {
      const res = await step(down, "GET", `${LICENCES}/${second}`, undefined, 503, "error-unavailable");
      expect(res.headers["retry-after"]).toBe("5");
    } finally {
      await down.close();
    }
  });

  it("acknowledges in asynchronous mode and sends the UC4, UC6 and UC5 events as documented", async () => {
    const ack = await step(async, "POST", ORDER, "async-order-request", 201, "async-order-response");
    await event((e) => (e.body as { resource: { id: string } }).resource.id === ack.body.id, "uc4-completed-event");

    const failedAck = await step(async, "POST", ORDER, "async-failed-order-request", 201, "async-failed-order-response");
    await event((e) => (e.body as { resource: { id: string } }).resource.id === failedAck.body.id, "uc4-failed-event");

    // The examples that follow name licences of the new fleet: its second licence, then its first.
    const fleet = docId("uc4-completed-event", (e: { resource: { orderItem: { productRef: { id: string } }[] } }) => e.resource.orderItem[0]!.productRef.id);
    const live = (await async.call("GET", `${LICENCES}?productRefId=${fleet}`)).body as { id: string }[];
    expect(live).toHaveLength(3);
    const second = (example("async-update-request") as { userService: { id: string }[] }).userService[0]!.id;
    const uc5 = (example("uc5-admin-request") as { userService: { id: string }[] }).userService.map((u) => u.id);
    expect(uc5[0]).toBe(second);
    expect(ids.bind(second, live[1]!.id, "async-update-request")).toBeUndefined();
    expect(ids.bind(uc5[1]!, live[0]!.id, "uc5-admin-request")).toBeUndefined();

    await step(async, "POST", UPDATE, "async-update-request", 200, "async-update-response");
    const reference = (example("async-update-request") as { externalReference: { id: string } }).externalReference.id;
    await event(
      (e) => (e.body as { resource: { externalReference?: { id: string } } }).resource.externalReference?.id === reference,
      "uc6-event",
    );

    const changes = await async.call("POST", "/admin/v1/licence-changes", translate(example("uc5-admin-request"), ids), {
      authorization: `Bearer ${ADMIN_TOKEN}`,
    });
    expect(changes.status, changes.text).toBe(200);
    const eventId: string = changes.body.events[0].id;
    await event((e) => (e.body as { id: string }).id === eventId, "uc5-event");
  });

  it("sends events that openapi/openapi.json describes: each one valid against the webhook of its type", () => {
    const doc = readCommittedOpenApi();
    const check = schemaChecker(doc);
    const schemaOfType = (type: string) => doc.webhooks[type]?.post.requestBody.content["application/json"].schema;
    const sent = gw.delivered().map((e) => e.body as { type: string; resource: { state?: string } });
    expect(sent.map((e) => e.type).sort()).toEqual(["completedStateNotification", "failedStateNotification", "updateNotification", "updateNotification"]);
    for (const event of sent) {
      expect(schemaOfType(event.type), event.type).toBeDefined();
      expect(check(schemaOfType(event.type), event), `${event.type}: ${JSON.stringify(event)}`).toEqual([]);
    }
    // The description is strict enough to catch a wrong event: a state that does not exist, or a
    // completed order announced as an update.
    const completed = sent.find((e) => e.type === "completedStateNotification")!;
    expect(check(schemaOfType(completed.type), { ...completed, resource: { ...completed.resource, state: "done" } })).not.toEqual([]);
    expect(check(schemaOfType("updateNotification"), { ...completed, type: "updateNotification" })).not.toEqual([]);
  });
});
