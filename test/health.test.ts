import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requestJob } from "../src/domain/lifecycle.js";
import type { TaskHandler } from "../src/domain/ports.js";
import { jobQueue } from "../src/events/queue.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { createTestApp, type TestApp } from "./support/app.js";
import { createTestDatabase, failFirstCompletion, type TestDatabase } from "./support/db.js";
import { startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * GET /health/ready of a process that runs the worker: ready only while the worker's job runner
 * is alive. Here the runner fails as it does when the database goes away while it records a job's
 * outcome (a trigger refuses one completion, deterministically), and its replacement waits for a
 * task the test holds: meanwhile the process is not ready, and says why.
 */

let database: TestDatabase;
let gw: MockGateway;
let t: TestApp;
let harness: WorkerHarness | undefined;

beforeAll(async () => {
  [database, gw] = await Promise.all([createTestDatabase(), startMockGateway()]);
  await failFirstCompletion(database, "order:po_fault");
  const shared = { url: database.url, db: database.db, prisma: database.prisma, drop: async () => {} };
  t = await createTestApp({ database: shared, worker: () => harness?.worker });
});

afterAll(async () => {
  await harness?.stop();
  await gw?.close();
  await t?.close();
  await database?.drop();
});

const ready = () => t.call("GET", "/health/ready", undefined, { authorization: null });

describe("GET /health/ready with a worker in the process", () => {
  it("is not ready while the worker's runner is down, says so in Orange's format, and is ready again once it is replaced", async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let blocked = false;
    const tasks: Record<string, TaskHandler> = {
      process_order: async (payload) => {
        // The first run of po_block lasts until the test releases it: the failed runner's
        // replacement waits for its tasks to end.
        if ((payload as { orderId: string }).orderId === "po_block" && !blocked) {
          blocked = true;
          await held;
        }
      },
      process_update: async () => {},
    };
    harness = await startWorker(gw, database.url, { tasks, stopTimeoutMs: 20_000 });
    const firstRunner = harness.worker.id;

    const before = await ready();
    expect(before.status).toBe(200);
    expect(before.body).toEqual({ status: "ok", checks: { database: "ok", worker: "ok" } });

    await jobQueue.add(database.db, requestJob("order", "po_block"));
    await waitFor("po_block running", () => blocked);
    await jobQueue.add(database.db, requestJob("order", "po_fault"));

    const down = await waitFor("readiness 503", async () => {
      const res = await ready();
      return res.status === 503 ? res : undefined;
    });
    expect(down.body).toEqual({
      code: 5,
      message: "Service unavailable",
      description: "not ready: the worker's job runner failed and is being replaced (it resumes once the database answers)",
    });
    expect(down.headers["retry-after"]).toBe("5");
    expect(harness.worker.id).toBe(firstRunner);
    // Still not ready while the task holds the replacement back (the database answers all along).
    expect((await ready()).status).toBe(503);

    release();
    const back = await waitFor("readiness 200 again", async () => {
      const res = await ready();
      return res.status === 200 ? res : undefined;
    });
    expect(back.body).toEqual({ status: "ok", checks: { database: "ok", worker: "ok" } });
    expect(harness.worker.id).not.toBe(firstRunner);
  });

  it("is not ready once the worker is stopped", async () => {
    await harness!.stop();
    const res = await ready();
    expect(res.status).toBe(503);
    expect(res.body).toEqual({ code: 5, message: "Service unavailable", description: "not ready: the worker is stopped" });
  });
});
