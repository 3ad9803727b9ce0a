import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunReport } from "../src/simulator/runner.js";
import { loadScenarios } from "../src/simulator/scenario.js";
import { createTestApp, TEST_TOKEN, type TestApp } from "./support/app.js";

/**
 * `npm run simulate` as CI runs it: the command-line program, in a child process, against this
 * repository's own server (self-hosted on its embedded database, sync then async), and against
 * a target whose declared modes are wrong, which must fail.
 */

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const CLI = join(ROOT, "src/simulator/cli.ts");

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

function simulate(args: string[], timeoutMs = 240_000): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", CLI, "--no-color", ...args],
      { cwd: ROOT, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NODE_OPTIONS: "" } },
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
  it("passes every built-in scenario against this server, sync then async, and writes the JSON and HTML reports", async () => {
    const json = join(dir, "self.json");
    const html = join(dir, "self.html");
    const run = await simulate(["--report-json", json, "--report-html", html]);
    // On failure, the report says which check failed, with what came back and the curl to replay it.
    expect(run.code, `${run.stdout.slice(-20_000)}\n${run.stderr}`).toBe(0);

    const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
    expect(report.runs.map((r) => r.modes)).toEqual([
      { ordering: "sync", update: "sync" },
      { ordering: "async", update: "async" },
    ]);
    const builtin = (await loadScenarios([join(ROOT, "scenarios")])).map((s) => s.name);
    expect(builtin.length).toBeGreaterThanOrEqual(9);
    for (const r of report.runs) {
      expect(r.summary).toMatchObject({ failed: 0, skipped: 0, scenarios: builtin.length });
      expect(new Set(r.checks.map((c) => c.scenario))).toEqual(new Set(builtin));
      // Every request is replayable.
      expect(r.checks.filter((c) => c.check.startsWith("status ")).every((c) => c.curl?.startsWith("curl "))).toBe(true);
    }
    // Async answers were followed by their events, each checked.
    const asyncChecks = report.runs[1]!.checks.map((c) => c.check);
    expect(asyncChecks).toContain("event completedStateNotification");
    expect(asyncChecks).toContain("event failedStateNotification");
    expect(asyncChecks).toContain("event updateNotification");
    expect(report.summary.failed).toBe(0);
    expect(report.summary.checks).toBe(report.runs[0]!.summary.checks + report.runs[1]!.summary.checks);

    const page = await readFile(html, "utf8");
    expect(page).toMatch(/^<!doctype html>/i);
    expect(page).not.toMatch(/<(script|link)\b[^>]*\b(src|href)=/i); // self-contained
    expect(page).toContain("uc2-first-order");
    // The terminal report: one line per check, then the overall summary.
    expect(run.stdout).toMatch(/^PASS uc2-first-order › /m);
    expect(run.stdout).toMatch(/overall OK: 2 run\(s\)/);
  }, 300_000);

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
      expect(run.stdout).toMatch(/overall FAILED/);
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
      expect(run.code, run.stdout.slice(-5000)).toBe(0);
      const report = JSON.parse(await readFile(json, "utf8")) as JsonReport;
      expect(report.runs).toHaveLength(1);
      expect(report.summary.failed).toBe(0);
      expect(report.summary.passed).toBeGreaterThan(5);
    }, 120_000);
  });

  it("refuses bad options with exit status 2 and the usage", async () => {
    const run = await simulate(["--ordering", "maybe"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("--ordering must be sync or async");
    expect(run.stderr).toContain("Usage: npm run simulate");
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
