import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readContractExamples } from "../src/contract-examples.js";
import { generateOpenApi, OPENAPI_FILE } from "../src/openapi.js";
import { CONTRACT_EXAMPLE } from "../src/openapi-document.js";
import { findPlaceholder } from "../src/orange/validation.js";
import { AUTH, createTestApp, type TestApp } from "./support/app.js";
import { schemaChecker, type OpenApiJson } from "./support/openapi.js";

/**
 * The committed OpenAPI document (openapi/openapi.json) is generated from the route schemas and
 * must never drift from them; the running server serves the same description under /docs.
 */

const ORANGE_PATHS = [
  "/ping",
  "/productordering/v2/productOrder",
  "/userservice/v2/userService",
  "/userservice/v2/userService/{id}",
  "/userservice/v2/userService/update",
];

const ADMIN_PATHS = [
  "/admin/v1/licence-changes",
  "/admin/v1/events",
  "/admin/v1/events/{id}",
  "/admin/v1/events/{id}/resend",
  "/admin/v1/events/{id}/discard",
  "/admin/v1/events/held",
  "/admin/v1/events/resend",
  "/admin/v1/provisioning",
  "/admin/v1/provisioning/{id}",
  "/admin/v1/provisioning/{id}/result",
  "/admin/v1/provisioning/{id}/retry",
  "/admin/v1/search",
  "/admin/v1/overview",
  ...["customers", "fleets", "licences", "orders", "updates"].flatMap((kind) => [
    `/admin/v1/${kind}`,
    `/admin/v1/${kind}/{id}`,
    `/admin/v1/${kind}/{id}/timeline`,
  ]),
];

/** The admin routes the partner's application calls too, with its own token. */
const APPLICATION_PATHS = ["/admin/v1/licence-changes", "/admin/v1/provisioning/{id}/result"];

const ALL_PATHS = [...ORANGE_PATHS, ...ADMIN_PATHS];

interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string };
  paths: Record<string, Record<string, { responses?: Record<string, unknown>; tags?: string[]; security?: unknown[] }>>;
  components?: { schemas?: Record<string, unknown>; securitySchemes?: Record<string, unknown> };
}

describe("the committed OpenAPI document", () => {
  let generated: string;
  beforeAll(async () => {
    generated = await generateOpenApi();
  });

  it("equals the document generated from the route schemas, byte for byte", () => {
    const committed = readFileSync(OPENAPI_FILE, "utf8");
    expect(
      generated === committed,
      "openapi/openapi.json is stale: run `npm run openapi` and commit the result",
    ).toBe(true);
  });

  it("is OpenAPI 3.1 and lists every Orange path with its method", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    expect(doc.openapi).toBe("3.1.0");
    expect(Object.keys(doc.paths).sort()).toEqual([...ALL_PATHS].sort());
    expect(Object.keys(doc.paths["/ping"]!)).toEqual(["get"]);
    expect(Object.keys(doc.paths["/productordering/v2/productOrder"]!)).toEqual(["post"]);
    expect(Object.keys(doc.paths["/userservice/v2/userService"]!)).toEqual(["get"]);
    expect(Object.keys(doc.paths["/userservice/v2/userService/{id}"]!)).toEqual(["get"]);
    expect(Object.keys(doc.paths["/userservice/v2/userService/update"]!)).toEqual(["post"]);
  });

  it("lists the operators' admin routes under the admin tag, with the admin bearer (and the application's where it calls)", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    expect(Object.keys(doc.paths["/admin/v1/licence-changes"]!)).toEqual(["post"]);
    expect(Object.keys(doc.paths["/admin/v1/events"]!)).toEqual(["get"]);
    expect(Object.keys(doc.paths["/admin/v1/events/{id}"]!)).toEqual(["get"]);
    expect(Object.keys(doc.paths["/admin/v1/events/{id}/resend"]!)).toEqual(["post"]);
    for (const path of ADMIN_PATHS) {
      for (const operation of Object.values(doc.paths[path]!)) {
        expect(operation.tags).toEqual(["admin"]);
        expect(operation.security).toEqual(APPLICATION_PATHS.includes(path) ? [{ adminBearer: [] }, { appBearer: [] }] : [{ adminBearer: [] }]);
      }
    }
  });

  it("documents the success and error answers of the order endpoint", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    const responses = doc.paths["/productordering/v2/productOrder"]!.post!.responses ?? {};
    expect(Object.keys(responses)).toEqual(expect.arrayContaining(["201", "400", "401", "409", "503"]));
  });

  it("was written by the finisher: one document whatever the order the routes were registered in", () => {
    expect(generated.indexOf('"paths"')).toBeLessThan(generated.indexOf('"webhooks"'));
  });

  it("hides the health checks and the 405 catch-all routes", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    expect(Object.keys(doc.paths).some((p) => p.startsWith("/health"))).toBe(false);
    expect(doc.paths["/productordering/v2/productOrder"]!.delete).toBeUndefined();
  });

  it("declares the inbound security schemes", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    expect(Object.keys(doc.components?.securitySchemes ?? {}).sort()).toEqual(["adminBearer", "apiKey", "appBearer", "basic", "bearer", "orangeOAuth"]);
  });
});

describe("the served documentation", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
  });
  afterAll(async () => t.close());

  it("GET /docs/json serves the OpenAPI document with the Orange paths, without credentials", async () => {
    const res = await t.app.inject({ method: "GET", url: "/docs/json" });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/application\/json/);
    const doc = res.json<OpenApiDocument>();
    expect(doc.openapi).toBe("3.1.0");
    expect(Object.keys(doc.paths).sort()).toEqual([...ALL_PATHS].sort());
  });

  it("GET /docs serves the Swagger UI", async () => {
    const res = await t.app.inject({ method: "GET", url: "/docs" });
    // The UI answers its page directly or redirects to it.
    if (res.statusCode >= 300 && res.statusCode < 400) {
      const location = String(res.headers.location);
      const page = await t.app.inject({ method: "GET", url: location.startsWith("/") ? location : `/docs/${location}` });
      expect(page.statusCode).toBe(200);
      expect(page.headers["content-type"]).toMatch(/text\/html/);
    } else {
      expect(res.statusCode).toBe(200);
      expect(res.headers["content-type"]).toMatch(/text\/html/);
    }
  });
});

// -------------------------------------------------------------------------------------------------
// What an integrator needs (issue: an OpenAPI document an integrator can use)

/** Every operation of the document: paths, then webhooks. */
function operations(doc: OpenApiJson): { where: string; path?: string; method: string; op: OpenApiJson }[] {
  const out: { where: string; path?: string; method: string; op: OpenApiJson }[] = [];
  for (const [path, item] of Object.entries<OpenApiJson>(doc.paths)) {
    for (const [method, op] of Object.entries<OpenApiJson>(item)) out.push({ where: `${method.toUpperCase()} ${path}`, path, method, op });
  }
  for (const [name, item] of Object.entries<OpenApiJson>(doc.webhooks ?? {})) {
    for (const [method, op] of Object.entries<OpenApiJson>(item)) out.push({ where: `webhook ${name}`, method, op });
  }
  return out;
}

/** Every media type object that may hold examples, with where it is. */
function mediaObjects(doc: OpenApiJson): { where: string; media: OpenApiJson }[] {
  const out: { where: string; media: OpenApiJson }[] = [];
  for (const { where, op } of operations(doc)) {
    const body = op.requestBody?.content?.["application/json"];
    if (body) out.push({ where: `${where} request`, media: body });
    for (const [status, response] of Object.entries<OpenApiJson>(op.responses ?? {})) {
      const media = response.content?.["application/json"];
      if (media) out.push({ where: `${where} ${status}`, media });
    }
  }
  return out;
}

function walk(node: unknown, visit: (node: Record<string, unknown>, path: string) => void, path = "$"): void {
  if (Array.isArray(node)) node.forEach((n, i) => walk(n, visit, `${path}[${i}]`));
  else if (node !== null && typeof node === "object") {
    visit(node as Record<string, unknown>, path);
    for (const [k, v] of Object.entries(node)) walk(v, visit, `${path}.${k}`);
  }
}

describe("the OpenAPI document an integrator uses", () => {
  let doc: OpenApiJson;
  beforeAll(async () => {
    doc = JSON.parse(await generateOpenApi());
  });

  it("names every operation, once, and the server to call", () => {
    const ids = operations(doc).map(({ where, op }) => {
      expect(op.operationId, `${where} has no operationId`).toMatch(/^[a-zA-Z]+$/);
      return op.operationId as string;
    });
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
    expect(ids).toEqual(expect.arrayContaining(["createProductOrder", "listUserServices", "getUserService", "updateUserServices", "ping"]));
    expect(doc.servers).toEqual([expect.objectContaining({ url: "/" })]);
  });

  it("has one component per shape, every one used, without additionalProperties noise or date patterns", () => {
    const schemas = doc.components.schemas as Record<string, unknown>;
    expect(Object.keys(schemas).filter((n) => n.endsWith("Input"))).toEqual([]);
    const refs = new Set<string>();
    const problems: string[] = [];
    walk({ paths: doc.paths, webhooks: doc.webhooks, components: doc.components }, (node, path) => {
      if (typeof node.$ref === "string") refs.add(node.$ref.replace("#/components/schemas/", ""));
      const ap = node.additionalProperties;
      if (ap !== undefined && ap !== false && !path.includes(".examples.")) problems.push(`${path}: additionalProperties ${JSON.stringify(ap)}`);
      if (node.format === "date-time" && node.pattern !== undefined) problems.push(`${path}: a pattern beside format date-time`);
    });
    expect(problems).toEqual([]);
    expect([...refs].filter((r) => !(r in schemas))).toEqual([]);
    expect(Object.keys(schemas).filter((n) => !refs.has(n))).toEqual([]);
  });

  it("shows the contract's worked examples for the body and every JSON answer of Orange's operations", () => {
    const contract = readContractExamples();
    const missing: string[] = [];
    for (const { where, media } of mediaObjects(doc)) {
      if (where.includes("/admin/")) continue;
      const examples = Object.values<OpenApiJson>(media.examples ?? {});
      if (examples.length === 0) missing.push(where);
      for (const example of examples) {
        expect(example.summary, where).toBeTruthy();
        const name = String(example.description).replace(CONTRACT_EXAMPLE, "");
        expect(contract.has(name), `${where}: ${example.description}`).toBe(true);
        expect(example.value, `${where}: ${name}`).toEqual(contract.get(name)!.value);
      }
    }
    expect(missing).toEqual([]);
    const keys = (path: string, method: string, part: string) => {
      const op = doc.paths[path][method];
      const media = part === "request" ? op.requestBody.content["application/json"] : op.responses[part].content["application/json"];
      return Object.keys(media.examples);
    };
    expect(keys("/productordering/v2/productOrder", "post", "request")).toEqual(["uc2", "uc1", "uc3", "unknown-offer"]);
    expect(keys("/userservice/v2/userService/update", "post", "request")).toEqual(["suspend", "reactivate", "delete", "swap", "all-or-nothing"]);
    expect(keys("/productordering/v2/productOrder", "post", "400")).toContain("invalid-field");
    expect(keys("/productordering/v2/productOrder", "post", "409")).toEqual(["conflict"]);
    expect(keys("/userservice/v2/userService", "get", "200")).toEqual(["fleet", "ids"]);
    expect(keys("/userservice/v2/userService/{id}", "get", "200")).toEqual(["licence"]);
  });

  it("accepts each of its examples with the schema it shows them beside", () => {
    const check = schemaChecker(doc);
    const failures: string[] = [];
    let checked = 0;
    for (const { where, media } of mediaObjects(doc)) {
      for (const [key, example] of Object.entries<OpenApiJson>(media.examples ?? {})) {
        checked++;
        for (const problem of check(media.schema, example.value)) failures.push(`${where} ${key}: ${problem}`);
      }
    }
    for (const { where, op } of operations(doc)) {
      for (const parameter of op.parameters ?? []) {
        if (parameter.example === undefined) continue;
        checked++;
        for (const problem of check(parameter.schema, parameter.example)) failures.push(`${where} ${parameter.name}: ${problem}`);
      }
    }
    expect(failures).toEqual([]);
    expect(checked).toBeGreaterThan(40);
    // The check can fail: a quantity sent as a string.
    const order = doc.paths["/productordering/v2/productOrder"].post.requestBody.content["application/json"];
    const broken = structuredClone(order.examples.uc2.value);
    broken.orderItem[0].productRef.userServiceQuantity = "3";
    expect(check(order.schema, broken)).not.toEqual([]);
  });

  it("describes the events sent to Orange as webhooks: the envelope and each resource, with examples", () => {
    expect(Object.keys(doc.webhooks).sort()).toEqual(["completedStateNotification", "failedStateNotification", "updateNotification"]);
    for (const [name, item] of Object.entries<OpenApiJson>(doc.webhooks)) {
      const media = item.post.requestBody.content["application/json"];
      const schema = doc.components.schemas[media.schema.$ref.replace("#/components/schemas/", "")];
      expect(schema.required, name).toEqual(["id", "type", "time", "resource"]);
      expect(schema.properties.type.const, name).toBe(name);
      expect(Object.keys(media.examples).length, name).toBeGreaterThan(0);
    }
  });
});

describe("what /docs \"Try it out\" sends by default", () => {
  const ADMIN_TOKEN = "openapi-admin-token";
  let t: TestApp;
  let doc: OpenApiJson;
  beforeAll(async () => {
    t = await createTestApp({ env: { ADMIN_TOKEN } });
    doc = (await t.app.inject({ method: "GET", url: "/docs/json" })).json();
  });
  afterAll(async () => t.close());

  /** Swagger UI's default: the first example of the body, the example of each parameter. */
  function defaultRequest(path: string, op: OpenApiJson): { url: string; body: unknown } {
    let url = path;
    const query: string[] = [];
    for (const p of op.parameters ?? []) {
      if (p.in === "path") {
        expect(p.example, `${path}: no example for {${p.name}}`).toBeDefined();
        url = url.replace(`{${p.name}}`, encodeURIComponent(String(p.example)));
      } else if (p.in === "query" && p.example !== undefined) query.push(`${p.name}=${encodeURIComponent(String(p.example))}`);
    }
    const examples = op.requestBody?.content?.["application/json"]?.examples;
    const body = examples === undefined ? undefined : Object.values<OpenApiJson>(examples)[0]?.value;
    return { url: query.length > 0 ? `${url}?${query.join("&")}` : url, body };
  }

  it("is a real request for every Orange operation: never a placeholder, never refused as malformed", async () => {
    const answers: Record<string, number> = {};
    for (const { path, method, op } of operations(doc)) {
      if (path === undefined || path.startsWith("/admin/")) continue;
      const { url, body } = defaultRequest(path, op);
      if (op.requestBody) expect(body, `${op.operationId}: no default body`).toBeDefined();
      expect(findPlaceholder(body), op.operationId).toBeUndefined();
      const res = await t.call(method.toUpperCase() as "GET" | "POST", url, body);
      expect(res.status, `${op.operationId}: ${res.text}`).toBeLessThan(500);
      expect(res.status, `${op.operationId}: ${res.text}`).not.toBe(400);
      answers[op.operationId] = res.status;
    }
    // On an empty server the first order creates its fleet; the examples' partner ids are not there.
    expect(answers).toEqual({ ping: 200, createProductOrder: 201, listUserServices: 404, getUserService: 404, updateUserServices: 200 });
    expect(await t.db.licence.count()).toBe(3);
  });

  it("is a real request for every admin operation too", async () => {
    const answers: Record<string, number> = {};
    for (const { path, method, op } of operations(doc)) {
      if (path === undefined || !path.startsWith("/admin/")) continue;
      const { url, body } = defaultRequest(path, op);
      if (op.requestBody) expect(body, `${op.operationId}: no default body`).toBeDefined();
      expect(findPlaceholder(body), op.operationId).toBeUndefined();
      // Not t.call: an empty listing ([]) is a fine answer of the admin API.
      const res = await t.app.inject({
        method: method.toUpperCase() as "GET" | "POST",
        url,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
        ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
      });
      expect(res.statusCode, `${op.operationId}: ${res.body}`).toBeLessThan(500);
      expect(res.statusCode, `${op.operationId}: ${res.body}`).not.toBe(400);
      answers[op.operationId] = res.statusCode;
    }
    // The examples' events, commands and licences are the contract's: unknown here, which is no malformed request.
    expect(answers).toEqual({
      changeLicences: 404,
      listEvents: 200,
      listHeldFleets: 200,
      resendEvents: 200,
      getEvent: 404,
      resendEvent: 404,
      discardEvent: 404,
      listCommands: 200,
      getCommand: 404,
      reportCommandResult: 404,
      retryCommand: 404,
      search: 200,
      getOverview: 200,
      ...Object.fromEntries(
        ["Customer", "Fleet", "Licence", "Order", "Update"].flatMap((r) => [
          [`list${r}s`, 200],
          [`get${r}`, 404],
          [`get${r}Timeline`, 404],
        ]),
      ),
    });
  });

  it("would be refused with the example to use, were it a body generated from the schema", async () => {
    const res = await t.call("POST", "/productordering/v2/productOrder", { externalReference: { type: "string", id: "string" } }, AUTH);
    expect(res.status).toBe(400);
    expect(res.body.description).toContain('the example "uc2"');
  });
});
