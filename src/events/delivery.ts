/**
 * The `deliver_events` task: delivers the pending events of one ordering key (a fleet, else an
 * order), one after the other in seq order.
 *
 * - delivered → marked, next event;
 * - park (4xx other than 401/408/429) → dead with Orange's status, request id and body, next
 *   event: a parked event no longer blocks its fleet;
 * - retry → next attempt after an exponential backoff with full jitter (at least Orange's
 *   Retry-After); past the attempt or age bound → dead, next event; otherwise the key's job is
 *   scheduled at the next attempt and the run stops: later events of the key wait behind it.
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
import type { EventLogger } from "./http.js";
import type { DeliveryResult, OrangeEvent, OrangeEventApi, OrangeEventClient } from "./orange-client.js";
import { DELIVER_TASK, DELIVERY_LOCK_NAMESPACE, jobKeyOf } from "./outbox.js";

export interface RetryPolicy {
  /** Ceiling of the first backoff; doubles with each attempt. */
  baseMs: number;
  /** Cap of one backoff. */
  maxMs: number;
  /** An event still failing after this many attempts is parked as dead. */
  maxAttempts: number;
  /** An event whose next attempt would come later than this after its creation is parked as dead. */
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
}

interface HeadRow {
  id: string;
  api: OrangeEventApi;
  body: OrangeEvent;
  attempts: number;
  due: boolean;
  next_attempt_at: Date;
}

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
    let broken = false;
    try {
      const { rows } = await conn.query<{ locked: boolean }>(
        "SELECT pg_try_advisory_lock($1::int, hashtext($2)) AS locked",
        [DELIVERY_LOCK_NAMESPACE, orderingKey],
      );
      if (!rows[0]?.locked) {
        // Another run delivers this key right now; it goes on while events are pending, and
        // this retry covers an event it may have just missed.
        await schedule(conn, orderingKey, { delayMs: busyRetryMs });
        return;
      }
      try {
        await deliverKey(conn, orderingKey, helpers.abortSignal);
      } finally {
        await conn.query("SELECT pg_advisory_unlock($1::int, hashtext($2))", [DELIVERY_LOCK_NAMESPACE, orderingKey]).catch(() => {
          // The lock must not outlive the run on a pooled connection: drop the connection.
          broken = true;
        });
      }
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      conn.release(broken);
    }
  };

  async function deliverKey(conn: pg.PoolClient, orderingKey: string, abortSignal: AbortSignal): Promise<void> {
    const startedAt = performance.now();
    for (;;) {
      if (abortSignal.aborted || performance.now() - startedAt > options.runBudgetMs) {
        // Shutting down, or long enough: hand the rest of the key to the next free worker.
        await schedule(conn, orderingKey, { delayMs: 0 });
        return;
      }
      const { rows } = await conn.query<HeadRow>({
        name: "outbox_head",
        text: `SELECT id, api, body, attempts, next_attempt_at <= clock_timestamp() AS due, next_attempt_at
           FROM outbox_event
          WHERE ordering_key = $1 AND state = 'pending'
          ORDER BY seq
          LIMIT 1`,
        values: [orderingKey],
      });
      const head = rows[0];
      if (!head) return;
      if (!head.due) {
        await schedule(conn, orderingKey, { at: head.next_attempt_at });
        return;
      }
      const attempt = head.attempts + 1;
      const started = await conn.query<{ id: string }>({
        name: "outbox_attempt_start",
        text: `WITH interrupted AS (
           UPDATE event_delivery_attempt
              SET finished_at = clock_timestamp(), outcome = 'retry', error = $4
            WHERE event_id = $1 AND finished_at IS NULL
         ), bumped AS (
           UPDATE outbox_event SET attempts = $2
            WHERE id = $1 AND state = 'pending' AND attempts = $2 - 1
           RETURNING id
         )
         -- Attempt rows are numbered over the event's whole life: an operator's re-send of a dead
         -- event restarts outbox_event.attempts (a fresh retry budget) and keeps the history.
         INSERT INTO event_delivery_attempt (event_id, attempt, worker_id, started_at)
         SELECT id, (SELECT coalesce(max(a.attempt), 0) + 1 FROM event_delivery_attempt a WHERE a.event_id = $1),
                $3, clock_timestamp()
           FROM bumped
         RETURNING id`,
        values: [head.id, attempt, options.workerId?.() ?? null, INTERRUPTED],
      });
      const attemptId = started.rows[0]?.id;
      if (attemptId === undefined) continue; // changed under us (operator action): look again

      let result: DeliveryResult;
      try {
        result = await options.client.send(head.api, head.body, abortSignal);
      } catch (err) {
        result = { outcome: "retry", error: `delivery failed: ${err instanceof Error ? err.message : String(err)}` };
      }
      const aborted = abortSignal.aborted && result.outcome === "retry";
      const next = await finish(conn, head, attempt, attemptId, result, aborted);
      const fields = {
        eventId: head.id,
        orderingKey,
        attempt,
        outcome: result.outcome,
        status: result.status,
        requestId: result.requestId,
        state: next.state,
      };
      if (next.state === "delivered") {
        logger?.debug(fields, "event delivered");
      } else if (next.state === "dead") {
        logger?.warn({ ...fields, error: next.error }, "event parked as dead");
      } else {
        logger?.info({ ...fields, error: result.error, nextAttemptAt: next.nextAttemptAt }, "event delivery will be retried");
        await schedule(conn, orderingKey, { at: next.nextAttemptAt });
        return;
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
  ): Promise<{ state: "delivered" | "dead" | "pending"; nextAttemptAt: Date; error: string | null }> {
    const error = aborted ? `aborted: the worker was stopping (${result.error ?? "no answer"})` : (result.error ?? null);
    let delayMs = 0;
    let giveUp = false;
    // Aborted by a stopping worker: not Orange's doing; the next worker tries at once, and the
    // age bound does not apply.
    const maxAgeMs = aborted ? null : retry.maxAgeMs;
    if (result.outcome === "retry" && !aborted) {
      delayMs = retryDelayMs(retry, attempt, result.retryAfterMs, random);
      giveUp = attempt >= retry.maxAttempts;
    }
    const { rows } = await conn.query<{ state: "delivered" | "dead" | "pending"; next_attempt_at: Date; last_error: string | null }>({
      name: "outbox_attempt_finish",
      text: `WITH t AS (SELECT clock_timestamp() AS now),
       decided AS (
         SELECT e.id,
                CASE
                  WHEN $2::text = 'delivered' THEN 'delivered'
                  WHEN $2::text = 'park' THEN 'dead'
                  WHEN $3::boolean THEN 'dead'
                  WHEN $5::bigint IS NOT NULL
                   AND t.now + $4::bigint * interval '1 millisecond' > e.created_at + $5::bigint * interval '1 millisecond' THEN 'dead'
                  ELSE 'pending'
                END::"OutboxState" AS state,
                t.now
           FROM outbox_event e, t
          WHERE e.id = $1 AND e.state = 'pending'
       ),
       ev AS (
         UPDATE outbox_event e
            SET state = d.state,
                delivered_at = CASE WHEN d.state = 'delivered' THEN d.now END,
                dead_at = CASE WHEN d.state = 'dead' THEN d.now END,
                next_attempt_at = CASE WHEN d.state = 'pending' THEN d.now + $4::bigint * interval '1 millisecond' ELSE e.next_attempt_at END,
                last_status = $6,
                last_request_id = $7,
                last_response_body = $8,
                last_error = CASE
                  WHEN d.state = 'dead' AND $2::text = 'retry'
                    THEN 'gave up after ' || e.attempts || ' attempts: ' || coalesce($9, 'no answer')
                  ELSE $9
                END
           FROM decided d
          WHERE e.id = d.id
         RETURNING e.state, e.next_attempt_at, e.last_error
       ),
       att AS (
         UPDATE event_delivery_attempt
            SET finished_at = clock_timestamp(), outcome = $2::"DeliveryAttemptOutcome",
                status = $6, request_id = $7, response_body = $8, error = $9
          WHERE id = $10
       )
       SELECT state, next_attempt_at, last_error FROM ev`,
      values: [
        head.id,
        result.outcome,
        giveUp,
        delayMs,
        maxAgeMs,
        result.status ?? null,
        result.requestId ?? null,
        result.body ?? null,
        error,
        attemptId,
      ],
    });
    const row = rows[0];
    if (!row) throw new Error(`outbox event ${head.id} left the pending state during its delivery`);
    return { state: row.state, nextAttemptAt: row.next_attempt_at, error: row.last_error };
  }
}

/** (Re)schedules the key's job; replaces the run time of a waiting job of the key, if any. */
export async function schedule(
  conn: pg.Pool | pg.PoolClient,
  orderingKey: string,
  when: { at: Date } | { delayMs: number },
  mode: "replace" | "preserve_run_at" = "replace",
): Promise<void> {
  await conn.query(
    `SELECT 1 FROM graphile_worker.add_job(
       $1::text,
       json_build_object('orderingKey', $2::text),
       run_at => coalesce($3::timestamptz, now() + $4::bigint * interval '1 millisecond'),
       job_key => $5::text,
       job_key_mode => $6::text
     )`,
    [DELIVER_TASK, orderingKey, "at" in when ? when.at : null, "delayMs" in when ? when.delayMs : 0, jobKeyOf(orderingKey), mode],
  );
}
