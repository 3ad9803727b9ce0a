import { readdirSync, readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { dirname, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { commandRecords, deliveryFailures, newWebhookSecret, startMockApplication, type Delivery, type MockApplication } from "../src/simulator/application.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { renderText } from "../src/simulator/report.js";
import { runScenarios, type RunOptions } from "../src/simulator/runner.js";
import { loadScenarios, type Scenario } from "../src/simulator/scenario.js";
import { freePort } from "../src/simulator/self-host.js";
import { createTestApp, TEST_TOKEN, type TestApp } from "./support/app.js";
import { startWorker, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * The simulator's chain scenarios (scenarios/9x-chain-*.yaml) against this server with
 * PROVISIONING_MODE=webhook and the simulator's mock application, in this process, in the modes
 * the CLI's self-hosted webhook run does not use (ordering async, update sync); and what the
 * chain checks say when the chain is broken. test/simulate.test.ts runs the CLI's own webhook run.
 */

const SCENARIOS = fileURLToPath(new URL("../scenarios/", import.meta.url));
const APP_TOKEN = "app-token-simulator-chain-7c1d";
const CHAIN = ["chain-provisioned", "chain-refused", "chain-late", "chain-down"];

interface Chain {
  t: TestApp;
  app: MockApplication;
  worker: WorkerHarness;
  target: string;
  close(): Promise<void>;
}

/** This server in webhook mode (signing with `serverSecret`) and the mock application (verifying with `appSecret`). */
async function chain(gateway: MockGateway, opts: { serverSecret: string; appSecret: string; env?: Record<string, string> }): Promise<Chain> {
  const appPort = await freePort();
  const t = await createTestApp({
    env: {
      APP_TOKEN,
      PROVISIONING_MODE: "webhook",
      PROVISIONING_URL: `http://127.0.0.1:${appPort}/webhooks/orange`,
      PROVISIONING_SECRET: opts.serverSecret,
      PROVISIONING_RETRY_BASE_MS: "50",
      PROVISIONING_RETRY_MAX_MS: "300",
      PROVISIONING_SYNC_DEADLINE_MS: "1000",
      ORDERING_MODE: "async",
      UPDATE_MODE: "sync",
      ...opts.env,
    },
  });
  await t.app.listen({ port: 0, host: "127.0.0.1" });
  const target = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
  const app = await startMockApplication({ secret: opts.appSecret, port: appPort, serverUrl: target, appToken: APP_TOKEN });
  const worker = await startWorker(gateway, t.url, { tasks: t.services.requestTasks });
  return {
    t,
    app,
    worker,
    target,
    async close() {
      await worker.stop();
      await app.close();
      await t.close();
    },
  };
}

let gateway: MockGateway;
let scenarios: Scenario[];
const base = (target: string): Omit<RunOptions, "scenarios"> => ({
  target,
  auth: { kind: "bearer", token: TEST_TOKEN },
  modes: { ordering: "async", update: "sync" },
  offer: "mba2",
  offers: ["MBA-CAISSE-PRO", "MBA-CAISSE-PREMIUM"],
  gateway,
  eventTimeoutMs: 8_000,
  requestTimeoutMs: 8_000,
});

beforeAll(async () => {
  gateway = await startMockGateway();
  scenarios = await loadScenarios([SCENARIOS]);
});
afterAll(async () => {
  await gateway?.close();
});

describe("the chain scenarios through the mock application", () => {
  let c: Chain;
  beforeAll(async () => {
    const secret = newWebhookSecret();
    c = await chain(gateway, { serverSecret: secret, appSecret: secret });
  });
  afterAll(async () => c?.close());

  it("pass against this server in webhook mode, ordering async and update sync, checking what Orange saw and what the application received", async () => {
    const report = await runScenarios({
      ...base(c.target),
      scenarios,
      only: ["chain"],
      provisioning: { mode: "webhook", application: c.app, syncDeadlineMs: 1000 },
    });
    expect(report.checks.filter((x) => x.outcome !== "pass").map((x) => `${x.scenario} › ${x.step} › ${x.check}: expected ${x.expected}, got ${x.actual}`)).toEqual([]);
    expect(report.scenarios.map((s) => s.name)).toEqual(CHAIN);
    expect(report.notPlayed).toEqual([]);
    expect(report.provisioning).toEqual({ mode: "webhook", application: `the simulator's mock application, ${c.app.webhookUrl}` });
    const passed = (scenario: string, step: string, check: string) =>
      report.checks.find((x) => x.scenario === scenario && x.step === step && x.check === check && x.outcome === "pass");
    // The async variants of the orders and the sync variants of the updates were the ones played.
    expect(passed("chain-refused", "orderAsync", "event failedStateNotification")).toBeDefined();
    expect(passed("chain-late", "orderAsync", "event completedStateNotification")).toBeDefined();
    expect(passed("chain-late", "suspend", "status 503")).toBeDefined();
    expect(passed("chain-late", "suspendRetry", "json state")).toBeDefined();
    expect(passed("chain-down", "suspendRetry", "json state")).toBeDefined();
    expect(passed("chain-down", "completedOnce", "application json applied")).toBeDefined();
    for (const name of CHAIN) expect(passed(name, "(application)", "every command signed, one webhook-id per request")).toBeDefined();

    // What the checks said is what happened: the down order was sent several times under one id, carried out once.
    const down = c.app.records().find((r) => JSON.stringify(r.body).includes("CHAIN-DOWN-ORD"))!;
    expect(down.webhookIds).toHaveLength(1);
    expect(down.statuses.at(-1)).toBe(200);
    expect(down.statuses.filter((s) => s === 503).length).toBeGreaterThanOrEqual(2);
    const order = await c.t.db.productOrder.findFirstOrThrow({ where: { orangeRef: { endsWith: "CHAIN-DOWN-ORD" } } });
    expect(await c.t.db.provisioningCommand.findFirstOrThrow({ where: { requestId: order.id } })).toMatchObject({ id: down.webhookId, state: "done" });
    expect(await c.t.db.licence.count({ where: { orderId: order.id } })).toBe(2);
    // The refused order left nothing behind.
    const refused = await c.t.db.productOrder.findFirstOrThrow({ where: { orangeRef: { endsWith: "CHAIN-NO-ORD" } } });
    expect(refused.state).toBe("failed");
    expect(await c.t.db.licence.count({ where: { orderId: refused.id } })).toBe(0);
  }, 90_000);
});

describe("what the chain checks say when the chain is broken", () => {
  it("a server signing with another secret: the application refuses every command, and the signature checks fail", async () => {
    const c = await chain(gateway, { serverSecret: newWebhookSecret(), appSecret: newWebhookSecret(), env: { PROVISIONING_MAX_ATTEMPTS: "1", ORDERING_MODE: "sync" } });
    try {
      const report = await runScenarios({
        ...base(c.target),
        modes: { ordering: "sync", update: "sync" },
        eventTimeoutMs: 1_000,
        scenarios,
        only: ["chain-provisioned"],
        provisioning: { mode: "webhook", application: c.app, syncDeadlineMs: 1000 },
      });
      const failed = (step: string, check: string) => report.checks.find((x) => x.step === step && x.check === check && x.outcome === "fail");
      // Orange was told failed (the server parked the command the application refused)…
      expect(failed("order", "json state")?.actual).toBe('"failed"');
      // … and the application's side says why.
      const [sent] = c.app.deliveries();
      expect(sent).toMatchObject({ verified: false, status: 401, webhookId: expect.stringMatching(/^pc_/) });
      expect(failed("(application)", `${sent!.webhookId} signature`)?.actual).toBe("refused by the application (answered 401)");
      expect(report.summary.failed).toBeGreaterThan(2);
    } finally {
      await c.close();
    }
  }, 60_000);

  it("a target that never calls the application: the application steps fail, naming what they waited for", async () => {
    const t = await createTestApp();
    await t.app.listen({ port: 0, host: "127.0.0.1" });
    const app = await startMockApplication({ secret: newWebhookSecret() });
    try {
      const report = await runScenarios({
        ...base(`http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`),
        modes: { ordering: "sync", update: "sync" },
        eventTimeoutMs: 300,
        scenarios,
        only: ["chain-provisioned"],
        provisioning: { mode: "webhook", application: app },
      });
      const missing = report.checks.find((x) => x.step === "provisioned" && x.check === "application licences.provision")!;
      expect(missing).toMatchObject({ outcome: "fail", actual: "no command" });
      expect(missing.expected).toMatch(/^licences\.provision where \{"body\.data\.request\.orangeReference":"SIM-\w+-CHAIN-OK-ORD"\} within 300 ms$/);
      // What needed its values is skipped, not passed.
      expect(report.checks.find((x) => x.step === "fleet" && x.check === "json *.id")).toMatchObject({ outcome: "skip" });
    } finally {
      await app.close();
      await t.close();
    }
  }, 30_000);
});

describe("scenarios the run cannot play", () => {
  it("lists the chain scenarios as not played, with the reason, when the target's own application is behind --app-url; they do not fail the run", async () => {
    const report = await runScenarios({
      ...base("http://127.0.0.1:9"),
      scenarios,
      only: ["chain"],
      provisioning: { mode: "webhook", applicationUrl: "https://app.partner.example/hooks" },
    });
    expect(report.summary).toMatchObject({ scenarios: 0, checks: 0, failed: 0, skipped: 0 });
    expect(report.notPlayed.map((n) => n.scenario)).toEqual(CHAIN);
    expect(report.notPlayed[0]!.reason).toBe(
      "it reads what the simulator's mock application received, and the target's own application is behind --app-url https://app.partner.example/hooks",
    );
    expect(report.notPlayed[1]!.reason).toMatch(/^it sets the behaviour of the simulator's mock application, and the target's own application is behind --app-url/);
    const text = renderText([report], { color: false });
    expect(text).toContain("   application: the target's own, https://app.partner.example/hooks");
    expect(text).toContain(`   not played: chain-refused: ${report.notPlayed[1]!.reason}`);
    expect(text).toMatch(/^overall OK/m);
  });

  it("plays no chain scenario outside a webhook run, and the late one only when the mock application can report its result", async () => {
    const none = await runScenarios({ ...base("http://127.0.0.1:9"), scenarios, only: ["chain"] });
    expect(none.summary.scenarios).toBe(0);
    expect(none.notPlayed).toEqual([]);

    const mute = await startMockApplication({ secret: newWebhookSecret() }); // no target URL nor APP_TOKEN
    try {
      const report = await runScenarios({
        ...base("http://127.0.0.1:9"),
        scenarios,
        only: ["chain-late"],
        provisioning: { mode: "webhook", application: mute },
      });
      expect(report.notPlayed).toEqual([
        { scenario: "chain-late", reason: expect.stringContaining("give --app-token (the target's APP_TOKEN)") },
      ]);
    } finally {
      await mute.close();
    }
  });
});

describe("records of what the application received", () => {
  const command = (requestId: string, extra = "") => JSON.stringify({ type: "licences.provision", data: { request: { id: requestId } }, extra });
  const delivery = (d: Partial<Delivery> & { body: string }): Delivery => ({ verified: true, status: 200, replayed: false, at: "2026-11-30T00:00:00.000Z", ...d });

  it("groups deliveries by request: retries, answers, replays, results", () => {
    const records = commandRecords(
      [
        delivery({ webhookId: "pc_1", body: command("po_1"), status: 503 }),
        delivery({ webhookId: "pc_2", body: command("po_2"), status: 202 }),
        delivery({ webhookId: "pc_1", body: command("po_1"), status: 200 }),
        delivery({ webhookId: "pc_1", body: command("po_1"), status: 200, replayed: true }),
      ],
      [{ commandId: "pc_2", attempt: 1, body: { outcome: "failed", reason: "no" }, status: 200 }],
    );
    expect(records).toEqual([
      expect.objectContaining({ requestId: "po_1", webhookIds: ["pc_1"], deliveries: 3, statuses: [503, 200, 200], applied: 1, signed: true, sameBody: true, results: [] }),
      expect.objectContaining({ requestId: "po_2", webhookIds: ["pc_2"], statuses: [202], applied: 1, results: [{ attempt: 1, outcome: "failed", reason: "no", status: 200 }] }),
    ]);
  });

  it("finds a request sent under two webhook-ids, a webhook-id with two bodies, and an unsigned delivery, across calls", () => {
    const seen = { webhookIdOf: new Map<string, string>(), bodyOf: new Map<string, string>() };
    expect(deliveryFailures([delivery({ webhookId: "pc_1", body: command("po_1") })], seen)).toEqual([]);
    const failures = deliveryFailures(
      [
        delivery({ webhookId: "pc_9", body: command("po_1") }),
        delivery({ webhookId: "pc_1", body: command("po_1", "changed") }),
        delivery({ body: command("po_3"), verified: false, status: 401 }),
      ],
      seen,
    );
    expect(failures.map((f) => [f.check, f.actual])).toEqual([
      ["pc_9 webhook-id", "also as pc_9"],
      ["pc_1 body", "another body than its first delivery"],
      ["(no webhook-id) signature", "refused by the application (answered 401)"],
    ]);
    const [record] = commandRecords([delivery({ webhookId: "pc_1", body: command("po_1") }), delivery({ webhookId: "pc_9", body: command("po_1", "x") })]);
    expect(record).toMatchObject({ webhookIds: ["pc_1", "pc_9"], sameBody: true });
  });
});

describe("what the simulator takes from the server", () => {
  it("only the wire schemas of src/orange/schemas.ts (and the reference application of examples/partner-app it hosts)", () => {
    const root = fileURLToPath(new URL("../", import.meta.url));
    const dir = resolve(root, "src/simulator");
    const outside = new Set<string>();
    for (const file of readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
      const text = readFileSync(resolve(dir, file), "utf8");
      for (const [, spec] of text.matchAll(/(?:from|import)\s*\(?\s*"(\.[^"]+)"/g)) {
        const target = relative(root, resolve(dirname(resolve(dir, file)), spec!)).replace(/\.js$/, ".ts");
        if (!target.startsWith("src/simulator/")) outside.add(target);
      }
    }
    expect([...outside].sort()).toEqual(["examples/partner-app/app.ts", "src/orange/schemas.ts"]);
  });
});
