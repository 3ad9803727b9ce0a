import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, it } from "vitest";
import { startMockGateway, type MockGateway } from "../src/simulator/gateway.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { gatewayEnv, startServerProcess } from "./support/server-process.js";

/**
 * The process-level safety net (src/main.ts): an error nobody handled is logged at fatal with the
 * error, and the server then stops as on SIGTERM (HTTP closed, worker stopped, pool closed) and
 * exits 1, instead of dying on the spot. The fault is injected into the real server process.
 */

const FAULT_INJECTOR = fileURLToPath(new URL("./fixtures/fault-on-signal.ts", import.meta.url));

let database: TestDatabase;
let gw: MockGateway;

beforeAll(async () => {
  [database, gw] = await Promise.all([createTestDatabase(), startMockGateway()]);
});

afterAll(async () => {
  await gw?.close();
  await database?.drop();
});

describe("process guard", () => {
  it.concurrent.for([
    ["unhandledRejection", "injected unhandled rejection"],
    ["uncaughtException", "injected uncaught exception"],
  ] as const)("%s: logged at fatal, graceful shutdown, exit 1", { timeout: 60_000 }, async ([fault, message], { expect }) => {
    const server = await startServerProcess({
      nodeArgs: ["--import", FAULT_INJECTOR],
      env: {
        DATABASE_URL: database.url,
        ROLE: "all",
        ORDERING_MODE: "async",
        LOG_LEVEL: "info",
        FAULT: fault,
        ...gatewayEnv(gw),
      },
    });
    try {
      const exited = once(server.child, "exit");
      server.child.kill("SIGUSR2");
      await exited;
      expect(server.exit(), server.output()).toEqual({ code: 1, signal: null });

      const records = server.records();
      const fatal = records.findIndex((r) => r.level === 60);
      expect(records[fatal], server.output()).toMatchObject({ event: fault, err: { message } });
      // Then the ordinary shutdown, in order, to its end, read off the records' times: the lines of
      // two loggers may reach the pipe in another order than they were written, and a record's time
      // is in milliseconds, so two lines of the same millisecond may come in either order.
      const after = records.slice(fatal + 1);
      const at = (msg: string) => after.find((r) => r.msg === msg)?.time as number | undefined;
      expect(after.map((r) => r.msg)).toEqual(expect.arrayContaining(["shutting down", "event worker stopped", "stopped"]));
      expect(at("shutting down")).toBeLessThanOrEqual(at("event worker stopped")!);
      expect(at("event worker stopped")).toBeLessThanOrEqual(at("stopped")!);
      expect(at("shutting down")).toBeGreaterThanOrEqual(records[fatal]!.time as number);
      expect(records.find((r) => r.msg === "stopped")).toMatchObject({ exitCode: 1 });
    } finally {
      await server.stop(5_000);
    }
  });
});
