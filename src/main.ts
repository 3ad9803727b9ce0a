import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pino } from "pino";
import { buildApp, LOG_REDACT, LOG_SERIALIZERS } from "./app.js";
import { ConfigError, hasInboundCredential, loadConfig, type Config } from "./config.js";
import { EmbeddedPostgresError, startEmbeddedPostgres } from "./db/embedded.js";
import { applyMigrations } from "./db/migrate.js";
import { createServices, type Services } from "./compose.js";
import { provisioningStageFrom } from "./provisioning/stage.js";
import { createDb } from "./db/sql.js";
import { createCatalogue } from "./domain/catalogue.js";
import { createOrangeEventClient, type OrangeEventClient } from "./events/orange-client.js";
import { createTokenCache, type TokenCache } from "./events/token-cache.js";
import { startEventWorker, type EventWorker } from "./events/worker.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { buildOpsApp } from "./ops-routes.js";

/**
 * Process entry: configuration → database (embedded unless DATABASE_URL) → migrations → HTTP
 * (ROLE api or all) and the worker (ROLE worker or all, when Orange client credentials are
 * configured): event delivery, and the asynchronous orders and updates (ORDERING_MODE /
 * UPDATE_MODE async), whose outcome is an event and so needs the same credentials.
 * Shutdown order: stop accepting HTTP (in-flight requests finish) → stop the worker (running
 * deliveries finish or are handed back) → close the pool → stop the embedded database.
 */

if (existsSync(".env")) process.loadEnvFile(".env");

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparsable DATABASE_URL)";
  }
}

/**
 * Local runs without any inbound credential get a generated bearer token kept in the data
 * folder, so `npm start` works out of the box without ever leaving the API open. With an
 * external database (a real deployment) a missing credential is a configuration error.
 */
function ensureInboundCredential(config: Config, embedded: boolean, log: pino.Logger): void {
  const auth = config.inboundAuth;
  if (auth.disabled) {
    log.warn("INBOUND_AUTH_DISABLED=true: the Orange API accepts calls without credentials; never do this in production");
    return;
  }
  if (hasInboundCredential(auth) || auth.ipAllowList.length > 0) return;
  if (!embedded) {
    throw new ConfigError(
      "no inbound credential configured: set INBOUND_BASIC_USER/INBOUND_BASIC_PASSWORD, INBOUND_BEARER_TOKEN, " +
        "INBOUND_API_KEY or INBOUND_IP_ALLOWLIST (or INBOUND_AUTH_DISABLED=true for a test bench)",
    );
  }
  const file = join(config.dataDir, "inbound-bearer-token");
  if (!existsSync(file)) {
    mkdirSync(config.dataDir, { recursive: true });
    writeFileSync(file, randomBytes(32).toString("base64url") + "\n", { mode: 0o600 });
  }
  auth.bearerToken = readFileSync(file, "utf8").trim();
  log.warn(
    { tokenFile: resolve(file) },
    "no inbound credential configured: Orange's calls must carry 'Authorization: Bearer <token in tokenFile>'",
  );
}

interface RunningWorker {
  worker: EventWorker;
  client?: OrangeEventClient;
  tokens?: TokenCache;
}

/** The delivery worker, or undefined (with the reason logged) when it must not run here. */
async function startWorkerRole(
  config: Config,
  databaseUrl: string,
  services: Services,
  log: pino.Logger,
  metrics: Metrics,
): Promise<RunningWorker | undefined> {
  if (config.role === "api") return undefined;
  const { orange } = config;
  // What every worker of this process runs with, whether or not it delivers events.
  const common = {
    databaseUrl,
    retry: config.worker.retry,
    concurrency: config.worker.concurrency,
    // Requests are carried out inline only where they are received too.
    inlineSlots: config.role === "all" ? config.worker.inlineConcurrency : 0,
    leaseMs: config.worker.leaseMs,
    prefetch: config.worker.prefetch,
    pollIntervalMs: config.worker.pollIntervalMs,
    stopTimeoutMs: config.worker.stopTimeoutMs,
    sweepIntervalMs: config.worker.sweepIntervalMs,
    // Events an inline run writes have no job while it delivers them: left alone for a lease.
    unqueuedGraceMs: config.worker.leaseMs,
    // Registered whatever this process's modes: a job left by an API replica in async mode
    // is carried out by any worker.
    tasks: services.requestTasks,
    sweepRequests: services.sweepRequests,
    observer: metrics.delivery,
  };
  if (orange.clientId === undefined || orange.clientSecret === undefined) {
    if (config.role === "worker") {
      throw new ConfigError("ROLE=worker needs ORANGE_CLIENT_ID and ORANGE_CLIENT_SECRET to deliver events to Orange");
    }
    log.warn(
      "ORANGE_CLIENT_ID/ORANGE_CLIENT_SECRET are not set: events to Orange are kept in the outbox but NOT delivered " +
        "until a worker with credentials runs",
    );
    if (config.provisioning.mode === "webhook") {
      // The commands to the partner's application still need their retries and their turns.
      const worker = await startEventWorker({ ...common, logger: log.child({ component: "worker" }) });
      return { worker };
    }
    const asyncApis = [
      ...(config.orderingMode === "async" ? ["ORDERING_MODE"] : []),
      ...(config.updateMode === "async" ? ["UPDATE_MODE"] : []),
    ];
    if (asyncApis.length > 0) {
      log.warn(
        { async: asyncApis },
        "asynchronous mode without a worker here: orders/updates are answered 'acknowledged' and STAY acknowledged " +
          "(nothing is created or changed) until a worker with Orange credentials runs (ROLE=all or worker)",
      );
    }
    return undefined;
  }
  const eventLog = log.child({ component: "events" });
  const tokens = createTokenCache({
    tokenUrl: orange.tokenUrl,
    clientId: orange.clientId,
    clientSecret: orange.clientSecret,
    timeoutMs: orange.timeoutMs,
    // While Orange refuses even fresh tokens, one token request per round of event retries.
    incidentBackoff: { baseMs: config.worker.retry.baseMs, maxMs: config.worker.retry.maxMs },
    logger: eventLog,
    onRequest: metrics.tokenRequest,
  });
  const client = createOrangeEventClient({
    baseUrl: orange.baseUrl,
    offer: orange.offer,
    productOrderingPath: orange.productOrderingPath,
    userServicePath: orange.userServicePath,
    tokens,
    timeoutMs: orange.timeoutMs,
    logger: eventLog,
  });
  try {
    const worker = await startEventWorker({ ...common, client, logger: eventLog });
    log.info({ eventUrl: client.urlFor("productordering"), offer: orange.offer }, "delivering events to Orange");
    return { worker, client, tokens };
  } catch (err) {
    await client.close();
    await tokens.close();
    throw err;
  }
}

/**
 * Safety net for an error nobody handled (every known cause is handled where it arises, so this
 * should never fire): the process's state can no longer be trusted, but dying on the spot would
 * cut requests and jobs off mid-write. It is logged at fatal with the error, then the process
 * stops as on SIGTERM (no new requests, the ones in flight and the worker's jobs end, within the
 * shutdown deadline) and exits 1.
 */
function installProcessGuard(log: pino.Logger, stop: (reason: string) => void): void {
  const fatal = (event: "unhandledRejection" | "uncaughtException") => (err: unknown) => {
    log.fatal({ err, event }, `${event}: stopping the server`);
    stop(event);
  };
  process.on("unhandledRejection", fatal("unhandledRejection"));
  process.on("uncaughtException", fatal("uncaughtException"));
}

async function main(): Promise<void> {
  const config = loadConfig();
  const log = pino({ level: config.logLevel, redact: LOG_REDACT, serializers: LOG_SERIALIZERS });

  let databaseUrl = config.databaseUrl;
  let embedded: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined;
  if (databaseUrl === undefined) {
    const dataDir = resolve(config.dataDir, "postgres");
    embedded = await startEmbeddedPostgres({
      dataDir,
      port: config.embeddedPgPort,
      log: (msg) => log.debug({ component: "embedded-postgres" }, msg),
      notice: (msg) => log.info({ component: "embedded-postgres" }, msg),
    });
    databaseUrl = embedded.url;
    log.info({ database: redactUrl(databaseUrl), dataDir: embedded.dataDir }, "embedded PostgreSQL started");
  } else {
    log.info({ database: redactUrl(databaseUrl) }, "using external PostgreSQL (DATABASE_URL)");
  }

  let closeProvisioner: (() => Promise<void>) | undefined;
  const stopEmbedded = async () => {
    if (embedded) await embedded.stop().catch((err) => log.error({ err }, "embedded PostgreSQL did not stop cleanly"));
  };
  // Until the server is up, a fatal error stops the embedded database and exits; then shutdown() takes over.
  let stopOnFatal = (_reason: string) => void stopEmbedded().finally(() => process.exit(1));
  installProcessGuard(log, (reason) => stopOnFatal(reason));

  try {
    if (config.migrateOnStart) {
      const { applied } = await applyMigrations(databaseUrl, { log: (msg) => log.info({ component: "migrations" }, msg) });
      log.info({ applied }, applied.length > 0 ? "migrations applied" : "schema up to date");
    } else {
      log.info("migrations not applied at start (MIGRATE_ON_START=false): `npm run migrate` applies them");
    }

    const db = createDb(databaseUrl, {
      poolMax: config.databasePoolMax,
      connectTimeoutMs: config.databaseConnectTimeoutMs,
      transactionTimeoutMs: config.transactionTimeoutMs,
      onPoolError: (err) => log.warn({ err: err.message }, "database connection failed; it will be replaced"),
    });
    // The worker needs the catalogue too: it carries out asynchronous orders and updates.
    const catalogue = createCatalogue(JSON.parse(readFileSync(config.catalogueFile, "utf8")));
    log.info({ file: config.catalogueFile, offers: catalogue.codes() }, "product catalogue loaded");
    // The partner's application, when it carries out the orders and changes (PROVISIONING_MODE=webhook).
    // Built before the services: the provisioning stage and the worker count into it too.
    const metrics = createMetrics({ db });
    const provisioning = provisioningStageFrom(config.provisioning, log.child({ component: "provisioning" }), metrics.provisioningAttempt);
    if (provisioning) {
      closeProvisioner = provisioning.close;
      log.info(
        { url: config.provisioning.url, syncDeadlineMs: config.provisioning.syncDeadlineMs },
        "the partner's application carries out every order and change (webhook)",
      );
    }
    // Built once: the HTTP app and the worker share every service.
    const services = createServices({
      db,
      catalogue,
      partnerName: config.partnerName,
      requestMaxAttempts: config.requestMaxAttempts,
      atOnceMaxLicences: config.asyncAtOnceMaxLicences,
      // An inline run (no job) is presumed dead after the lease, as a job's run is.
      inlineGraceMs: config.worker.leaseMs,
      log: log.child({ component: "requests" }),
      provisioning: provisioning?.stage,
      metrics,
      fleetListing: { streamsMax: config.fleetStreamsMax },
    });
    // The worker starts after the app is built: readiness asks for it when it is called.
    const started: { worker?: RunningWorker } = {};
    const workerProbe = () => started.worker?.worker;
    let app: Awaited<ReturnType<typeof buildApp>> | undefined;
    if (config.role !== "worker") {
      ensureInboundCredential(config, embedded !== undefined, log);
      app = await buildApp({ config, services, logger: log, worker: workerProbe });
      log.info({ ordering: config.orderingMode, update: config.updateMode }, "answer modes");
    } else {
      // The worker alone serves /health/* and /metrics on PORT, nothing else.
      app = await buildOpsApp({
        config,
        logger: log,
        db,
        metrics,
        tokens: { admin: config.admin.token, metrics: config.metrics.token },
        worker: workerProbe,
        probeTimeoutMs: config.databaseConnectTimeoutMs,
      });
    }
    const worker = await startWorkerRole(config, databaseUrl, services, log, metrics);
    started.worker = worker;
    // Acknowledged requests received here are carried out here at once, by this process's worker
    // (its runner refuses every run unless ROLE=all and WORKER_INLINE_CONCURRENCY > 0).
    if (worker) services.runInline(worker.worker.inline);
    metrics.watchPool("worker", () => worker?.worker.pool);
    if (worker && config.role === "all") metrics.watchInline(() => worker.worker.inlineLoad());
    if (config.role !== "worker") metrics.watchFleetListings(services.licences.streamedListings);
    if (app) {
      await app.listen({ host: config.host, port: config.port });
      log.info(
        config.role === "worker"
          ? { address: `http://${config.host}:${config.port}`, routes: ["/health/live", "/health/ready", "/metrics"] }
          : { address: `http://${config.host}:${config.port}`, docs: `http://localhost:${config.port}/docs` },
        config.role === "worker" ? "worker listening (health and metrics only)" : "partner server listening",
      );
    }

    let closing = false;
    const shutdown = async (signal: string, exitCode = 0) => {
      if (closing) return;
      closing = true;
      log.info({ signal }, "shutting down");
      // Not unref'd: a step that never settles must end here (exit 1), not in a silent exit 0 once
      // nothing else is left on the event loop.
      setTimeout(() => {
        log.error("shutdown took too long; exiting");
        process.exit(1);
      }, Math.max(20_000, config.worker.stopTimeoutMs + 10_000));
      // Each step runs whatever the previous one threw: the database and the worker's pool are
      // closed even when, after a fatal error, the HTTP server fails to close.
      const step = async (what: string, fn: () => Promise<unknown>) => {
        await fn().catch((err: unknown) => {
          exitCode ||= 1;
          log.error({ err }, `shutdown: ${what} failed`);
        });
      };
      await step("closing the HTTP server", async () => app?.close());
      if (worker) {
        await step("stopping the worker", () => worker.worker.stop());
        await step("closing the Orange client", async () => worker.client?.close());
        await step("closing the token cache", async () => worker.tokens?.close());
      }
      if (closeProvisioner) await step("closing the provisioning client", closeProvisioner);
      await step("closing the database pool", () => db.close());
      await stopEmbedded();
      log.info({ exitCode }, "stopped");
      process.exit(exitCode);
    };
    stopOnFatal = (reason) => void shutdown(reason, 1);
    process.on("SIGINT", () => void shutdown("SIGINT"));
    process.on("SIGTERM", () => void shutdown("SIGTERM"));
  } catch (err) {
    await stopEmbedded();
    throw err;
  }
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof EmbeddedPostgresError) console.error(err.message);
  else console.error("failed to start:", err);
  process.exit(1);
});
