import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { createCatalogue } from "../src/domain/catalogue.js";
import { retryDelayMs } from "../src/lib/backoff.js";
import { DEFAULT_OFFER, defaultOfferCodes, reportFiles, reportStamp, SELF_HOSTED_RETRY, SELF_HOSTED_SYNC_DEADLINE_MS } from "../src/simulator/cli.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { renderHtml, renderJunit, renderText } from "../src/simulator/report.js";
import { modeHint, runScenarios, type CheckResult, type RunOptions, type RunReport } from "../src/simulator/runner.js";
import { parseScenarios } from "../src/simulator/scenario.js";
import { junitTotals, parseXml } from "./support/simulator-junit.js";

/**
 * What a partner's CI needs from the simulator: quiet output, JUnit XML, per-run report files,
 * a grouped HTML page, the event URL's offer checked, the server's defaults, the mode hint.
 * The command-line runs are in simulate.test.ts.
 */

const ROOT = fileURLToPath(new URL("../", import.meta.url));

function check(scenario: string, step: string, outcome: CheckResult["outcome"], extra: Partial<CheckResult> = {}): CheckResult {
  return { scenario, step, check: `status 201`, outcome, expected: "201", actual: outcome === "pass" ? "201" : "500 {…}", ms: 12, ...extra };
}

/** A run of two scenarios: `alpha` passes, `beta` has a failure (with nasty characters) and a skip. */
function sampleRun(): RunReport {
  const nasty = `got <b>"it's"</b> & ]]> \x01\x1b[31m \uD800 ${"x".repeat(10)}`;
  const checks = [
    check("alpha", "one", "pass"),
    check("alpha", "two", "pass", { check: "json state" }),
    check("beta", "order", "fail", { actual: nasty, curl: "curl -sS -i -X POST 'http://t/p' --data-raw '{\"a\":\"<&>\"}'" }),
    check("beta", "list", "skip", { check: "request", expected: "a value for ${fleetId}", actual: "missing", ms: undefined }),
  ];
  const sum = (cs: CheckResult[], scenarios: number) => ({
    scenarios,
    checks: cs.length,
    passed: cs.filter((c) => c.outcome === "pass").length,
    failed: cs.filter((c) => c.outcome === "fail").length,
    skipped: cs.filter((c) => c.outcome === "skip").length,
  });
  return {
    target: "http://partner.test",
    targetVersion: { version: "2.3.4", source: "GET /health/ready, body version" },
    modes: { ordering: "sync", update: "async" },
    provisioning: { mode: "none" },
    offer: "mba2",
    offers: ["A", "B"],
    startedAt: "2026-05-02T09:15:02.345Z",
    finishedAt: "2026-05-02T09:15:04.000Z",
    durationMs: 1655,
    scenarios: [
      { name: "alpha", title: "Alpha & co", durationMs: 100, summary: sum(checks.slice(0, 2), 1) },
      { name: "beta", durationMs: 200, summary: sum(checks.slice(2), 1) },
    ],
    notPlayed: [],
    checks,
    summary: sum(checks, 2),
    observedModes: { ordering: { sync: 3, async: 0 }, update: { sync: 2, async: 0 } },
    modeHint: "hint: the target answered userService/update … : pass --update sync",
  };
}

describe("terminal report", () => {
  it("is quiet by default: failed and skipped checks with expected, got and curl, then the summary; --verbose prints every check", () => {
    const run = sampleRun();
    const quiet = renderText([run], { color: false });
    expect(quiet).not.toMatch(/^PASS /m);
    expect(quiet).toMatch(/^FAIL beta › order › status 201/m);
    expect(quiet).toContain(`     got:      ${run.checks[2]!.actual}`);
    expect(quiet).toContain(`     ${run.checks[2]!.curl}`);
    expect(quiet).toMatch(/^SKIP beta › list › request/m);
    expect(quiet).toContain("target version: 2.3.4 (GET /health/ready, body version)");
    expect(quiet).toMatch(/^FAILED: 2 scenario\(s\), 4 check\(s\): 2 passed, 1 failed, 1 skipped/m);
    expect(quiet).toContain("scenarios with failures: beta (2 check(s): 0 passed, 1 failed, 1 skipped)");
    expect(quiet).toContain("\nhint: the target answered userService/update");
    expect(quiet).toMatch(/overall FAILED: 1 run\(s\)/);

    const verbose = renderText([run], { color: false, verbose: true });
    expect(verbose).toMatch(/^PASS alpha › one › status 201 \(12 ms\)$/m);
    expect(verbose).toMatch(/^PASS alpha › two › json state/m);
    expect(verbose).toMatch(/^FAIL beta › order/m);
  });
});

describe("JUnit report", () => {
  it("is strict XML whatever the answers held: a testsuite per scenario, a testcase per check, failure and skipped, counts that add up", () => {
    const run = sampleRun();
    const second = { ...sampleRun(), modes: { ordering: "async", update: "async" } as const };
    const xml = renderJunit([run, second]);
    expect(xml.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites')).toBe(true);
    const totals = junitTotals(xml);
    expect(totals).toMatchObject({ tests: 8, failures: 2, skipped: 2 });
    expect(totals.suites.map((s) => s.attributes.name)).toEqual([
      "alpha [ordering sync, update async]",
      "beta [ordering sync, update async]",
      "alpha [ordering async, update async]",
      "beta [ordering async, update async]",
    ]);
    const beta = totals.suites[1]!;
    expect(beta.attributes).toMatchObject({ tests: "2", failures: "1", skipped: "1", time: "0.200", timestamp: "2026-05-02T09:15:02" });
    const [failed, skipped] = beta.children.filter((c) => c.name === "testcase");
    expect(failed!.attributes).toMatchObject({ classname: "orange-simulate.sync-async.beta", name: "order › status 201", time: "0.012" });
    const failure = failed!.children.find((c) => c.name === "failure")!;
    // The parsed text is what was reported, forbidden characters replaced, markup intact.
    expect(failure.attributes.message).toBe(`expected 201, got got <b>"it's"</b> & ]]> \uFFFD\uFFFD[31m \uFFFD xxxxxxxxxx`);
    expect(failure.text).toContain(`curl -sS -i -X POST 'http://t/p' --data-raw '{"a":"<&>"}'`);
    expect(failure.text).toContain("expected: 201\ngot:      got <b>");
    expect(skipped!.children.find((c) => c.name === "skipped")!.attributes.message).toBe("expected a value for ${fleetId}, got missing");
    const properties = beta.children.find((c) => c.name === "properties")!.children.map((p) => [p.attributes.name, p.attributes.value]);
    expect(properties).toEqual(
      expect.arrayContaining([
        ["target", "http://partner.test"],
        ["target.version", "2.3.4 (GET /health/ready, body version)"],
        ["hint", run.modeHint],
      ]),
    );
  });

  it("the test's parser is strict: it rejects what lenient parsers let through", () => {
    expect(() => parseXml("<a>\x01</a>")).toThrow(/disallowed character/);
    expect(() => parseXml('<a b="<"/>')).toThrow();
    expect(() => parseXml("<a>&nbsp;</a>")).toThrow(/undefined entity/);
  });
});

describe("HTML report", () => {
  it("groups checks by scenario in collapsible sections with their counts, filters failures inline, and shows the target's version and the date", () => {
    const page = renderHtml([sampleRun()]);
    // Self-contained: one inline script, no external asset.
    expect(page).not.toMatch(/<(script|link|img)\b[^>]*\b(src|href)=/i);
    expect(page.match(/<script>/g)).toHaveLength(1);
    expect(page).toContain('<input type="checkbox" id="failures-only">');
    expect(page).toContain('document.getElementById("failures-only")');
    expect(page).toContain("body.failures-only tr.pass");
    // On top, before the first run's section: date, target, version.
    const top = page.slice(0, page.indexOf("<h2>"));
    expect(top).toContain('<time datetime="2026-05-02T09:15:02.345Z">2026-05-02 09:15:02 UTC</time>');
    expect(top).toContain("http://partner.test · ordering sync · update async · offer mba2 · version 2.3.4 (GET /health/ready, body version)");
    // One section per scenario, in order; the failing one open.
    const sections = [...page.matchAll(/<details class="scenario (ok|bad)"( open)?>\n<summary>(.*?)<\/summary>/g)];
    expect(sections.map((m) => [m[1], m[2] ?? ""])).toEqual([
      ["ok", ""],
      ["bad", " open"],
    ]);
    expect(sections[0]![3]).toContain("alpha <small>— 2 check(s): 2 passed · 100 ms · Alpha &amp; co</small>");
    expect(sections[1]![3]).toContain("beta <small>— 2 check(s): 0 passed, 1 failed, 1 skipped · 200 ms</small>");
    const beta = page.slice(page.indexOf('<details class="scenario bad"'));
    expect(beta.indexOf('<tr class="fail">')).toBeLessThan(beta.indexOf("</details>\n<"));
    expect(page).toContain("&lt;b&gt;&quot;it&#39;s&quot;&lt;/b&gt;");
    expect(page).toContain('<p class="hint">hint: the target answered userService/update');
  });
});

describe("report files", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "simulate-files-"));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it("are named after the run's UTC time, never a previous run's; --report-dir adds the JUnit file; explicit names win", async () => {
    const at = new Date("2026-05-02T09:15:02.345Z");
    expect(reportStamp(at)).toBe("20260502T091502Z");
    const reports = join(dir, "reports");
    const first = await reportFiles({ "report-dir": reports }, at);
    expect(first).toEqual({
      json: join(reports, "simulate-report-20260502T091502Z.json"),
      html: join(reports, "simulate-report-20260502T091502Z.html"),
      junit: join(reports, "simulate-report-20260502T091502Z.xml"),
    });
    await writeFile(first.html, "");
    // A second run in the same second does not overwrite the first.
    expect(await reportFiles({ "report-dir": reports }, at)).toMatchObject({ json: join(reports, "simulate-report-20260502T091502Z-2.json") });
    expect(await reportFiles({ "report-dir": reports, "report-junit": "ci/junit.xml", "report-json": "r.json" }, at)).toEqual({
      json: resolve("r.json"),
      html: join(reports, "simulate-report-20260502T091502Z-2.html"),
      junit: resolve("ci/junit.xml"),
    });
    // Without --report-dir: JSON and HTML in the working directory, no JUnit unless asked.
    expect(await reportFiles({}, at)).toEqual({
      json: resolve("simulate-report-20260502T091502Z.json"),
      html: resolve("simulate-report-20260502T091502Z.html"),
    });
  });

  it("are ignored by git under their default names", () => {
    const ignored = readFileSync(join(ROOT, ".gitignore"), "utf8").split("\n");
    expect(ignored).toEqual(expect.arrayContaining(["simulate-report-*.json", "simulate-report-*.html", "simulate-report-*.xml"]));
  });
});

describe("the server's defaults", () => {
  it("posts events under the server's default offer and orders the codes of its default catalogue", async () => {
    const config = loadConfig({ INBOUND_BEARER_TOKEN: "x" });
    expect(DEFAULT_OFFER).toBe(config.orange.offer);
    const catalogue = createCatalogue(JSON.parse(readFileSync(resolve(ROOT, config.catalogueFile), "utf8")));
    expect(await defaultOfferCodes()).toEqual(catalogue.codes());
  });

  it("names the file when the catalogue cannot be read", async () => {
    await expect(defaultOfferCodes(join(ROOT, "config/nope.json"))).rejects.toThrow(/config\/nope\.json .*give --offers/);
  });
});

describe("the self-hosted webhook run's retries", () => {
  it("last past the sync deadline while the application is down, even when every jittered delay draws a tenth of its ceiling", () => {
    // The server's bounds as the self-hosted run sets them (the attempts, the server's default
    // of 12 before the fix: every delay drawn low, they were spent in 470 ms, and chain-down's
    // order ended `failed` where it expects a 503).
    const { retry } = loadConfig({ INBOUND_BEARER_TOKEN: "x", ...SELF_HOSTED_RETRY }).provisioning;
    let spentMs = 0;
    for (let attempt = 1; attempt < retry.maxAttempts; attempt++) spentMs += retryDelayMs(retry, attempt, undefined, () => 0.1);
    expect(spentMs).toBeGreaterThan(10 * SELF_HOSTED_SYNC_DEADLINE_MS);
  });
});

describe("mode hint", () => {
  const none = { sync: 0, async: 0 };
  it.each([
    ["sync declared, acknowledged answers", { ordering: "sync", update: "sync" }, { ordering: { sync: 0, async: 4 }, update: none }, "pass --ordering async"],
    ["async declared, completed answers", { ordering: "async", update: "async" }, { ordering: none, update: { sync: 3, async: 0 } }, "pass --update sync"],
    ["both", { ordering: "async", update: "sync" }, { ordering: { sync: 2, async: 0 }, update: { sync: 0, async: 1 } }, "pass --ordering sync --update async"],
  ] as const)("%s", (_name, declared, observed, pass) => {
    const hint = modeHint(declared, observed)!;
    expect(hint.endsWith(`: ${pass}`)).toBe(true);
    expect(hint).not.toContain("\n");
  });
  it("says the answer and the declared option", () => {
    expect(modeHint({ ordering: "sync", update: "sync" }, { ordering: { sync: 0, async: 4 }, update: none })).toBe(
      'hint: the target answered productOrder "acknowledged" (4 answer(s)) although the run declared --ordering sync: pass --ordering async',
    );
  });
  it.each([
    ["answers as declared", { ordering: { sync: 3, async: 0 }, update: { sync: 2, async: 0 } }],
    ["no answer", { ordering: none, update: none }],
    ["a target mixing both", { ordering: { sync: 2, async: 2 }, update: none }],
  ])("none when %s", (_name, observed) => {
    expect(modeHint({ ordering: "sync", update: "sync" }, observed)).toBeUndefined();
  });
});

describe("event URL offer and target version", () => {
  let gateway: MockGateway;
  let target: Server;
  let targetUrl: string;
  let health: Record<string, unknown> = {};

  beforeAll(async () => {
    gateway = await startMockGateway({ offer: "mba2" });
    // A partner server stand-in: /ping, and /health/ready saying what the test sets.
    target = createServer((req, res) => {
      const body = req.url === "/ping" ? { status: "ok" } : req.url === "/health/ready" ? health : undefined;
      res.writeHead(body ? 200 : 404, { "content-type": "application/json" }).end(JSON.stringify(body ?? { code: 60, message: "Not found", description: req.url }));
    });
    await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
    targetUrl = `http://127.0.0.1:${(target.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await gateway?.close();
    await new Promise((r) => target?.close(r));
  });

  async function postEvent(offer: string, id: string): Promise<number> {
    const basic = Buffer.from(`${gateway.clientId}:${gateway.clientSecret}`).toString("base64");
    const token = await fetch(gateway.tokenUrl, {
      method: "POST",
      headers: { authorization: `Basic ${basic}`, "content-type": "application/x-www-form-urlencoded" },
      body: "grant_type=client_credentials",
    }).then((r) => r.json() as Promise<{ access_token: string }>);
    const order = { id: `po_${id}`, state: "completed", externalReference: { type: "orange", id: `ORD-${id}` } };
    const res = await fetch(`${gateway.url}/${offer}/productordering/v2/event`, {
      method: "POST",
      headers: { authorization: `Bearer ${token.access_token}`, "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ id, type: "completedStateNotification", time: "2026-05-02T09:15:02.345Z", resource: order }),
    });
    return res.status;
  }

  const pingScenario = () =>
    parseScenarios({ name: "ping", steps: [{ id: "ping", request: { path: "/ping" }, expect: { status: 200, schema: "Ping" } }] }, "inline");

  it("fails an event posted under another offer than the run's, naming the expected and the received path", async () => {
    // The wrong one first: the scenario ends with the event it waits for.
    let statuses: Promise<number[]> = Promise.resolve([]);
    setTimeout(() => {
      statuses = (async () => [await postEvent("mba2-beta", "ev_beta"), await postEvent("mba2", "ev_ok")])();
    }, 50);
    const report = await runScenarios({
      target: targetUrl,
      auth: { kind: "none" },
      modes: { ordering: "async", update: "async" },
      offer: "mba2",
      offers: [],
      gateway,
      eventTimeoutMs: 3000,
      requestTimeoutMs: 2000,
      knownVersion: { version: "test", source: "no probe, so that the events come during the scenario" },
      scenarios: parseScenarios(
        { name: "wait", steps: [{ id: "done", event: { api: "productordering", type: "completedStateNotification", where: { "resource.id": "po_ev_ok" } } }] },
        "inline",
      ),
    });
    // The gateway serves /mba2 only, as Orange's would.
    expect(await statuses).toEqual([404, 201]);
    expect(gateway.received.map((e) => [e.offer, e.status]).sort()).toEqual([
      ["mba2", 201],
      ["mba2-beta", 404],
    ]);
    expect(report.checks.find((c) => c.step === "done")).toMatchObject({ outcome: "pass" });
    // The wrong offer is one failure (its 404 is not reported again as a gateway answer).
    expect(report.checks.filter((c) => c.step === "(events)")).toEqual([
      expect.objectContaining({
        check: "productordering ev_beta event URL",
        outcome: "fail",
        expected: expect.stringContaining("POST /mba2/productordering/v2/event"),
        actual: "POST /mba2-beta/productordering/v2/event (offer mba2-beta; the gateway answered 404)",
      }),
    ]);
    expect(report.summary).toMatchObject({ failed: 1, passed: 1 });
    gateway.reset();
  });

  it("reads the target's version from /ping or /health*, and says so when it states none", async () => {
    health = { status: "ok", build: { version: "2.3.4" } };
    const options: RunOptions = {
      target: targetUrl,
      auth: { kind: "none" },
      modes: { ordering: "sync", update: "sync" },
      offer: "mba2",
      offers: [],
      gateway,
      eventTimeoutMs: 1000,
      requestTimeoutMs: 2000,
      scenarios: pingScenario(),
    };
    const stated = await runScenarios(options);
    expect(stated.summary).toMatchObject({ failed: 0, passed: 3 });
    expect(stated.targetVersion).toEqual({ version: "2.3.4", source: "GET /health/ready, body build.version" });
    expect(renderText([stated], { color: false })).toContain("target version: 2.3.4 (GET /health/ready, body build.version)");

    health = { status: "ok" };
    const silent = await runScenarios(options);
    expect(silent.targetVersion.version).toBeUndefined();
    expect(silent.targetVersion.source).toMatch(/^not stated by the target \(GET \/ping, \/health\/ready/);
    // What is known instead: URL and modes, with it.
    expect(renderText([silent], { color: false })).toContain(`== ${targetUrl} · ordering sync · update sync · offer mba2\n   target version: not stated`);
  });
});
