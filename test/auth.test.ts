import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestApp, TEST_TOKEN, type CallResult, type TestApp } from "./support/app.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";

/**
 * How Orange authenticates to the partner (contract section 9): HTTP Basic, a static bearer
 * token, an API key in a named header and a source-IP allow-list, in any combination, all by
 * configuration. Missing credentials answer 401 code 40 with a challenge, wrong ones 401 code 41,
 * a source outside the allow-list 403 code 50.
 */

/** A protected endpoint that answers 404 code 60 once the caller is authenticated. */
const PROTECTED = "/userservice/v2/userService?productRefId=fl_unknown";
const ORDER_URL = "/productordering/v2/productOrder";

const BASIC_USER = "orange-gw";
const BASIC_PASSWORD = "p@ss:word with spaces";
const API_KEY_HEADER = "X-Orange-Key";
const API_KEY = "key-5f1c2e9a7b";
/** createTestApp sets a bearer token unless the test overrides it; "" means unset. */
const NO_BEARER = { INBOUND_BEARER_TOKEN: "" };

function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`, "utf8").toString("base64")}`;
}

interface RawCall {
  method?: "GET" | "POST";
  url?: string;
  headers?: Record<string, string>;
  remoteAddress?: string;
  payload?: unknown;
}

async function send(t: TestApp, call: RawCall = {}): Promise<CallResult> {
  const res = await t.app.inject({
    method: call.method ?? "GET",
    url: call.url ?? PROTECTED,
    headers: call.headers ?? {},
    ...(call.remoteAddress !== undefined ? { remoteAddress: call.remoteAddress } : {}),
    ...(call.payload !== undefined ? { payload: call.payload as object } : {}),
  });
  const isJson = String(res.headers["content-type"] ?? "").includes("json");
  return { status: res.statusCode, headers: res.headers, body: isJson ? res.json() : undefined, text: res.body };
}

function expectError(res: CallResult, status: number, code: number) {
  expect(res.status, res.text).toBe(status);
  expect(res.headers["content-type"]).toMatch(/^application\/json/);
  expect(Object.keys(res.body as object).sort()).toEqual(["code", "description", "message"]);
  expect(res.body.code).toBe(code);
}

/** Passed authentication: the protected consultation reaches its handler (unknown fleet). */
function expectAccepted(res: CallResult) {
  expect(res.status, res.text).toBe(404);
  expect(res.body).toMatchObject({ code: 60 });
  expect(res.body.description).toContain("fl_unknown");
}

function expectMissing(res: CallResult) {
  expectError(res, 401, 40);
  expect(res.headers["www-authenticate"]).toBeTruthy();
}

function expectInvalid(res: CallResult) {
  expectError(res, 401, 41);
  expect(res.headers["www-authenticate"]).toBeTruthy();
}

describe("inbound authentication", () => {
  // One database for every configuration: authentication never depends on stored rows.
  let database: TestDatabase;
  const apps: TestApp[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    for (const t of apps) await t.close();
    await database.drop();
  });

  async function appWith(env: Record<string, string>): Promise<TestApp> {
    const t = await createTestApp({
      env,
      database: { url: database.url, db: database.db, prisma: database.prisma, drop: async () => {} },
    });
    apps.push(t);
    return t;
  }

  describe("HTTP Basic", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({ ...NO_BEARER, INBOUND_BASIC_USER: BASIC_USER, INBOUND_BASIC_PASSWORD: BASIC_PASSWORD });
    });

    it("accepts the configured user and password", async () => {
      expectAccepted(await send(t, { headers: { authorization: basic(BASIC_USER, BASIC_PASSWORD) } }));
    });

    it("accepts the scheme name in any case", async () => {
      const value = basic(BASIC_USER, BASIC_PASSWORD).replace("Basic", "bAsIc");
      expectAccepted(await send(t, { headers: { authorization: value } }));
    });

    it("answers 401 code 40 with a Basic challenge when no credential is sent", async () => {
      const res = await send(t);
      expectMissing(res);
      expect(res.headers["www-authenticate"]).toMatch(/^Basic realm="/);
      expect(res.body.description).toContain("HTTP Basic");
    });

    it("answers 401 code 41 for a wrong password", async () => {
      expectInvalid(await send(t, { headers: { authorization: basic(BASIC_USER, "wrong") } }));
    });

    it("answers 401 code 41 for a wrong user", async () => {
      expectInvalid(await send(t, { headers: { authorization: basic("someone", BASIC_PASSWORD) } }));
    });

    it("answers 401 code 41 for a Basic value that is not user:password", async () => {
      expectInvalid(await send(t, { headers: { authorization: "Basic not-base64-and-no-colon" } }));
    });

    it("answers 401 code 41 for a bearer token when only Basic is configured", async () => {
      expectInvalid(await send(t, { headers: { authorization: `Bearer ${TEST_TOKEN}` } }));
    });
  });

  describe("static bearer token", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({});
    });

    it("accepts the configured token", async () => {
      expectAccepted(await send(t, { headers: { authorization: `Bearer ${TEST_TOKEN}` } }));
    });

    it("accepts the scheme name in lower case", async () => {
      expectAccepted(await send(t, { headers: { authorization: `bearer ${TEST_TOKEN}` } }));
    });

    it("answers 401 code 40 with a Bearer challenge when no credential is sent", async () => {
      const res = await send(t);
      expectMissing(res);
      expect(res.headers["www-authenticate"]).toMatch(/^Bearer/);
    });

    it("answers 401 code 41 for a wrong token", async () => {
      expectInvalid(await send(t, { headers: { authorization: "Bearer another-token" } }));
    });

    it("answers 401 code 41 for an empty token", async () => {
      expectInvalid(await send(t, { headers: { authorization: "Bearer" } }));
    });

    it("answers 401 code 41 for a token that only starts like the right one", async () => {
      expectInvalid(await send(t, { headers: { authorization: `Bearer ${TEST_TOKEN}x` } }));
    });

    it("protects every Orange endpoint and stores nothing for a rejected order", async () => {
      for (const [method, url] of [
        ["GET", "/userservice/v2/userService?productRefId=fl_1"],
        ["GET", "/userservice/v2/userService/us_1"],
        ["POST", "/userservice/v2/userService/update"],
        ["POST", ORDER_URL],
      ] as const) {
        const res = await send(t, { method, url, payload: method === "POST" ? { userService: [] } : undefined });
        expectMissing(res);
      }
      expect(await t.db.productOrder.count()).toBe(0);
      expect(await t.db.licenceUpdate.count()).toBe(0);
    });
  });

  describe("API key in a named header", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({ ...NO_BEARER, INBOUND_API_KEY_HEADER: API_KEY_HEADER, INBOUND_API_KEY: API_KEY });
    });

    it("accepts the key in the configured header, whatever the header name's case", async () => {
      expectAccepted(await send(t, { headers: { [API_KEY_HEADER]: API_KEY } }));
      expectAccepted(await send(t, { headers: { [API_KEY_HEADER.toLowerCase()]: API_KEY } }));
    });

    it("answers 401 code 40 naming the header when no key is sent", async () => {
      const res = await send(t);
      expectMissing(res);
      expect(res.body.description).toContain(API_KEY_HEADER.toLowerCase());
      // The challenge names the scheme configured, not a bearer token the server would refuse.
      expect(res.headers["www-authenticate"]).toBe(`ApiKey header="${API_KEY_HEADER.toLowerCase()}"`);
    });

    it("answers 401 code 41 for a wrong key", async () => {
      expectInvalid(await send(t, { headers: { [API_KEY_HEADER]: "key-wrong" } }));
    });

    it("does not accept the key in another header", async () => {
      expectMissing(await send(t, { headers: { "x-api-key": API_KEY } }));
    });
  });

  describe("several credentials configured", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({
        INBOUND_BASIC_USER: BASIC_USER,
        INBOUND_BASIC_PASSWORD: BASIC_PASSWORD,
        INBOUND_API_KEY_HEADER: API_KEY_HEADER,
        INBOUND_API_KEY: API_KEY,
      });
    });

    it("accepts any one of them", async () => {
      expectAccepted(await send(t, { headers: { authorization: basic(BASIC_USER, BASIC_PASSWORD) } }));
      expectAccepted(await send(t, { headers: { authorization: `Bearer ${TEST_TOKEN}` } }));
      expectAccepted(await send(t, { headers: { [API_KEY_HEADER]: API_KEY } }));
    });

    it("accepts a valid API key next to a wrong bearer token", async () => {
      expectAccepted(await send(t, { headers: { authorization: "Bearer wrong", [API_KEY_HEADER]: API_KEY } }));
    });

    it("answers 401 code 40 listing every accepted way when nothing is sent", async () => {
      const res = await send(t);
      expectMissing(res);
      expect(res.body.description).toContain("HTTP Basic");
      expect(res.body.description).toContain("bearer token");
      expect(res.body.description).toContain(API_KEY_HEADER.toLowerCase());
    });

    it("answers 401 code 41 when every credential sent is wrong", async () => {
      expectInvalid(await send(t, { headers: { authorization: "Bearer wrong", [API_KEY_HEADER]: "wrong" } }));
    });
  });

  describe("source-IP allow-list", () => {
    let t: TestApp;
    const withToken = { authorization: `Bearer ${TEST_TOKEN}` };
    beforeAll(async () => {
      t = await appWith({ INBOUND_IP_ALLOWLIST: "10.1.2.3, 192.168.10.0/24, 2001:db8:aa::/48" });
    });

    it("lets a listed address through with a valid credential", async () => {
      expectAccepted(await send(t, { headers: withToken, remoteAddress: "10.1.2.3" }));
    });

    it("answers 403 code 50 to an address outside the list, even with a valid credential", async () => {
      const res = await send(t, { headers: withToken, remoteAddress: "10.1.2.4" });
      expectError(res, 403, 50);
      expect(res.body.description).toContain("10.1.2.4");
    });

    it("answers 403 before 401 when an outside address sends no credential", async () => {
      expectError(await send(t, { remoteAddress: "203.0.113.9" }), 403, 50);
    });

    it("lets an address inside a CIDR range through and rejects the next range", async () => {
      expectAccepted(await send(t, { headers: withToken, remoteAddress: "192.168.10.0" }));
      expectAccepted(await send(t, { headers: withToken, remoteAddress: "192.168.10.255" }));
      expectError(await send(t, { headers: withToken, remoteAddress: "192.168.11.1" }), 403, 50);
    });

    it("treats an IPv6-mapped IPv4 address as the IPv4 address", async () => {
      expectAccepted(await send(t, { headers: withToken, remoteAddress: "::ffff:10.1.2.3" }));
      expectAccepted(await send(t, { headers: withToken, remoteAddress: "::ffff:192.168.10.77" }));
      expectError(await send(t, { headers: withToken, remoteAddress: "::ffff:10.1.2.4" }), 403, 50);
    });

    it("matches IPv6 ranges", async () => {
      expectAccepted(await send(t, { headers: withToken, remoteAddress: "2001:db8:aa::1" }));
      expectError(await send(t, { headers: withToken, remoteAddress: "2001:db8:ab::1" }), 403, 50);
    });

    it("still requires the credential from a listed address", async () => {
      expectMissing(await send(t, { remoteAddress: "10.1.2.3" }));
      expectInvalid(await send(t, { headers: { authorization: "Bearer wrong" }, remoteAddress: "10.1.2.3" }));
    });

    it("ignores X-Forwarded-For when the proxy is not trusted", async () => {
      const res = await send(t, {
        headers: { ...withToken, "x-forwarded-for": "10.1.2.3" },
        remoteAddress: "203.0.113.9",
      });
      expectError(res, 403, 50);
    });
  });

  describe("allow-list alone, no credential configured", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({ ...NO_BEARER, INBOUND_IP_ALLOWLIST: "172.16.0.0/12" });
    });

    it("lets a listed address through without any credential", async () => {
      expectAccepted(await send(t, { remoteAddress: "172.20.1.2" }));
    });

    it("answers 403 code 50 to any other address", async () => {
      expectError(await send(t, { remoteAddress: "172.32.0.1" }), 403, 50);
    });
  });

  describe("GET /ping", () => {
    it("is open by default: no credential, even from outside the allow-list", async () => {
      const t = await appWith({ INBOUND_IP_ALLOWLIST: "10.0.0.0/8" });
      const res = await send(t, { url: "/ping", remoteAddress: "203.0.113.9" });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ status: "ok" });
    });

    it("requires credentials with PING_REQUIRES_AUTH=true", async () => {
      const t = await appWith({ PING_REQUIRES_AUTH: "true" });
      expectMissing(await send(t, { url: "/ping" }));
      expectInvalid(await send(t, { url: "/ping", headers: { authorization: "Bearer wrong" } }));
      const ok = await send(t, { url: "/ping", headers: { authorization: `Bearer ${TEST_TOKEN}` } });
      expect(ok.status).toBe(200);
      expect(ok.body).toEqual({ status: "ok" });
    });
  });

  describe("INBOUND_AUTH_DISABLED=true", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({ INBOUND_AUTH_DISABLED: "true" });
    });

    it("accepts calls with no credential", async () => {
      expectAccepted(await send(t));
    });

    it("accepts calls with a wrong credential", async () => {
      expectAccepted(await send(t, { headers: { authorization: "Bearer wrong" } }));
    });
  });

  describe("secrets stay out of error bodies", () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await appWith({
        INBOUND_BASIC_USER: BASIC_USER,
        INBOUND_BASIC_PASSWORD: BASIC_PASSWORD,
        INBOUND_API_KEY_HEADER: API_KEY_HEADER,
        INBOUND_API_KEY: API_KEY,
      });
    });

    it("never echoes the Authorization header, the presented secrets or the configured ones", async () => {
      const presented: Record<string, string>[] = [
        { authorization: "Bearer presented-secret-token-1234" },
        { authorization: basic("presented-user", "presented-password") },
        { authorization: "Digest username=presented-digest-user" },
        { [API_KEY_HEADER]: "presented-api-key-5678" },
      ];
      for (const headers of presented) {
        const res = await send(t, { headers });
        expectInvalid(res);
        const text = res.text + JSON.stringify(res.headers);
        for (const value of Object.values(headers)) {
          expect(text).not.toContain(value);
          for (const part of value.split(/[\s=]+/).filter((p) => p.length > 6)) expect(text).not.toContain(part);
        }
        for (const secret of ["presented-user", "presented-password", TEST_TOKEN, BASIC_PASSWORD, API_KEY]) {
          expect(text).not.toContain(secret);
        }
      }
    });
  });
});
