import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { startMockGateway } from "../src/simulator/gateway.js";
import { renderLoadText, runLoad, type LatencyStats, type LoadOptions } from "../src/simulator/load.js";
import { createTestApp, TEST_TOKEN, type TestApp } from "./support/app.js";
import { startWorker } from "./support/outbox-harness.js";

/**
 * The simulator's load mode against our real server over real HTTP (sync modes). Counts and
 * consistency only: speed is never asserted (shared machine).
 */

let t: TestApp;
let target: string;

beforeAll(async () => {
  t = await createTestApp();
  await t.app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = t.app.server.address() as AddressInfo;
  target = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  await t?.close();
});

function options(overrides: Partial<LoadOptions> = {}): LoadOptions {
  return {
    target,
    auth: { kind: "bearer", token: TEST_TOKEN },
    concurrency: 2,
    durationMs: 2_000,
    offers: ["MBA-CAISSE-PRO", "MBA-CAISSE-PREMIUM"],
    modes: { ordering: "sync", update: "sync" },
    requestTimeoutMs: 10_000,
    ...overrides,
  };
}

function expectOrdered(stats: LatencyStats): void {
  expect(stats.p50).toBeGreaterThan(0);
  expect(stats.p50).toBeLessThanOrEqual(stats.p90);
  expect(stats.p90).toBeLessThanOrEqual(stats.p99);
  expect(stats.p99).toBeLessThanOrEqual(stats.max);
}

describe("simulator load mode", () => {
  it("plays orders, consultations and updates concurrently without errors, and the database holds every order", async () => {
    const before = await t.db.productOrder.count();
    const updatesBefore = await t.db.licenceUpdate.count();
    const lines: string[] = [];
    const report = await runLoad(options({ log: (line) => lines.push(line) }));

    expect(report.errors).toEqual({ sample: [], byStatus: {} });
    for (const kind of ["orders", "gets", "updates"] as const) {
      expect(report[kind].count, kind).toBeGreaterThan(0);
      expect(report[kind].errors, kind).toBe(0);
      expect(report[kind].perSecond, kind).toBeGreaterThan(0);
      expectOrdered(report[kind]);
    }
    // Every consultation follows an order; each order is followed by at most two updates.
    expect(report.gets.count).toBeLessThanOrEqual(report.orders.count);
    expect(report.updates.count).toBeLessThanOrEqual(2 * report.gets.count);
    expect(report).toMatchObject({ target, concurrency: 2, modes: { ordering: "sync", update: "sync" } });
    expect(report.durationMs).toBeGreaterThanOrEqual(2_000);
    expect(report.events).toEqual({ received: 0, perSecond: 0, byType: {}, rejected: 0 });

    expect((await t.db.productOrder.count()) - before).toBe(report.orders.count);
    expect((await t.db.licenceUpdate.count()) - updatesBefore).toBe(report.updates.count);
    // Every suspension was followed by its reactivation, except perhaps the last one of each user.
    expect(await t.db.licence.count({ where: { state: "inactive" } })).toBeLessThanOrEqual(2);
    // Progress at most once per second of the run (however long in-flight requests kept it going).
    expect(lines.length).toBeLessThanOrEqual(Math.ceil(report.durationMs / 1000));

    const text = renderLoadText(report);
    expect(text).toMatch(/^orders\s+\d+\s+0\s/m);
    expect(text).toMatch(/^gets\s+\d+\s+0\s/m);
    expect(text).toMatch(/^updates\s+\d+\s+0\s/m);
    expect(text).toContain("errors: none");
  });

  it("counts the errors of a target that refuses the credentials, by status and with a sample", async () => {
    const before = await t.db.productOrder.count();
    const report = await runLoad(options({ auth: { kind: "bearer", token: "wrong-token" }, concurrency: 1, durationMs: 300 }));

    expect(report.orders.count).toBe(0);
    expect(report.orders.errors).toBeGreaterThan(0);
    expect(report.gets.count + report.gets.errors + report.updates.count + report.updates.errors).toBe(0);
    expect(report.errors.byStatus).toEqual({ "401": report.orders.errors });
    expect(report.errors.sample.length).toBeGreaterThan(0);
    expect(report.errors.sample[0]).toMatch(/^POST productOrder → 401 \{.*"code":4[012]/);
    expect(report.orders).toMatchObject({ p50: 0, p90: 0, p99: 0, max: 0 });
    expect(await t.db.productOrder.count()).toBe(before);

    const text = renderLoadText(report);
    expect(text).toContain(`401 ×${report.orders.errors}`);
    expect(text).toContain("POST productOrder → 401");
  });

  it("counts transport errors when nothing listens on the target", async () => {
    const report = await runLoad(options({ target: "http://127.0.0.1:1", concurrency: 1, durationMs: 200, requestTimeoutMs: 1_000 }));
    expect(report.orders.count).toBe(0);
    expect(report.orders.errors).toBeGreaterThan(0);
    expect(Object.keys(report.errors.byStatus)).toHaveLength(1);
    expect(report.errors.sample[0]).toMatch(/^POST productOrder → /);
  });

  it("runs and reports the duration asked for on the monotonic clock, whatever the wall clock does (an NTP step)", async () => {
    const wall = Date.now.bind(Date);
    let step = 0;
    const spy = vi.spyOn(Date, "now").mockImplementation(() => wall() + step);
    try {
      const stepped = setTimeout(() => (step = 60_000), 30);
      const report = await runLoad(options({ target: "http://127.0.0.1:1", concurrency: 1, durationMs: 300, requestTimeoutMs: 1_000 }));
      clearTimeout(stepped);
      expect(step).toBe(60_000);
      expect(report.durationMs).toBeGreaterThanOrEqual(300);
      expect(report.orders.errors).toBeGreaterThan(0);
    } finally {
      spy.mockRestore();
    }
  });

  it("refuses async ordering without a gateway to watch", async () => {
    await expect(runLoad(options({ modes: { ordering: "async", update: "sync" } }))).rejects.toThrow(/gateway/);
  });

  it("in async modes, waits for each order's event and reports order → event latency and the events received", async () => {
    const asyncApp = await createTestApp({ env: { ORDERING_MODE: "async", UPDATE_MODE: "async" } });
    const gateway = await startMockGateway();
    const w = await startWorker(gateway, asyncApp.url, {
      tasks: asyncApp.services.requestTasks,
      sweepRequests: asyncApp.services.sweepRequests,
    });
    try {
      await asyncApp.app.listen({ port: 0, host: "127.0.0.1" });
      const url = `http://127.0.0.1:${(asyncApp.app.server.address() as AddressInfo).port}`;
      const report = await runLoad(options({ target: url, gateway, modes: { ordering: "async", update: "async" }, durationMs: 1_500 }));

      expect(report.errors).toEqual({ sample: [], byStatus: {} });
      expect(report.orders.count).toBeGreaterThan(0);
      // Each counted order had its completedStateNotification, timed from the POST.
      expect(report.orderToEvent?.count).toBe(report.orders.count);
      expectOrdered(report.orderToEvent!);
      expect(report.events.byType.completedStateNotification).toBeGreaterThanOrEqual(report.orders.count);
      expect(report.events.rejected).toBe(0);
      expect(await asyncApp.db.productOrder.count({ where: { state: "completed" } })).toBeGreaterThanOrEqual(report.orders.count);
      expect(renderLoadText(report)).toMatch(/^order→event\s+\d+\s+0\s/m);
    } finally {
      await w.stop();
      await gateway.close();
      await asyncApp.close();
    }
  });
});
