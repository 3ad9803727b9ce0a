import { readFile } from "node:fs/promises";
import { createServer, type AddressInfo, type Server } from "node:net";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { findEmptyNodes, matchPath, matchValue, parsePath, resolvePath } from "../src/simulator/match.js";
import { renderHtml, renderJson, renderText } from "../src/simulator/report.js";
import { freePort } from "../src/simulator/self-host.js";
import { collectOrangeRefs, runScenarios, toCurl, type RunOptions, type RunReport } from "../src/simulator/runner.js";
import { authHeaders } from "../src/simulator/target.js";
import { loadScenarios, parseScenarios, type Scenario } from "../src/simulator/scenario.js";
import { MissingVariable, template } from "../src/simulator/template.js";
import { createTestApp, TEST_TOKEN, type TestApp } from "./support/app.js";

const FIXTURES = fileURLToPath(new URL("./fixtures/simulator/", import.meta.url));
const ctx = { orangeRefs: new Set(["ORD-1", "CUST-1"]) };

describe("paths", () => {
  const doc = { a: { b: [{ c: 1 }, { c: 2 }, { d: 3 }] }, list: [10, 20] };
  it.each([
    ["a.b.0.c", true, 1],
    ["a.b[1].c", true, 2],
    ["a.b.*.c", true, [1, 2]],
    ["list.1", true, 20],
    ["list.5", false, undefined],
    ["a.x", false, undefined],
    ["$", true, doc],
    ["", true, doc],
    ["$.list.0", true, 10],
  ])("%s", (path, found, value) => {
    expect(resolvePath(doc, path)).toEqual({ found, value });
  });
  it("parses dots, brackets and the root", () => {
    expect(parsePath("$")).toEqual([]);
    expect(parsePath("a[0].b")).toEqual(["a", "0", "b"]);
  });
});

describe("matchers", () => {
  const cases: [string, unknown, unknown, boolean][] = [
    ["plain equal", "completed", "completed", true],
    ["plain different", "completed", "failed", false],
    ["number", 3, 3, true],
    ["null", null, null, true],
    ["partial object", { a: 1 }, { a: 1, b: 2 }, true],
    ["partial object, missing key", { a: 1, c: 3 }, { a: 1 }, false],
    ["array same length, partial elements", [{ a: 1 }, { a: 2 }], [{ a: 1, x: 0 }, { a: 2 }], true],
    ["array other length", [1], [1, 2], false],
    ["$equals is not partial", { $equals: { a: 1 } }, { a: 1, b: 2 }, false],
    ["$equals", { $equals: { a: 1 } }, { a: 1 }, true],
    ["$exists false on a missing key", { a: { $exists: false } }, { b: 1 }, true],
    ["$exists true on a missing key", { a: { $exists: true } }, { b: 1 }, false],
    ["$partnerId", { $partnerId: true }, "po_123", true],
    ["$partnerId, an Orange ref", { $partnerId: true }, "ORD-1", false],
    ["$partnerId, empty", { $partnerId: true }, "", false],
    ["$length array", { $length: 2 }, [1, 2], true],
    ["$length string", { $length: 3 }, "abcd", false],
    ["$oneOf", { $oneOf: [40, 41] }, 41, true],
    ["$oneOf miss", { $oneOf: [40, 41] }, 42, false],
    ["$regex", { $regex: "^po_" }, "po_1", true],
    ["$regex on a number", { $regex: "^1" }, 1, false],
    ["$contains string", { $contains: "quantity" }, "userServiceQuantity: bad quantity", true],
    ["$contains array, partial", { $contains: { state: "active" } }, [{ state: "inactive" }, { state: "active", id: 1 }], true],
    ["$contains array miss", { $contains: 3 }, [1, 2], false],
    ["$each", { $each: { $regex: "^us_" } }, ["us_1", "us_2"], true],
    ["$each miss", { $each: "active" }, ["active", "inactive"], false],
    ["$gte/$lte", { $gte: 1, $lte: 5 }, 5, true],
    ["$gte miss", { $gte: 1 }, 0, false],
    ["$date", { $date: true }, "2026-05-02T09:15:02.345Z", true],
    ["$date without ms", { $date: true }, "2026-05-02T09:15:02Z", false],
    ["$not", { $not: { $regex: "^po_" } }, "ORD", true],
    ["unknown operator", { $nope: 1 }, 1, false],
  ];
  it.each(cases)("%s", (_name, matcher, actual, ok) => {
    expect(matchValue(matcher, actual, true, ctx).ok).toBe(ok);
  });
  it("says where and what on a failure", () => {
    const r = matchPath({ userService: [{ state: "active" }, { state: "inactive" }] }, "userService", { $each: { state: "active" } }, ctx);
    expect(r).toEqual({ ok: false, expected: 'at 1.state: "active"', actual: 'at 1.state: "inactive"' });
    expect(matchPath({}, "a.b", 1, ctx)).toMatchObject({ ok: false, actual: "(absent)" });
  });
  it("finds empty nodes like the suite does", () => {
    expect(findEmptyNodes({ a: {}, b: [], c: null, d: [{ e: 1 }], f: "x" })).toEqual(["$.a", "$.b", "$.c"]);
    expect(findEmptyNodes({ a: [{ b: [] }] })).toEqual(["$.a[0].b"]);
  });
});

describe("templates", () => {
  const vars = { run: "abc123", n: 3, obj: { x: [1, 2] }, order: { body: { id: "po_1" } }, offers: ["PRO", "PREMIUM"] };
  it.each([
    ["${n}", 3],
    ["${obj}", { x: [1, 2] }],
    ["n=${n}", "n=3"],
    ["${obj.x}", [1, 2]],
    ["SIM-${run}-${offers.1}", "SIM-abc123-PREMIUM"],
    ["${order.body.id}", "po_1"],
    ["no template", "no template"],
  ])("%s", (input, output) => {
    expect(template(input, vars)).toEqual(output);
  });
  it("templates nested values and keys, keeping types", () => {
    expect(template({ "k-${run}": ["${n}", { q: "${order.body.id}" }], t: true }, vars)).toEqual({ "k-abc123": [3, { q: "po_1" }], t: true });
  });
  it("gives fresh uuid and now", () => {
    expect(template("${uuid}", {})).not.toEqual(template("${uuid}", {}));
    expect(template("${now}", {})).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });
  it("throws MissingVariable naming the variable", () => {
    const err = (() => {
      try {
        template({ a: ["x-${fleet.body.id}"] }, vars);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(MissingVariable);
    expect((err as MissingVariable).variable).toBe("fleet.body.id");
  });
});

describe("scenario loader", () => {
  it("loads a directory, YAML and JSON, sorted by file name, with defaults", async () => {
    const scenarios = await loadScenarios([FIXTURES]);
    expect(scenarios.map((s) => s.name)).toEqual(["fixture-wrong-expectation", "fixture-uc2-list-suspend"]);
    const good = scenarios[1]!;
    expect(good.steps[0]!.request).toMatchObject({ method: "GET", auth: "none", path: "/ping" });
    expect(good.steps[2]!.request!.auth).toBe("orange");
    expect(good.source).toMatch(/good\.yaml$/);
  });
  it("names the file and the path of an invalid field", async () => {
    await expect(loadScenarios([`${FIXTURES}invalid/bad-field.yaml`])).rejects.toThrow(/bad-field\.yaml: invalid scenario\n {2}steps\.1\.expect\.status: /);
  });
  it("rejects typos, unknown schemas and duplicate step ids", () => {
    expect(() => parseScenarios({ name: "x", steps: [{ id: "a", request: { path: "/" }, expcet: {} }] }, "f.yaml")).toThrow(/f\.yaml[\s\S]*steps\.0/);
    expect(() => parseScenarios([{ name: "x", steps: [{ id: "a", request: { path: "/" }, expect: { schema: "Nope" } }] }], "l.yaml")).toThrow(/0\.steps\.0\.expect\.schema/);
    expect(() => parseScenarios({ name: "x", steps: [{ id: "a", waitMs: 1 }, { id: "a", waitMs: 1 }] }, "d.yaml")).toThrow(/steps\.1\.id: duplicate step id "a"/);
  });
  it("rejects duplicate scenario names across files", async () => {
    await expect(loadScenarios([`${FIXTURES}invalid/dup-a.json`, `${FIXTURES}invalid/dup-b.yml`])).rejects.toThrow(/dup-b\.yml: duplicate scenario name "dup" \(already in .*dup-a\.json\)/);
  });
  it("rejects missing paths and other extensions", async () => {
    await expect(loadScenarios([`${FIXTURES}nope.yaml`])).rejects.toThrow(/no such file/);
    await expect(loadScenarios([fileURLToPath(import.meta.url)])).rejects.toThrow(/not a scenario file/);
  });
});

describe("authentication and Orange references", () => {
  it.each([
    [{ kind: "bearer", token: "t" }, "orange", { authorization: "Bearer t" }],
    [{ kind: "bearer", token: "t" }, "invalid", { authorization: "Bearer simulator-wrong-secret" }],
    [{ kind: "basic", user: "u", password: "p" }, "orange", { authorization: `Basic ${Buffer.from("u:p").toString("base64")}` }],
    [{ kind: "basic", user: "u", password: "p" }, "invalid", { authorization: `Basic ${Buffer.from("u:simulator-wrong-secret").toString("base64")}` }],
    [{ kind: "header", name: "X-Api-Key", value: "k" }, "orange", { "x-api-key": "k" }],
    [{ kind: "header", name: "X-Api-Key", value: "k" }, "invalid", { "x-api-key": "simulator-wrong-secret" }],
    [{ kind: "none" }, "orange", {}],
    [{ kind: "none" }, "invalid", { authorization: "Bearer simulator-wrong-secret" }],
    [{ kind: "bearer", token: "t" }, "none", {}],
  ] as const)("%j as %s", (target, mode, headers) => {
    expect(authHeaders(target, mode)).toEqual(headers);
  });
  it("collects externalReference ids and Orange's order item ids, not partner ids", () => {
    const refs = new Set<string>();
    collectOrangeRefs(
      {
        externalReference: { type: "orange", id: "ORD-1" },
        customer: { externalReference: [{ type: "orange", id: "CUST-1" }] },
        orderItem: [{ id: "1", productRef: { id: "fl_partner" } }],
        userService: [{ id: "us_partner" }],
      },
      refs,
    );
    expect([...refs].sort()).toEqual(["1", "CUST-1", "ORD-1"]);
  });
});

describe("curl", () => {
  it("quotes single quotes and hides credentials unless asked", () => {
    const req = { method: "POST", url: "http://h/p", headers: { authorization: "Bearer s3cret", "content-type": "application/json" }, body: `{"a":"O'Brien"}` };
    const curl = toCurl(req, { kind: "bearer", token: "s3cret" });
    expect(curl).toBe(`curl -sS -i -X POST 'http://h/p' -H "authorization: Bearer $ORANGE_TOKEN" -H 'content-type: application/json' --data-raw '{"a":"O'\\''Brien"}'`);
    expect(toCurl(req, { kind: "bearer", token: "s3cret" }, true)).toContain("Bearer s3cret");
  });
});

describe("end to end against our server", () => {
  let t: TestApp;
  let gateway: MockGateway;
  let scenarios: Scenario[];
  let options: Omit<RunOptions, "scenarios">;
  const lines: string[] = [];

  beforeAll(async () => {
    t = await createTestApp();
    await t.app.listen({ port: 0, host: "127.0.0.1" });
    gateway = await startMockGateway();
    scenarios = await loadScenarios([FIXTURES]);
    options = {
      target: `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`,
      auth: { kind: "bearer", token: TEST_TOKEN },
      modes: { ordering: "sync", update: "sync" },
      offer: "mba2-beta",
      offers: ["MBA-CAISSE-PRO", "MBA-CAISSE-PREMIUM"],
      gateway,
      eventTimeoutMs: 2000,
      requestTimeoutMs: 5000,
      log: (line) => lines.push(line),
    };
  });
  afterAll(async () => {
    await gateway?.close();
    await t?.close();
  });

  it("passes a correct scenario: UC2 order, consult by fleet, suspend", async () => {
    const report = await runScenarios({ ...options, scenarios, only: ["uc2"] });
    const failures = report.checks.filter((c) => c.outcome !== "pass");
    expect(failures).toEqual([]);
    expect(report.summary).toMatchObject({ scenarios: 1, failed: 0, skipped: 0 });
    expect(report.summary.passed).toBeGreaterThan(15);
    expect(report.checks.map((c) => `${c.step} › ${c.check}`)).toEqual(
      expect.arrayContaining(["order › status 201", "order › json orderItem.0.productRef.id", "list › schema UserServiceList", "suspend › json userService.0", "wrong-credentials › error"]),
    );
    expect(lines).toContain("✓ fixture-uc2-list-suspend › order › status 201");
    expect(report.checks.find((c) => c.step === "order")!.curl).toContain('"authorization: Bearer $ORANGE_TOKEN"');
  });

  it("fails a wrong expectation with expected, actual and curl, and skips the step that needed it", async () => {
    const report = await runScenarios({ ...options, scenarios, skip: ["uc2"] });
    const status = report.checks.find((c) => c.step === "order" && c.check === "status 200")!;
    expect(status).toMatchObject({ outcome: "fail", expected: "200" });
    expect(status.actual).toMatch(/^201 /);
    expect(status.curl).toMatch(/^curl -sS -i -X POST 'http:\/\/127\.0\.0\.1:\d+\/productordering\/v2\/productOrder'/);
    expect(status.curl).toContain(`O'\\''Brien`);
    expect(report.checks.find((c) => c.check === "json state")).toMatchObject({ outcome: "pass" });
    const skipped = report.checks.find((c) => c.step === "list")!;
    expect(skipped).toMatchObject({ outcome: "skip", check: "request", expected: "a value for ${fleetId}" });
    expect(report.summary).toMatchObject({ scenarios: 1, failed: 1, skipped: 1 });

    const text = renderText([report], { color: false });
    expect(text).toContain("FAIL fixture-wrong-expectation › order › status 200");
    expect(text).toContain(status.curl);
    expect(text).toContain("SKIP fixture-wrong-expectation › list › request");
    const html = renderHtml([report]);
    // The page's own filter script is the only one: the answer's <script> is text.
    expect(html.match(/<script>/g)).toHaveLength(1);
    expect(html).toContain("&lt;script&gt;");
    expect(JSON.parse(renderJson([report])).summary.failed).toBe(1);
  });
});

describe("events at the mock gateway", () => {
  let gateway: MockGateway;
  beforeAll(async () => {
    gateway = await startMockGateway();
  });
  afterAll(async () => gateway?.close());

  async function postEvent(api: string, body: unknown, opts: { withToken?: boolean } = {}): Promise<void> {
    const basic = Buffer.from(`${gateway.clientId}:${gateway.clientSecret}`).toString("base64");
    const token = await fetch(gateway.tokenUrl, {
      method: "POST",
      headers: { authorization: `Basic ${basic}`, "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
      body: "grant_type=client_credentials",
    }).then((r) => r.json() as Promise<{ access_token: string }>);
    await fetch(`${gateway.url}/mba2/${api}/v2/event`, {
      method: "POST",
      headers: {
        ...(opts.withToken === false ? {} : { authorization: `Bearer ${token.access_token}` }),
        "content-type": "application/json",
        accept: "application/json",
      },
      body: JSON.stringify(body),
    });
  }

  it("waits for a matching event, checks it, and checks every event's envelope", async () => {
    const order = { id: "po_1", state: "completed", externalReference: { type: "orange", id: "ORD-9" } };
    const scenario = parseScenarios(
      {
        name: "events",
        steps: [
          {
            id: "done",
            event: { api: "productordering", type: "completedStateNotification", where: { "resource.id": "po_1" }, schema: "ProductOrderResponse", json: { "resource.state": "completed" } },
            save: { orderId: "event.resource.id" },
          },
          { id: "never", event: { api: "userservice", type: "updateNotification", timeoutMs: 1000, where: { "resource.id": "${orderId}" } } },
        ],
      },
      "inline",
    );
    setTimeout(() => {
      void postEvent("productordering", { id: "ev_0", type: "completedStateNotification", time: "2026-05-02T09:15:02Z", resource: { ...order, id: "po_0" } });
      void postEvent("productordering", { id: "ev_1", type: "completedStateNotification", time: "2026-05-02T09:15:02.345Z", resource: order });
      // A partner that forgets the token: the mock answers 401, the simulator reports it.
      void postEvent(
        "productordering",
        { id: "ev_2", type: "completedStateNotification", time: "2026-05-02T09:15:02.345Z", resource: { ...order, id: "po_2" } },
        { withToken: false },
      );
    }, 50);
    const report: RunReport = await runScenarios({
      target: "http://127.0.0.1:9",
      auth: { kind: "none" },
      modes: { ordering: "async", update: "async" },
      offer: "mba2",
      offers: [],
      gateway,
      eventTimeoutMs: 3000,
      requestTimeoutMs: 1000,
      scenarios: scenario,
    });
    const byCheck = (step: string, check: string) => report.checks.find((c) => c.step === step && c.check === check);
    expect(byCheck("done", "event completedStateNotification")).toMatchObject({ outcome: "pass" });
    expect(byCheck("done", "event schema ProductOrderResponse")).toMatchObject({ outcome: "pass" });
    expect(byCheck("done", "event json resource.state")).toMatchObject({ outcome: "pass" });
    expect(byCheck("never", "event updateNotification")).toMatchObject({ outcome: "fail" });
    expect(byCheck("(events)", "productordering ev_0 envelope time")).toMatchObject({ outcome: "fail", actual: '"2026-05-02T09:15:02Z"' });
    expect(byCheck("(events)", "productordering ev_2 gateway answer")).toMatchObject({
      outcome: "fail",
      actual: expect.stringMatching(/^401 .*authorization absent/),
    });
    expect(byCheck("(events)", "productordering ev_1 gateway answer")).toBeUndefined();
    expect(report.summary.failed).toBe(3);
  });
});

describe("freePort", () => {
  const listen = (port: number): Promise<Server> =>
    new Promise((resolve, reject) => {
      const srv = createServer();
      srv.once("error", reject);
      srv.listen({ port, host: "127.0.0.1", exclusive: true }, () => resolve(srv));
    });

  // A port that listen(0) gave once can be given again to the next listen(0), or taken by an
  // outbound connection, before its own listener binds it: the simulator's mock application then
  // failed with EADDRINUSE (a CI run of test/simulate.test.ts).
  it.runIf(process.platform === "linux")("gives ports below the kernel's ephemeral range, that a listener can bind", async () => {
    const [low] = (await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8")).trim().split(/\s+/).map(Number);
    const ports = await Promise.all(Array.from({ length: 40 }, () => freePort()));
    for (const port of ports) {
      expect(port).toBeGreaterThanOrEqual(1024);
      expect(port).toBeLessThan(low!);
    }
    // At random, not a sequence another freePort caller would follow.
    expect(new Set(ports).size).toBeGreaterThan(30);
    const servers = await Promise.all([...new Set(ports)].slice(0, 5).map(listen));
    // What listen(0) gives meanwhile is never one of them.
    const others = await Promise.all(Array.from({ length: 20 }, () => listen(0)));
    for (const other of others) expect(ports).not.toContain((other.address() as AddressInfo).port);
    await Promise.all([...servers, ...others].map((s) => new Promise((r) => s.close(r))));
  });

  it("skips a port that is taken", async () => {
    const taken = await Promise.all(Array.from({ length: 5 }, async () => listen(await freePort())));
    const busy = taken.map((s) => (s.address() as AddressInfo).port);
    const ports = await Promise.all(Array.from({ length: 200 }, () => freePort()));
    for (const port of ports) expect(busy).not.toContain(port);
    await Promise.all(taken.map((s) => new Promise((r) => s.close(r))));
  });
});
