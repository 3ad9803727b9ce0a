import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateOpenApi, OPENAPI_FILE } from "../src/openapi.js";
import { createTestApp, type TestApp } from "./support/app.js";

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

  it("hides the health checks and the 405 catch-all routes", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    expect(Object.keys(doc.paths).some((p) => p.startsWith("/health"))).toBe(false);
    expect(doc.paths["/productordering/v2/productOrder"]!.delete).toBeUndefined();
  });

  it("declares the inbound security schemes", () => {
    const doc = JSON.parse(generated) as OpenApiDocument;
    expect(Object.keys(doc.components?.securitySchemes ?? {}).sort()).toEqual(["adminBearer", "apiKey", "appBearer", "basic", "bearer"]);
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
