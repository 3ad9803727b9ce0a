import { readFileSync } from "node:fs";
import type { FastifyBaseLogger, FastifyInstance, InjectOptions } from "fastify";
import { expect } from "vitest";
import { buildApp } from "../../src/app.js";
import { createServices, type Services } from "../../src/compose.js";
import { loadConfig, type Config } from "../../src/config.js";
import type { Db } from "../../src/db/sql.js";
import { createCatalogue, type Catalogue } from "../../src/domain/catalogue.js";
import type { Clock } from "../../src/lib/clock.js";
import { createMetrics, type Metrics } from "../../src/metrics.js";
import type { WorkerProbe } from "../../src/ops-routes.js";
import { provisioningStageFrom } from "../../src/provisioning/stage.js";
import { createTestDatabase } from "./db.js";
import type { PrismaReader } from "./prisma.js";
import type { FleetListingLimits } from "../../src/domain/licences.js";
import { findEmptyNodes } from "../../src/simulator/match.js";

export const TEST_TOKEN = "test-orange-token";
export const AUTH = { authorization: `Bearer ${TEST_TOKEN}` };

export const catalogueFile = new URL("../../config/catalogue.json", import.meta.url);

export function loadTestCatalogue(): Catalogue {
  return createCatalogue(JSON.parse(readFileSync(catalogueFile, "utf8")));
}

// Paths of empty optional nodes ({}, [], null) in a response body: Orange's parser rejects them,
// so every response of the suite goes through this (see `TestApp.call`). The simulator's check.
export { findEmptyNodes };

export interface CallResult {
  status: number;
  headers: Record<string, string | string[] | number | undefined>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
  text: string;
}

export interface TestApp {
  app: FastifyInstance;
  /** An independent reader of the test's database (Prisma), for assertions on what was written. */
  db: PrismaReader;
  /** The program's own access to the same database, as the services under test use it. */
  store: Db;
  /** The services the app was built with (the worker of a test takes the same ones). */
  services: Services;
  url: string;
  config: Config;
  catalogue: Catalogue;
  /**
   * One HTTP call through inject, authenticated as Orange unless `headers.authorization` is
   * given (null removes it). Fails the test when the JSON answer holds an empty node.
   */
  call(
    method: InjectOptions["method"],
    url: string,
    body?: unknown,
    headers?: Record<string, string | null>,
  ): Promise<CallResult>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  /** Extra environment for loadConfig (auth settings, limits…). */
  env?: Record<string, string>;
  clock?: Clock;
  /** Use this database instead of a fresh clone (e.g. a broken URL for 503 tests). */
  database?: { url: string; db: Db; prisma: PrismaReader; drop(): Promise<void> };
  /** The app's logger (default: none), e.g. a pino writing to memory to check log lines. */
  logger?: FastifyBaseLogger;
  /** The metrics to count into (default: the app's own, over its database). */
  metrics?: Metrics;
  /** The worker /health/ready checks, as main.ts hands it in. */
  worker?: () => WorkerProbe | undefined;
  /** How fleet listings are read (default: the program's). */
  fleetListing?: FleetListingLimits;
}

export async function createTestApp(opts: TestAppOptions = {}): Promise<TestApp> {
  const database: NonNullable<TestAppOptions["database"]> =
    opts.database ?? (await createTestDatabase());
  const config = loadConfig({
    INBOUND_BEARER_TOKEN: TEST_TOKEN,
    RESPONSE_VALIDATION: "true",
    LOG_LEVEL: "silent",
    PARTNER_NAME: "Caisse Test SAS",
    ...opts.env,
  });
  const catalogue = loadTestCatalogue();
  const metrics = opts.metrics ?? createMetrics({ db: database.db });
  const provisioning = provisioningStageFrom(config.provisioning, undefined, metrics.provisioningAttempt);
  const services = createServices({
    db: database.db,
    catalogue,
    partnerName: config.partnerName,
    requestMaxAttempts: config.requestMaxAttempts,
    atOnceMaxLicences: config.asyncAtOnceMaxLicences,
    clock: opts.clock,
    provisioning: provisioning && { ...provisioning.stage, pollMs: 20 },
    metrics,
    fleetListing: { streamsMax: config.fleetStreamsMax, ...opts.fleetListing },
  });
  metrics.watchFleetListings(services.licences.streamedListings);
  const app = await buildApp({ config, services, logger: opts.logger ?? false, worker: opts.worker });
  await app.ready();
  return {
    app,
    db: database.prisma,
    store: database.db,
    services,
    url: database.url,
    config,
    catalogue,
    async call(method, url, body, headers = {}) {
      const merged: Record<string, string> = {};
      for (const [k, v] of Object.entries({ ...AUTH, ...headers })) if (v !== null) merged[k] = v;
      const res = await app.inject({
        method,
        url,
        headers: body === undefined ? merged : { "content-type": "application/json", ...merged },
        payload: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      });
      let parsed: unknown = undefined;
      if (String(res.headers["content-type"] ?? "").includes("json") && res.body.length > 0) {
        parsed = JSON.parse(res.body);
        expect(findEmptyNodes(parsed), `empty nodes in the answer to ${method} ${url}`).toEqual([]);
      }
      return { status: res.statusCode, headers: res.headers, body: parsed, text: res.body };
    },
    async close() {
      await app.close();
      await provisioning?.close();
      await database.drop();
    },
  };
}
