/**
 * The delivery worker: graphile-worker running the `deliver_events` task, plus the maintenance
 * graphile does not do soon enough for us.
 *
 * - Crash recovery: graphile leaves a dead worker's jobs locked for 4 hours. At start and every
 *   `sweepIntervalMs`, jobs locked longer than the lease are released with graphile's public
 *   `force_unlock_workers` (the lease is longer than one run of the task, see runBudgetMs); the
 *   event is then delivered again, with the same id (at-least-once).
 * - Safety net: a key with pending events but no live job (its job exhausted graphile's own
 *   attempts after database errors, say) gets a job again, unless those events are held behind
 *   a dead event (delivery.ts): that key waits for an operator.
 * - Graceful stop: stop claiming, let running deliveries finish for `stopTimeoutMs`, then abort
 *   them (each records its interrupted attempt and hands its key back to the queue), then close.
 * - With `jobs`, the same runner carries out asynchronous orders and updates (`process_order`,
 *   `process_update`, see jobs.ts). A run that throws (database down) is retried by graphile with
 *   its own backoff; a business failure is not an exception but a failed order and its event.
 */
import { EventEmitter } from "node:events";
import { Logger, run, type Runner, type Task, type TaskList, type WorkerEvents } from "graphile-worker";
import pg from "pg";
import { createDeliverEventsTask, schedule, type RetryPolicy } from "./delivery.js";
import type { EventLogger } from "./http.js";
import { PROCESS_ORDER_TASK, PROCESS_UPDATE_TASK, requestJobKey, requestJobQuery, type AsyncJobs, type RequestKind } from "./jobs.js";
import type { OrangeEventClient } from "./orange-client.js";
import { DELIVER_TASK } from "./outbox.js";

export interface WorkerLogger extends EventLogger {
  error(obj: object, msg?: string): void;
}

export interface EventWorkerOptions {
  databaseUrl: string;
  client: Pick<OrangeEventClient, "send">;
  retry: RetryPolicy;
  /** Jobs (ordering keys) delivered in parallel by this process. */
  concurrency: number;
  /** A job locked longer than this is taken from its worker, presumed dead. */
  leaseMs: number;
  /** How long stop() lets running deliveries finish before aborting them (default 10 s). */
  stopTimeoutMs?: number;
  /** Interval of the lease sweep (default 30 s, jittered). */
  sweepIntervalMs?: number;
  /** How often graphile looks for jobs that became due (retries); new jobs wake it at once. Default 1 s. */
  pollIntervalMs?: number;
  /** PostgreSQL application_name of the worker's connections. */
  applicationName?: string;
  logger?: WorkerLogger;
  random?: () => number;
  /** Asynchronous orders and updates; without it, their jobs wait for a worker that has it. */
  jobs?: AsyncJobs;
}

export interface SweepResult {
  /** Worker pools whose stale jobs were unlocked. */
  unlockedWorkers: string[];
  /** Ordering keys that had pending events and no job. */
  rescheduledKeys: string[];
  /** Acknowledged orders and updates (async modes) whose job was gone or had given up. */
  rescheduledRequests: string[];
}

export interface EventWorker {
  /** graphile's worker pool id: `locked_by` of the jobs this worker runs. */
  readonly id: string | undefined;
  /** The lease sweep and the missing-job check; also runs on its own every sweepIntervalMs. */
  sweep(): Promise<SweepResult>;
  /** Graceful stop (idempotent). */
  stop(): Promise<void>;
}

export async function startEventWorker(options: EventWorkerOptions): Promise<EventWorker> {
  const logger = options.logger;
  const stopTimeoutMs = options.stopTimeoutMs ?? 10_000;
  const sweepIntervalMs = options.sweepIntervalMs ?? 30_000;
  const random = options.random ?? Math.random;
  const pool = new pg.Pool({
    connectionString: options.databaseUrl,
    // One held by each running job (its key lock), plus graphile's LISTEN connection and its
    // claim/complete queries, plus the sweep.
    max: options.concurrency + 4,
    connectionTimeoutMillis: 10_000,
    application_name: options.applicationName ?? "orange-partner-worker",
  });
  // An idle connection that breaks (database restart) is replaced; one in use fails its query.
  let poolClosed = false;
  pool.on("error", (err) => {
    // pool.end() resolves before the sockets are closed: a database stopping right after is no news.
    if (!poolClosed) logger?.warn({ err: err.message }, "worker database connection failed; it will be replaced");
  });
  pool.on("connect", (client) => client.on("error", () => {}));

  let workerId: string | undefined;
  const events = new EventEmitter() as WorkerEvents;
  events.on("pool:create", ({ workerPool }) => {
    workerId = workerPool.id;
  });

  const task = createDeliverEventsTask({
    pool,
    client: options.client,
    retry: options.retry,
    runBudgetMs: Math.max(1_000, Math.floor(options.leaseMs / 2)),
    workerId: () => workerId,
    random,
    ...(logger ? { logger } : {}),
  });

  const taskList: TaskList = { [DELIVER_TASK]: task };
  if (options.jobs) {
    const jobs = options.jobs;
    taskList[PROCESS_ORDER_TASK] = idTask("orderId", (id) => jobs.processOrder(id), logger);
    taskList[PROCESS_UPDATE_TASK] = idTask("updateId", (id) => jobs.processUpdate(id), logger);
  }

  async function sweep(): Promise<SweepResult> {
    const stale = await pool.query<{ locked_by: string }>(
      `SELECT DISTINCT locked_by FROM graphile_worker.jobs
        WHERE locked_by IS NOT NULL
          AND locked_at < now() - $1::bigint * interval '1 millisecond'
          AND locked_by IS DISTINCT FROM $2`,
      [options.leaseMs, workerId ?? null],
    );
    const unlockedWorkers = stale.rows.map((r) => r.locked_by);
    if (unlockedWorkers.length > 0) {
      await pool.query("SELECT graphile_worker.force_unlock_workers($1::text[])", [unlockedWorkers]);
      logger?.warn({ workers: unlockedWorkers, leaseMs: options.leaseMs }, "released jobs of workers that held them past the lease");
    }
    const orphans = await pool.query<{ ordering_key: string }>(
      `SELECT DISTINCT e.ordering_key
         FROM outbox_event e
        WHERE e.state = 'pending'
          AND NOT EXISTS (
            SELECT 1 FROM graphile_worker.jobs j
             WHERE j.key = 'deliver:' || e.ordering_key AND j.attempts < j.max_attempts)
          -- Held behind a dead event: no job on purpose; the operator's re-send or discard adds one.
          AND NOT EXISTS (
            SELECT 1 FROM outbox_event d
             WHERE d.ordering_key = e.ordering_key AND d.state = 'dead' AND d.seq < e.seq)
        LIMIT 1000`,
    );
    const rescheduledKeys = orphans.rows.map((r) => r.ordering_key);
    for (const key of rescheduledKeys) await schedule(pool, key, { delayMs: 0 }, "preserve_run_at");
    if (rescheduledKeys.length > 0) {
      logger?.warn({ keys: rescheduledKeys.length }, "pending events had no delivery job; rescheduled");
    }
    // An acknowledged request must end completed or failed, with its event: a job that ran out of
    // graphile's attempts (e.g. the database was down for days) or was removed is added again.
    let rescheduledRequests: string[] = [];
    if (options.jobs) {
      const stuck = await pool.query<{ kind: RequestKind; id: string }>(
        `SELECT 'order' AS kind, o.id FROM product_order o
          WHERE o.state = 'acknowledged'
            AND NOT EXISTS (SELECT 1 FROM graphile_worker.jobs j WHERE j.key = $1 || o.id AND j.attempts < j.max_attempts)
         UNION ALL
         SELECT 'update' AS kind, u.id FROM licence_update u
          WHERE u.state = 'acknowledged'
            AND NOT EXISTS (SELECT 1 FROM graphile_worker.jobs j WHERE j.key = $2 || u.id AND j.attempts < j.max_attempts)
          LIMIT 1000`,
        [requestJobKey("order", ""), requestJobKey("update", "")],
      );
      for (const { kind, id } of stuck.rows) await pool.query(requestJobQuery(kind, id));
      rescheduledRequests = stuck.rows.map((r) => requestJobKey(r.kind, r.id));
      if (rescheduledRequests.length > 0) {
        logger?.warn({ requests: rescheduledRequests }, "acknowledged requests had no live job (gone or out of attempts); rescheduled");
      }
    }
    return { unlockedWorkers, rescheduledKeys, rescheduledRequests };
  }

  let runner: Runner;
  try {
    await sweep();
    runner = await run({
      pgPool: pool,
      taskList,
      concurrency: options.concurrency,
      noHandleSignals: true,
      pollInterval: options.pollIntervalMs ?? 1_000,
      events,
      logger: graphileLogger(logger),
      preset: { worker: { gracefulShutdownAbortTimeout: stopTimeoutMs } },
    });
  } catch (err) {
    await pool.end().catch(() => {});
    throw err;
  }

  let sweepTimer: NodeJS.Timeout | undefined;
  let stopping: Promise<void> | undefined;
  const armSweep = () => {
    sweepTimer = setTimeout(
      () => {
        sweep()
          .catch((err: unknown) => logger?.warn({ err: err instanceof Error ? err.message : String(err) }, "worker sweep failed"))
          .finally(() => {
            if (!stopping) armSweep();
          });
      },
      Math.round(sweepIntervalMs * (0.75 + random() * 0.5)),
    );
    sweepTimer.unref();
  };
  armSweep();

  // A runner that ends on its own (fatal database error) is logged; stop() still cleans up.
  runner.promise.catch((err: unknown) => {
    logger?.error({ err: err instanceof Error ? err.message : String(err) }, "event worker stopped on an error");
  });
  logger?.info({ workerId, concurrency: options.concurrency, leaseMs: options.leaseMs }, "event worker started");

  return {
    get id() {
      return workerId;
    },
    sweep,
    stop() {
      stopping ??= (async () => {
        clearTimeout(sweepTimer);
        // graphile aborts the running jobs' signal after stopTimeoutMs; if some job still does
        // not end, its jobs are failed (released for a retry) a little later.
        const graceful = runner.stop().catch((err: unknown) => {
          logger?.warn({ err: err instanceof Error ? err.message : String(err) }, "event worker did not stop cleanly");
        });
        const hardDeadline = new Promise<"late">((resolve) => setTimeout(() => resolve("late"), stopTimeoutMs + 5_000).unref());
        if ((await Promise.race([graceful, hardDeadline])) === "late") {
          logger?.warn({ stopTimeoutMs }, "deliveries did not end after the stop deadline; releasing their jobs");
          await runner.kill().catch(() => {});
        }
        poolClosed = true;
        await pool.end().catch(() => {});
        logger?.info({ workerId }, "event worker stopped");
      })();
      return stopping;
    },
  };
}

/** A task whose payload is `{ [field]: "<id>" }`; a malformed payload is dropped, not retried. */
function idTask(field: string, work: (id: string) => Promise<void>, logger: WorkerLogger | undefined): Task {
  return async (payload, helpers) => {
    const id = (payload as Record<string, unknown> | null)?.[field];
    if (typeof id !== "string" || id.length === 0) {
      logger?.warn({ jobId: helpers.job.id, task: helpers.job.task_identifier, payload }, `job without ${field}; dropped`);
      return;
    }
    await work(id);
  };
}

function graphileLogger(logger: WorkerLogger | undefined): Logger {
  return new Logger((scope) => (level, message, meta) => {
    if (!logger) return;
    const fields = { component: "graphile-worker", ...scope, ...(meta?.error ? { err: String(meta.error) } : {}) };
    switch (String(level)) {
      case "error":
        logger.error(fields, message);
        break;
      case "warning":
        logger.warn(fields, message);
        break;
      default:
        // graphile logs every job at info: too chatty for a delivery per event.
        logger.debug(fields, message);
    }
  });
}
