/**
 * The `deliver_events` task: delivers the pending events of one ordering key (a fleet, else an
 * order), one after the other in seq order.
 *
 * - delivered → marked, next event;
 * - park (4xx other than 401/408/429) → dead with Orange's status, request id and body, and the
 *   run stops: the key is held. Its later events wait behind the dead one (they are not even
 *   read) until an operator re-sends it (it keeps its seq, so it goes first) or discards it, and
 *   that operator action schedules the key again (operator.ts);
 * - retry → next attempt after an exponential backoff with full jitter (at least Orange's
 *   Retry-After); past the attempt or age bound → dead, and the key is held as above; otherwise
 *   the key's job is scheduled at the next attempt and the run stops: later events of the key
 *   wait behind it.
 *
 * Exclusivity: graphile creates a second job for a key whose job is running (add_job on a locked
 * job key), and a job whose worker died is unlocked by the lease sweep (worker.ts) while the
 * worker might still be alive. So each run first takes a session advisory lock on the key, on
 * the very connection that then writes every state change: a run that cannot get it reschedules
 * the key shortly and leaves; a run whose connection died can no longer write anything, and its
 * lock is gone with the connection, so another worker takes over (at-least-once, same event id).
 */
import type { JobHelpers, Task } from "graphile-worker";
import type pg from "pg";
import { queryable, type Queryable } from "../db/sql.js";
import { addJob } from "./queue.js";
import type { EventLogger } from "./http.js";
import type { DeliveryResult, OrangeEventApi, OrangeEventClient } from "./orange-client.js";
import { DELIVER_TASK, DELIVERY_LOCK_NAMESPACE, jobKeyOf } from "./outbox.js";

export interface RetryPolicy {
  /** Ceiling of the first backoff; doubles with each attempt. */
  baseMs: number;
  /** Cap of one backoff. */
  maxMs: number;
  /** An event still failing after this many attempts is parked as dead. */
  maxAttempts: number;
  /**
   * An event whose next attempt would come later than this after its creation (or its operator's
   * re-send, or the release of the key it waited in behind a dead event) is parked as dead.
   */
  maxAgeMs: number;
}

export interface DeliveryTaskOptions {
  /** Connections for the key lock and the state writes (the worker's pool). */
  pool: pg.Pool;
  client: Pick<OrangeEventClient, "send">;
  retry: RetryPolicy;
  /** A run stops after this long and reschedules its key at once (keep it well under the lease). */
  runBudgetMs: number;
  /** Delay before a run that found its key busy tries again. */
  busyRetryMs?: number;
  /** The graphile worker pool id, written on each attempt. */
  workerId?: () => string | undefined;
  logger?: EventLogger;
  /** Jitter source (tests). */
  random?: () => number;
  /** Told of every delivery attempt as it ends (metrics). */
  observer?: DeliveryObserver;
}

/** What the metrics count of deliveries (src/metrics.ts). */
export interface DeliveryObserver {
  /** One POST of an event to Orange (the token request included), classified, and how long it took. */
  attempt(outcome: DeliveryResult["outcome"], durationMs: number): void;
}

interface HeadRow {
  id: string;
  api: OrangeEventApi;
  /** The event as stored (a json column: the text written): sent as is, never parsed and re-serialised. */
  json: string;
  type: string;
  attempts: number;
  due: boolean;
  next_attempt_at: Date;
}

/** The key's session advisory lock, held by the run's connection. */
interface KeyLock {
  held: boolean;
}

type NoRow = { [K in keyof HeadRow]: null };

/** On every row of the heads statement: the key lock, and the dead event holding the key, if any. */
interface KeyRow {
  locked: boolean;
  held_by: string | null;
}

/** Pending events of a key read at once; each is still claimed by its own conditional update. */
const PREFETCH = 64;

/** "No dead event in the key": every seq is below it. */
const MAX_BIGINT = "9223372036854775807";

const INTERRUPTED = "interrupted: the worker stopped or died during the attempt";

/** Full jitter: uniform in [0, min(max, base·2^(attempt-1))], never below Retry-After. */
export function retryDelayMs(policy: RetryPolicy, attempt: number, retryAfterMs: number | undefined, random: () => number): number {
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.min(attempt - 1, 40));
  const jittered = Math.floor(random() * ceiling);
  return Math.max(jittered, retryAfterMs ?? 0);
}

export function createDeliverEventsTask(options: DeliveryTaskOptions): Task {
  const { pool, retry, logger } = options;
  const random = options.random ?? Math.random;
  const busyRetryMs = options.busyRetryMs ?? 500;

  return async (payload: unknown, helpers: JobHelpers) => {
    const orderingKey = (payload as { orderingKey?: unknown } | null)?.orderingKey;
    if (typeof orderingKey !== "string" || orderingKey.length === 0) {
      logger?.warn({ jobId: helpers.job.id, payload }, "deliver_events job without an ordering key; dropped");
      return;
    }
    const conn = await pool.connect();
    const lock: KeyLock = { held: false };
    let broken = false;
    try {
      try {
        await deliverKey(conn, orderingKey, helpers.abortSignal, lock);
      } finally {
        if (lock.held) {
          await conn.query("SELECT pg_advisory_unlock($1::int, hashtext($2))", [DELIVERY_LOCK_NAMESPACE, orderingKey]).catch(() => {
            // The lock must not outlive the run on a pooled connection: drop the connection.
            broken = true;
          });
        }
      }
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      conn.release(broken);
    }
  };

  /**
   * Statements per event: one (its finish starts the next). Per run: the first read, which also
   * takes the key lock, and, when the run ends with the key drained, nothing more (the last
   * finish releases the lock). An event committed after the run's job was claimed has its own
   * job (add_job on a running job's key creates one), so a run need not look again once its
   * batch was not full.
   */
  async function deliverKey(conn: pg.PoolClient, orderingKey: string, abortSignal: AbortSignal, lock: KeyLock): Promise<void> {
    const startedAt = performance.now();
    const mustStop = () => abortSignal.aborted || performance.now() - startedAt > options.runBudgetMs;
    for (;;) {
      if (mustStop()) {
        // Shutting down, or long enough: hand the rest of the key to the next free worker.
        await schedule(conn, orderingKey, { delayMs: 0 });
        return;
      }
      // The key's next pending events, the first of them claimed for an attempt if it is due. Only
      // those before the key's first dead event, if any: the events behind it are held (one index
      // probe in the same statement, no extra round trip).
      const { rows } = await conn.query<KeyRow & (HeadRow | NoRow) & Started>({
        name: "outbox_heads",
        text: `WITH lock AS MATERIALIZED (
           SELECT CASE WHEN $5::boolean THEN pg_try_advisory_lock($4::int, hashtext($1)) ELSE true END AS locked
         ),
         dead AS MATERIALIZED (
           SELECT id, seq FROM outbox_event
            WHERE (SELECT locked FROM lock) AND ordering_key = $1 AND state = 'dead'
            ORDER BY seq
            LIMIT 1
         ),
         heads AS MATERIALIZED (
           SELECT id, api, body::text AS json, body->>'type' AS type, attempts, seq,
                  next_attempt_at <= clock_timestamp() AS due, next_attempt_at
             FROM outbox_event
            WHERE (SELECT locked FROM lock) AND ordering_key = $1 AND state = 'pending'
              AND seq < coalesce((SELECT seq FROM dead), ${MAX_BIGINT})
            ORDER BY seq
            LIMIT ${PREFETCH}
         ),
         first AS (SELECT id, attempts FROM heads WHERE due AND seq = (SELECT min(seq) FROM heads)),
         ${START_SQL({ id: "(SELECT id FROM first)", attempts: "(SELECT attempts FROM first)", workerId: "$2", error: "$3" })}
         SELECT l.locked, (SELECT id FROM dead) AS held_by, h.id, h.api, h.json, h.type, h.attempts, h.due, h.next_attempt_at,
                (SELECT id FROM att) AS attempt_id, (SELECT attempt FROM att) AS attempt
           FROM lock l LEFT JOIN heads h ON true
          ORDER BY h.seq`,
        values: [orderingKey, options.workerId?.() ?? null, INTERRUPTED, DELIVERY_LOCK_NAMESPACE, !lock.held],
      });
      if (!rows[0]?.locked) {
        // Another run delivers this key right now; it goes on while events are pending, and
        // this retry covers an event it may have just missed.
        await schedule(conn, orderingKey, { delayMs: busyRetryMs });
        return;
      }
      lock.held = true;
      const batch = rows.filter((r): r is HeadRow & KeyRow & Started => r.id !== null);
      if (batch.length === 0) {
        // Nothing to send; when a dead event holds the key, its operator action schedules it again.
        const heldBy = rows[0]?.held_by;
        if (heldBy) logger?.debug({ orderingKey, heldBy }, "events wait behind a dead event until an operator re-sends or discards it");
        return;
      }
      const first = batch[0]!;
      if (!first.due) {
        await schedule(conn, orderingKey, { at: first.next_attempt_at });
        return;
      }
      // undefined: the first event is no longer pending as read (this statement's snapshot predates
      // the lock, so a previous run may have just settled it): read again.
      let started: { attemptId: string; attempt: number } | undefined =
        first.attempt_id === null || first.attempt === null ? undefined : { attemptId: first.attempt_id, attempt: first.attempt };
      // Each event of the batch is sent once its predecessor is delivered or parked; the statement
      // that finishes an attempt also starts the next event's (one round trip per event).
      for (let i = 0; started !== undefined; i++) {
        const head = batch[i]!;
        const { attemptId, attempt } = started;
        let result: DeliveryResult;
        const sentAt = performance.now();
        try {
          result = await options.client.send(head.api, { id: head.id, type: head.type, json: head.json }, abortSignal);
        } catch (err) {
          result = { outcome: "retry", error: `delivery failed: ${err instanceof Error ? err.message : String(err)}` };
        }
        options.observer?.attempt(result.outcome, performance.now() - sentAt);
        const aborted = abortSignal.aborted && result.outcome === "retry";
        const following = batch[i + 1];
        const next = following?.due && !mustStop() ? following : undefined;
        // The key is drained: release it with this statement and leave.
        const drained = following === undefined && batch.length < PREFETCH;
        const done = await finish(conn, head, attempt, attemptId, result, aborted, next, drained ? orderingKey : undefined);
        if (done.unlocked) lock.held = false;
        const fields = {
          eventId: head.id,
          orderingKey,
          attempt,
          outcome: result.outcome,
          status: result.status,
          requestId: result.requestId,
          state: done.state,
        };
        if (done.state === "delivered") {
          logger?.debug(fields, "event delivered");
        } else if (done.state === "dead") {
          // The key is held: nothing of it is read or sent until an operator re-sends or discards
          // this event (the task's finally releases the key lock, if this finish did not).
          logger?.warn(
            { ...fields, error: done.error },
            "event parked as dead; the later events of its key wait until an operator re-sends or discards it",
          );
          return;
        } else {
          logger?.info({ ...fields, error: result.error, nextAttemptAt: done.nextAttemptAt }, "event delivery will be retried");
          await schedule(conn, orderingKey, { at: done.nextAttemptAt });
          return;
        }
        if (drained) return;
        // No next event started (end of batch, not due, budget, or changed under us): read again.
        started = done.next;
      }
    }
  }

  async function finish(
    conn: pg.PoolClient,
    head: HeadRow,
    attempt: number,
    attemptId: string,
    result: DeliveryResult,
    aborted: boolean,
    next: HeadRow | undefined,
    unlockKey: string | undefined,
  ): Promise<{
    state: "delivered" | "dead" | "pending";
    nextAttemptAt: Date;
    error: string | null;
    next: { attemptId: string; attempt: number } | undefined;
    unlocked: boolean;
  }> {
    const error = aborted ? `aborted: the worker was stopping (${result.error ?? "no answer"})` : (result.error ?? null);
    // The delay is drawn here (jitter); whether the event is parked instead (attempts, age) is
    // decided by the statement below, in one place. Aborted by a stopping worker: not Orange's
    // doing; the next worker tries at once, and neither bound applies.
    const delayMs = result.outcome === "retry" && !aborted ? retryDelayMs(retry, attempt, result.retryAfterMs, random) : 0;
    const maxAttempts = aborted ? null : retry.maxAttempts;
    const maxAgeMs = aborted ? null : retry.maxAgeMs;
    const { rows } = await conn.query<{
      state: "delivered" | "dead" | "pending";
      next_attempt_at: Date;
      last_error: string | null;
      unlocked: boolean | null;
    } & Started>({
      name: "outbox_attempt_finish",
      text: `WITH t AS (SELECT clock_timestamp() AS now),
       decided AS (
         SELECT e.id,
                CASE
                  WHEN $2::text = 'delivered' THEN 'delivered'
                  WHEN $2::text = 'park' THEN 'dead'
                  WHEN $3::int IS NOT NULL AND $17::int >= $3::int THEN 'dead'
                  WHEN $5::bigint IS NOT NULL
                   AND t.now + $4::bigint * interval '1 millisecond' > greatest(e.created_at, e.resent_at, e.released_at) + $5::bigint * interval '1 millisecond' THEN 'dead'
                  ELSE 'pending'
                END::"OutboxState" AS state,
                t.now
           FROM outbox_event e, t
          WHERE e.id = $1 AND e.state = 'pending'
       ),
       ev AS (
         UPDATE outbox_event e
            SET state = d.state,
                attempts = $17::int,
                delivered_at = CASE WHEN d.state = 'delivered' THEN d.now END,
                dead_at = CASE WHEN d.state = 'dead' THEN d.now END,
                next_attempt_at = CASE WHEN d.state = 'pending' THEN d.now + $4::bigint * interval '1 millisecond' ELSE e.next_attempt_at END,
                last_status = $6,
                last_request_id = $7,
                last_response_body = $8,
                last_error = CASE
                  WHEN d.state = 'dead' AND $2::text = 'retry'
                    THEN 'gave up after ' || $17::int || ' attempts: ' || coalesce($9, 'no answer')
                  ELSE $9
                END
           FROM decided d
          WHERE e.id = d.id
         RETURNING e.state, e.next_attempt_at, e.last_error
       ),
       closed AS (
         -- The attempt ends at the instant the event's state changes (its dead_at, its delivered_at): a
         -- timeline shows the attempt, then what it led to.
         UPDATE event_delivery_attempt
            SET finished_at = (SELECT now FROM t), outcome = $2::"DeliveryAttemptOutcome",
                status = $6, request_id = $7, response_body = $8, error = $9
          WHERE id = $10
       ),
       -- The next event of the key, only once this one is delivered (a parked one holds the key).
       ${START_SQL({ id: "$11", attempts: "$12", workerId: "$13", error: "$14", condition: "(SELECT state FROM decided) = 'delivered'" })},
       unlock AS MATERIALIZED (
         SELECT CASE WHEN $15::text IS NOT NULL THEN pg_advisory_unlock($16::int, hashtext($15)) END AS unlocked
       )
       SELECT state, next_attempt_at, last_error, (SELECT id FROM att) AS attempt_id, (SELECT attempt FROM att) AS attempt,
              (SELECT unlocked FROM unlock) AS unlocked
         FROM ev`,
      values: [
        head.id,
        result.outcome,
        maxAttempts,
        delayMs,
        maxAgeMs,
        result.status ?? null,
        result.requestId ?? null,
        result.body ?? null,
        error,
        attemptId,
        next?.id ?? null,
        next?.attempts ?? null,
        options.workerId?.() ?? null,
        INTERRUPTED,
        unlockKey ?? null,
        DELIVERY_LOCK_NAMESPACE,
        attempt,
      ],
    });
    const row = rows[0];
    if (!row) throw new Error(`outbox event ${head.id} left the pending state during its delivery`);
    return {
      state: row.state,
      nextAttemptAt: row.next_attempt_at,
      error: row.last_error,
      next: row.attempt_id === null || row.attempt === null ? undefined : { attemptId: row.attempt_id, attempt: row.attempt },
      unlocked: row.unlocked === true,
    };
  }
}

/** What a statement that starts an attempt returns: null when the event changed under us. */
interface Started {
  attempt_id: string | null;
  attempt: number | null;
}

/**
 * CTEs that start an attempt of a pending event (whose attempts column is still `attempts`):
 * records the attempt row and yields `att (id, attempt)`. The attempts column itself is written
 * when the attempt finishes; an attempt left open by a worker that stopped or died is closed here
 * as a retry and counted. Attempt rows are numbered over the event's whole life: an operator's
 * re-send of a dead event restarts the attempts column (a fresh retry budget), not the history.
 */
function START_SQL(p: { id: string; attempts: string; workerId: string; error: string; condition?: string }): string {
  // FOR UPDATE: the row's latest version is checked, not the statement's snapshot, which may
  // predate the key lock (taken in the same statement) and the commit of a previous run's finish.
  return `claimed AS (
    SELECT id, attempts FROM outbox_event
     WHERE id = ${p.id}::text AND state = 'pending' AND attempts = ${p.attempts}::int AND ${p.condition ?? "TRUE"}
       FOR UPDATE
  ),
  interrupted AS (
    UPDATE event_delivery_attempt
       SET finished_at = clock_timestamp(), outcome = 'retry', error = ${p.error}::text
     WHERE event_id = (SELECT id FROM claimed) AND finished_at IS NULL
    RETURNING 1
  ),
  recounted AS (
    UPDATE outbox_event SET attempts = attempts + (SELECT count(*) FROM interrupted)
     WHERE id = (SELECT id FROM claimed) AND EXISTS (SELECT 1 FROM interrupted)
  ),
  att AS (
    INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at)
    SELECT c.id, (SELECT coalesce(max(a.attempt), 0) + 1 FROM event_delivery_attempt a WHERE a.event_id = c.id),
           ${p.workerId}::text, clock_timestamp()
      FROM claimed c
    RETURNING id, (SELECT attempts + 1 + (SELECT count(*) FROM interrupted) FROM claimed)::int AS attempt
  )`;
}

/** (Re)schedules the key's job; replaces the run time of a waiting job of the key, if any. */
export async function schedule(
  conn: Queryable | pg.Pool | pg.PoolClient,
  orderingKey: string,
  when: { at: Date } | { delayMs: number },
  mode: "replace" | "preserve_run_at" = "replace",
): Promise<void> {
  const q = "execute" in conn ? conn : queryable(conn);
  await addJob(q, {
    task: DELIVER_TASK,
    payload: { orderingKey },
    key: jobKeyOf(orderingKey),
    ...("at" in when ? { runAt: when.at } : { delayMs: when.delayMs }),
    keyMode: mode,
  });
}
