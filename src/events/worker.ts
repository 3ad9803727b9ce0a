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
 * - With `tasks`, the same runner carries out other work: the request lifecycle's
 *   `process_order` / `process_update` (src/domain/request-jobs.ts) and its sweep
 *   (`sweepRequests`). A run that throws is retried by graphile with its own backoff.
 * - Database outages: the worker never takes the process down with it. graphile's runner is
 *   replaced when its pool fails, once the database answers again (see "Supervision" below).
 */
import { EventEmitter } from "node:events";
import { Logger, run, type JobHelpers, type Runner, type TaskList, type WorkerEvents } from "graphile-worker";
import pg from "pg";
import { createDeliverEventsTask, schedule, type DeliverEventsTask, type DeliveryObserver, type RetryPolicy } from "./delivery.js";
import type { EventLogger } from "./http.js";
import type { InlineRunner, Job, TaskHandler } from "../domain/ports.js";
import { queryable, refreshPlans } from "../db/sql.js";
import { addJob } from "./queue.js";
import type { OrangeEventClient } from "./orange-client.js";
import { type ClaimedEvent, committedDeliveryJobs, DELIVER_TASK, jobKeyOf, type RunDeliveries } from "./outbox.js";

export interface WorkerLogger extends EventLogger {
  error(obj: object, msg?: string): void;
}

export interface EventWorkerOptions {
  databaseUrl: string;
  /** Orange's event client; without it (no Orange credentials here) events wait for a worker that has one. */
  client?: Pick<OrangeEventClient, "send">;
  retry: RetryPolicy;
  /** Jobs (ordering keys) delivered in parallel by this process. */
  concurrency: number;
  /** A job locked longer than this is taken from its worker, presumed dead. */
  leaseMs: number;
  /**
   * Jobs claimed in one query and held in memory until one of the `concurrency` slots is free
   * (graphile's local queue); 0: each slot claims its own job, one query each. Default 2 × concurrency.
   */
  prefetch?: number;
  /** How long stop() lets running deliveries finish before aborting them (default 10 s). */
  stopTimeoutMs?: number;
  /** Interval of the lease sweep (default 30 s, jittered). */
  sweepIntervalMs?: number;
  /** How long a connection of the worker's pool keeps its statements' plans (default 10 s; src/db/sql.ts refreshPlans). */
  planMaxAgeMs?: number;
  /** How often graphile looks for jobs that became due (retries); new jobs wake it at once. Default 1 s. */
  pollIntervalMs?: number;
  /** PostgreSQL application_name of the worker's connections. */
  applicationName?: string;
  logger?: WorkerLogger;
  random?: () => number;
  /** More tasks by name (asynchronous orders and updates); without them, their jobs wait for a worker that has them. */
  tasks?: Record<string, TaskHandler>;
  /** Part of every sweep: acknowledged requests without a live job; the keys it re-armed or ended. */
  sweepRequests?: () => Promise<string[]>;
  /** Told of every delivery attempt (metrics). */
  observer?: DeliveryObserver;
  /** Inline runs at once, besides graphile's (default 0: none, `inline.reserve()` refuses). */
  inlineSlots?: number;
  /** Inline runs waiting for a slot, in memory (default 1,000); beyond them, jobs are queued. */
  inlineBacklog?: number;
  /**
   * How long an acknowledgement whose run waits for a slot is held before it is answered all the
   * same (default 2 s; see InlineSlot.start).
   */
  inlineAckHoldMs?: number;
  /**
   * How long pending events may go without a job before the sweep gives their key one (default
   * 0): an inline run delivers the events it wrote without a job, and may still be at it.
   */
  unqueuedGraceMs?: number;
}

export interface SweepResult {
  /** Worker pools whose stale jobs were unlocked. */
  unlockedWorkers: string[];
  /** Ordering keys that had pending events and no job. */
  rescheduledKeys: string[];
  /** Acknowledged orders and updates (async modes) whose job was gone or had given up. */
  rescheduledRequests: string[];
}

/** What the inline runner carries now. */
export interface InlineLoad {
  running: number;
  waiting: number;
}

/** Whether the worker can do its work, for the readiness check (GET /health/ready). */
export interface WorkerHealth {
  /**
   * running: its job runner claims jobs; replacing: the runner failed (database gone?) and a new
   * one takes over once the database answers; stopped: stop() was called.
   */
  runner: "running" | "replacing" | "stopped";
  /** Its own pool reached the database within the bound, or why not. */
  database: { ok: true } | { ok: false; error: string };
}

export interface EventWorker {
  /** graphile's worker pool id: `locked_by` of the jobs this worker runs. */
  readonly id: string | undefined;
  /** The worker's own connections (graphile and the delivery runs), for the pool metrics. */
  readonly pool: pg.Pool;
  /** Runs a job here as soon as its transaction commits, with no job row (the domain's InlineRunner). */
  readonly inline: InlineRunner;
  /** Inline runs under way and waiting for a slot (their acknowledgements held, 2 s at most), for the metrics. */
  inlineLoad(): InlineLoad;
  /** The runner's state and a `SELECT 1` on the worker's pool, bounded by `timeoutMs`. */
  health(timeoutMs: number): Promise<WorkerHealth>;
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
  const prefetch = options.prefetch ?? 2 * options.concurrency;
  // A prefetched job is locked from its claim on, and its wait in memory counts against the lease:
  // it goes back to the queue after a sixth of the lease (see runBudgetMs below).
  const prefetchTtlMs = Math.max(1_000, Math.floor(options.leaseMs / 6));
  const pool = new ReleaseOncePool({
    connectionString: options.databaseUrl,
    // One held by each running job (its key lock) and by each inline run's delivery, plus
    // graphile's LISTEN connection and its claim/complete queries, plus the sweep.
    max: options.concurrency + (options.inlineSlots ?? 0) + 4,
    connectionTimeoutMillis: 10_000,
    // Kept through a pause (pg closes an idle connection after 10 s by default): a burst after a
    // quiet minute would otherwise first reconnect (authentication) and prepare and plan its
    // statements again on every connection: about a third more of the server's CPU for the first
    // burst of 5,000 events after 15 s of quiet (npm run bench, step 15).
    idleTimeoutMillis: WORKER_IDLE_CONNECTION_MS,
    application_name: options.applicationName ?? "orange-partner-worker",
  });
  // An idle connection that breaks (database restart) is replaced; one in use fails its query.
  let poolClosed = false;
  pool.on("error", (err) => {
    // pool.end() resolves before the sockets are closed: a database stopping right after is no news.
    if (!poolClosed) logger?.warn({ err: err.message }, "worker database connection failed; it will be replaced");
  });
  pool.on("connect", (client) => client.on("error", () => {}));
  refreshPlans(pool, options.planMaxAgeMs);
  pool.onDoubleRelease = () => logger?.debug({}, "a worker database connection was released twice; ignored");

  let workerId: string | undefined;
  const events = new EventEmitter() as WorkerEvents;
  events.on("pool:create", ({ workerPool }) => {
    workerId = workerPool.id;
  });

  const taskList: TaskList = {};
  let deliver: DeliverEventsTask | undefined;
  if (options.client) {
    taskList[DELIVER_TASK] = deliver = createDeliverEventsTask({
      pool,
      client: options.client,
      retry: options.retry,
      // A third of the lease: with its wait in memory (prefetchTtlMs) and the delivery under way when
      // the budget runs out (a token request and two POSTs, at most half the lease: src/config.ts),
      // a job stays locked less than the lease.
      runBudgetMs: Math.max(1_000, Math.floor(options.leaseMs / 3)),
      workerId: () => workerId,
      random,
      ...(logger ? { logger } : {}),
      ...(options.observer ? { observer: options.observer } : {}),
    });
  }
  for (const [name, handler] of Object.entries(options.tasks ?? {})) {
    taskList[name] = async (payload, helpers) => {
      const run: RunDeliveries = { keys: new Map(), inline: false };
      await committedDeliveryJobs.run(run, () => handler(payload, { attempt: helpers.job.attempts, signal: helpers.abortSignal }));
      if (deliver) await deliverNow(deliver, run, helpers);
    };
  }

  /** What an inline run's transactions committed for it to deliver (the claims: outbox.ts). */
  const inlineRun = (): RunDeliveries =>
    deliver === undefined ? { keys: new Map(), inline: false } : { keys: new Map(), inline: true, claims: new Map(), ...(workerId !== undefined ? { workerId } : {}) };

  /**
   * The events a task's transactions committed (an async order's outcome) are delivered by the
   * same run, at once, instead of waiting for a free worker to claim their keys' jobs (under load,
   * most of an async order's time to its event was that wait). The run claims each key's job as
   * graphile's claim would (locked by this worker: a crash leaves it to the lease sweep, like any
   * job), runs the delivery task with it, then completes it (deletes it, as graphile does). A job
   * already claimed by another worker, or not due (a retry's backoff), is left to graphile. A failed
   * delivery run releases the job for graphile to run again; the task itself has succeeded.
   */
  async function deliverNow(task: DeliverEventsTask, committed: RunDeliveries, helpers: JobHelpers): Promise<void> {
    const id = workerId;
    for (const [orderingKey, jobId] of committed.keys) {
      if (jobId === null) {
        await deliverWithoutJob(task, orderingKey, committed.claims?.get(orderingKey), helpers);
        continue;
      }
      if (id === undefined) continue;
      if (helpers.abortSignal?.aborted) return;
      try {
        // A job this worker already holds is taken too: claimed ahead of a free slot (prefetch), it
        // waits in memory for one, like the run of this task did. Should another slot of this
        // worker be running it already, the key's lock keeps the two apart, and its completion
        // after this run's finds no row to delete.
        const claimed = await pool.query(
          `UPDATE graphile_worker._private_jobs SET locked_at = now(), locked_by = $3
            WHERE id = $1::bigint AND key = $2 AND (locked_at IS NULL OR locked_by = $3) AND attempts < max_attempts AND run_at <= now()`,
          [jobId, jobKeyOf(orderingKey), id],
        );
        if (claimed.rowCount !== 1) continue;
        try {
          await task({ orderingKey }, { ...helpers, job: { ...helpers.job, id: jobId, key: jobKeyOf(orderingKey) } } as JobHelpers);
        } catch (err) {
          await pool.query(
            "UPDATE graphile_worker._private_jobs SET locked_at = NULL, locked_by = NULL WHERE id = $1::bigint AND locked_by = $2",
            [jobId, id],
          );
          throw err;
        }
        await pool.query("DELETE FROM graphile_worker._private_jobs WHERE id = $1::bigint AND locked_by = $2", [jobId, id]);
      } catch (err) {
        // The job stays (released, or locked until the lease sweep): the events are not lost.
        logger?.warn({ orderingKey, err: errorMessage(err) }, "delivering a task's events at once failed; its job delivers them");
      }
    }
  }

  /**
   * The events of an inline run, written without a job: delivered here. The key's lock keeps a
   * concurrent run of the key out (the task then schedules the key's job itself, as it does for a
   * retry or when stopping); a run that fails before it could schedule anything schedules the key
   * here, or, with the database gone, leaves it to the sweep (pending events without a job).
   */
  async function deliverWithoutJob(task: DeliverEventsTask, orderingKey: string, claim: ClaimedEvent | undefined, helpers: JobHelpers): Promise<void> {
    try {
      if (helpers.abortSignal?.aborted) throw new Error("the worker is stopping");
      if (claim) await task.deliverClaimed(orderingKey, claim, helpers.abortSignal);
      else await task({ orderingKey }, { ...helpers, job: { ...helpers.job, key: jobKeyOf(orderingKey) } } as JobHelpers);
    } catch (err) {
      logger?.warn({ orderingKey, err: errorMessage(err) }, "delivering an inline run's events failed; its key gets a job");
      await addOnceAnswered(() => schedule(pool, orderingKey, { delayMs: 0 }, "preserve_run_at"), { orderingKey });
    }
  }

  /**
   * Adds the job of work an inline run could not finish. The database may be away (often why the
   * run failed): tried again until it answers, unless the worker stops first; the sweep adds the
   * job then, once past the grace period.
   */
  async function addOnceAnswered(add: () => Promise<void>, about: Record<string, unknown>): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await add();
        return;
      } catch (err) {
        if (attempt === 0) logger?.warn({ ...about, err: errorMessage(err) }, "the job of an inline run's unfinished work cannot be added yet; retrying");
        const waitMs = Math.min(RESTART_MAX_DELAY_MS, RESTART_BASE_DELAY_MS * 2 ** Math.min(attempt, 10));
        if (!(await sleep(waitMs * (0.5 + random() * 0.5), inlineAbort.signal))) {
          logger?.warn(about, "stopping: the job of an inline run's unfinished work is left to the sweep");
          return;
        }
      }
    }
  }

  // Inline runs (the domain's InlineRunner): a job carried out here as soon as the transaction
  // that made it commits, without a job row; `inlineSlots` of them at once, besides graphile's,
  // and up to `inlineBacklog` more waiting for a slot in memory (an acknowledged request is
  // durable whatever happens to the process: the sweep finds it without a job after the lease).
  // Beyond that, the request gets a job: the queue is the backpressure.
  const inlineSlots = options.inlineSlots ?? 0;
  const inlineBacklog = options.inlineBacklog ?? INLINE_BACKLOG;
  let inlineHeld = 0;
  let inlineRunning = 0;
  /** Runs waiting for a slot: jobs, and work whose caller waits (InlineSlot.runNow). */
  const inlineWaiting: (Job | HeldWork)[] = [];
  const inlineAckHoldMs = options.inlineAckHoldMs ?? INLINE_ACK_HOLD_MS;
  /** Acknowledgements held until their run starts (InlineSlot.start), by job. */
  const heldAcks = new Map<Job, () => void>();
  const inlineRuns = new Set<Promise<void>>();
  const inlineAbort = new AbortController();
  let inlineClosed = false;

  /** Inline runs asked to run again (JobContext.runAgain), by their timers; and how often each job was. */
  const inlineLater = new Map<NodeJS.Timeout, Job>();
  const ranAgain = new WeakMap<Job, number>();

  function runInlineLater(job: Job, delayMs: number): boolean {
    const again = (ranAgain.get(job) ?? 0) + 1;
    if (inlineClosed || again > INLINE_RUN_AGAIN_MAX || inlineHeld >= inlineSlots + inlineBacklog) return false;
    ranAgain.set(job, again);
    // It holds a place again until it has run (or, the runner stopping, got its job).
    inlineHeld++;
    const timer = setTimeout(() => {
      inlineLater.delete(timer);
      launchOrWait(job);
    }, delayMs);
    inlineLater.set(timer, job);
    return true;
  }

  /**
   * A run holding its place: started when a slot is free (true); else (or stopping: it gets its
   * job with the others) it waits.
   */
  function launchOrWait(job: Job | HeldWork): boolean {
    if (!inlineClosed && inlineRunning < inlineSlots) {
      launchInline(job);
      return true;
    }
    inlineWaiting.push(job);
    return false;
  }

  function launchInline(job: Job | HeldWork): void {
    if (job instanceof HeldWork) job.started();
    else heldAcks.get(job)?.();
    inlineRunning++;
    let done = false;
    const free = () => {
      if (done) return;
      done = true;
      inlineRunning--;
      inlineHeld--;
      const next = inlineClosed ? undefined : inlineWaiting.shift();
      if (next) launchInline(next);
    };
    const run = (job instanceof HeldWork ? runWork(job, free) : runInline(job, free)).finally(free);
    inlineRuns.add(run);
    void run.finally(() => inlineRuns.delete(run));
  }

  const inline: InlineRunner = {
    reserve() {
      if (inlineClosed || inlineSlots === 0 || inlineHeld >= inlineSlots + inlineBacklog) return undefined;
      inlineHeld++;
      let used = false;
      return {
        release() {
          if (used) return;
          used = true;
          inlineHeld--;
        },
        start(job) {
          if (used) return Promise.resolve();
          used = true;
          if (launchOrWait(job) || inlineClosed) return Promise.resolve();
          // It waits for a slot: its acknowledgement waits too, up to the bound.
          return new Promise<void>((resolve) => {
            const answer = () => {
              clearTimeout(timer);
              heldAcks.delete(job);
              resolve();
            };
            const timer = setTimeout(answer, inlineAckHoldMs);
            timer.unref();
            heldAcks.set(job, answer);
          });
        },
        runNow<T>(work: () => Promise<T>): Promise<{ result: T } | undefined> {
          if (used) return Promise.resolve(undefined);
          used = true;
          if (inlineClosed) {
            // Stopping: never started; its caller queues a job.
            inlineHeld--;
            return Promise.resolve(undefined);
          }
          return new Promise<{ result: T } | undefined>((resolve, reject) => {
            const held = new HeldWork(work as () => Promise<unknown>, resolve as (r: { result: unknown } | undefined) => void, reject);
            // Not started within the bound: its place is given back, and its caller queues a job.
            if (!launchOrWait(held)) held.expireAfter(inlineAckHoldMs, () => giveUpWaiting(held));
          });
        },
      };
    },
  };

  /** Work that waited for a slot and will not run: its place is given back, its caller told. */
  function giveUpWaiting(held: HeldWork): void {
    const at = inlineWaiting.indexOf(held);
    if (at >= 0) inlineWaiting.splice(at, 1);
    inlineHeld--;
    held.notRun();
  }

  /**
   * At stop, once graphile claims nothing more: the runs still waiting for a slot get their jobs,
   * for the next worker (or, the database away, the sweep finds them after the lease).
   */
  async function queueWaitingInline(): Promise<void> {
    // Jobs only: work whose caller waits was given back when the runner closed (stop).
    const waiting = inlineWaiting.splice(0).filter((j): j is Job => !(j instanceof HeldWork));
    inlineHeld -= waiting.length;
    for (const job of waiting) heldAcks.get(job)?.();
    const q = queryable(pool);
    await Promise.all(
      waiting.map((job) =>
        addJob(q, job).catch((err: unknown) =>
          logger?.warn({ task: job.task, key: job.key, err: errorMessage(err) }, "stopping: a waiting inline run's job could not be added; the sweep adds it"),
        ),
      ),
    );
  }

  /**
   * The events an inline run's transactions committed, delivered by the run (no job was added for
   * them), whether its work then succeeded or failed: a transaction that committed before a
   * failure left its events, their first attempts claimed, for this run to send. Never throws
   * (deliverNow hands what it cannot deliver to the key's job).
   */
  async function deliverCommitted(run: RunDeliveries, jobId: string, key: string | null): Promise<void> {
    if (!deliver || run.keys.size === 0) return;
    const helpers = { abortSignal: inlineAbort.signal, job: { id: jobId, attempts: 1, key } };
    await deliverNow(deliver, run, helpers as unknown as JobHelpers);
  }

  /**
   * Work run in a slot for a caller that waits for its result (InlineSlot.runNow): the caller is
   * answered as soon as the work is done, and the events its transactions committed are then
   * delivered in the slot, without jobs, as an inline run's are. Work that throws wrote nothing
   * the caller does not handle: its slot is freed and the caller gets the error.
   */
  async function runWork(held: HeldWork, freeSlot: () => void): Promise<void> {
    const run = inlineRun();
    let result: unknown;
    try {
      result = await committedDeliveryJobs.run(run, held.work);
    } catch (err) {
      freeSlot();
      held.failed(err);
      await deliverCommitted(run, "inline:work", null);
      return;
    }
    held.done(result);
    await deliverCommitted(run, "inline:work", null);
  }

  async function runInline(job: Job, freeSlot: () => void): Promise<void> {
    const handler = options.tasks?.[job.task];
    const run = inlineRun();
    try {
      if (!handler) throw new Error(`no task ${job.task} here`);
      // A run whose handler throws asked for another run: its job takes over, with graphile's
      // backoff from there (the handler has counted the failed attempt).
      const context = { attempt: 1, signal: inlineAbort.signal, runAgain: (delayMs: number) => runInlineLater(job, delayMs) };
      await committedDeliveryJobs.run(run, () => handler(job.payload, context));
    } catch (err) {
      logger?.warn({ task: job.task, key: job.key, err: errorMessage(err) }, "an inline run failed; its job takes over");
      freeSlot();
      await addOnceAnswered(() => addJob(queryable(pool), { ...job, delayMs: INLINE_RETRY_DELAY_MS }), { task: job.task, key: job.key });
    }
    await deliverCommitted(run, `inline:${job.key ?? job.task}`, job.key ?? null);
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
          -- An inline run delivers the events it wrote without a job: it is presumed dead after the grace.
          AND e.created_at < now() - $2::bigint * interval '1 millisecond'
          AND NOT EXISTS (
            SELECT 1 FROM graphile_worker.jobs j
             WHERE j.key = $1 || e.ordering_key AND j.attempts < j.max_attempts)
          -- Held behind a dead event: no job on purpose; the operator's re-send or discard adds one.
          AND NOT EXISTS (
            SELECT 1 FROM outbox_event d
             WHERE d.ordering_key = e.ordering_key AND d.state = 'dead' AND d.seq < e.seq)
        LIMIT 1000`,
      [jobKeyOf(""), options.unqueuedGraceMs ?? 0],
    );
    const rescheduledKeys = orphans.rows.map((r) => r.ordering_key);
    for (const key of rescheduledKeys) await schedule(pool, key, { delayMs: 0 }, "preserve_run_at");
    if (rescheduledKeys.length > 0) {
      logger?.warn({ keys: rescheduledKeys.length }, "pending events had no delivery job; rescheduled");
    }
    // An acknowledged request must end completed or failed, with its event.
    const rescheduledRequests = (await options.sweepRequests?.()) ?? [];
    return { unlockedWorkers, rescheduledKeys, rescheduledRequests };
  }

  // Supervision. graphile-worker (0.17 and 0.18 alike) records a job's outcome in a promise
  // nobody awaits: with the database gone at that moment, an unhandled rejection ends the
  // process. Batched (`*JobBatchDelay: 0`, one timer tick), the same failure is handled: graphile
  // reports it (`pool:fatalError`) and shuts that runner's pool down. The pool may never finish
  // shutting down (its batcher's bookkeeping goes wrong after two failures), so a runner whose pool
  // shuts down without stop() is dropped, not awaited: once its tasks have ended, and the database
  // answers, its jobs are released (`force_unlock_workers`: a job whose outcome was not recorded
  // stays locked by that pool) and a new runner takes over. The worker waits out an outage and
  // resumes by itself; a job is at worst run again, which every task tolerates.
  const startGeneration = async (): Promise<Generation> => {
    const running = new Set<Promise<unknown>>();
    const tracked: TaskList = {};
    for (const [name, fn] of Object.entries(taskList)) {
      if (!fn) continue;
      tracked[name] = (payload, helpers) => {
        const result = Promise.resolve(fn(payload, helpers));
        running.add(result);
        result.then(
          () => running.delete(result),
          () => running.delete(result),
        );
        return result;
      };
    }
    const runner = await run({
      pgPool: pool,
      taskList: tracked,
      concurrency: options.concurrency,
      noHandleSignals: true,
      pollInterval: options.pollIntervalMs ?? 1_000,
      events,
      logger: graphileLogger(logger),
      preset: {
        worker: {
          gracefulShutdownAbortTimeout: stopTimeoutMs,
          completeJobBatchDelay: 0,
          failJobBatchDelay: 0,
          ...(prefetch > 0 ? { localQueue: { size: prefetch, ttl: prefetchTtlMs } } : {}),
        },
      },
    });
    const generation: Generation = { runner, id: workerId, running, failed: false };
    runner.promise.then(
      () => onFailure(generation, "the runner ended"),
      (err: unknown) => onFailure(generation, errorMessage(err)),
    );
    return generation;
  };

  let current: Generation | undefined;
  let stopping: Promise<void> | undefined;
  let restarting: Promise<void> | undefined;
  const stopRequested = new AbortController();
  const onPoolShutdown = ({ workerPool, message }: { workerPool: { id: string }; message: string }) => {
    if (current && workerPool.id === current.id) onFailure(current, message);
  };
  events.on("pool:gracefulShutdown", onPoolShutdown);
  events.on("pool:forcefulShutdown", onPoolShutdown);

  function onFailure(generation: Generation, reason: string): void {
    if (stopping || generation !== current || generation.failed) return;
    generation.failed = true;
    logger?.warn({ workerId: generation.id, reason }, "event worker pool failed (database unavailable?); a new one takes over once the database answers");
    restarting = replace(generation).finally(() => {
      restarting = undefined;
    });
  }

  async function replace(failed: Generation): Promise<void> {
    // Its tasks fail on their own with the database gone; graphile aborts them after stopTimeoutMs.
    const drained = (async () => {
      while (failed.running.size > 0) await Promise.allSettled([...failed.running]);
    })();
    const stopped = new Promise<void>((resolve) => stopRequested.signal.addEventListener("abort", () => resolve(), { once: true }));
    if (!(await settlesWithin(Promise.race([drained, stopped]), stopTimeoutMs + 5_000))) {
      logger?.warn({ workerId: failed.id, running: failed.running.size }, "tasks of the failed worker pool still running; releasing its jobs anyway");
    }
    for (let attempt = 0; ; attempt++) {
      const waitMs = Math.min(RESTART_MAX_DELAY_MS, RESTART_BASE_DELAY_MS * 2 ** Math.min(attempt, 10));
      if (!(await sleep(waitMs * (0.5 + random() * 0.5), stopRequested.signal))) return;
      try {
        if (failed.id !== undefined) {
          await pool.query("SELECT graphile_worker.force_unlock_workers($1::text[])", [[failed.id]]);
        }
        const next = await startGeneration();
        if (stopRequested.signal.aborted) {
          await next.runner.stop().catch(() => {});
          return;
        }
        current = next;
        logger?.warn({ workerId: next.id, replaced: failed.id, attempts: attempt + 1 }, "event worker resumed");
        return;
      } catch (err) {
        logger?.warn({ err: errorMessage(err), attempt: attempt + 1 }, "event worker cannot resume yet; retrying");
      }
    }
  }

  try {
    await sweep();
    current = await startGeneration();
  } catch (err) {
    await pool.end().catch(() => {});
    throw err;
  }

  let sweepTimer: NodeJS.Timeout | undefined;
  const armSweep = () => {
    sweepTimer = setTimeout(
      () => {
        sweep()
          .catch((err: unknown) => logger?.warn({ err: errorMessage(err) }, "worker sweep failed"))
          .finally(() => {
            if (!stopping) armSweep();
          });
      },
      Math.round(sweepIntervalMs * (0.75 + random() * 0.5)),
    );
    sweepTimer.unref();
  };
  armSweep();
  logger?.info({ workerId, concurrency: options.concurrency, leaseMs: options.leaseMs }, "event worker started");

  async function health(timeoutMs: number): Promise<WorkerHealth> {
    if (stopping) return { runner: "stopped", database: { ok: false, error: "the worker is stopped" } };
    const runner = current && !current.failed ? "running" : "replacing";
    // The probe may outlive the bound (a saturated pool, a connection that hangs): it is left to end on its own.
    const probe = pool.query("SELECT 1").then(
      () => ({ ok: true as const }),
      (err: unknown) => ({ ok: false as const, error: errorMessage(err) }),
    );
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<{ ok: false; error: string }>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, error: `no answer within ${timeoutMs} ms` }), timeoutMs);
    });
    try {
      return { runner, database: await Promise.race([probe, late]) };
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    get id() {
      return workerId;
    },
    pool,
    inline,
    inlineLoad: () => ({ running: inlineRunning, waiting: inlineWaiting.length }),
    health,
    sweep,
    stop() {
      stopping ??= (async () => {
        clearTimeout(sweepTimer);
        // Inline runs end first (their requests are acknowledged and have no job): within the stop
        // deadline, then aborted like graphile's; an aborted delivery hands its key to a job.
        inlineClosed = true;
        // Work whose caller waits for a slot will not start now: its caller queues a job.
        for (const held of inlineWaiting.filter((j): j is HeldWork => j instanceof HeldWork)) giveUpWaiting(held);
        // Those due to run again wait with the others: they get their jobs below.
        for (const [timer, job] of inlineLater) {
          clearTimeout(timer);
          inlineWaiting.push(job);
        }
        inlineLater.clear();
        if (!(await settlesWithin(Promise.allSettled([...inlineRuns]), stopTimeoutMs))) {
          inlineAbort.abort();
          await settlesWithin(Promise.allSettled([...inlineRuns]), 5_000);
        }
        // A failed run still waiting for the database to add its job leaves it to the sweep.
        inlineAbort.abort();
        stopRequested.abort();
        await restarting;
        const live = current && !current.failed ? current.runner : undefined;
        if (live) {
          // graphile aborts the running jobs' signal after stopTimeoutMs; if some job still does
          // not end, its jobs are failed (released for a retry) a little later.
          const graceful = live.stop().catch((err: unknown) => {
            logger?.warn({ err: errorMessage(err) }, "event worker did not stop cleanly");
          });
          if (!(await settlesWithin(graceful, stopTimeoutMs + 5_000))) {
            logger?.warn({ stopTimeoutMs }, "deliveries did not end after the stop deadline; releasing their jobs");
            await live.kill().catch(() => {});
          }
        }
        // Once this worker claims nothing more: the runs still waiting are the next worker's.
        await queueWaitingInline();
        poolClosed = true;
        // end() waits for every connection to be given back: one a failed pool never released
        // must not hold the stop forever.
        if (!(await settlesWithin(pool.end().catch(() => {}), POOL_END_TIMEOUT_MS))) {
          logger?.warn({ timeoutMs: POOL_END_TIMEOUT_MS }, "worker database connections still in use at stop; left to close with the process");
        }
        logger?.info({ workerId }, "event worker stopped");
      })();
      return stopping;
    },
  };
}

/**
 * The pool graphile-worker and the delivery task share. graphile (0.17, 0.18) can release its
 * LISTEN connection twice when that connection fails while its pool shuts down, from a promise
 * nobody awaits: pg's "Release called on client which has already been released" would be an
 * unhandled rejection. Here a second release of one checkout is a no-op (the first one already
 * returned or destroyed the connection).
 */
export class ReleaseOncePool extends pg.Pool {
  onDoubleRelease: (() => void) | undefined;

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void): void;
  override connect(
    callback?: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void,
  ): Promise<pg.PoolClient> | void {
    if (!callback) return super.connect().then((client) => this.releaseOnce(client));
    super.connect((err, client, done) => {
      if (client) {
        const once = this.releaseOnce(client);
        callback(err, once, (release) => once.release(release as Error | boolean | undefined));
      }
      else callback(err, client, done);
    });
  }

  private releaseOnce(client: pg.PoolClient): pg.PoolClient {
    const release = client.release.bind(client);
    let released = false;
    client.release = (err?: Error | boolean) => {
      if (released) {
        this.onDoubleRelease?.();
        return;
      }
      released = true;
      release(err);
    };
    return client;
  }
}

/** One graphile runner, replaced by the next when its pool fails. */
interface Generation {
  runner: Runner;
  /** Its worker pool id (`locked_by` of its jobs). */
  id: string | undefined;
  /** Its tasks in progress. */
  running: Set<Promise<unknown>>;
  /** Its pool shut down without stop(): it is being replaced. */
  failed: boolean;
}

const RESTART_BASE_DELAY_MS = 250;
const POOL_END_TIMEOUT_MS = 5_000;
/** An idle connection of the worker's pool is closed after this long (at most its size are kept). */
const WORKER_IDLE_CONNECTION_MS = 60_000;
/** Inline runs waiting for a slot, at most (a few seconds of work at the rates this server reaches). */
const INLINE_BACKLOG = 1_000;
/**
 * The longest an acknowledgement waits for its run to start (backpressure, InlineSlot.start):
 * well under what an HTTP caller such as Orange's IT waits for an answer.
 */
const INLINE_ACK_HOLD_MS = 2_000;
/** Times an inline run may ask to run again in memory (JobContext.runAgain) before its job takes over. */
const INLINE_RUN_AGAIN_MAX = 5;
/** A failed inline run's job: after a pause, then graphile's own backoff. */
const INLINE_RETRY_DELAY_MS = 1_000;
const RESTART_MAX_DELAY_MS = 5_000;

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Whether `promise` settles within `ms`. The timer holds the process meanwhile: a promise that
 * never settles must end in `false`, not in a silent exit once nothing else is left to run.
 */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits `ms`; false when `signal` aborted first. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
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

/** Work a caller waits for, run in an inline slot (InlineSlot.runNow); settles its caller once. */
class HeldWork {
  private timer: NodeJS.Timeout | undefined;
  private settled = false;

  constructor(
    readonly work: () => Promise<unknown>,
    private readonly resolve: (r: { result: unknown } | undefined) => void,
    private readonly reject: (err: unknown) => void,
  ) {}

  expireAfter(ms: number, expire: () => void): void {
    this.timer = setTimeout(expire, ms);
    this.timer.unref();
  }

  started(): void {
    clearTimeout(this.timer);
  }

  done(result: unknown): void {
    this.settle(() => this.resolve({ result }));
  }

  failed(err: unknown): void {
    this.settle(() => this.reject(err));
  }

  notRun(): void {
    this.settle(() => this.resolve(undefined));
  }

  private settle(f: () => void): void {
    clearTimeout(this.timer);
    if (this.settled) return;
    this.settled = true;
    f();
  }
}
