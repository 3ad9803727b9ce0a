import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunReport } from "../src/simulator/runner.js";
import { loadScenarios } from "../src/simulator/scenario.js";
import { newWebhookSecret, startMockApplication } from "../src/simulator/application.js";
import { freePort } from "../src/simulator/self-host.js";
import { junitTotals } from "./support/simulator-junit.js";
import { createTestApp, TEST_TOKEN, type TestApp } from "./support/app.js";

/**
 * `npm run simulate` as CI runs it: the command-line program, in a child process, against this
 * repository's own server (self-hosted on its embedded database: sync, async, then
 * PROVISIONING_MODE=webhook in front of the simulator's mock application), against a target whose
 * declared modes are wrong, which must fail, and against a target in webhook mode.
 */

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const STAMPED = /^simulate-report-\d{8}T\d{6}Z(-\d+)?\.(json|html|xml)$/;
const CLI = join(ROOT, "src/simulator/cli.ts");
const BIN = join(ROOT, "bin/orange-simulate.mjs");

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** The CLI in a child process; with `cwd`, through the package's bin (tsx resolved from the package, not the cwd). */
function simulate(args: string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<Outcome> {
  const entry = opts.cwd === undefined ? ["--import", "tsx", CLI] : [BIN];
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [...entry, "--no-color", ...args],
      { cwd: opts.cwd ?? ROOT, timeout: opts.timeoutMs ?? 240_000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NODE_OPTIONS: "" } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

interface JsonReport {
  summary: RunReport["summary"];
  runs: RunReport[];
}

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "simulate-test-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("npm run simulate", () => {
  it("passes every built-in scenario against this server, sync, async, then through the application (webhook), quietly, and writes the JSON, HTML and JUnit reports", async () => {
    const reports = join(dir, "self");
    const junit = join(dir, "self-junit.xml");
    const run = await simulate(["--report-dir", reports, "--report-junit", junit]);
    // On failure, the report says which check failed, with what came back and the curl to replay it.
    expect(run.code, `${run.stdout.slice(-20_000)}\n${run.stderr}`).toBe(0);

    // --report-dir: time-stamped names; the explicit --report-junit wins over the directory.
    const files = (await readdir(reports)).sort();
    expect(files).toHaveLength(2);
    expect(files.every((f) => STAMPED.test(f))).toBe(true);
    const [json, html] = [join(reports, files.find((f) => f.endsWith(".json"))!), join(reports, files.find((f) => f.endsWith(".html"))!)];
    expect(run.stdout).toContain(`reports: ${json}, ${html}, ${junit}`);

    const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
    expect(report.runs.map((r) => [r.modes, r.provisioning.mode])).toEqual([
      [{ ordering: "sync", update: "sync" }, "none"],
      [{ ordering: "async", update: "async" }, "none"],
      // One webhook run: orders wait for the application (sync), updates get their events (async).
      [{ ordering: "sync", update: "async" }, "webhook"],
    ]);
    const scenarios = await loadScenarios([join(ROOT, "scenarios")]);
    const chain = scenarios.filter((s) => s.when?.provisioning === "webhook").map((s) => s.name);
    expect(chain).toEqual(["chain-provisioned", "chain-refused", "chain-late", "chain-down"]);
    const builtin = scenarios.filter((s) => !chain.includes(s.name)).map((s) => s.name);
    expect(builtin.length).toBeGreaterThanOrEqual(9);
    const played = (r: RunReport) => (r.provisioning.mode === "webhook" ? [...builtin, ...chain] : builtin);
    const catalogue = (JSON.parse(await readFile(join(ROOT, "config/catalogue.json"), "utf8")) as { offers: { code: string }[] }).offers;
    for (const r of report.runs) {
      expect(r.summary).toMatchObject({ failed: 0, skipped: 0, scenarios: played(r).length });
      expect(r.notPlayed).toEqual([]);
      // The server's defaults: offer mba2 in the event URLs, the codes of its default catalogue.
      expect(r).toMatchObject({ offer: "mba2", offers: catalogue.map((o) => o.code) });
      expect(r.targetVersion).toEqual({ version: "orange-partner-server 0.1.0", source: "this repository's server, self-hosted" });
      expect(r.scenarios.map((s) => s.name)).toEqual(played(r));
      expect(r.modeHint).toBeUndefined();
      expect(new Set(r.checks.map((c) => c.scenario))).toEqual(new Set(played(r)));
      // Every request is replayable.
      expect(r.checks.filter((c) => c.check.startsWith("status ")).every((c) => c.curl?.startsWith("curl "))).toBe(true);
    }
    // Async answers were followed by their events, each checked.
    const asyncChecks = report.runs[1]!.checks.map((c) => c.check);
    expect(asyncChecks).toContain("event completedStateNotification");
    expect(asyncChecks).toContain("event failedStateNotification");
    expect(asyncChecks).toContain("event updateNotification");
    expect(report.runs[1]!.checks.filter((c) => c.check === "envelope and schema of every event").map((c) => c.expected)).toContain(
      "on /mba2/…/v2/event: id, type, time, resource and its schema",
    );
    expect(report.summary.failed).toBe(0);
    expect(report.summary.checks).toBe(report.runs.reduce((n, r) => n + r.summary.checks, 0));

    // The webhook run: through the mock application, every command checked on its side too.
    const webhook = report.runs[2]!;
    expect(webhook.provisioning.application).toMatch(/^the simulator's mock application, http:\/\/127\.0\.0\.1:\d+\/webhooks\/orange$/);
    const check = (scenario: string, step: string, name: string) =>
      webhook.checks.find((c) => c.scenario === scenario && c.step === step && c.check === name && c.outcome === "pass");
    // Every scenario (the built-in suite's too) had its deliveries checked: signed, one webhook-id per request.
    for (const name of played(webhook)) if (name !== "ping") expect(check(name, "(application)", "every command signed, one webhook-id per request"), name).toBeDefined();
    // Refused: Orange got failed with the application's reason, and nothing was created.
    expect(check("chain-refused", "order", "json note.text")?.actual).toMatch(/the partner's application refused it: no seat left on this plan/);
    expect(check("chain-refused", "refused", "application json statuses")?.actual).toBe("[409]");
    expect(check("chain-refused", "noLicence", "status 404")).toBeDefined();
    // Late: sync, a 503 then the retry's outcome; async (the update), the event; the result went through the result route.
    expect(check("chain-late", "order", "status 503")).toBeDefined();
    expect(check("chain-late", "orderRetry", "json state")?.actual).toBe('"completed"');
    expect(check("chain-late", "suspendAsync", "event updateNotification")).toBeDefined();
    expect(check("chain-late", "orderCommand", "application json results")?.actual).toContain('"status":200');
    // Down then back: the same webhook-id on every try, carried out once.
    expect(check("chain-down", "completedOnce", "application one webhook-id")).toBeDefined();
    expect(check("chain-down", "completedOnce", "application json applied")?.actual).toBe("1");
    expect(check("chain-down", "suspendEvent", "event updateNotification")).toBeDefined();

    // JUnit: one testsuite per scenario and run, its counts those of the JSON report.
    const totals = junitTotals(await readFile(junit, "utf8"));
    expect(totals.suites).toHaveLength(2 * builtin.length + builtin.length + chain.length);
    expect(totals).toMatchObject({ tests: report.summary.checks, failures: 0, skipped: 0 });

    const page = await readFile(html, "utf8");
    expect(page).toMatch(/^<!doctype html>/i);
    expect(page).not.toMatch(/<(script|link)\b[^>]*\b(src|href)=/i); // self-contained
    expect(page.match(/<details class="scenario ok">/g)).toHaveLength(3 * builtin.length + chain.length);
    expect(page).toContain("uc2-first-order <small>— ");
    expect(page.slice(0, page.indexOf("<h2>"))).toContain("version orange-partner-server 0.1.0");
    // The terminal report, quiet: no line per passed check, the summaries.
    expect(run.stdout).not.toMatch(/^PASS /m);
    expect(run.stdout.split("\n").length).toBeLessThan(80);
    expect(run.stdout).toMatch(/^OK: 9 scenario\(s\), \d+ check\(s\): \d+ passed, 0 failed, 0 skipped/m);
    expect(run.stdout).toMatch(/^== http:\/\/127\.0\.0\.1:\d+ · ordering sync · update async · provisioning webhook · offer mba2$/m);
    expect(run.stdout).toMatch(/^OK: 13 scenario\(s\), \d+ check\(s\): \d+ passed, 0 failed, 0 skipped/m);
    expect(run.stdout).toMatch(/overall OK: 3 run\(s\)/);
  }, 400_000);

  describe("against a target", () => {
    let t: TestApp;
    let target: string;

    beforeAll(async () => {
      t = await createTestApp();
      await t.app.listen({ port: 0, host: "127.0.0.1" });
      target = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      await t?.close();
    });

    it("fails, with expected, got and curl, when the target does not answer as declared", async () => {
      // The server answers synchronously; told it is asynchronous, the simulator must object.
      const json = join(dir, "wrong-mode.json");
      const junit = join(dir, "wrong-mode.xml");
      const run = await simulate([
        "--target",
        target,
        "--auth-bearer",
        TEST_TOKEN,
        "--ordering",
        "async",
        "--only",
        "uc2-first-order",
        "--event-timeout",
        "500",
        "--report-json",
        json,
        "--report-html",
        join(dir, "wrong-mode.html"),
        "--report-junit",
        junit,
      ]);
      expect(run.code, run.stderr).toBe(1);
      const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
      const failed = report.runs[0]!.checks.filter((c) => c.outcome === "fail");
      expect(failed.length).toBeGreaterThan(0);
      const state = failed.find((c) => c.check === "json state");
      expect(state).toMatchObject({ scenario: "uc2-first-order", expected: expect.stringContaining("acknowledged") });
      expect(state?.actual).toContain("completed");
      expect(state?.curl).toContain(`${target}/productordering/v2/productOrder`);
      // The bearer token is not printed unless asked.
      expect(state?.curl).not.toContain(TEST_TOKEN);
      expect(run.stdout).toMatch(/^FAIL uc2-first-order › /m);
      expect(run.stdout).toContain(`     got:      ${state!.actual}`);
      expect(run.stdout).toContain(`     ${state!.curl}`);
      expect(run.stdout).not.toMatch(/^PASS /m);
      expect(run.stdout).toMatch(/overall FAILED/);
      // The answers say the target is sync: one line says which option to pass.
      const hint = 'hint: the target answered productOrder "completed"/"failed" (1 answer(s)) although the run declared --ordering async: pass --ordering sync';
      expect(report.runs[0]!.modeHint).toBe(hint);
      expect(run.stdout.split("\n")).toContain(hint);
      // The same failures and skips in the JUnit file.
      const { summary } = report;
      expect(junitTotals(await readFile(junit, "utf8"))).toMatchObject({ tests: summary.checks, failures: summary.failed, skipped: summary.skipped });
    }, 120_000);

    it("names the reports after the run's time in the working directory, and prints every check with --verbose", async () => {
      const cwd = join(dir, "cwd");
      await mkdir(cwd);
      const run = await simulate(["--target", target, "--auth-bearer", TEST_TOKEN, "--only", "ping", "--verbose"], { cwd });
      expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
      // No JUnit file unless asked (a second run in the same second gets -2: simulator-ci.test.ts).
      const files = (await readdir(cwd)).sort();
      expect(files.map((f) => f.replace(/\.\w+$/, ""))).toEqual([files[0]!.replace(/\.\w+$/, ""), files[0]!.replace(/\.\w+$/, "")]);
      expect(files.map((f) => [STAMPED.test(f), f.split(".").at(-1)])).toEqual([
        [true, "html"],
        [true, "json"],
      ]);
      expect(run.stdout).toMatch(/^✓ ping › ping › status 200$/m); // live
      expect(run.stdout).toMatch(/^PASS ping › ping › status 200/m); // final report
    }, 120_000);

    it("plays a partner's own scenario file with the built-in suite left out", async () => {
      const json = join(dir, "own.json");
      const run = await simulate([
        "--target",
        target,
        "--auth-bearer",
        TEST_TOKEN,
        "--no-builtin",
        "--scenarios",
        join(ROOT, "test/fixtures/simulator/good.yaml"),
        "--report-json",
        json,
        "--report-html",
        join(dir, "own.html"),
      ]);
      expect(run.code, `${run.stdout.slice(-5000)}\n${run.stderr}`).toBe(0);
      const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
      expect(report.runs).toHaveLength(1);
      expect(report.summary.failed).toBe(0);
      expect(report.summary.passed).toBeGreaterThan(5);
    }, 120_000);
  });

  describe("against a target in webhook mode", () => {
    const APP_TOKEN = "app-token-simulate-test-e41a";
    const secret = newWebhookSecret();
    let t: TestApp;
    let target: string;
    let appPort: number;

    beforeAll(async () => {
      appPort = await freePort();
      t = await createTestApp({
        env: {
          APP_TOKEN,
          PROVISIONING_MODE: "webhook",
          PROVISIONING_URL: `http://127.0.0.1:${appPort}/webhooks/orange`,
          PROVISIONING_SECRET: secret,
          PROVISIONING_SYNC_DEADLINE_MS: "1000",
        },
      });
      await t.app.listen({ port: 0, host: "127.0.0.1" });
      target = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      await t?.close();
    });

    it("hosts the mock application the target sends its commands to, and plays the chain scenarios", async () => {
      const json = join(dir, "target-webhook.json");
      const run = await simulate([
        ...["--target", target, "--auth-bearer", TEST_TOKEN, "--provisioning", "webhook", "--app-port", String(appPort)],
        ...["--app-secret", secret, "--app-token", APP_TOKEN, "--sync-deadline", "1000", "--only", "chain-refused,chain-late"],
        ...["--report-json", json, "--report-html", join(dir, "target-webhook.html")],
      ]);
      expect(run.code, `${run.stdout.slice(-10_000)}\n${run.stderr}`).toBe(0);
      expect(run.stdout).toContain(`mock application: the target must send its commands to PROVISIONING_URL=http://127.0.0.1:${appPort}/webhooks/orange`);
      const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
      expect(report.runs[0]!.scenarios.map((s) => s.name)).toEqual(["chain-refused", "chain-late"]);
      expect(report.summary).toMatchObject({ failed: 0, skipped: 0 });
      // The late result reached the target through its result route, with its APP_TOKEN.
      expect(await t.db.provisioningCommand.count({ where: { endedBy: "application", state: "done" } })).toBe(2);
    }, 120_000);

    it("with --app-url, plays the suite through the target's own application, and lists the chain scenarios as not played", async () => {
      // The partner's own application, where the target's PROVISIONING_URL points.
      const own = await startMockApplication({ secret, port: appPort });
      try {
        const json = join(dir, "target-app-url.json");
        const run = await simulate([
          ...["--target", target, "--auth-bearer", TEST_TOKEN, "--app-url", own.webhookUrl, "--only", "uc2-first-order,chain"],
          ...["--report-json", json, "--report-html", join(dir, "target-app-url.html")],
        ]);
        expect(run.code, `${run.stdout.slice(-10_000)}\n${run.stderr}`).toBe(0);
        const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
        expect(report.runs[0]!.scenarios.map((s) => s.name)).toEqual(["uc2-first-order"]);
        expect(report.runs[0]!.notPlayed.map((n) => n.scenario)).toEqual(["chain-provisioned", "chain-refused", "chain-late", "chain-down"]);
        expect(run.stdout).toContain(
          `   not played: chain-refused: it sets the behaviour of the simulator's mock application, and the target's own application is behind --app-url ${own.webhookUrl}`,
        );
        expect(own.records().map((r) => r.type)).toEqual(["licences.provision"]);
      } finally {
        await own.close();
      }
    }, 120_000);
  });

  it("refuses bad options with exit status 2 and the usage", async () => {
    const run = await simulate(["--ordering", "maybe"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("--ordering must be sync or async");
    expect(run.stderr).toContain("Usage: npm run simulate");
    const webhook = await simulate(["--target", "http://127.0.0.1:9", "--provisioning", "webhook"]);
    expect(webhook.code).toBe(2);
    expect(webhook.stderr).toMatch(/^--provisioning webhook against a --target hosts the mock application .*: give --app-secret/);
    const secret = await simulate(["--target", "http://127.0.0.1:9", "--provisioning", "webhook", "--app-secret", "whsec_short"]);
    expect(secret.code).toBe(2);
    expect(secret.stderr).toContain("--app-secret must be whsec_ followed by");
  });

  it("is runnable as the package's bin (npx orange-simulate)", async () => {
    const out = await new Promise<Outcome>((resolve) => {
      execFile(process.execPath, [join(ROOT, "bin/orange-simulate.mjs"), "--help"], { cwd: ROOT }, (err, stdout, stderr) =>
        resolve({ code: err ? -1 : 0, stdout, stderr }),
      );
    });
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toContain("Usage: npm run simulate");
  });
});
