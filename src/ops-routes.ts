/**
 * The routes of the people who run the server, outside Orange's API and the admin API:
 *
 * - GET /health/live: the process answers (never looks further);
 * - GET /health/ready: the licence store answers and, when this process runs the worker, its job
 *   runner is alive and its own connections reach the database; 503 in Orange's error format
 *   naming each part that is not ready;
 * - GET /metrics: Prometheus' text format (src/metrics.ts), for `Authorization: Bearer` with
 *   METRICS_TOKEN (the scraper's own credential, which opens nothing else) or ADMIN_TOKEN.
 *   On the main port rather than an open one of its own: one listener to expose and protect,
 *   and no reliance on a network boundary the server cannot check.
 *
 * Also every answer of the app is counted here (route pattern, status, duration). A process
 * that runs the worker alone (ROLE=worker) serves these routes and nothing else (buildOpsApp).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { Config } from "./config.js";
import { sql, type Db } from "./db/sql.js";
import { AppError, ServiceUnavailable, Unauthorized } from "./errors.js";
import type { WorkerHealth } from "./events/worker.js";
import { LOG_SERIALIZERS } from "./log.js";
import { UNMATCHED_ROUTE, type Metrics } from "./metrics.js";
import { registerErrorHandling, sendError } from "./orange/error-handler.js";

/** The worker of this process, as the readiness check sees it. */
export interface WorkerProbe {
  health(timeoutMs: number): Promise<WorkerHealth>;
}

export interface OpsRoutesDeps {
  db: Db;
  metrics: Metrics;
  /** Bearer tokens that open /metrics. */
  tokens: { admin?: string; metrics?: string };
  /** The worker this process runs, once started (undefined: none here, or not yet). */
  worker?: () => WorkerProbe | undefined;
  /** Bound of the worker's database check (the API's is bounded by its pool's connect timeout). */
  probeTimeoutMs: number;
}

export class MetricsDisabled extends AppError {
  constructor() {
    super(503, 5, "Service unavailable", "the metrics are disabled on this server: set METRICS_TOKEN (or ADMIN_TOKEN) to enable them");
  }
}

const CHALLENGE = 'Bearer realm="metrics"';

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

/** Checks the bearer of a /metrics call; throws the error to answer. */
export function createMetricsAuthenticator(tokens: OpsRoutesDeps["tokens"]): (authorization: string | undefined) => void {
  const accepted = [tokens.metrics, tokens.admin].filter((t): t is string => t !== undefined).map(digest);
  return (authorization) => {
    if (accepted.length === 0) throw new MetricsDisabled();
    if (authorization === undefined || authorization.trim() === "") {
      throw new Unauthorized(40, "the metrics require 'Authorization: Bearer <METRICS_TOKEN or ADMIN_TOKEN>'", CHALLENGE);
    }
    const [scheme = "", ...rest] = authorization.trim().split(/\s+/);
    if (scheme.toLowerCase() !== "bearer") {
      throw new Unauthorized(41, `invalid credentials: the metrics accept a bearer token only (got scheme ${JSON.stringify(scheme)})`, CHALLENGE);
    }
    // Constant time, each candidate compared whatever the result of the others.
    const presented = digest(rest.join(" "));
    const matches = accepted.map((token) => timingSafeEqual(presented, token));
    if (!matches.includes(true)) throw new Unauthorized(41, "invalid credentials: this bearer token is neither METRICS_TOKEN nor ADMIN_TOKEN", CHALLENGE);
  };
}

/** What is not ready, in words an operator acts on; empty when ready. */
async function unready(deps: OpsRoutesDeps, log: FastifyBaseLogger): Promise<{ problems: string[]; worker: boolean }> {
  const worker = deps.worker?.();
  const [store, health] = await Promise.all([
    deps.db.query(sql`SELECT 1`).then(
      () => true,
      (err: unknown) => {
        log.error({ err }, "readiness check failed: the licence store");
        return false;
      },
    ),
    worker?.health(deps.probeTimeoutMs),
  ]);
  const problems: string[] = [];
  if (!store) problems.push("the licence store does not answer");
  if (health) {
    if (health.runner === "replacing") problems.push("the worker's job runner failed and is being replaced (it resumes once the database answers)");
    if (health.runner === "stopped") problems.push("the worker is stopped");
    if (!health.database.ok && health.runner !== "stopped") {
      log.error({ err: health.database.error }, "readiness check failed: the worker's database connection");
      problems.push("the worker's database connection does not answer");
    }
  }
  return { problems, worker: health !== undefined };
}

export function registerOpsRoutes(app: FastifyInstance, deps: OpsRoutesDeps): void {
  const { metrics } = deps;
  const authenticate = createMetricsAuthenticator(deps.tokens);

  // Hooks of the root apply to the routes registered after them: register this before the APIs.
  app.addHook("onResponse", (request, reply, done) => {
    metrics.httpRequest(request.method, request.routeOptions.url ?? UNMATCHED_ROUTE, reply.statusCode, reply.elapsedTime / 1000);
    done();
  });

  app.get("/health/live", { schema: { hide: true } }, async () => ({ status: "ok" }));
  app.get("/health/ready", { schema: { hide: true } }, async (request, reply) => {
    const { problems, worker } = await unready(deps, request.log);
    if (problems.length > 0) return sendError(reply, new ServiceUnavailable(`not ready: ${problems.join("; ")}`));
    return { status: "ok", checks: { database: "ok", ...(worker ? { worker: "ok" } : {}) } };
  });

  app.get("/metrics", { schema: { hide: true } }, async (request, reply) => {
    authenticate(request.headers.authorization);
    const text = await metrics.render();
    return reply.type(metrics.contentType).header("cache-control", "no-store").send(text);
  });
}

/**
 * The HTTP server of a process that runs the worker alone (ROLE=worker): /health/* and /metrics,
 * nothing of Orange's API nor the admin API.
 */
export async function buildOpsApp(deps: OpsRoutesDeps & { config: Config; logger?: FastifyBaseLogger | false }): Promise<FastifyInstance> {
  const app = Fastify({
    ...(deps.logger === undefined || deps.logger === false
      ? { logger: false }
      : { loggerInstance: deps.logger.child({}, { serializers: LOG_SERIALIZERS }) }),
    trustProxy: deps.config.trustProxy,
  });
  registerErrorHandling(app, deps.config.bodyLimitBytes);
  registerOpsRoutes(app, deps);
  return app;
}
