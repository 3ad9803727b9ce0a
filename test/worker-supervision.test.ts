import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requestJob } from "../src/domain/lifecycle.js";
import type { TaskHandler } from "../src/domain/ports.js";
import { jobQueue } from "../src/events/queue.js";
import { ReleaseOncePool } from "../src/events/worker.js";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { createTestDatabase, failFirstCompletion, type TestDatabase } from "./support/db.js";
import { startWorker, waitFor, type WorkerHarness } from "./support/outbox-harness.js";

/**
 * The worker when graphile-worker cannot record a job's outcome (the database went away at that
 * moment; here a trigger refuses the first completion, deterministically): no unhandled rejection
 * (vitest fails the run on one), the runner is replaced, the job is released at once and run again.
 * test/db-outage.test.ts plays the same with a real PostgreSQL restart.
 */

let database: TestDatabase;
let gw: MockGateway;

beforeAll(async () => {
  [database, gw] = await Promise.all([createTestDatabase(), startMockGateway()]);
  await failFirstCompletion(database, "order:po_fault");
});

afterAll(async () => {
  await gw?.close();
  await database?.drop();
});

describe("worker supervision", () => {
  it("replaces the runner whose job completion failed, releases that job and runs it again", async () => {
    const runs: string[] = [];
    const tasks: Record<string, TaskHandler> = {
      process_order: async (payload) => {
        runs.push((payload as { orderId: string }).orderId);
      },
      process_update: async () => {},
    };
    let harness: WorkerHarness | undefined;
    try {
      harness = await startWorker(gw, database.url, { tasks, stopTimeoutMs: 1_000 });
      const firstPool = harness.worker.id;
      await jobQueue.add(database.db, requestJob("order", "po_fault"));

      const worker = harness.worker;
      await waitFor("the job done and its completion recorded", async () => {
        const [row] = await database.prisma.$queryRaw<{ n: number }[]>`
          SELECT count(*)::int AS n FROM graphile_worker.jobs WHERE key = 'order:po_fault'`;
        return row?.n === 0 && runs.length >= 2;
      });
      // Run once, its completion refused, run again by the new runner (at-least-once), recorded.
      expect(runs).toEqual(["po_fault", "po_fault"]);
      expect(worker.id).toMatch(/^pool-/);
      expect(worker.id).not.toBe(firstPool);
      const [{ n }] = await database.prisma.$queryRaw<[{ n: bigint }]>`SELECT last_value AS n FROM completion_fault`;
      expect(Number(n)).toBe(2);
    } finally {
      await harness?.stop();
    }
  });

  it("ignores a second release of one pool checkout (graphile may release its LISTEN connection twice)", async () => {
    const pool = new ReleaseOncePool({ connectionString: database.url, max: 2 });
    let doubles = 0;
    pool.onDoubleRelease = () => doubles++;
    try {
      const client = await pool.connect();
      client.release();
      expect(() => client.release()).not.toThrow();

      const viaCallback = await new Promise<() => void>((resolve, reject) =>
        pool.connect((err, c, done) => (err || !c ? reject(err) : resolve(() => done()))),
      );
      viaCallback();
      expect(viaCallback).not.toThrow();
      expect(doubles).toBe(2);
      // Each connection went back once: one idle connection, reused, and the pool still works.
      expect({ total: pool.totalCount, idle: pool.idleCount }).toEqual({ total: 1, idle: 1 });
      expect((await pool.query<{ one: number }>("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
  });
});
